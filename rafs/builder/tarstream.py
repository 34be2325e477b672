"""Reading tar headers with every length they declare bounded before it is read.

Python's :mod:`tarfile` trusts the lengths a header declares: it reads a whole extended header into
memory before parsing it, recurses once per extended header, and takes GNU sparse maps as long as they
say. :class:`BoundedTarInfo` bounds each before anything is read, :func:`open_tar` opens every tar rafs
reads with it, and :func:`members` walks an archive strictly (zero blocks between concatenated
archives skipped, as the reference's ``ignore_zeros``). :func:`normalize_path` keeps a member's path
inside the layer root.
"""

from __future__ import annotations

import tarfile
from typing import Iterator

from ..errors import BuildError
from ..limits import MAX_SYMLINK_SIZE

STREAM_BUFFER = 1 << 20
BLOCKSIZE = tarfile.BLOCKSIZE


# Bounds on lengths a tar header declares, checked before anything is read: Python's tarfile reads a
# whole extended header into memory before parsing it, so a 1.5 GiB PAX header in a small
# (compressed) layer would otherwise take gigabytes.
MAX_PAX_HEADER_SIZE = 1 << 20         # one PAX extended header (x, g, Solaris X); xattrs fit easily
# All global (g) headers of an archive together: tarfile applies them to every member, so their
# size multiplies the work per member (git archive writes one 52-byte comment).
MAX_GLOBAL_PAX_SIZE = 4096
MAX_LONG_NAME_SIZE = MAX_SYMLINK_SIZE + 1   # a GNU long name or link (L, K) with its NUL
MAX_EXTENDED_CHAIN = 8                # extended headers before one member (tarfile recurses on each)
MAX_SPARSE_ENTRIES = 1 << 16          # data runs in one sparse member's map
# A sparse member's holes (realsize minus the data stored) are read as zeros and chunked like data,
# so the bytes they add are bounded: a 10 KiB member declaring 1 TiB (or 2^63) is refused.
MAX_SPARSE_HOLE_BYTES = 1 << 32
# Zero blocks between concatenated archives are skipped (tar -i); in a stream of unknown length a
# longer run of them than this is the end of the archive, so an endless zero stream ends.
MAX_ZERO_RUN = 16 << 20


def normalize_path(raw: bytes) -> list[bytes]:
    """The components of a tar path inside the layer root: ``.`` and empty parts dropped, ``..``
    resolved lexically and never above the root (as containerd's applier cleans ``/`` + name)."""
    parts: list[bytes] = []
    for part in raw.split(b"/"):
        if part in (b"", b"."):
            continue
        if part == b"..":
            if parts:
                parts.pop()
            continue
        parts.append(part)
    return parts


def check_sparse_map(info: tarfile.TarInfo) -> list[tuple[int, int]]:
    """The data runs ``(offset, length)`` of a GNU sparse member, refused unless they are at most
    :data:`MAX_SPARSE_ENTRIES`, in order, without overlap, inside ``realsize`` (``info.size``), and
    leave at most :data:`MAX_SPARSE_HOLE_BYTES` of holes. Empty runs (unused slots of an old GNU
    header, the ``(realsize, 0)`` run GNU tar ends a map with) are dropped."""
    where = f"tar entry {info.name!r} (header at offset {info.offset:#x})"
    runs = [(offset, length) for offset, length in info.sparse or [] if length]
    if len(runs) > MAX_SPARSE_ENTRIES:
        raise BuildError(f"{where}: sparse map of {len(runs)} entries, over the limit of {MAX_SPARSE_ENTRIES}")
    end, stored = 0, 0
    for offset, length in runs:
        if offset < end or length < 0:
            raise BuildError(f"{where}: sparse map entries overlap or are out of order at offset {offset}")
        end = offset + length
        stored += length
    if end > info.size:
        raise BuildError(f"{where}: sparse data ends at {end}, past the real size {info.size}")
    if info.size - stored > MAX_SPARSE_HOLE_BYTES:
        raise BuildError(f"{where}: sparse real size {info.size} is {info.size - stored} bytes of holes, "
                         f"over the limit of {MAX_SPARSE_HOLE_BYTES}")
    return runs


_EXTENDED_LIMITS = {tarfile.XHDTYPE: ("PAX header", MAX_PAX_HEADER_SIZE),
                    tarfile.XGLTYPE: ("PAX global header", MAX_PAX_HEADER_SIZE),
                    tarfile.SOLARIS_XHDTYPE: ("PAX header", MAX_PAX_HEADER_SIZE),
                    tarfile.GNUTYPE_LONGNAME: ("GNU long name", MAX_LONG_NAME_SIZE),
                    tarfile.GNUTYPE_LONGLINK: ("GNU long link", MAX_LONG_NAME_SIZE)}
# what tarfile's header parsing raises on bytes it did not expect (its own errors are TarError)
_PARSE_ERRORS = (ValueError, IndexError, OverflowError, UnicodeError)


class BoundedTarInfo(tarfile.TarInfo):
    """``tarfile.TarInfo`` with every length a header declares bounded before it is read.

    Pass it as ``tarinfo=`` to ``tarfile.open``. Extended headers (PAX ``x``/``g``, GNU ``L``/``K``)
    larger than their limit, chains of more than :data:`MAX_EXTENDED_CHAIN` of them, GNU sparse maps
    of more than :data:`MAX_SPARSE_ENTRIES` runs, and headers tarfile cannot parse are a BuildError
    naming the header's offset, raised before the declared length is read.
    """

    def _proc_member(self, tar):
        offset = self.offset
        limit = _EXTENDED_LIMITS.get(self.type)
        if limit is None:
            return self._parsed(super()._proc_member, tar, offset)
        what, most = limit
        if self.size > most:
            raise BuildError(f"tar header at offset {offset:#x}: {what} of {self.size} bytes, over the limit of "
                             f"{most} bytes")
        if self.type == tarfile.XGLTYPE:
            held = sum(len(k) + len(v) for k, v in tar.pax_headers.items())
            if held + self.size > MAX_GLOBAL_PAX_SIZE:
                raise BuildError(f"tar header at offset {offset:#x}: PAX global headers over the limit of "
                                 f"{MAX_GLOBAL_PAX_SIZE} bytes together")
        depth = getattr(tar, "_rafs_extended_chain", 0)
        if depth >= MAX_EXTENDED_CHAIN:
            raise BuildError(f"tar header at offset {offset:#x}: more than {MAX_EXTENDED_CHAIN} extended headers "
                             "in a row")
        tar._rafs_extended_chain = depth + 1
        try:
            return self._parsed(super()._proc_member, tar, offset)
        finally:
            tar._rafs_extended_chain = depth

    @staticmethod
    def _parsed(process, tar, offset: int):
        try:
            return process(tar)
        except _PARSE_ERRORS as exc:
            raise BuildError(f"invalid tar header at offset {offset:#x}: {exc}") from None

    def _proc_sparse(self, tar):
        """Old GNU sparse (type ``S``): the map continues in extension blocks while ``isextended``."""
        runs, extended, realsize = self._sparse_structs
        del self._sparse_structs
        runs = list(runs)
        while extended:
            block = tar.fileobj.read(BLOCKSIZE)
            if len(block) != BLOCKSIZE:
                raise BuildError(f"tar header at offset {self.offset:#x}: sparse map truncated")
            for pos in range(0, 21 * 24, 24):
                try:
                    offset, length = tarfile.nti(block[pos:pos + 12]), tarfile.nti(block[pos + 12:pos + 24])
                except tarfile.InvalidHeaderError:
                    break
                if offset and length:
                    runs.append((offset, length))
            if len(runs) > MAX_SPARSE_ENTRIES:
                raise BuildError(f"tar header at offset {self.offset:#x}: sparse map of more than "
                                 f"{MAX_SPARSE_ENTRIES} entries")
            extended = bool(block[504])
        self.sparse = runs
        self.offset_data = tar.fileobj.tell()
        tar.offset = self.offset_data + self._block(self.size)
        self.size = realsize
        return self

    def _proc_gnusparse_10(self, next, pax_headers, tar):  # noqa: A002 - tarfile.TarInfo's own signature
        """PAX sparse 1.0: the map is decimal lines (a count, then offset and length pairs) at the start
        of the member's data, padded to a block."""
        numbers: list[int] = []
        count, buffer = None, b""
        while count is None or len(numbers) < 2 * count:
            while b"\n" not in buffer:
                if len(buffer) > 32:                       # no decimal number of a sane size is that long
                    raise BuildError(f"tar header at offset {self.offset:#x}: sparse map line too long")
                block = tar.fileobj.read(BLOCKSIZE)
                if len(block) != BLOCKSIZE:
                    raise BuildError(f"tar header at offset {self.offset:#x}: sparse map truncated")
                buffer += block
            line, buffer = buffer.split(b"\n", 1)
            if not line.isdigit():
                raise BuildError(f"tar header at offset {self.offset:#x}: sparse map number {line[:32]!r}")
            if count is None:
                count = int(line)
                if count > MAX_SPARSE_ENTRIES:
                    raise BuildError(f"tar header at offset {self.offset:#x}: sparse map of {count} entries, "
                                     f"over the limit of {MAX_SPARSE_ENTRIES}")
            else:
                numbers.append(int(line))
        next.offset_data = tar.fileobj.tell()
        next.sparse = list(zip(numbers[::2], numbers[1::2]))


def open_tar(fileobj, mode: str = "r:", **kwargs) -> tarfile.TarFile:
    """``tarfile.open`` with :class:`BoundedTarInfo`: what every tar rafs reads is opened with."""
    return tarfile.open(fileobj=fileobj, mode=mode, tarinfo=BoundedTarInfo, **kwargs)


def members(stream, random_access: bool) -> Iterator[tuple[tarfile.TarFile, tarfile.TarInfo]]:
    """(tar, member) for every header, strictly: a damaged header is an error unless it follows the
    zero blocks that end an archive; zero blocks between archives are skipped (tar -i, as the
    reference sets ``ignore_zeros``)."""
    mode = "r:" if random_access else "r|"
    try:
        # a large buffer: tarfile's stream mode otherwise reads 10 KiB at a time
        tar = open_tar(stream, mode, encoding="utf-8", errors="surrogateescape", bufsize=STREAM_BUFFER)
    except tarfile.ReadError as exc:
        if "empty file" in str(exc):
            return
        raise
    with tar:
        first = tar.firstmember
        zero_run = 0
        if first is not None:
            yield tar, first
        else:
            # tarfile stopped at a zero block at offset 0 and left its offset there; a stream
            # cannot seek back to it
            tar.offset += BLOCKSIZE
            zero_run = BLOCKSIZE
        zeros_seen = first is None
        while True:
            tar.fileobj.seek(tar.offset)
            try:
                info = tar.tarinfo.fromtarfile(tar)
            except tarfile.EOFHeaderError:
                tar.offset += BLOCKSIZE
                zeros_seen = True
                zero_run += BLOCKSIZE
                if zero_run > MAX_ZERO_RUN and not random_access:
                    return
                continue
            except tarfile.EmptyHeaderError:
                return
            except (tarfile.TruncatedHeaderError, tarfile.InvalidHeaderError) as exc:
                if zeros_seen:
                    return                    # trailing bytes after the end of the archive
                raise BuildError(f"invalid tar header at offset {tar.offset:#x}: {exc}") from None
            except tarfile.SubsequentHeaderError as exc:
                raise BuildError(f"invalid tar extended header at offset {tar.offset:#x}: {exc}") from None
            zeros_seen = False
            zero_run = 0
            yield tar, info



