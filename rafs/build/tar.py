"""Tar layers as build trees: what ``nydus-image create -t tar-rafs | targz-rafs`` reads.

A tar (or tar.gz, detected by the gzip magic ``1f 8b 08`` as builder/src/tarball.rs does; zstd too,
which OCI layers may use) becomes a :class:`~rafs.model.Node` tree. Every entry type is kept:
directories, regular and sparse files, hardlinks, symlinks, character and block devices, fifos; PAX
and GNU long names and links; xattrs from PAX ``SCHILY.xattr.*`` (and libarchive's
``LIBARCHIVE.xattr.*``). Entries may come in any order: missing parent directories are created
(mode 0755, owner 0, mtime 0, like the reference's ``TarBuilder::create_directory``) and get their
metadata when their own entry arrives; a later entry for the same path replaces the earlier one, as
extraction would. Whiteout entries (``.wh.*``, 0/0 character devices) are kept as ordinary entries so
that a later merge can apply them (builder/src/core/overlay.rs, spec §C). The eStargz marker files
``/stargz.index.json``, ``/.prefetch.landmark`` and ``/.no.prefetch.landmark`` are skipped, as the
reference skips them (builder/src/lib.rs ``is_stargz_special_files``).

File data is never held in memory. For a plain tar in a seekable file the nodes' ``data`` callables
read straight from the tar at the member's offset (thread safe, so blobs can be written in
parallel). For a compressed or non-seekable source the tar is read in one pass: either each file's
bytes go to an ``on_file(node, stream)`` callback while the stream is positioned at them (what the
reference does, dumping data as it parses), or they are spooled to one temporary file that the
nodes then read from.

Attributes follow the reference's tar builder: uid/gid as stored, mtime in whole seconds (the
reference reads the header's integer field; ``mtime_nsec`` is 0), devices as ``makedev(major,
minor)``. Hardlinks to regular files share one :class:`~rafs.model.Inode` (all metadata from the
target, as extracting a hardlink does); a hardlink to a symlink or special file becomes an
independent copy of its target, as the reference now does; a hardlink to a directory or to a path
not seen before is an error.
"""

from __future__ import annotations

import base64
import bisect
import functools
import gzip
import io
import logging
import os
import stat as _stat
import tarfile
import tempfile
import urllib.parse
import zlib
from dataclasses import dataclass, field
from typing import BinaryIO, Callable, Iterator

from ..errors import BuildError, InvalidArgumentError
from ..io.source import FileObjectRangeReader
from ..model import MAX_NAME_SIZE, MAX_XATTR_VALUE_SIZE, XATTR_PREFIXES, Inode, Node

log = logging.getLogger(__name__)

GZIP_MAGIC = b"\x1f\x8b\x08"          # what builder/src/tarball.rs `detect_compression_algo` checks
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
STARGZ_SPECIAL_FILES = frozenset((b"/stargz.index.json", b"/.prefetch.landmark", b"/.no.prefetch.landmark"))
MAX_SYMLINK_SIZE = 0xFFFF             # the reference refuses longer targets (u16 i_symlink_size)
COPY_BUFFER = 1 << 20
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

_PAX_XATTR = "SCHILY.xattr."
_LIBARCHIVE_XATTR = "LIBARCHIVE.xattr."
_TYPE_BITS = {tarfile.DIRTYPE: _stat.S_IFDIR, tarfile.SYMTYPE: _stat.S_IFLNK, tarfile.CHRTYPE: _stat.S_IFCHR,
              tarfile.BLKTYPE: _stat.S_IFBLK, tarfile.FIFOTYPE: _stat.S_IFIFO}
_IGNORED_TYPES = (b"V",)              # GNU volume label: no filesystem object

OnFile = Callable[[Node, BinaryIO], None]


@dataclass(eq=False)
class TarLayer:
    """The build tree of one tar layer; a context manager that releases the tar and any spool.

    ``root`` is the tree; ``files`` the regular-file nodes that carry data, in tar order (one per
    hardlink group), which is the order the reference writes their chunks in; ``compression`` what the
    source was (``none``, ``gzip``, ``zstd``); ``skipped_xattrs`` xattr names RAFS cannot store
    (without one of the prefixes of ``rafs.model.XATTR_PREFIXES``) that were dropped.
    """

    root: Node
    files: list[Node] = field(default_factory=list)
    compression: str = "none"
    entries: int = 0
    skipped_xattrs: list[tuple[bytes, bytes]] = field(default_factory=list)
    _resources: list = field(default_factory=list, repr=False)

    def close(self) -> None:
        while self._resources:
            resource = self._resources.pop()
            try:
                resource.close()
            except OSError:                       # pragma: no cover - best effort clean-up
                pass

    def __enter__(self) -> "TarLayer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@dataclass(frozen=True)
class TarSource:
    """A tar ``stream`` (or path) with where to spool it if it has to be spooled: what a caller hands
    the ``tar-rafs`` loader when the system's temporary directory is no place for a large layer."""

    stream: object
    spool_dir: str | None = None


def detect_compression(head: bytes) -> str:
    """``gzip``, ``zstd`` or ``none`` from the first bytes of a layer."""
    if head.startswith(GZIP_MAGIC):
        return "gzip"
    if head.startswith(ZSTD_MAGIC):
        return "zstd"
    return "none"


def read_tar(source, *, on_file: OnFile | None = None, spool_dir=None) -> TarLayer:
    """Read a tar layer (path, or binary file object, possibly non-seekable) into a :class:`TarLayer`.

    With ``on_file`` every regular file's bytes are handed over during the single pass over the tar
    (``on_file(node, stream)``, the stream positioned at the data, valid only during the call) and
    the nodes get no ``data``; without it, nodes read their bytes later through ``node.data()``.
    ``spool_dir`` is where a compressed or non-seekable tar's file data is spooled (the system temp
    directory by default).
    """
    if isinstance(source, TarSource):
        spool_dir = spool_dir if spool_dir is not None else source.spool_dir
        source = source.stream
    layer = TarLayer(root=_new_dir(b"/"))
    raw, owned = _open_source(source)
    if owned:
        layer._resources.append(raw)
    try:
        head, raw = _peek(raw, 4)
        layer.compression = detect_compression(head)
        random_access = layer.compression == "none" and _is_seekable(raw) and on_file is None
        if random_access:
            reader = _range_reader(raw)
            stream, size_limit = raw, reader.size
        else:
            stream, size_limit = _decompressed(raw, layer.compression), None
            reader = None
        _TreeBuilder(layer, on_file, reader, spool_dir, size_limit).run(stream, random_access)
    except BaseException:
        layer.close()
        raise
    return layer


def load_tar(source, *, whiteout_spec: str = "oci", layer: int = 0) -> Node:
    """The ``tar-rafs``/``targz-rafs`` source loader of :data:`rafs.build.builder.SOURCE_TYPES`.

    Whiteout entries are kept whatever ``whiteout_spec`` says: a tar layer's whiteouts are applied
    when it is merged onto the layers below (builder/src/tarball.rs never filters them). The tar (and
    any spool) stays open as long as the nodes' ``data`` callables are referenced.
    """
    root = read_tar(source).root
    stack = [root]
    while stack:
        node = stack.pop()
        node.layer = layer
        stack.extend(node.children)
    return root


# -- opening the source ------------------------------------------------------------------------------

def _open_source(source) -> tuple[BinaryIO, bool]:
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


def _is_seekable(f) -> bool:
    try:
        return bool(f.seekable())
    except (AttributeError, OSError, ValueError):
        return False


def _peek(f, size: int) -> tuple[bytes, BinaryIO]:
    """The first ``size`` bytes and a stream that still starts at them."""
    if _is_seekable(f):
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


def _range_reader(raw):
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


def _decompressed(raw, compression: str) -> BinaryIO:
    if compression == "gzip":
        return gzip.GzipFile(fileobj=raw, mode="rb")        # concatenated members included
    if compression == "zstd":
        import zstandard
        return zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True, closefd=False)
    return raw


_DECOMPRESS_ERRORS = (EOFError, zlib.error, gzip.BadGzipFile)


def _decompress_error_types():
    try:
        import zstandard
        return _DECOMPRESS_ERRORS + (zstandard.ZstdError,)
    except ImportError:                            # pragma: no cover - zstandard is a dependency
        return _DECOMPRESS_ERRORS


# -- file data -----------------------------------------------------------------------------------------

class RangeStream(io.RawIOBase):
    """A seekable stream of ``size`` bytes at ``offset`` of a RangeReader, read on demand (one per
    ``node.data()``); with ``close_reader`` closing the stream closes the reader too."""

    def __init__(self, reader, offset: int, size: int, *, close_reader: bool = False):
        self._reader, self._offset, self._size, self._pos = reader, offset, size, 0
        self._close_reader = close_reader

    def close(self) -> None:
        if not self.closed and self._close_reader:
            self._reader.close()
        super().close()

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def tell(self) -> int:
        return self._pos

    def readinto(self, buffer) -> int:
        count = min(len(buffer), self._size - self._pos)
        if count <= 0:
            return 0
        buffer[:count] = self._reader.read_range(self._offset + self._pos, count)
        self._pos += count
        return count


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


def _open_member(reader, offset: int, size: int, sparse) -> BinaryIO:
    if sparse:
        return _SparseStream(reader, offset, size, sparse)
    return RangeStream(reader, offset, size)


class _Spool:
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


class _MemberStream(io.RawIOBase):
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


# -- the tree --------------------------------------------------------------------------------------------

def _new_dir(name: bytes) -> Node:
    return Node(name=name, inode=Inode(ino=0, mode=_stat.S_IFDIR | 0o755, nlink=2))


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


class _TreeBuilder:
    def __init__(self, layer: TarLayer, on_file: OnFile | None, reader, spool_dir, size_limit: int | None):
        self.layer = layer
        self.on_file = on_file
        self.reader = reader
        self.spool_dir = spool_dir
        self.spool: _Spool | None = None
        self.size_limit = size_limit
        self.children: dict[int, dict[bytes, Node]] = {id(layer.root): {}}
        self.position: dict[int, int] = {}       # id(inode) -> tar position of its data
        self.data_for: dict[int, Callable] = {}   # id(inode) -> data opener (spooled files)
        self.spooled: list[tuple[Node, int, int]] = []
        self.hardlink_groups = 0

    # one pass over the members
    def run(self, stream, random_access: bool) -> None:
        errors = _decompress_error_types()
        try:
            for tar, info in _members(stream, random_access):
                self.layer.entries += 1
                self.add(tar, info)
        except tarfile.TarError as exc:
            raise BuildError(f"invalid tar: {exc}") from None
        except errors as exc:
            raise BuildError(f"invalid {self.layer.compression} stream: {exc}") from None
        if self.spool is not None:
            reader = self.spool.finish()
            for node, offset, size in self.spooled:
                self.data_for[id(node.inode)] = functools.partial(_open_member, reader, offset, size, None)
        self.finish()

    def add(self, tar: tarfile.TarFile, info: tarfile.TarInfo) -> None:
        raw_name = info.name.encode("utf-8", "surrogateescape")
        parts = normalize_path(raw_name)
        if b"/" + b"/".join(parts) in STARGZ_SPECIAL_FILES:
            return
        if info.type in _IGNORED_TYPES:
            return
        for part in parts:
            if len(part) > MAX_NAME_SIZE:
                raise BuildError(f"tar entry {raw_name!r}: name component longer than {MAX_NAME_SIZE} bytes")
        if info.islnk():
            node = self.hardlink(info, parts, raw_name)
        else:
            node = self.make_node(info, parts[-1] if parts else b"/", raw_name)
            if info.isreg():
                self.attach_data(tar, info, node)
        self.insert(parts, node, raw_name)

    def make_node(self, info: tarfile.TarInfo, name: bytes, raw_name: bytes) -> Node:
        if info.isreg():
            kind = _stat.S_IFREG
        elif info.type in _TYPE_BITS:
            kind = _TYPE_BITS[info.type]
        else:
            raise BuildError(f"tar entry {raw_name!r}: unsupported entry type {info.type!r}")
        inode = Inode(ino=0, mode=kind | (info.mode & 0o7777), uid=info.uid, gid=info.gid,
                      mtime=max(0, int(info.mtime)))
        if kind == _stat.S_IFREG:
            inode.size = info.size
        elif kind == _stat.S_IFLNK:
            target = info.linkname.encode("utf-8", "surrogateescape")
            if len(target) > MAX_SYMLINK_SIZE:
                raise BuildError(f"tar entry {raw_name!r}: symlink target longer than {MAX_SYMLINK_SIZE} bytes")
            inode.symlink, inode.size = target, len(target)
        elif kind in (_stat.S_IFCHR, _stat.S_IFBLK):
            inode.rdev = os.makedev(info.devmajor, info.devminor)
        elif kind == _stat.S_IFDIR:
            inode.nlink = 2
        inode.xattrs = self.xattrs(info, raw_name)
        return Node(name=name, inode=inode)

    def xattrs(self, info: tarfile.TarInfo, raw_name: bytes) -> dict[bytes, bytes]:
        found: dict[bytes, bytes] = {}
        headers = info.pax_headers
        if not headers:
            return found
        for key, value in headers.items():
            if key.startswith(_PAX_XATTR):
                found[key[len(_PAX_XATTR):].encode("utf-8", "surrogateescape")] = \
                    value.encode("utf-8", "surrogateescape")
        for key, value in headers.items():
            if key.startswith(_LIBARCHIVE_XATTR):
                name = urllib.parse.unquote_to_bytes(
                    key[len(_LIBARCHIVE_XATTR):].encode("utf-8", "surrogateescape"))
                if name not in found:
                    try:
                        found[name] = base64.b64decode(value + "=" * (-len(value) % 4))
                    except ValueError:
                        raise BuildError(f"tar entry {raw_name!r}: bad base64 in {key}") from None
        kept = {}
        for name, value in found.items():
            if not name.startswith(XATTR_PREFIXES):
                self.layer.skipped_xattrs.append((raw_name, name))
                log.warning("tar entry %r: dropping xattr %r, RAFS stores only names starting with %s",
                            raw_name, name, ", ".join(p.decode() for p in XATTR_PREFIXES))
                continue
            if len(name) > MAX_NAME_SIZE or len(value) > MAX_XATTR_VALUE_SIZE:
                raise BuildError(f"tar entry {raw_name!r}: xattr {name!r} too large")
            kept[name] = value
        return kept

    def attach_data(self, tar: tarfile.TarFile, info: tarfile.TarInfo, node: Node) -> None:
        self.position[id(node.inode)] = self.layer.entries
        sparse = check_sparse_map(info) if info.issparse() else None
        if self.reader is not None:
            stored = sum(length for _, length in sparse) if sparse else info.size
            if self.size_limit is not None and info.offset_data + stored > self.size_limit:
                raise BuildError(f"tar ends inside member {info.name!r}")
            node.data = functools.partial(_open_member, self.reader, info.offset_data, info.size, sparse)
            return
        member = tar.extractfile(info)
        if self.on_file is not None:
            stream = _MemberStream(member, info.size)
            self.on_file(node, stream)
            # whatever the callback left unread is skipped, so the tar stays in step
            while stream.read(COPY_BUFFER):
                pass
            return
        if self.spool is None:
            self.spool = _Spool(self.spool_dir)
            self.layer._resources.append(self.spool)
        offset = self.spool.append(member, info.size)
        self.spooled.append((node, offset, info.size))

    def hardlink(self, info: tarfile.TarInfo, parts: list[bytes], raw_name: bytes) -> Node:
        link = info.linkname.encode("utf-8", "surrogateescape")
        target = self.lookup(normalize_path(link))
        if target is None:
            raise BuildError(f"tar entry {raw_name!r}: hardlink to {link!r}, which is not in this layer")
        if target.inode.is_dir:
            raise BuildError(f"tar entry {raw_name!r}: hardlink to directory {link!r}")
        name = parts[-1] if parts else b"/"
        if target.inode.is_reg:
            if target.hardlink_key is None:
                self.hardlink_groups += 1
                target.hardlink_key = self.hardlink_groups
            # one inode (and one chunk list) for every name of the file
            return Node(name=name, inode=target.inode, data=target.data, chunks=target.chunks,
                        hardlink_key=target.hardlink_key)
        # RAFS shares inodes only between regular files: a copy of the target, as the reference makes
        inode = Inode(**{slot: getattr(target.inode, slot) for slot in Inode.__slots__})
        inode.xattrs = dict(target.inode.xattrs)
        inode.nlink = 1
        return Node(name=name, inode=inode)

    def lookup(self, parts: list[bytes]) -> Node | None:
        node = self.layer.root
        for part in parts:
            children = self.children.get(id(node))
            if children is None:
                return None
            node = children.get(part)
            if node is None:
                return None
        return node

    def insert(self, parts: list[bytes], node: Node, raw_name: bytes) -> None:
        if not parts:
            if not node.inode.is_dir:
                raise BuildError(f"tar entry {raw_name!r}: the root must be a directory")
            self.layer.root.inode = node.inode
            return
        parent = self.layer.root
        for depth, part in enumerate(parts[:-1]):
            children = self.children[id(parent)]
            child = children.get(part)
            if child is None:
                child = _new_dir(part)
                children[part] = child
                self.children[id(child)] = {}
            elif id(child) not in self.children:
                path = b"/".join(parts[:depth + 1])
                raise BuildError(f"tar entry {raw_name!r}: {path!r} is not a directory")
            parent = child
        children = self.children[id(parent)]
        old = children.get(parts[-1])
        if old is not None and old.inode.is_dir and node.inode.is_dir:
            old.inode = node.inode                     # new metadata, children kept
            return
        if old is not None:
            self.forget(old)
        children[parts[-1]] = node
        if node.inode.is_dir:
            self.children[id(node)] = {}

    def forget(self, node: Node) -> None:
        """Drop a replaced subtree from the bookkeeping (its data is never written)."""
        stack = [node]
        while stack:
            children = self.children.pop(id(stack.pop()), None)
            if children:
                stack.extend(children.values())

    def finish(self) -> None:
        """Sort children by name, count links, list the data-carrying files in tar order."""
        links: dict[int, list[Node]] = {}
        stack = [self.layer.root]
        while stack:
            node = stack.pop()
            children = self.children.get(id(node))
            if children is None:
                if node.inode.is_reg:
                    links.setdefault(id(node.inode), []).append(node)
                continue
            node.children = [children[name] for name in sorted(children)]
            node.inode.nlink = 2 + sum(1 for child in node.children if child.inode.is_dir)
            stack.extend(reversed(node.children))     # pre-order: the first link in tree order leads
        files = []
        for nodes in links.values():
            first = nodes[0]
            first.inode.nlink = len(nodes)
            data = self.data_for.get(id(first.inode), first.data)
            for node in nodes:
                node.data = data
                node.chunks = first.chunks
                if len(nodes) == 1:
                    node.hardlink_key = None
            files.append(first)
        files.sort(key=lambda n: self.position.get(id(n.inode), 0))
        self.layer.files = files


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

    def _proc_gnusparse_10(self, next, pax_headers, tar):  # noqa: A002 - tarfile's own signature
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


def _members(stream, random_access: bool) -> Iterator[tuple[tarfile.TarFile, tarfile.TarInfo]]:
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



__all__ = ["TarLayer", "TarSource", "RangeStream", "BoundedTarInfo", "read_tar", "load_tar", "open_tar",
           "check_sparse_map", "detect_compression", "normalize_path", "GZIP_MAGIC", "ZSTD_MAGIC",
           "STARGZ_SPECIAL_FILES"]
