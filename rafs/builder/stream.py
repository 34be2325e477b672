"""The stream toolkit of tar layers: opening a source, peeking at its first bytes, decompressing, and
reading file data back by range.

A layer is a path or a binary file object, possibly non-seekable (a pipe, an HTTP body); a character
device is refused, since it has no end. Its compression is told by magic (:func:`detect_compression`,
as builder/src/tarball.rs does for gzip; zstd too, which OCI layers may use). File data is handed out
as seekable streams over a range reader (:class:`~rafs.io.rangestream.RangeStream` for a stored run
of bytes, a sparse stream for a GNU sparse member, zeros between the stored runs), over ``pread`` of
the tar itself when it is a plain seekable file, or of a :class:`Spool` that a one-pass read copied the
data into.
"""

from __future__ import annotations

import bisect
import gzip
import io
import os
import stat as _stat
import tempfile
import zlib
from typing import BinaryIO

from ..errors import BuildError, InvalidArgumentError
from ..io.rangestream import RangeStream
from ..io.source import FileObjectRangeReader

GZIP_MAGIC = b"\x1f\x8b\x08"          # what builder/src/tarball.rs `detect_compression_algo` checks
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
COPY_BUFFER = 1 << 20


def detect_compression(head: bytes) -> str:
    """``gzip``, ``zstd`` or ``none`` from the first bytes of a layer."""
    if head.startswith(GZIP_MAGIC):
        return "gzip"
    if head.startswith(ZSTD_MAGIC):
        return "zstd"
    return "none"


def open_source(source) -> tuple[BinaryIO, bool]:
    if isinstance(source, (str, bytes, os.PathLike)):
        try:
            f = open(source, "rb")                          # noqa: SIM115 - owned by the layer
        except OSError as exc:
            raise InvalidArgumentError(f"cannot open tar {os.fsdecode(source)}: {exc.strerror}") from None
        try:
            _refuse_character_device(f, os.fsdecode(source))
        except BaseException:
            f.close()
            raise
        return f, True
    if hasattr(source, "read"):
        _refuse_character_device(source, getattr(source, "name", "<stream>"))
        return source, False
    raise InvalidArgumentError(f"a tar source is a path or a binary file object, not {type(source).__name__}")


def _refuse_character_device(f, name) -> None:
    """A character device (``/dev/zero``, a terminal) is no layer: it has no end, and it claims to be
    seekable with size 0."""
    try:
        mode = os.fstat(f.fileno()).st_mode
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return
    if _stat.S_ISCHR(mode):
        raise InvalidArgumentError(f"tar {name} is a character device, not a tar layer")


def is_seekable(f) -> bool:
    try:
        return bool(f.seekable())
    except (AttributeError, OSError, ValueError):
        return False


def peek(f, size: int) -> tuple[bytes, BinaryIO]:
    """The first ``size`` bytes and a stream that still starts at them."""
    if is_seekable(f):
        start = f.tell()
        head = f.read(size)
        f.seek(start)
        return head, f
    head = f.read(size) or b""
    return head, _Prepended(head, f)


class _Prepended(io.RawIOBase):
    """Bytes already read from a non-seekable stream, followed by the rest of it."""

    def __init__(self, head: bytes, rest):
        self._head = memoryview(head)
        self._rest = rest

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if self._head:
            count = min(len(buffer), len(self._head))
            buffer[:count] = self._head[:count]
            self._head = self._head[count:]
            return count
        data = self._rest.read(len(buffer))
        if not data:
            return 0
        buffer[:len(data)] = data
        return len(data)


def range_reader(raw):
    """Ranged reads of the tar: ``pread`` on its descriptor when it has one (thread safe), else
    seek-and-read under a lock."""
    try:
        fd = raw.fileno()
        size = os.fstat(fd).st_size
    except (AttributeError, OSError, ValueError):
        start = raw.tell()
        reader = FileObjectRangeReader(raw, getattr(raw, "name", "<tar>"))   # measures by seeking to the end
        raw.seek(start)
        return reader
    return _FdRangeReader(raw, size)


def decompressed(raw, compression: str) -> BinaryIO:
    if compression == "gzip":
        return gzip.GzipFile(fileobj=raw, mode="rb")        # concatenated members included
    if compression == "zstd":
        import zstandard
        return zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True, closefd=False)
    return raw


_DECOMPRESS_ERRORS = (EOFError, zlib.error, gzip.BadGzipFile)


def decompress_error_types():
    try:
        import zstandard
        return _DECOMPRESS_ERRORS + (zstandard.ZstdError,)
    except ImportError:                            # pragma: no cover - zstandard is a dependency
        return _DECOMPRESS_ERRORS


# -- file data ------------------------------------------------------------------------------------------

class _SparseStream(RangeStream):
    """A GNU sparse member: stored data runs at their file offsets, zeros in between."""

    def __init__(self, reader, offset: int, size: int, sparse: list[tuple[int, int]]):
        super().__init__(reader, offset, size)
        self._starts, self._runs, stored = [], [], offset
        for file_offset, length in sparse:
            if length:
                self._starts.append(file_offset)
                self._runs.append((file_offset, length, stored))
                stored += length

    def readinto(self, buffer) -> int:
        count = min(len(buffer), self._size - self._pos)
        if count <= 0:
            return 0
        view, done = memoryview(buffer), 0
        while done < count:
            pos = self._pos + done
            index = bisect.bisect_right(self._starts, pos) - 1
            if index >= 0:
                start, length, stored = self._runs[index]
                if pos < start + length:
                    part = min(count - done, start + length - pos)
                    view[done:done + part] = self._reader.read_range(stored + pos - start, part)
                    done += part
                    continue
            following = self._starts[index + 1] if index + 1 < len(self._starts) else self._size
            part = min(count - done, following - pos)
            view[done:done + part] = bytes(part)
            done += part
        self._pos += count
        return count


def open_member(reader, offset: int, size: int, sparse) -> BinaryIO:
    if sparse:
        return _SparseStream(reader, offset, size, sparse)
    return RangeStream(reader, offset, size)


class Spool:
    """One temporary file the data of a streamed tar is copied into, read back by range."""

    def __init__(self, directory):
        self._file = tempfile.TemporaryFile(prefix="rafs-tar-spool-", dir=directory)  # noqa: SIM115
        self.size = 0
        self.reader = None

    def append(self, stream, size: int) -> int:
        offset = self.size
        copied = _copy_exactly(stream, self._file, size)
        self.size += copied
        return offset

    def finish(self):
        self._file.flush()
        self.reader = _FdRangeReader(self._file, self.size)
        return self.reader

    def close(self) -> None:
        self._file.close()


class _FdRangeReader:
    """Thread-safe ``pread`` of an open file; holding the file object keeps it open as long as some
    node's ``data`` may still read from it."""

    def __init__(self, file, size: int):
        self._file, self.size = file, size

    def read_range(self, offset: int, size: int) -> bytes:
        data = os.pread(self._file.fileno(), size, offset)
        if len(data) != size:
            raise BuildError(f"{getattr(self._file, 'name', 'tar')}: short read of {size} bytes at {offset}")
        return data


def _copy_exactly(src, dst, size: int) -> int:
    remaining = size
    while remaining:
        data = src.read(min(COPY_BUFFER, remaining))
        if not data:
            raise BuildError(f"tar ends inside a member ({size - remaining} of {size} bytes)")
        dst.write(data)
        remaining -= len(data)
    return size


class MemberStream(io.RawIOBase):
    """The current member's bytes during ``on_file``: at most ``size`` bytes, no more."""

    def __init__(self, inner, size: int):
        self._inner, self._left = inner, size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        count = min(len(buffer), self._left)
        if count <= 0:
            return 0
        data = self._inner.read(count)
        if not data:
            raise BuildError(f"tar ends inside a member ({self._left} bytes missing)")
        buffer[:len(data)] = data
        self._left -= len(data)
        return len(data)

