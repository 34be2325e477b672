"""Write a RAFS v5 bootstrap from a numbered build tree (builder/src/core/v5.rs ``v5_dump``).

Layout: ``superblock | inode table | prefetch table | blob table | extended blob table | records``,
every section 8-byte aligned. Records are written in DFS pre-order of the tree (the current builder)
or in index order (``record_order="index"``, what nydus-image 2.2 and older wrote); either way the
inode table points at them, so readers see the same filesystem. The tree must already be numbered
(``inode.ino``/``nlink`` set, see :func:`rafs.builder.tree.number_tree`) and every regular file's
``chunks`` filled by the blob writer.

Per-record rules (builder/src/core/v5.rs, builder/src/core/node.rs): a directory's ``i_size`` is the
pseudo size sum(name size + 8) over its children rounded up to 4 KiB (4 KiB when empty),
``i_blocks = ceil((i_size + aligned xattr bytes) / 512)``, ``i_digest`` is the digest of the chunk
digests (files), of the target (symlinks), of the children's digests (directories) or of nothing
(other types).
"""

from __future__ import annotations

import stat
import struct

from ..blob import codecs
from ..errors import BuildError, InvalidArgumentError
from ..limits import MAX_BOOTSTRAP_SIZE
from ..model import Blob, InodeFlags, Node, SuperFlags, TreeIndex, index_order
from . import layout

from .records import BLOB_HEADER as _BLOB_HEADER, CHUNK, EXT_BLOB, INODE, SUPERBLOCK
_INODE_PACK = INODE.struct.pack
_CHUNK_PACK = CHUNK.struct.pack
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_U64_MASK = (1 << 64) - 1
RECORD_ORDERS = ("dfs", "index")
_RESERVED = bytes(8)
_S_IFMT, _S_IFDIR, _S_IFREG, _S_IFLNK = 0o170000, stat.S_IFDIR, stat.S_IFREG, stat.S_IFLNK
_DEVICE_OR_FIFO = (stat.S_IFCHR, stat.S_IFBLK, stat.S_IFIFO)
# i_rdev of a tar build's inodes that are neither devices nor fifos (u32::MAX in builder/src/tarball.rs)
TAR_NO_RDEV = 0xFFFF_FFFF
_HARDLINK, _SYMLINK, _XATTR = int(InodeFlags.HARDLINK), int(InodeFlags.SYMLINK), int(InodeFlags.XATTR)


def _align8(n: int) -> int:
    return (n + 7) & ~7


def _pad8(data: bytes) -> bytes:
    pad = -len(data) & 7
    return data + _ZEROS[:pad] if pad else data


_ZEROS = bytes(8)


def xattr_table_size(xattrs: dict[bytes, bytes]) -> int:
    """Sum over the pairs of (4 + key + NUL + value): the table's ``u64`` size field."""
    return sum(4 + len(k) + 1 + len(v) for k, v in xattrs.items())


def dir_pseudo_size(node: Node) -> int:
    children = node.children
    size = sum([len(child.name) for child in children]) + layout.RAFSV5_DIR_ENTRY_OVERHEAD * len(children)
    if size == 0:
        return layout.RAFSV5_DIR_SIZE_ALIGNMENT
    align = layout.RAFSV5_DIR_SIZE_ALIGNMENT
    return (size + align - 1) // align * align


def write_bootstrap(root: Node, blobs: list[Blob], *, chunk_size: int, flags: SuperFlags,
                    prefetch: list[Node] | None = None, record_order: str = "dfs",
                    ext_blob_features: bool = True, order: TreeIndex | None = None,
                    tar_layer: int | None = None, count_root: bool = True) -> bytes:
    """The bootstrap bytes for ``root`` and its ``blobs``.

    ``flags`` carries compressor, digester and EXPLICIT_UID_GID; HAS_XATTR is added when any inode
    has xattrs. ``prefetch`` lists the nodes whose inode numbers go into the prefetch table
    (``--prefetch-policy fs``), kept in pattern order as the reference has since 2022 (commit 4fd3a6a1,
    "optimize prefetch table for workload", dropped the sort so that a traced workload's order survives).
    With ``ext_blob_features=False`` the extended blob table's ``features`` word is written as 0 (it
    was reserved before nydus-image 2.3). ``s_inodes_count`` is the number of distinct inodes (a hardlink
    group counts once), root included, as the current builder stores it (``v5_dump`` in
    builder/src/core/v5.rs writes ``inode_map.len()``, and ``Bootstrap::build`` in
    builder/src/core/bootstrap.rs puts the root into ``inode_map``). With ``count_root=False`` the root
    is left out, as nydus-image 2.2 did: its ``build()`` never put the root into ``inode_map`` (nydus PR
    #1275 "record correct inode number for v5" fixed it). ``order`` reuses an index order already
    computed for ``root``.
    Nodes whose ``layer`` is ``tar_layer`` came from a tarball: the reference's tar builder stores
    ``i_rdev = u32::MAX`` for all of them but devices and fifos (builder/src/tarball.rs
    ``parse_entry`` and ``TarBuilder::create_directory``), where directory builds store st_rdev.
    """
    if record_order not in RECORD_ORDERS:
        raise InvalidArgumentError(f"unknown record order {record_order!r} (expected one of {RECORD_ORDERS})")
    order = order or index_order(root)
    nodes = order.nodes
    if not nodes or nodes[0] is not root or not root.inode.is_dir:
        raise InvalidArgumentError("the root of a v5 bootstrap must be a directory")
    digester = SuperFlags(flags).digester
    digests = _inode_digests(order, digester)

    flags = int(flags)
    if any(n.inode.xattrs for n in nodes):
        flags |= SuperFlags.HAS_XATTR

    entries = len(nodes)
    inode_table_size = _align8(4 * entries)
    prefetch_inos = [n.inode.ino for n in prefetch] if prefetch else []
    prefetch_size = _align8(4 * len(prefetch_inos))
    blob_table = _blob_table(blobs)
    ext_table = b"".join(EXT_BLOB.pack(b.chunk_count, b.features if ext_blob_features else 0,
                                       b.uncompressed_size, b.compressed_size, bytes(40)) for b in blobs)

    prefetch_offset = layout.RAFSV5_SUPERBLOCK_SIZE + inode_table_size
    blob_table_offset = prefetch_offset + prefetch_size
    ext_offset = blob_table_offset + len(blob_table)
    records_offset = ext_offset + len(ext_table)

    positions = range(entries) if record_order == "index" else _dfs_positions(order)
    records, offsets, at = [], [0] * entries, records_offset
    for position in positions:
        record = _record(order, position, digests, tar_layer)
        offsets[position] = at
        records.append(record)
        at += len(record)
    if at > MAX_BOOTSTRAP_SIZE:
        raise BuildError(f"v5 bootstrap of {at} bytes exceeds the {MAX_BOOTSTRAP_SIZE:#x}-byte metadata limit")

    unique_inodes = len({id(n.inode) for n in nodes}) - (0 if count_root else 1)
    superblock = SUPERBLOCK.pack(
        layout.RAFSV5_SUPER_MAGIC, layout.RAFSV5_SUPER_VERSION, layout.RAFSV5_SUPERBLOCK_SIZE, chunk_size,
        flags, unique_inodes, layout.RAFSV5_SUPERBLOCK_SIZE, prefetch_offset, blob_table_offset, entries,
        len(prefetch_inos), len(blob_table), len(blobs), ext_offset, bytes(8112))
    inode_table = _pad8(struct.pack(f"<{entries}I", *(o >> 3 for o in offsets)))
    prefetch_table = _pad8(struct.pack(f"<{len(prefetch_inos)}I", *prefetch_inos))
    return b"".join([superblock, inode_table, prefetch_table, blob_table, ext_table, *records])


def _blob_table(blobs: list[Blob]) -> bytes:
    """``u32 readahead_offset | u32 readahead_size | id``, entries joined by NUL, padded to 8."""
    parts = []
    for blob in blobs:
        blob_id = blob.blob_id.encode("ascii")
        if not blob_id or b"\0" in blob_id:
            raise InvalidArgumentError(f"blob id {blob.blob_id!r} cannot be stored in a v5 blob table")
        parts.append(_BLOB_HEADER.pack(blob.readahead_offset, blob.readahead_size) + blob_id)
    return _pad8(b"\0".join(parts))


def _dfs_positions(order: TreeIndex) -> list[int]:
    """Positions (index - 1) in DFS pre-order: a node, then each child's subtree in name order.

    A directory's children hold consecutive positions from ``child_index - 1`` on (index order), so
    they are pushed as a range rather than looked up one by one."""
    nodes, child_index = order.nodes, order.child_index
    positions, stack = [], [0]
    while stack:
        position = stack.pop()
        positions.append(position)
        node = nodes[position]
        if node.children and node.inode.mode & _S_IFMT == _S_IFDIR:
            first = child_index[position] - 1
            stack.extend(range(first + len(node.children) - 1, first - 1, -1))
    return positions


def _inode_digests(order: TreeIndex, digester: str) -> list[bytes]:
    """i_digest per position; children come after their parent, so walking backwards works.

    Every digest starts from a copy of one empty hasher (same bytes as ``codecs.digest``; copying
    is cheaper than making a hasher for the few bytes of one inode), and is fed the pieces one by
    one rather than joined first."""
    nodes, child_index = order.nodes, order.child_index
    empty = codecs.hasher(digester)
    digests: list[bytes] = [b""] * len(nodes)
    for position in range(len(nodes) - 1, -1, -1):
        node = nodes[position]
        kind = node.inode.mode & _S_IFMT
        hasher = empty.copy()
        if kind == _S_IFDIR:
            first = child_index[position] - 1
            hasher.update(b"".join(digests[first:first + len(node.children)]))
        elif kind == _S_IFREG:
            for chunk in node.chunks:
                hasher.update(chunk.digest)
        elif kind == _S_IFLNK:
            hasher.update(node.inode.symlink or b"")
        digests[position] = hasher.digest()
    return digests


def _record(order: TreeIndex, position: int, digests: list[bytes], tar_layer: int | None) -> bytes:
    """The record of the node at ``position``: inode, name, symlink target, xattrs, chunks (8-aligned)."""
    node = order.nodes[position]
    inode = node.inode
    name = node.name
    kind = inode.mode & _S_IFMT
    rdev = inode.rdev & 0xFFFF_FFFF
    if node.layer == tar_layer and kind not in _DEVICE_OR_FIFO:
        rdev = TAR_NO_RDEV
    symlink = inode.symlink if kind == _S_IFLNK else None
    if not name or len(name) > 0xFFFF:
        raise InvalidArgumentError(f"inode {inode.ino}: name of {len(name)} bytes cannot be stored")
    if kind == _S_IFLNK and (not symlink or len(symlink) > 0xFFFF):
        raise InvalidArgumentError(f"{name!r}: symlink target of {len(symlink or b'')} bytes cannot be stored")
    xattrs = inode.xattrs
    flags = inode.flags & _HARDLINK
    if symlink is not None:
        flags |= _SYMLINK
    xattr_size = 0
    if xattrs:
        flags |= _XATTR
        xattr_size = xattr_table_size(xattrs)
    child_index = child_count = 0
    if kind == _S_IFDIR:
        size = dir_pseudo_size(node)
        child_index = order.child_index[position]
        child_count = len(node.children)
    else:
        size = inode.size
        if kind == _S_IFREG:
            child_count = len(node.chunks)
    blocks = (size + ((xattr_size + 7) & ~7) + 511) // 512
    parent = order.parents[position]
    parent_ino = order.nodes[parent - 1].inode.ino if parent else 0
    try:
        header = _INODE_PACK(digests[position], parent_ino, inode.ino, inode.uid, inode.gid, 0, inode.mode,
                             size, blocks, flags, inode.nlink, child_index, child_count, len(name),
                             len(symlink) if symlink is not None else 0, rdev,
                             inode.mtime_nsec, inode.mtime & _U64_MASK, _RESERVED)
    except struct.error as exc:
        raise InvalidArgumentError(f"cannot encode {INODE.name}: {exc}") from None
    parts = [header, name, _ZEROS[:-len(name) & 7]]     # the name, padded to 8
    if symlink is not None:
        parts.append(_pad8(symlink))
    if xattrs:
        pairs = [_U64.pack(xattr_size)]
        for key in sorted(xattrs):
            value = xattrs[key]
            pairs.append(_U32.pack(len(key) + 1 + len(value)) + key + b"\0" + value)
        parts.append(_pad8(b"".join(pairs)))
    if kind == _S_IFREG:
        for c in node.chunks:           # a plain loop: a list comprehension is one more call per file
            parts.append(_CHUNK_PACK(c.digest, c.blob_index, c.flags, c.compressed_size, c.uncompressed_size,
                                     c.compressed_offset, c.uncompressed_offset, c.file_offset, c.index, c.crc32))
    return b"".join(parts)
