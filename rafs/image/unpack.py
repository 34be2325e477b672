"""Writing an image's tree as an OCI-compatible tar (what ``nydus-image unpack`` produces).

PAX format: long names and links, xattrs (``SCHILY.xattr.*``, or libarchive's ``LIBARCHIVE.xattr.*``
for names that are not UTF-8), nanosecond mtimes; hardlinks as link
entries to the first path; devices and fifos kept; content copied chunk by chunk.

A file's data is its chunks; the rest of its declared size is holes. A file whose chunks cover all of
it is a plain member, as the reference writes it. One with holes is a GNU sparse 1.0 member (PAX
``GNU.sparse.major=1``, ``minor=0``, ``name``, ``realsize``; the data starts with the decimal map of
its data regions, padded to 512 bytes): GNU tar, libarchive (bsdtar), Go's archive/tar (containerd)
and Python's tarfile restore it with its holes. So the tar is never larger than the chunks it holds
plus headers, whatever size an image declares (a v5 ``i_size`` of 2^40 over one chunk would
otherwise be a terabyte of zeros); refusing such files instead would lose real sparse files.
"""

from __future__ import annotations

import base64
import os
import stat as _stat
import tarfile
import urllib.parse

from ..errors import BuildError, InvalidArgumentError
from ..progress import Progress, Ticker
from ..readahead import DEFAULT_THREADS, DataOnce, read_ahead
from ..text import printable
from .file import COPY_PIECE

_TYPES = {_stat.S_IFDIR: tarfile.DIRTYPE, _stat.S_IFREG: tarfile.REGTYPE, _stat.S_IFLNK: tarfile.SYMTYPE,
          _stat.S_IFCHR: tarfile.CHRTYPE, _stat.S_IFBLK: tarfile.BLKTYPE, _stat.S_IFIFO: tarfile.FIFOTYPE}


def write_tar(image, fileobj, *, threads: int = DEFAULT_THREADS, progress: Progress | None = None) -> int:
    """Write the whole tree to ``fileobj`` as a tar stream; returns the number of entries written.
    File data is read and decompressed ahead, in walk (blob) order, by ``threads`` workers.

    ``progress(done, total)`` (:mod:`rafs.progress`) counts the entries written (total 0: not known
    before the walk ends)."""
    ticker = Ticker(progress).start()
    count = 0
    first_link: dict[int, str] = {}
    with tarfile.open(fileobj=fileobj, mode="w|", format=tarfile.PAX_FORMAT,
                      encoding="utf-8", errors="surrogateescape") as tar:
        for raw_path, inode, pieces in read_ahead(image, image.iter_entries("/"), DataOnce(), threads=threads):
            # tarfile keeps every TarInfo it wrote, for reading back, which a stream never does: memory
            # would grow with the sum of all paths (quadratic in a deep tree's depth)
            tar.members.clear()
            if raw_path == b"/":
                continue
            kind = _stat.S_IFMT(inode.mode)
            if kind == _stat.S_IFSOCK:
                continue                     # tar cannot carry sockets; the reference skips them too
            name = os.fsdecode(raw_path.lstrip(b"/"))
            info = tarfile.TarInfo(name)
            info.mode = _stat.S_IMODE(inode.mode)
            info.uid, info.gid = inode.uid, inode.gid
            info.mtime = inode.mtime
            pax = {}
            if inode.mtime_nsec:
                pax["mtime"] = f"{inode.mtime}.{inode.mtime_nsec:09d}".rstrip("0")
            for key, value in inode.xattrs.items():
                try:
                    pax["SCHILY.xattr." + key.decode("utf-8")] = value.decode("utf-8", "surrogateescape")
                except UnicodeDecodeError:
                    # PAX keywords must be UTF-8 (tarfile refuses others): libarchive's form carries
                    # any name, URL-encoded, with the value in base64
                    pax["LIBARCHIVE.xattr." + urllib.parse.quote_from_bytes(key)] = \
                        base64.b64encode(value).decode("ascii")
            info.pax_headers = pax
            if kind == _stat.S_IFREG and inode.nlink > 1 and inode.ino in first_link:
                info.type = tarfile.LNKTYPE
                info.linkname = first_link[inode.ino]
                tar.addfile(info)
                count += 1
                ticker.advance()
                continue
            if kind not in _TYPES:
                raise BuildError(f"{printable(name)}: cannot represent mode {inode.mode:#o} in a tar")
            info.type = _TYPES[kind]
            if kind == _stat.S_IFLNK:
                info.linkname = os.fsdecode(inode.symlink or b"")
            elif kind in (_stat.S_IFCHR, _stat.S_IFBLK):
                info.devmajor, info.devminor = os.major(inode.rdev), os.minor(inode.rdev)
            if kind == _stat.S_IFREG:
                info.size = inode.size
                with image.open_inode(inode.ino) as data:
                    regions = data.data_regions()
                    if pieces is not None:
                        data = _InOrder(pieces)
                    if sum(length for _, length in regions) == inode.size:
                        tar.addfile(info, data)
                    else:
                        tar.addfile(*_sparse_member(info, data, regions))
                if inode.nlink > 1:
                    first_link[inode.ino] = name
            else:
                tar.addfile(info)
            count += 1
            ticker.advance()
    ticker.finish()
    return count


def write_tar_to(image, target, *, threads: int | None = None, progress: Progress | None = None) -> int:
    """:func:`write_tar` to a file object, or to the path ``target`` written whole through a temporary file
    then renamed into place (a FIFO or a device such as /dev/null is written into, never replaced); an
    error writing it names the path (a full disk reads ``No space left on device: 'x.tar'``)."""
    threads = DEFAULT_THREADS if threads is None else threads
    if hasattr(target, "write"):
        return write_tar(image, target, threads=threads, progress=progress)
    from ..builder.outputs import Output
    out = Output(target, None, error=InvalidArgumentError)
    try:
        count = write_tar(image, _Named(out.fp, os.fspath(target)), threads=threads, progress=progress)
        out.commit(None)
    except BaseException:
        out.discard()
        raise
    return count


class _Named:
    """A file whose write errors name ``path``."""

    def __init__(self, fileobj, path):
        self.fileobj = fileobj
        self.path = path

    def write(self, data) -> int:
        try:
            return self.fileobj.write(data)
        except OSError as exc:
            if exc.filename is None:
                exc.filename = self.path
            raise


def _sparse_member(info: tarfile.TarInfo, data, regions: list[tuple[int, int]]):
    """(TarInfo, stream) of a GNU sparse 1.0 member for a file whose chunks leave holes."""
    if not regions or regions[-1][0] + regions[-1][1] < info.size:
        regions = regions + [(info.size, 0)]     # a file ending in a hole: GNU tar's closing entry
    sparse_map = f"{len(regions)}\n".encode() + b"".join(b"%d\n%d\n" % region for region in regions)
    sparse_map += b"\0" * (-len(sparse_map) % tarfile.BLOCKSIZE)
    head, tail = os.path.split(info.name)
    member = tarfile.TarInfo(os.path.join(head, "GNUSparseFile.0", tail))
    for field in ("mode", "uid", "gid", "mtime", "type"):
        setattr(member, field, getattr(info, field))
    member.size = len(sparse_map) + sum(length for _, length in regions)
    member.pax_headers = dict(info.pax_headers, **{
        "GNU.sparse.major": "1", "GNU.sparse.minor": "0", "GNU.sparse.name": info.name,
        "GNU.sparse.realsize": str(info.size)})
    return member, _SparseData(sparse_map, data, regions)


class _SparseData:
    """The data of a sparse member as a stream: its map, then each data region's bytes in turn."""

    def __init__(self, sparse_map: bytes, data, regions: list[tuple[int, int]]):
        self._head = sparse_map
        self._data = data
        self._regions = list(reversed(regions))   # popped from the end: first region first

    def read(self, size: int) -> bytes:
        """Up to ``size`` bytes, fewer only at the end (tarfile's copy wants whole buffers)."""
        out = bytearray()
        while len(out) < size:
            piece = self._next(size - len(out))
            if not piece:
                break
            out += piece
        return bytes(out)

    def _next(self, size: int) -> bytes:
        if self._head:
            out, self._head = self._head[:size], self._head[size:]
            return out
        while self._regions:
            offset, length = self._regions[-1]
            if length == 0:
                self._regions.pop()
                continue
            piece = min(size, length, COPY_PIECE)
            if piece == length:
                self._regions.pop()
            else:
                self._regions[-1] = (offset + piece, length - piece)
            return self._data.pread(piece, offset)
        return b""


class _InOrder:
    """A file's chunk data as read ahead, handed out in order: what tarfile (``read``) and
    :class:`_SparseData` (``pread`` of each data region in turn, holes skipped) ask for. The chunks'
    bytes back to back are exactly the data regions back to back, so each call continues where the
    last ended; ``offset`` is where that is in the file."""

    def __init__(self, pieces):
        self._pieces = iter(pieces)
        self._buffer = memoryview(b"")

    def read(self, size: int) -> bytes:
        out = []
        while size > 0:
            if not self._buffer:
                try:
                    _, data = next(self._pieces)
                except StopIteration:
                    break
                self._buffer = memoryview(data)
            piece = self._buffer[:size]
            self._buffer = self._buffer[len(piece):]
            out.append(piece)
            size -= len(piece)
        return b"".join(out)

    def pread(self, size: int, offset: int) -> bytes:
        return self.read(size)
