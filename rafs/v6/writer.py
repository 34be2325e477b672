"""Write a RAFS v6 bootstrap (EROFS metadata) from a model tree, byte-compatible with nydus-image.

Layout of the result (builder/src/core/v6.rs ``Bootstrap::v6_dump``)::

    0      1024 zero bytes, then the EROFS superblock (128) and the RAFS v6 extension (256)
    1408   device slots, 128 bytes per blob
    align4k  blob table (256 bytes per blob), then the prefetch table (u32 nids)
    align4k  meta_blkaddr: one unused block, then the root inode (nid 128), inodes, inline tails,
             directory blocks, as :mod:`rafs.v6.alloc` placed them
    align4k  chunk info table (80-byte records, sorted by digest then blob)
    align4k  end

Inputs come from the builder (see :func:`write_bootstrap`); the tree is walked in the reference's
index order (a directory, then all its children, then its subdirectories in turn), which is both the
order metadata is placed in and the order the ``i_ino`` numbers were given in.
"""

from __future__ import annotations

import operator
import stat as _stat
import struct

from ..errors import InvalidArgumentError
from ..limits import CHUNK_SIZE_RULE, is_chunk_size
from ..model import (BlobFeatures, CIPHER_IDS, COMPRESSOR_IDS, DIGESTER_IDS, MAX_BLOBS,
                     MAX_CHUNKS_PER_BLOB, MAX_NAME_SIZE, Blob, Chunk, Node, SuperFlags)
from . import alloc, layout

from .records import (BLOB, CHUNK_INDEX as CHUNK_ADDR, CHUNK_INFO, DEVICE, DIRENT, INODE_EXTENDED as INODE,
                      SUPERBLOCK, SUPERBLOCK_EXT, XATTR_ENTRY, XATTR_HEADER)

# Blobs start in the flattened block-device view at multiples of this (``V6_BLOCK_SEG_ALIGNMENT``).
# Builders before 2023-03-30 (nydus-image 2.2) used 2 MiB; earlier ones left mapped_blkaddr 0
# (``devslot_alignment=0``).
DEVSLOT_ALIGNMENT = 0x8_0000
LEGACY_DEVSLOT_ALIGNMENT = 0x20_0000
UNMAPPED_DEVSLOTS = 0
# Xattr name prefixes RAFS stores and their EROFS name indexes (v6.rs RAFSV6_XATTR_TYPES: no lustre).
XATTR_INDEXES = tuple((prefix, index) for index, prefix in layout.EROFS_XATTR_PREFIXES.items()
                      if index != layout.EROFS_XATTR_INDEX_LUSTRE)
INODE_SIZE = layout.INODE_SIZES[layout.EROFS_INODE_LAYOUT_EXTENDED]
ALIGNMENT = layout.RAFSV6_ALIGNMENT

_COMPRESSION_BITS = (SuperFlags.COMPRESSION_NONE | SuperFlags.COMPRESSION_LZ4 | SuperFlags.COMPRESSION_GZIP
                     | SuperFlags.COMPRESSION_ZSTD)
_DIGEST_BITS = SuperFlags.HASH_BLAKE3 | SuperFlags.HASH_SHA256

_SPECIAL = (_stat.S_IFCHR, _stat.S_IFBLK, _stat.S_IFIFO, _stat.S_IFSOCK)
_S_IFMT, _S_IFDIR, _S_IFREG, _S_IFLNK = 0o170000, _stat.S_IFDIR, _stat.S_IFREG, _stat.S_IFLNK
_FILE_TYPES = layout.EROFS_FILE_TYPE_BY_MODE

# The hot records packed with the fast codecs' own formats; the inode's trailing reserved bytes as
# pad bytes, so each pack needs no zero bytes object.
assert INODE.fields[-1] == "i_reserved2" and INODE.struct.format.endswith("16s")
_INODE_PACK = struct.Struct(INODE.struct.format[:-3] + "16x").pack
INODE_RECORD_SIZE = INODE.size
_CHUNK_ADDR_PACK = CHUNK_ADDR.struct.pack
_NULL_CHUNK_ADDR = CHUNK_ADDR.pack(0, 0, layout.EROFS_NULL_ADDR)
_DIRENT_PACK = DIRENT.struct.pack
_ZEROS = bytes(alloc.CHUNK_ADDR_SIZE)
_CHUNK_BASED = layout.EROFS_INODE_CHUNK_BASED
_NULL_ADDR = layout.EROFS_NULL_ADDR


def write_bootstrap(root: Node, blobs: list[Blob], *, chunk_size: int, flags: SuperFlags,
                    prefetch: list[Node] | None = None,
                    devslot_alignment: int = DEVSLOT_ALIGNMENT) -> bytes:
    """The bytes of a RAFS v6 bootstrap for the tree under ``root``.

    What the caller (the builder) provides:

    * ``root``: a directory :class:`~rafs.model.Node`; children of every directory in name order (the
      order the reference numbers and places them in). Each node's ``inode`` holds ``ino`` (its index
      in that order, root 1; written to ``i_ino``, not used at run time), mode, uid, gid, mtime,
      mtime_nsec, nlink (directories: 2 + subdirectories), rdev (devices), ``symlink`` (symlinks) and
      ``xattrs``. Regular files that are hardlinks of each other share one ``Inode`` object and get one
      EROFS inode; their ``chunks`` must agree (the first link with chunks is used).
    * regular files' ``chunks`` in file order: ``index`` = the chunk's index in its blob's CI array,
      ``blob_index``, ``uncompressed_offset`` aligned to the block size, ``file_offset`` a multiple of
      ``chunk_size``; a chunk slot with no chunk is a hole (EROFS null address, read as zeros).
    * ``blobs`` in blob-table order (``Blob.index`` = position), every field filled.
    * ``flags``: compressor, digester, cipher (ENCRYPTION_NONE or AES), EXPLICIT_UID_GID unless the
      build is repeatable, TARTFS_MODE for tarfs (512-byte blocks). HAS_XATTR is added here when any
      xattr is written; INLINED_CHUNK_DIGEST is set exactly when every blob has that feature.
    * ``prefetch``: the nodes matched by ``--prefetch-policy fs`` patterns, in pattern order.
    * ``devslot_alignment``: where blobs start in the flattened device view; 512 KiB now,
      :data:`LEGACY_DEVSLOT_ALIGNMENT` to reproduce nydus-image 2.2 output, :data:`UNMAPPED_DEVSLOTS`
      (0: every ``mapped_blkaddr`` 0) for the builders before it.
    """
    return _BootstrapWriter(root, blobs, chunk_size, SuperFlags(flags), prefetch or [],
                            devslot_alignment).write()


def _round_up(value: int, unit: int) -> int:
    return -(-value // unit) * unit


def _bad(message: str) -> InvalidArgumentError:
    return InvalidArgumentError(f"cannot write RAFS v6 bootstrap: {message}")


def xattr_body(xattrs: dict[bytes, bytes]) -> bytes:
    """Inline xattrs of one inode: body header, then entries padded to 4 bytes (RafsXAttrs::store_v6).

    Names are stored without their prefix, which becomes the EROFS name index.
    """
    if not xattrs:
        return b""
    parts = [XATTR_HEADER.pack(0, 0, bytes(7))]
    for key, value in xattrs.items():
        for prefix, index in XATTR_INDEXES:
            if key.startswith(prefix):
                break
        else:
            raise _bad(f"xattr {key!r} has none of the prefixes RAFS stores")
        name = key[len(prefix):]
        if len(name) > 0xFF or len(value) > 0xFFFF:
            raise _bad(f"xattr {key!r} is too long (name {len(name)} > 255 or value {len(value)} > 65535)")
        entry = XATTR_ENTRY.pack(len(name), index, len(value)) + name + value
        parts.append(entry + bytes(-len(entry) % layout.EROFS_XATTR_ALIGNMENT))
    body = b"".join(parts)
    if (len(body) - layout.EROFS_XATTR_IBODY_HEADER_SIZE) // 4 + 1 > 0xFFFF:
        raise _bad("extended attributes of one inode are too big")
    return body


def dirent_blocks(entries: list[tuple[bytes, int, int]], block_size: int) -> list[bytes]:
    """Directory blocks for sorted (name, nid, file type) entries: each ``[dirents][names]``.

    An entry (12 bytes + name) never straddles a block; every block but the last is as full as entries
    allow and is not padded here (the rest of its block stays zero).
    """
    if layout.EROFS_DIRENT_SIZE * len(entries) + sum([len(entry[0]) for entry in entries]) <= block_size:
        return [_dirent_block(entries)] if entries else []      # all in one block: no sizes to add up
    blocks, current, used = [], [], 0
    for entry in entries:
        size = layout.EROFS_DIRENT_SIZE + len(entry[0])
        if used + size > block_size:
            blocks.append(_dirent_block(current))
            current, used = [], 0
        current.append(entry)
        used += size
    if current:
        blocks.append(_dirent_block(current))
    return blocks


def _dirent_block(entries: list[tuple[bytes, int, int]]) -> bytes:
    nameoff = layout.EROFS_DIRENT_SIZE * len(entries)
    heads, names = [], []
    try:
        for name, nid, file_type in entries:
            heads.append(_DIRENT_PACK(nid, nameoff, file_type, 0))
            names.append(name)
            nameoff += len(name)
    except struct.error as exc:
        raise InvalidArgumentError(f"cannot encode {DIRENT.name}: {exc}") from None
    heads += names
    return b"".join(heads)


def dirent_size(names: list[bytes], block_size: int) -> int:
    """``i_size`` of a directory with these (sorted) names incl. ``.`` and ``..`` (v6_dirent_size)."""
    total = layout.EROFS_DIRENT_SIZE * len(names) + sum(map(len, names))
    if total <= block_size:             # one block holds them all (most directories): no entry is moved
        return total
    size = 0
    for name in names:
        entry = layout.EROFS_DIRENT_SIZE + len(name)
        if size % block_size + entry > block_size:
            size = _round_up(size, block_size)
        size += entry
    return size


def _check_names(names: list[bytes]) -> None:
    """Refuse the names of one directory's entries that EROFS cannot hold: empty, longer than 255 bytes,
    holding "/" or NUL (``.`` and ``..`` are refused before, as duplicates). The joined names are
    scanned first, once per directory; only a directory with a bad name is looked at name by name."""
    if not names:
        return
    joined = b"".join(names)
    if b"/" in joined or b"\0" in joined or min(map(len, names)) == 0 or max(map(len, names)) > MAX_NAME_SIZE:
        for name in names:
            if not name or len(name) > MAX_NAME_SIZE or b"/" in name or b"\0" in name or name in (b".", b".."):
                raise _bad(f"invalid file name {name!r}")


class _Object:
    """One EROFS inode to write: what it is, where it went, and (directories) its entries."""

    __slots__ = ("node", "parent", "offset", "placement", "xattrs", "entries", "data", "chunks")

    def __init__(self, node: Node, parent: "_Object | None", xattrs: bytes):
        self.node = node
        self.parent = parent
        self.offset = 0                 # the inode's offset as the allocator gave it (before the shift)
        # directories, symlinks and specials: the whole placement (layout, data offset); regular files
        # are always chunk-based and need only ``offset``, so none is made for them
        self.placement: alloc.Placement | None = None
        self.xattrs = xattrs            # the inline xattr body (xattr_body), b"" for none
        # Lists only where they are used (they are most of what stays alive while writing, and so
        # what the garbage collector walks): set by _place_dir and _plan_file.
        self.entries: list["_Object"] | None = None     # a directory's children, in tree (name) order
        self.data = 0                   # directory / symlink data size
        self.chunks: list[Chunk | None] | None = None  # a regular file's chunk slots (None: a hole)

    @property
    def inode_size(self) -> int:
        return INODE_SIZE + len(self.xattrs)


class _BootstrapWriter:
    def __init__(self, root: Node, blobs: list[Blob], chunk_size: int, flags: SuperFlags,
                 prefetch: list[Node], devslot_alignment: int):
        if not root.inode.is_dir:
            raise _bad("the root is not a directory")
        if not is_chunk_size(chunk_size):
            raise _bad(f"chunk size {chunk_size:#x} is not {CHUNK_SIZE_RULE}")
        for bits, what in ((_COMPRESSION_BITS, "compression"), (_DIGEST_BITS, "digest")):
            if bin(flags & bits).count("1") != 1:
                raise _bad(f"flags {flags:#x} must hold exactly one {what} bit")
        if len(blobs) > MAX_BLOBS - 1:
            raise _bad(f"{len(blobs)} blobs; at most {MAX_BLOBS - 1} fit a chunk address")
        if devslot_alignment < 0 or devslot_alignment & (devslot_alignment - 1):
            raise _bad(f"device slot alignment {devslot_alignment:#x} is not a power of two")
        self.root = root
        self.blobs = blobs
        self.chunk_size = chunk_size
        self.flags = flags
        self.prefetch = prefetch
        self.devslot_alignment = devslot_alignment
        # tarfs images address the tar in 512-byte blocks (BuildContext::v6_block_size)
        self.block_bits = layout.EROFS_BLKSZBITS_MIN if flags & SuperFlags.TARTFS_MODE \
            else layout.EROFS_BLKSZBITS_MAX
        self.block_size = 1 << self.block_bits
        # i_u of a chunk-based file declaring chunks of chunk_size (all but the page-cache trick's)
        self.chunk_format = layout.EROFS_CHUNK_FORMAT_INDEXES | (chunk_size.bit_length() - 1 - self.block_bits)
        self.external = [bool(b.features & BlobFeatures.EXTERNAL) for b in blobs]
        self.order: list[_Object] = []      # every tree node, in index (dump) order
        self.has_xattr = False
        self.meta_addr = 0                  # byte offset of nid 0 (s_meta_blkaddr * block size)
        self.shift = 0                      # added to every allocator offset (root nid -> 128)
        self.buf = bytearray()
        self.end = 0                        # end of the last byte written to the metadata area

    # -- planning: the reference's build_rafs -----------------------------------------------------

    def _plan(self) -> alloc.MetaAllocator:
        """Place every object in the reference's order (Bootstrap::build_rafs): a directory when its
        turn comes, then its non-directory children in name order, then each subdirectory in turn,
        depth first. ``self.order`` gets the dump (and ``i_ino``) order: the root, then every
        directory's children as the directory is reached."""
        allocator = alloc.MetaAllocator(self.block_size)
        first_links: dict[int, _Object] = {}    # id(shared Inode) -> first link of a regular file
        stack = [self._visit(self.root, None)]
        seen_dirs = {id(self.root)}
        visit, plan_file = self._visit, self._plan_file     # looked up once, called for every entry
        while stack:
            parent = stack.pop()
            self._place_dir(allocator, parent)
            subdirs = []
            entries = parent.entries
            for child in parent.node.children:
                obj = visit(child, parent)
                entries.append(obj)
                mode = child.inode.mode
                kind = mode & _S_IFMT
                if kind == _S_IFREG:
                    plan_file(allocator, obj, first_links)
                elif kind == _S_IFDIR:
                    if id(child) in seen_dirs:
                        raise _bad(f"directory {child.name!r} appears twice in the tree")
                    seen_dirs.add(id(child))
                    subdirs.append(obj)
                elif kind == _S_IFLNK:
                    target = child.inode.symlink
                    if target is None:
                        raise _bad(f"symlink {child.name!r} has no target")
                    obj.data = len(target)
                    obj.placement = allocator.place_with_tail(obj.inode_size, obj.data)
                    obj.offset = obj.placement.offset
                elif _stat.S_IFMT(mode) in _SPECIAL:
                    obj.placement = allocator.place_special(obj.inode_size)
                    obj.offset = obj.placement.offset
                else:
                    raise _bad(f"{child.name!r} has an unknown file type (mode {mode:#o})")
            stack.extend(reversed(subdirs))
        return allocator

    def _plan_file(self, allocator: alloc.MetaAllocator, obj: _Object, first_links: dict) -> None:
        """Place a regular file; hardlinks (one shared Inode) get the first link's inode. The chunk
        slots come from the first link that has chunks; every link's chunks are checked."""
        node = obj.node
        slots = self._chunk_slots(node) if node.chunks else None
        first = first_links.setdefault(id(node.inode), obj)
        if first is obj:
            obj.chunks = slots or [None] * -(-node.inode.size // self.chunk_size)
            obj.offset = allocator.file_offset(INODE_SIZE + len(obj.xattrs), len(obj.chunks))
        else:
            if slots and not any(first.chunks):
                first.chunks[:] = slots
            obj.chunks = first.chunks
            obj.offset = first.offset
            allocator.align(alloc.SLOT_SIZE)

    def _visit(self, node: Node, parent: _Object | None) -> _Object:
        """The object for ``node``, appended to the dump order (names were checked by _place_dir)."""
        xattrs = node.inode.xattrs
        if xattrs:
            self.has_xattr = True
            obj = _Object(node, parent, xattr_body(xattrs))
        else:
            obj = _Object(node, parent, b"")
        self.order.append(obj)
        return obj

    def _place_dir(self, allocator: alloc.MetaAllocator, obj: _Object) -> None:
        """Check the directory's names and place it (its children are placed after it)."""
        children = [child.name for child in obj.node.children]
        names = sorted(children + [b".", b".."])
        if len(set(names)) != len(names):
            for prev, name in zip(names, names[1:]):
                if prev == name:
                    raise _bad(f"name {name!r} appears twice in one directory")
        _check_names(children)
        obj.entries = []
        obj.data = dirent_size(names, self.block_size)
        obj.placement = allocator.place_with_tail(obj.inode_size, obj.data)
        obj.offset = obj.placement.offset

    def _chunk_slots(self, node: Node) -> list[Chunk | None]:
        """The file's chunk index entries: one per chunk_size of i_size, None for a hole.

        A file without holes gets its own ``node.chunks`` list back (nothing here changes it)."""
        size, cs, blob_count, block_mask = node.inode.size, self.chunk_size, len(self.blobs), self.block_size - 1
        count = -(-size // cs)
        chunks = node.chunks
        if count == 1 and len(chunks) == 1:                 # the common small file, checked inline
            chunk = chunks[0]
            if not chunk.file_offset and 0 <= chunk.blob_index < blob_count \
                    and not chunk.uncompressed_offset & block_mask and 0 <= chunk.index < MAX_CHUNKS_PER_BLOB:
                return chunks
        slots: list[Chunk | None] = [None] * count
        last = -1
        for chunk in chunks:
            slot, rest = divmod(chunk.file_offset, cs)
            if rest or slot <= last or slot >= count:
                raise _bad(f"{node.name!r}: chunk at file offset {chunk.file_offset:#x} does not fit "
                           f"a file of {size} bytes in {cs:#x}-byte chunks in order")
            self._check_chunk(node, chunk, blob_count, block_mask)
            slots[slot] = chunk
            last = slot
        return chunks if len(chunks) == count else slots

    @staticmethod
    def _check_chunk(node: Node, chunk: Chunk, blob_count: int, block_mask: int) -> None:
        if not 0 <= chunk.blob_index < blob_count:
            raise _bad(f"{node.name!r}: chunk refers to blob {chunk.blob_index} of {blob_count}")
        if chunk.uncompressed_offset & block_mask or not 0 <= chunk.index < MAX_CHUNKS_PER_BLOB:
            raise _bad(f"{node.name!r}: chunk {chunk.index} at uncompressed offset "
                       f"{chunk.uncompressed_offset:#x} is not block aligned or out of range")

    # -- the tables at the front ------------------------------------------------------------------

    def write(self) -> bytes:
        allocator = self._plan()
        bs = self.block_size
        blob_table_offset = _round_up(layout.RAFSV6_DEVTABLE_OFFSET + layout.EROFS_DEVT_SLOT_SIZE * len(self.blobs),
                                      ALIGNMENT)
        blob_table_size = layout.RAFSV6_BLOB_ENTRY_SIZE * len(self.blobs)
        prefetch_size = 4 * len(self.prefetch) if blob_table_size else 0
        # Shift everything so the root inode sits one block after meta_blkaddr (root nid 128).
        root_offset = self.order[0].offset
        orig_meta_addr = root_offset - ALIGNMENT
        if blob_table_size:
            meta_addr = _round_up(blob_table_offset + blob_table_size + prefetch_size,
                                  ALIGNMENT)
        else:
            meta_addr = orig_meta_addr
        self.shift = meta_addr - orig_meta_addr
        self.meta_addr = meta_addr

        self.buf = bytearray(max(self.shift + allocator.cursor, blob_table_offset + blob_table_size))
        self.end = 0
        chunk_table = self._write_objects()
        meta_end = _round_up(self.end, ALIGNMENT)
        del self.buf[meta_end:]
        self.buf += bytes(meta_end - len(self.buf))
        chunk_table_offset = meta_end
        self.buf += chunk_table
        self.buf += bytes(-len(self.buf) % ALIGNMENT)

        devslots, blocks, inlined_digest = self._devslots(len(self.buf))
        flags = self.flags & ~SuperFlags.INLINED_CHUNK_DIGEST
        if inlined_digest:
            flags |= SuperFlags.INLINED_CHUNK_DIGEST
        if self.has_xattr:
            flags |= SuperFlags.HAS_XATTR

        root_nid = self._nid(self.order[0])
        self.buf[layout.EROFS_SUPER_OFFSET:layout.EROFS_SUPER_OFFSET + SUPERBLOCK.size] = SUPERBLOCK.pack(
            layout.EROFS_SUPER_MAGIC_V1, 0, layout.EROFS_FEATURE_COMPAT_RAFS_V6, self.block_bits, 0,
            root_nid, len(self.order), 0, 0, blocks, meta_addr // bs, 0, bytes(16), bytes(16),
            layout.RAFSV6_FEATURE_INCOMPAT, 0, len(self.blobs),
            layout.RAFSV6_DEVTABLE_OFFSET // layout.EROFS_DEVT_SLOT_SIZE, 0, 0, 0, 0, 0, bytes(23))
        prefetch_offset = blob_table_offset + blob_table_size if prefetch_size else 0
        ext = SUPERBLOCK_EXT.pack(
            int(flags), blob_table_offset, blob_table_size, self.chunk_size, chunk_table_offset,
            len(chunk_table), prefetch_offset, prefetch_size, 0, bytes(200))
        offset = layout.EROFS_SUPER_OFFSET + SUPERBLOCK.size
        self.buf[offset:offset + len(ext)] = ext
        self.buf[layout.RAFSV6_DEVTABLE_OFFSET:layout.RAFSV6_DEVTABLE_OFFSET + len(devslots)] = devslots
        table = b"".join(self._blob_entry(i, blob) for i, blob in enumerate(self.blobs))
        self.buf[blob_table_offset:blob_table_offset + len(table)] = table
        if prefetch_size:
            # the node -> object map is only needed here, so it is made only for an image with prefetch
            by_node = {id(obj.node): obj for obj in self.order}
            nids = struct.pack(f"<{len(self.prefetch)}I", *(self._prefetch_nid(n, by_node) for n in self.prefetch))
            self.buf[prefetch_offset:prefetch_offset + len(nids)] = nids
        return bytes(self.buf)

    def _nid(self, obj: _Object) -> int:
        return (obj.offset + self.shift - self.meta_addr) >> 5

    def _prefetch_nid(self, node: Node, by_node: dict[int, _Object]) -> int:
        obj = by_node.get(id(node))
        if obj is None:
            raise _bad(f"prefetch node {node.name!r} is not in the tree")
        return self._nid(obj)

    def _devslots(self, position: int) -> tuple[bytes, int, bool]:
        bs, align = self.block_size, self.devslot_alignment
        slots, total, inlined_digest = [], 0, True
        for blob in self.blobs:
            blob_id = self._blob_id(blob)
            count = blob.uncompressed_size // bs
            mapped = _round_up(position, align) // bs if align else 0
            if mapped + count > 0xFFFF_FFFF:
                raise _bad(f"blob {blob.blob_id} ends beyond the 32-bit block address space")
            position = (mapped + count) * bs
            total += count
            if not blob.features & BlobFeatures.INLINED_CHUNK_DIGEST:
                inlined_digest = False
            slots.append(DEVICE.pack(blob_id, count, mapped, bytes(56)))
        if total > 0xFFFF_FFFF:
            raise _bad(f"{total} data blocks do not fit s_blocks")
        return b"".join(slots), total, inlined_digest

    @staticmethod
    def _blob_id(blob: Blob) -> bytes:
        raw = blob.blob_id.encode("utf-8")
        if not raw or len(raw) > layout.RAFSV6_BLOB_ID_SIZE:
            raise _bad(f"blob id {blob.blob_id!r} must be 1 to {layout.RAFSV6_BLOB_ID_SIZE} bytes")
        return raw.ljust(layout.RAFSV6_BLOB_ID_SIZE, b"\0")

    def _blob_entry(self, position: int, blob: Blob) -> bytes:
        if blob.index != position:
            raise _bad(f"blob {blob.blob_id} has index {blob.index} at position {position}")
        try:
            compressor, ci_compressor = COMPRESSOR_IDS[blob.compressor], COMPRESSOR_IDS[blob.ci_compressor]
            digester, cipher = DIGESTER_IDS[blob.digester], CIPHER_IDS[blob.cipher]
        except KeyError as exc:
            raise _bad(f"blob {blob.blob_id}: unknown algorithm {exc}") from None
        if cipher:
            if len(blob.cipher_key) != 32 or len(blob.cipher_iv) != 16:
                raise _bad(f"blob {blob.blob_id}: cipher key/IV must be 32/16 bytes")
            # Encrypted blobs keep the key in blob_meta_digest and the IV across blob_meta_size and
            # cipher_iv (rafs/src/metadata/layout/v6.rs RafsV6Blob::from_blob_info).
            meta_digest = blob.cipher_key
            meta_size = int.from_bytes(blob.cipher_iv[:8], "little")
            cipher_iv = blob.cipher_iv[8:]
        else:
            meta_digest, meta_size, cipher_iv = blob.meta_digest, blob.meta_size, bytes(8)
        return BLOB.pack(
            self._blob_id(blob), position, blob.chunk_size, blob.chunk_count, compressor, digester,
            blob.features, blob.compressed_size, blob.uncompressed_size, blob.toc_size, ci_compressor,
            blob.ci_offset, blob.ci_compressed_size, blob.ci_uncompressed_size,
            _digest32(blob.toc_digest), _digest32(meta_digest), meta_size, cipher_iv, cipher, bytes(36))

    # -- inodes and their data --------------------------------------------------------------------

    def _put(self, offset: int, data: bytes) -> None:
        if data:
            end = offset + len(data)
            self.buf[offset:end] = data
            if end > self.end:
                self.end = end

    def _write_objects(self) -> bytes:
        """Write every inode (dump order); return the chunk info table."""
        chunk_cache: dict[tuple, Chunk] = {}
        for obj in self.order:
            kind = obj.node.inode.mode & _S_IFMT
            if kind == _S_IFREG:
                self._write_file(obj, chunk_cache)
            elif kind == _S_IFDIR:
                self._write_dir(obj)
            elif kind == _S_IFLNK:
                self._write_symlink(obj)
            else:
                self._write_inode(obj, layout.EROFS_INODE_FLAT_PLAIN, _u32(obj.node.inode.rdev, "rdev"))
        pack = CHUNK_INFO.struct.pack
        # in digest order; map() rather than a generator (no Python step per chunk); digests are 32 bytes
        # in every image the builder makes, so padding is only called for others
        in_order = map(chunk_cache.__getitem__, sorted(chunk_cache))
        try:
            return b"".join([pack(c.digest if len(c.digest) == 32 else _digest32(c.digest), c.blob_index, c.flags,
                                  c.compressed_size, c.uncompressed_size, c.compressed_offset, c.uncompressed_offset,
                                  c.file_offset, c.index, c.crc32)
                             for c in in_order])
        except struct.error as exc:
            raise InvalidArgumentError(f"cannot encode {CHUNK_INFO.name}: {exc}") from None

    def _write_inode(self, obj: _Object, data_layout: int, i_u: int, size: int | None = None) -> int:
        """The extended inode and its inline xattrs; returns the offset just after them."""
        offset = obj.offset + self.shift
        record = _inode_record(obj, data_layout, i_u, size)
        end = offset + len(record)
        self.buf[offset:end] = record
        if end > self.end:
            self.end = end
        return end

    def _write_tailed(self, obj: _Object, blocks: list[bytes], size: int) -> None:
        """A directory's or symlink's inode and data: full blocks at i_u, the tail inline or not."""
        placement = obj.placement
        data_offset = placement.data_offset + self.shift
        inline_at = self._write_inode(obj, placement.layout, _u32(data_offset // self.block_size, "blkaddr"),
                                      size)
        for i, block in enumerate(blocks):
            if i == len(blocks) - 1 and placement.layout == layout.EROFS_INODE_FLAT_INLINE:
                self._put(inline_at, block)
            else:
                self._put(data_offset + i * self.block_size, block)

    def _write_dir(self, obj: _Object) -> None:
        parent = obj.parent or obj
        base = self.shift - self.meta_addr
        rows = [(child.node.name, (child.offset + base) >> 5, _FILE_TYPES[child.node.inode.mode & _S_IFMT])
                for child in obj.entries]
        rows += [(b".", (obj.offset + base) >> 5, _FILE_TYPES[_S_IFDIR]),
                 (b"..", (parent.offset + base) >> 5, _FILE_TYPES[_S_IFDIR])]
        rows.sort(key=_row_name)
        self._write_tailed(obj, dirent_blocks(rows, self.block_size), obj.data)

    def _write_symlink(self, obj: _Object) -> None:
        """Full blocks at i_u, the tail inline. (With 512-byte tarfs blocks a target can be longer than
        a block; the reference then writes the whole target after the inode, which is not what EROFS
        reads, so such symlinks are the one place this writer differs from nydus-image on purpose.)"""
        target = obj.node.inode.symlink
        bs = self.block_size
        blocks = [target[i:i + bs] for i in range(0, len(target), bs)]
        self._write_tailed(obj, blocks, len(target))

    def _write_file(self, obj: _Object, chunk_cache: dict) -> None:
        """A chunk-based inode, its xattrs and its chunk index array, written into the buffer at once;
        the file's chunks go into ``chunk_cache`` (one chunk info record per distinct key)."""
        slots = obj.chunks
        external = self.external
        for chunk in obj.node.chunks or [c for c in slots if c is not None]:
            blob = chunk.blob_index
            chunk_cache[(chunk.digest, blob + 1, chunk.index if external[blob] else -1)] = chunk
        size = obj.node.inode.size
        declared = self.chunk_size
        # Page-cache sharing trick (v6_dump_file): when every chunk follows the previous one in the same
        # blob, declare one chunk of next_power_of_two(i_size) so EROFS maps the file in one extent.
        chunk_format = self.chunk_format
        if size > declared and all(slots) and all(
                chunk.blob_index == prev.blob_index and chunk.uncompressed_offset == prev.uncompressed_offset + declared
                for prev, chunk in zip(slots, slots[1:])):
            declared = 1 << (size - 1).bit_length()
            chunk_bits = declared.bit_length() - 1 - self.block_bits
            if chunk_bits > layout.EROFS_CHUNK_FORMAT_BLKBITS_MASK:
                raise _bad(f"file of {size} bytes is too big for one EROFS chunk")
            chunk_format = layout.EROFS_CHUNK_FORMAT_INDEXES | chunk_bits
        record = _inode_record(obj, _CHUNK_BASED, chunk_format)
        bits = self.block_bits
        addrs = []
        for chunk in slots:
            if chunk is None:
                addrs.append(_NULL_CHUNK_ADDR)
                continue
            blkaddr = chunk.uncompressed_offset >> bits
            if blkaddr >= _NULL_ADDR:
                raise _bad(f"chunk at uncompressed offset {chunk.uncompressed_offset:#x} is beyond the "
                           "32-bit block address space")
            index = chunk.index
            addrs.append(_CHUNK_ADDR_PACK(index & 0xFFFF, (index >> 16 & 0xFF) << 8 | (chunk.blob_index + 1), blkaddr))
        if addrs:
            # the index array starts at the inode's end rounded up to one entry; the gap is zeros
            gap = -(obj.offset + len(record)) % alloc.CHUNK_ADDR_SIZE
            record = b"".join([record, _ZEROS[:gap], *addrs])
        offset = obj.offset + self.shift
        end = offset + len(record)
        self.buf[offset:end] = record
        if end > self.end:
            self.end = end


def _inode_record(obj: _Object, data_layout: int, i_u: int, size: int | None = None) -> bytes:
    """The extended inode of ``obj`` (i_size = ``size``, or the inode's own) and its inline xattrs."""
    inode = obj.node.inode
    xattrs = obj.xattrs
    xattr_count = (len(xattrs) - layout.EROFS_XATTR_IBODY_HEADER_SIZE) // 4 + 1 if xattrs else 0
    try:
        record = _INODE_PACK(layout.EROFS_INODE_LAYOUT_EXTENDED | data_layout << 1, xattr_count,
                             inode.mode & 0xFFFF, 0, inode.size if size is None else size, i_u, inode.ino,
                             inode.uid, inode.gid, inode.mtime, inode.mtime_nsec, inode.nlink)
    except struct.error as exc:
        for value, what in ((inode.ino, "ino"), (inode.uid, "uid"), (inode.gid, "gid"), (inode.nlink, "nlink")):
            _u32(value, what)
        raise InvalidArgumentError(f"cannot encode {INODE.name}: {exc}") from None
    return record + xattrs if xattrs else record


_row_name = operator.itemgetter(0)       # sort key of dirent rows: the name (a C call, not a Python one)


def _u32(value: int, what: str) -> int:
    if not 0 <= value <= 0xFFFF_FFFF:
        raise _bad(f"{what} {value} does not fit 32 bits")
    return value


def _digest32(value: bytes) -> bytes:
    if len(value) > 32:
        raise _bad(f"digest of {len(value)} bytes is longer than 32")
    return bytes(value).ljust(32, b"\0")
