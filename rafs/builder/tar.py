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
import functools
import logging
import os
import stat as _stat
import tarfile
import urllib.parse
from dataclasses import dataclass, field
from typing import BinaryIO, Callable

from ..errors import BuildError
from ..limits import MAX_NAME_SIZE, MAX_SYMLINK_SIZE, MAX_XATTR_NAME_SIZE, MAX_XATTR_VALUE_SIZE
from ..model import XATTR_PREFIXES, Inode, Node
from .stream import (COPY_BUFFER, MemberStream, Spool, decompress_error_types, decompressed, detect_compression,
                     is_seekable, open_member, open_source, peek, range_reader)
from .tarstream import check_sparse_map, members, normalize_path

log = logging.getLogger(__name__)

STARGZ_SPECIAL_FILES = frozenset((b"/stargz.index.json", b"/.prefetch.landmark", b"/.no.prefetch.landmark"))
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
    raw, owned = open_source(source)
    if owned:
        layer._resources.append(raw)
    try:
        head, raw = peek(raw, 4)
        layer.compression = detect_compression(head)
        random_access = layer.compression == "none" and is_seekable(raw) and on_file is None
        if random_access:
            reader = range_reader(raw)
            stream, size_limit = raw, reader.size
        else:
            stream, size_limit = decompressed(raw, layer.compression), None
            reader = None
        _TreeBuilder(layer, on_file, reader, spool_dir, size_limit).run(stream, random_access)
    except BaseException:
        layer.close()
        raise
    return layer


def load_tar(source, *, whiteout_spec: str = "oci", layer: int = 0) -> Node:
    """The ``tar-rafs``/``targz-rafs`` source loader of :data:`rafs.builder.builder.SOURCE_TYPES`.

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



# -- the tree --------------------------------------------------------------------------------------------

def _new_dir(name: bytes) -> Node:
    return Node(name=name, inode=Inode(ino=0, mode=_stat.S_IFDIR | 0o755, nlink=2))



class _TreeBuilder:
    def __init__(self, layer: TarLayer, on_file: OnFile | None, reader, spool_dir, size_limit: int | None):
        self.layer = layer
        self.on_file = on_file
        self.reader = reader
        self.spool_dir = spool_dir
        self.spool: Spool | None = None
        self.size_limit = size_limit
        self.children: dict[int, dict[bytes, Node]] = {id(layer.root): {}}
        self.position: dict[int, int] = {}       # id(inode) -> tar position of its data
        self.data_for: dict[int, Callable] = {}   # id(inode) -> data opener (spooled files)
        self.spooled: list[tuple[Node, int, int]] = []
        self.hardlink_groups = 0

    # one pass over the members
    def run(self, stream, random_access: bool) -> None:
        errors = decompress_error_types()
        try:
            for tar, info in members(stream, random_access):
                self.layer.entries += 1
                self.add(tar, info)
        except tarfile.TarError as exc:
            raise BuildError(f"invalid tar: {exc}") from None
        except errors as exc:
            raise BuildError(f"invalid {self.layer.compression} stream: {exc}") from None
        if self.spool is not None:
            reader = self.spool.finish()
            for node, offset, size in self.spooled:
                self.data_for[id(node.inode)] = functools.partial(open_member, reader, offset, size, None)
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
            if len(name) > MAX_XATTR_NAME_SIZE or len(value) > MAX_XATTR_VALUE_SIZE:
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
            node.data = functools.partial(open_member, self.reader, info.offset_data, info.size, sparse)
            return
        member = tar.extractfile(info)
        if self.on_file is not None:
            stream = MemberStream(member, info.size)
            self.on_file(node, stream)
            # whatever the callback left unread is skipped, so the tar stays in step
            while stream.read(COPY_BUFFER):
                pass
            return
        if self.spool is None:
            self.spool = Spool(self.spool_dir)
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


__all__ = ["TarLayer", "TarSource", "read_tar", "load_tar", "STARGZ_SPECIAL_FILES"]
