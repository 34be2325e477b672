"""The file object of an image: a regular file's chunks as a seekable, read-only binary file.

Holes (what the chunks do not cover, up to the declared size) read as zeros and cost nothing until
read; data comes from the image's chunk store, chunk by chunk, only where asked.
"""

from __future__ import annotations

import bisect
import io

from .. import errors
from ..errors import InvalidArgumentError, InvalidImageError
from ..model import Chunk, Inode
from ..text import printable

# The most one read hands out whole (Image.read, ImageFile.read() and readall, one pread). A file's size
# is whatever its image declares (2^64 - 1 in v5), and beyond its chunks it is holes: reading it whole
# would allocate what the image says. Larger files are read in pieces through Image.open().
MAX_READ_SIZE = 1 << 30
# How much of a file's data is read at a time where it is copied out whole (extraction, unpack to tar),
# so memory stays bounded whatever size the file declares.
COPY_PIECE = 1 << 20


def chunk_layout_problem(inode: Inode, chunks: list[Chunk]) -> str | None:
    """What is wrong with the way ``chunks`` cover the file ``inode`` (overlaps, past its size), or None."""
    end = 0
    for chunk in chunks:
        if chunk.file_offset < end:
            return f"chunk {chunk.index} at file offset {chunk.file_offset} overlaps the previous chunk"
        end = chunk.file_offset + chunk.uncompressed_size
    if end > inode.size:
        return f"chunks cover {end} bytes but the file has {inode.size}"
    return None


class ImageFile(io.RawIOBase):
    """A seekable, read-only binary file over a regular file's chunks; holes read as zeros.

    Holes (what the chunks do not cover, up to the declared size) cost nothing until read, and one
    read hands out at most ``max_read`` bytes (:data:`MAX_READ_SIZE`): a larger ``read()`` raises
    :class:`~rafs.errors.FileTooLargeError` instead of allocating what the image declares.
    ``image`` is the :class:`~rafs.image.Image` the file belongs to (its ``read_chunks`` serves the data).
    """

    max_read = MAX_READ_SIZE

    def __init__(self, image, inode: Inode, chunks: list[Chunk], name: str):
        super().__init__()
        self.image = image
        self.inode = inode
        self.name = name
        self.size = inode.size
        problem = chunk_layout_problem(inode, chunks)
        if problem:
            raise InvalidImageError(f"{printable(name)}: {problem}", structure="chunk info")
        self._chunks = chunks
        self._starts = [c.file_offset for c in chunks]
        self._pos = 0

    def readable(self) -> bool:
        """True: image files are read."""
        return True

    def seekable(self) -> bool:
        """True: any offset can be read."""
        return True

    def tell(self) -> int:
        """The current position."""
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        """Move to ``offset`` from the start, the current position or the end (``whence``); the new position."""
        if whence == io.SEEK_SET:
            pos = offset
        elif whence == io.SEEK_CUR:
            pos = self._pos + offset
        elif whence == io.SEEK_END:
            pos = self.size + offset
        else:
            raise InvalidArgumentError(f"invalid whence {whence}")
        if pos < 0:
            raise InvalidArgumentError("negative seek position")
        self._pos = pos
        return pos

    @property
    def chunks(self) -> list[Chunk]:
        """The file's chunks in file order (checked for overlaps and bounds when the file was opened)."""
        return list(self._chunks)

    def data_regions(self) -> list[tuple[int, int]]:
        """(file offset, length) of each run of bytes the chunks hold, in order, adjacent chunks merged;
        the rest of the file, up to its size, is holes."""
        regions: list[list[int]] = []
        for chunk in self._chunks:
            if regions and regions[-1][0] + regions[-1][1] == chunk.file_offset:
                regions[-1][1] += chunk.uncompressed_size
            elif chunk.uncompressed_size:
                regions.append([chunk.file_offset, chunk.uncompressed_size])
        return [(offset, length) for offset, length in regions]

    def _covering(self, offset: int, end: int) -> list[Chunk]:
        """The chunks holding bytes of [offset, end)."""
        i = max(0, bisect.bisect_right(self._starts, offset) - 1)
        wanted = []
        while i < len(self._chunks):
            chunk = self._chunks[i]
            if chunk.file_offset >= end:
                break
            if chunk.file_offset + chunk.uncompressed_size > offset:
                wanted.append(chunk)
            i += 1
        return wanted

    def pread(self, size: int, offset: int, *, local_only: bool = False) -> bytes | None:
        """Up to ``size`` bytes at ``offset`` without moving the file position (``local_only``: None
        when some chunk needed would have to come from a remote backend, see Image.read_chunks).
        """
        if offset >= self.size or size <= 0:
            return b""
        end = min(self.size, offset + size)
        if end - offset > self.max_read:
            raise errors.FileTooLargeError(self.name, f"a read of {end - offset} bytes at {offset} is larger "
                                           f"than the {self.max_read} read whole: read the file in pieces")
        out = bytearray(end - offset)
        wanted = self._covering(offset, end)
        datas = self.image.read_chunks(wanted, path=self.name, local_only=local_only)
        if datas is None:
            return None
        if len(wanted) == 1 and wanted[0].file_offset <= offset and \
                end <= wanted[0].file_offset + wanted[0].uncompressed_size:
            # one chunk holds it all (a small file, a read inside a large chunk): one slice, no copy
            # when the read is the whole chunk
            data = datas[0]
            lo = offset - wanted[0].file_offset
            if lo or len(data) != end - offset:
                data = data[lo:lo + end - offset]
            return data if type(data) is bytes else bytes(data)
        for chunk, data in zip(wanted, datas):
            c_start, c_end = chunk.file_offset, chunk.file_offset + chunk.uncompressed_size
            lo, hi = max(offset, c_start), min(end, c_end)
            out[lo - offset:hi - offset] = data[lo - c_start:hi - c_start]
        return bytes(out)

    def readinto(self, buffer) -> int:
        """Read into ``buffer`` from the current position; the number of bytes read (0 at the end)."""
        data = self.pread(len(buffer), self._pos)
        buffer[:len(data)] = data
        self._pos += len(data)
        return len(data)

    def read(self, size: int = -1) -> bytes:
        """Up to ``size`` bytes from the current position (all that is left when ``size`` is -1)."""
        if size is None or size < 0:
            size = max(0, self.size - self._pos)
        data = self.pread(size, self._pos)
        self._pos += len(data)
        return data

    def readall(self) -> bytes:
        """Everything from the current position to the end."""
        return self.read(-1)

    def __repr__(self) -> str:
        return f"<rafs.ImageFile {self.name!r} size={self.size}>"
