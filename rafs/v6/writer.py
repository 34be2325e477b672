"""Write a RAFS v6 bootstrap (EROFS metadata) from a model tree, byte-compatible with nydus-image.

Layout of the result (builder/src/core/v6.rs ``Bootstrap::v6_dump``)::

    0      1024 zero bytes, then the EROFS superblock (128) and the RAFS v6 extension (256)
    1408   device slots, 128 bytes per blob
    align4k  blob table (256 bytes per blob), then the prefetch table (u32 nids)
    align4k  meta_blkaddr: one unused block, then the root inode (nid 128), inodes, inline tails,
             directory blocks, as :mod:`rafs.v6.alloc` placed them
    align4k  chunk info table (80-byte records, sorted by digest then blob)
    align4k  end

Each record is encoded by :mod:`rafs.v6.encode`; this module plans where everything goes (with
:mod:`rafs.v6.alloc`) and fills the buffer. Inputs come from the builder (see
:func:`write_bootstrap`); the tree is walked in the reference's index order (a directory, then all its
children, then its subdirectories in turn), which is both the order metadata is placed in and the
order the ``i_ino`` numbers were given in.
"""

from __future__ import annotations

import operator
import stat as _stat
import struct

from ..errors import InvalidArgumentError
from ..limits import CHUNK_SIZE_RULE, is_chunk_size
from ..model import MAX_BLOBS, MAX_CHUNKS_PER_BLOB, Blob, BlobFeatures, Chunk, Node, SuperFlags
from . import alloc, layout
from .encode import (bad, blob_entry, check_names, device_slots, digest32, dirent_blocks, dirent_size, inode_record,
                     round_up, u32, xattr_body)
from .records import CHUNK_INDEX as CHUNK_ADDR, CHUNK_INFO, SUPERBLOCK, SUPERBLOCK_EXT

# Blobs start in the flattened block-device view at multiples of this (``V6_BLOCK_SEG_ALIGNMENT``).
# Builders before 2023-03-30 (nydus-image 2.2) used 2 MiB; earlier ones left mapped_blkaddr 0
# (``devslot_alignment=0``).
DEVSLOT_ALIGNMENT = 0x8_0000
LEGACY_DEVSLOT_ALIGNMENT = 0x20_0000
UNMAPPED_DEVSLOTS = 0
INODE_SIZE = layout.INODE_SIZES[layout.EROFS_INODE_LAYOUT_EXTENDED]
ALIGNMENT = layout.RAFSV6_ALIGNMENT

_COMPRESSION_BITS = (SuperFlags.COMPRESSION_NONE | SuperFlags.COMPRESSION_LZ4 | SuperFlags.COMPRESSION_GZIP
                     | SuperFlags.COMPRESSION_ZSTD)
_DIGEST_BITS = SuperFlags.HASH_BLAKE3 | SuperFlags.HASH_SHA256

_SPECIAL = (_stat.S_IFCHR, _stat.S_IFBLK, _stat.S_IFIFO, _stat.S_IFSOCK)
_S_IFMT, _S_IFDIR, _S_IFREG, _S_IFLNK = 0o170000, _stat.S_IFDIR, _stat.S_IFREG, _stat.S_IFLNK
_FILE_TYPES = layout.EROFS_FILE_TYPE_BY_MODE

# The chunk address packed with the fast codec's own format.
_CHUNK_ADDR_PACK = CHUNK_ADDR.struct.pack
_NULL_CHUNK_ADDR = CHUNK_ADDR.pack(0, 0, layout.EROFS_NULL_ADDR)
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
            raise bad("the root is not a directory")
        if not is_chunk_size(chunk_size):
            raise bad(f"chunk size {chunk_size:#x} is not {CHUNK_SIZE_RULE}")
        for bits, what in ((_COMPRESSION_BITS, "compression"), (_DIGEST_BITS, "digest")):
            if bin(flags & bits).count("1") != 1:
                raise bad(f"flags {flags:#x} must hold exactly one {what} bit")
        if len(blobs) > MAX_BLOBS - 1:
            raise bad(f"{len(blobs)} blobs; at most {MAX_BLOBS - 1} fit a chunk address")
        if devslot_alignment < 0 or devslot_alignment & (devslot_alignment - 1):
            raise bad(f"device slot alignment {devslot_alignment:#x} is not a power of two")
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
                        raise bad(f"directory {child.name!r} appears twice in the tree")
                    seen_dirs.add(id(child))
                    subdirs.append(obj)
                elif kind == _S_IFLNK:
                    target = child.inode.symlink
                    if target is None:
                        raise bad(f"symlink {child.name!r} has no target")
                    obj.data = len(target)
                    obj.placement = allocator.place_with_tail(obj.inode_size, obj.data)
                    obj.offset = obj.placement.offset
                elif _stat.S_IFMT(mode) in _SPECIAL:
                    obj.placement = allocator.place_special(obj.inode_size)
                    obj.offset = obj.placement.offset
                else:
                    raise bad(f"{child.name!r} has an unknown file type (mode {mode:#o})")
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
                    raise bad(f"name {name!r} appears twice in one directory")
        check_names(children)
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
                raise bad(f"{node.name!r}: chunk at file offset {chunk.file_offset:#x} does not fit "
                           f"a file of {size} bytes in {cs:#x}-byte chunks in order")
            self._check_chunk(node, chunk, blob_count, block_mask)
            slots[slot] = chunk
            last = slot
        return chunks if len(chunks) == count else slots

    @staticmethod
    def _check_chunk(node: Node, chunk: Chunk, blob_count: int, block_mask: int) -> None:
        if not 0 <= chunk.blob_index < blob_count:
            raise bad(f"{node.name!r}: chunk refers to blob {chunk.blob_index} of {blob_count}")
        if chunk.uncompressed_offset & block_mask or not 0 <= chunk.index < MAX_CHUNKS_PER_BLOB:
            raise bad(f"{node.name!r}: chunk {chunk.index} at uncompressed offset "
                       f"{chunk.uncompressed_offset:#x} is not block aligned or out of range")

    # -- the tables at the front ------------------------------------------------------------------

    def write(self) -> bytes:
        allocator = self._plan()
        bs = self.block_size
        blob_table_offset = round_up(layout.RAFSV6_DEVTABLE_OFFSET + layout.EROFS_DEVT_SLOT_SIZE * len(self.blobs),
                                      ALIGNMENT)
        blob_table_size = layout.RAFSV6_BLOB_ENTRY_SIZE * len(self.blobs)
        prefetch_size = 4 * len(self.prefetch) if blob_table_size else 0
        # Shift everything so the root inode sits one block after meta_blkaddr (root nid 128).
        root_offset = self.order[0].offset
        orig_meta_addr = root_offset - ALIGNMENT
        if blob_table_size:
            meta_addr = round_up(blob_table_offset + blob_table_size + prefetch_size,
                                  ALIGNMENT)
        else:
            meta_addr = orig_meta_addr
        self.shift = meta_addr - orig_meta_addr
        self.meta_addr = meta_addr

        self.buf = bytearray(max(self.shift + allocator.cursor, blob_table_offset + blob_table_size))
        self.end = 0
        chunk_table = self._write_objects()
        meta_end = round_up(self.end, ALIGNMENT)
        del self.buf[meta_end:]
        self.buf += bytes(meta_end - len(self.buf))
        chunk_table_offset = meta_end
        self.buf += chunk_table
        self.buf += bytes(-len(self.buf) % ALIGNMENT)

        devslots, blocks, inlined_digest = device_slots(self.blobs, bs, self.devslot_alignment, len(self.buf))
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
        table = b"".join(blob_entry(i, blob) for i, blob in enumerate(self.blobs))
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
            raise bad(f"prefetch node {node.name!r} is not in the tree")
        return self._nid(obj)

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
                self._write_inode(obj, layout.EROFS_INODE_FLAT_PLAIN, u32(obj.node.inode.rdev, "rdev"))
        pack = CHUNK_INFO.struct.pack
        # in digest order; map() rather than a generator (no Python step per chunk); digests are 32 bytes
        # in every image the builder makes, so padding is only called for others
        in_order = map(chunk_cache.__getitem__, sorted(chunk_cache))
        try:
            return b"".join([pack(c.digest if len(c.digest) == 32 else digest32(c.digest), c.blob_index, c.flags,
                                  c.compressed_size, c.uncompressed_size, c.compressed_offset, c.uncompressed_offset,
                                  c.file_offset, c.index, c.crc32)
                             for c in in_order])
        except struct.error as exc:
            raise InvalidArgumentError(f"cannot encode {CHUNK_INFO.name}: {exc}") from None

    def _write_inode(self, obj: _Object, data_layout: int, i_u: int, size: int | None = None) -> int:
        """The extended inode and its inline xattrs; returns the offset just after them."""
        offset = obj.offset + self.shift
        record = inode_record(obj, data_layout, i_u, size)
        end = offset + len(record)
        self.buf[offset:end] = record
        if end > self.end:
            self.end = end
        return end

    def _write_tailed(self, obj: _Object, blocks: list[bytes], size: int) -> None:
        """A directory's or symlink's inode and data: full blocks at i_u, the tail inline or not."""
        placement = obj.placement
        data_offset = placement.data_offset + self.shift
        inline_at = self._write_inode(obj, placement.layout, u32(data_offset // self.block_size, "blkaddr"),
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
                raise bad(f"file of {size} bytes is too big for one EROFS chunk")
            chunk_format = layout.EROFS_CHUNK_FORMAT_INDEXES | chunk_bits
        record = inode_record(obj, _CHUNK_BASED, chunk_format)
        bits = self.block_bits
        addrs = []
        for chunk in slots:
            if chunk is None:
                addrs.append(_NULL_CHUNK_ADDR)
                continue
            blkaddr = chunk.uncompressed_offset >> bits
            if blkaddr >= _NULL_ADDR:
                raise bad(f"chunk at uncompressed offset {chunk.uncompressed_offset:#x} is beyond the "
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


_row_name = operator.itemgetter(0)       # sort key of dirent rows: the name (a C call, not a Python one)
