"""Read a RAFS v6 bootstrap or a plain EROFS image lazily into the version-neutral model.

Inode numbers are EROFS nids, as nydusd and the kernel report them. Only the superblocks, the device
table and the blob table are decoded when the reader is made (and the root inode, to refuse images
whose root is not a directory); inodes, directories and chunk indexes are decoded on demand, with every
offset and count checked against the image size first.

Where file data lives:

* RAFS v6 (``COMPAT_RAFS_V6``): every regular file is chunk-based; each 8-byte chunk index names a blob
  (``c_blob_addr_hi & 0xff`` - 1) and a 24-bit index into that blob's CI array. The chunk is resolved
  through the bootstrap's chunk info table, or failing that through the blob's CI array (blob meta),
  which ``chunk_info_source`` (given by :func:`rafs.open`) loads on demand. In tarfs mode the tar is
  the blob: a chunk is the plain bytes at ``c_blk_addr`` (512-byte blocks), with no digest.
* plain EROFS: flat (``FLAT_PLAIN``/``FLAT_INLINE``) data and chunk-based data with device id 0 live in
  the image itself, returned as chunks of the pseudo blob :data:`rafs.model.META_BLOB_INDEX` addressed by
  image byte offset; chunks on an extra device (``mkfs.erofs --blobdev``) belong to blob ``device - 1``.
  Addresses in the unified block space that fall into a device's ``mapped_blkaddr`` range are redirected
  to that device, as the kernel does.
* compressed EROFS (``mkfs.erofs -z``: COMPRESSED_FULL/COMPRESSED_COMPACT inodes): one chunk per extent
  of the pseudo blob :data:`rafs.model.ZDATA_BLOB_INDEX`, mapped by :mod:`rafs.v6.zmap` and decoded by
  :mod:`rafs.v6.zdata` (:attr:`V6Reader.zdata` is also that pseudo blob's chunk reader).

Plain EROFS images carry no compressor or digester: their ``flags`` are reported as
``COMPRESSION_NONE | HASH_SHA256`` and their chunks have no digests (nothing to verify).
"""

from __future__ import annotations

import functools
import itertools
import operator
import os
import stat as _stat
import struct
from typing import Callable, Iterator

from .. import _codec
from ..blob import codecs
from ..blob.ids import blob_table_faults
from ..errors import InvalidImageError, UnsupportedError
from ..model import (BLOB_FEATURES_INVALID_MASK, CIPHER_NAMES, COMPRESSOR_NAMES, DEFAULT_CHUNK_SIZE,
                     DIGESTER_NAMES, MAX_CHUNK_SIZE, MAX_CHUNKS_PER_BLOB, META_BLOB_INDEX, MIN_CHUNK_SIZE,
                     Blob, BlobFeatures, Chunk, ImageReader, Inode, InodeFlags, SuperFlags)
from . import dirent, layout, xattr

from .records import BLOB, CHUNK_INDEX, CHUNK_INFO, DEVICE, INODE_RECORDS
_U32 = struct.Struct("<I")
_U16 = struct.Struct("<H")

# Flat data is handed out in pieces of this size (aligned in the file), so a read touches only what
# it needs and no piece exceeds the chunk reader's 16 MiB limit.
FLAT_PIECE_SIZE = DEFAULT_CHUNK_SIZE
# Plain EROFS images have no compressor or digester of their own.
PLAIN_EROFS_FLAGS = SuperFlags.COMPRESSION_NONE | SuperFlags.HASH_SHA256
# Directories of at most this many blocks get a name -> nid dict for lookups (at most LOOKUP_TABLES of
# them cached, the most recently used); larger ones are searched block by block.
LOOKUP_TABLE_BLOCKS = 4
LOOKUP_TABLES = 256
# Symlink targets longer than this cannot come from a Linux file system (PATH_MAX - 1).
MAX_SYMLINK_SIZE = 4095
_BLOB_MAX_UNCOMPRESSED = 1 << 44        # v6.rs BLOB_MAX_SIZE_UNCOMPRESSED
_BLOB_MAX_COMPRESSED = 1 << 40
_CI_V1_SIZE, _CI_V2_SIZE = 16, 24
_FILE_TYPES = frozenset(layout.EROFS_FILE_TYPE_BY_MODE)
_COMPACT = INODE_RECORDS[layout.EROFS_INODE_LAYOUT_COMPACT]
_EXTENDED = INODE_RECORDS[layout.EROFS_INODE_LAYOUT_EXTENDED]
_COMPACT_SIZE, _EXTENDED_SIZE = _COMPACT.size, _EXTENDED.size


def _skipping_reserved(record: _codec.FastRecord):
    """``unpack_from`` of the record's own struct format with the trailing reserved bytes skipped
    (``16s`` -> ``16x``), so the hot path makes no bytes object per inode."""
    fmt = record.struct.format
    assert record.fields[-1] == "i_reserved2" and fmt.endswith("s")
    return struct.Struct(fmt[:-1] + "x").unpack_from


_COMPACT_UNPACK, _EXTENDED_UNPACK = _skipping_reserved(_COMPACT), _skipping_reserved(_EXTENDED)
# both inode records start i_format, i_xattr_icount, i_mode, (16 bits), i_size
_I_SIZE = _COMPACT.fields.index("i_size")
_COMPACT_NLINK_OFFSET = 6                # after the 16-bit i_format, i_xattr_icount and i_mode
assert _COMPACT.fields.index("i_nlink") == 3 and _COMPACT.struct.format.lstrip("<=").startswith("HHHH")
assert _COMPACT.fields[:3] == _EXTENDED.fields[:3] == ("i_format", "i_xattr_icount", "i_mode")
assert _EXTENDED.fields.index("i_size") == _I_SIZE
_UNKNOWN_I_FORMAT = ~layout.EROFS_I_ALL
_EXTENDED_BIT = layout.EROFS_I_VERSION_MASK
_DATALAYOUT_BIT, _DATALAYOUT_MASK = layout.EROFS_I_DATALAYOUT_BIT, layout.EROFS_I_DATALAYOUT_MASK
_NLINK_1_BIT = layout.EROFS_I_NLINK_1_BIT
_NLINK_1 = 1 << _NLINK_1_BIT
# what V6Reader.stat_list decodes in bulk: the uncompressed layouts, compact with or without the
# nlink-is-1 bit, or extended; file types whose st_rdev is 0
_BULK_LAYOUTS = (layout.EROFS_INODE_FLAT_PLAIN, layout.EROFS_INODE_FLAT_INLINE, layout.EROFS_INODE_CHUNK_BASED)
_BULK_EXTENDED_FORMATS = frozenset(layout.EROFS_I_VERSION_MASK | d << _DATALAYOUT_BIT for d in _BULK_LAYOUTS)
_BULK_COMPACT_FORMATS = frozenset(n | d << _DATALAYOUT_BIT for d in _BULK_LAYOUTS for n in (0, _NLINK_1))
_BULK_FILE_TYPES = frozenset((_stat.S_IFREG, _stat.S_IFDIR, _stat.S_IFLNK, _stat.S_IFIFO, _stat.S_IFSOCK))
# every i_format with no unknown bit and a known data layout
_KNOWN_I_FORMATS = frozenset(f for f in range(layout.EROFS_I_ALL + 1)
                             if f >> _DATALAYOUT_BIT & _DATALAYOUT_MASK in layout.EROFS_DATALAYOUT_NAMES)
_CHUNK_BASED = layout.EROFS_INODE_CHUNK_BASED
_FLAT_INLINE = layout.EROFS_INODE_FLAT_INLINE
_COMPRESSED_LAYOUTS = (layout.EROFS_INODE_COMPRESSED_FULL, layout.EROFS_INODE_COMPRESSED_COMPACT)
_S_IFMT, _S_IFDIR, _S_IFREG, _S_IFLNK = 0o170000, _stat.S_IFDIR, _stat.S_IFREG, _stat.S_IFLNK
_S_IFCHR, _S_IFBLK = _stat.S_IFCHR, _stat.S_IFBLK
_XATTR_FLAG, _SYMLINK_FLAG, _HARDLINK_FLAG = int(InodeFlags.XATTR), int(InodeFlags.SYMLINK), int(InodeFlags.HARDLINK)


def is_erofs(data) -> bool:
    """Whether ``data`` starts like an EROFS image (RAFS v6 included): magic 0xE0F5E1E2 at 1024."""
    head = bytes(data[layout.EROFS_SUPER_OFFSET:layout.EROFS_SUPER_OFFSET + 4])
    return len(head) == 4 and _U32.unpack(head)[0] == layout.EROFS_SUPER_MAGIC_V1


def _checksum_length(block_size: int) -> int:
    """Bytes from 1024 that the superblock checksum covers: the rest of the first block, or a whole
    block when blocks are smaller than 1024 bytes."""
    return block_size - layout.EROFS_SUPER_OFFSET if block_size > layout.EROFS_SUPER_OFFSET else block_size


def erofs_sb_checksum(data, block_size: int) -> int:
    """The kernel's superblock checksum: crc32c (no final xor) over the superblock block from 1024
    with the checksum field zeroed (fs/erofs/super.c erofs_superblock_csum_verify)."""
    start = layout.EROFS_SUPER_OFFSET
    block = bytearray(data[start:start + _checksum_length(block_size)])
    block[4:8] = b"\0\0\0\0"
    return codecs.crc32c(bytes(block)) ^ 0xFFFF_FFFF


def _decode_dev(raw: int) -> int:
    """st_rdev of a device inode: the kernel's new_decode_dev, re-encoded as userspace sees it."""
    major = (raw & 0xFFF00) >> 8
    minor = (raw & 0xFF) | ((raw >> 12) & 0xFFF00)
    return os.makedev(major, minor)


class _Record:
    """One decoded on-disk inode and where its parts are."""

    __slots__ = ("nid", "offset", "extended", "datalayout", "mode", "size", "inode_size", "xattr_size",
                 "startblk", "format", "data")

    @property
    def raw(self):
        """The on-disk record, every field by name (unpacked on demand: most users need none)."""
        return INODE_RECORDS[self.extended].unpack_from(self.data, self.offset)

    @property
    def body_end(self) -> int:
        """First byte after the inode and its inline xattrs."""
        return self.offset + self.inode_size + self.xattr_size

    @property
    def layout_name(self) -> str:
        return layout.EROFS_DATALAYOUT_NAMES.get(self.datalayout, str(self.datalayout))


class V6Reader(ImageReader):
    """A RAFS v6 bootstrap or plain EROFS image held in ``data`` (bytes, mmap or memoryview).

    ``blob_id_hint`` is the id of the blob the bootstrap was extracted from (``--blob-inline-meta``):
    it replaces the placeholder id the builder wrote, as the reference's ``BlobInfo::blob_id`` does.
    ``chunk_info_source`` (a :class:`rafs.image.protocols.ChunkInfoSource`: blob -> its CI entries)
    resolves chunks the chunk info table does not hold.
    """

    version = 6

    def __init__(self, data, *, blob_id_hint: str | None = None, inode_cache_size: int = 4096,
                 chunk_info_source: Callable[[Blob], list] | None = None):
        self.data = data
        self.size = len(data)
        self.blob_id_hint = blob_id_hint
        self.chunk_info_source = chunk_info_source
        if not is_erofs(data) or self.size < layout.EROFS_SUPER_OFFSET + layout.EROFS_SUPER_BLOCK_SIZE:
            raise InvalidImageError("no EROFS superblock (magic 0xe0f5e1e2 at 1024)", structure="v6 superblock",
                                    offset=layout.EROFS_SUPER_OFFSET)
        self.superblock = sb = _codec.parse(layout.SuperBlock, data, layout.EROFS_SUPER_OFFSET,
                                            structure="v6 superblock")
        self.is_rafs = bool(sb.s_feature_compat & layout.EROFS_FEATURE_COMPAT_RAFS_V6)
        self.block_bits = sb.s_blkszbits
        self.block_size = 1 << min(sb.s_blkszbits, 63)
        self._validate_superblock(sb)
        self.meta_base = sb.s_meta_blkaddr * self.block_size
        self.root_ino = sb.s_root_nid
        self.extra_devices = sb.s_extra_devices if sb.s_feature_incompat & \
            layout.EROFS_FEATURE_INCOMPAT_DEVICE_TABLE else 0
        self.device_id_mask = (1 << self.extra_devices.bit_length()) - 1 if self.extra_devices else 0
        self.devices = self._read_devices(sb)
        self.superblock_ext = None
        self._shared_xattr_base: int | None = None
        if self.is_rafs:
            self.superblock_ext = ext = _codec.parse(layout.SuperBlockExt, data, layout.EROFS_SUPER_OFFSET +
                                                     layout.EROFS_SUPER_BLOCK_SIZE, structure="v6 superblock ext")
            self._validate_ext(ext)
            self.flags = SuperFlags(ext.s_flags)
            self.chunk_size = ext.s_chunk_size
            self.blobs = self._read_blob_table(ext)
        else:
            self.flags = PLAIN_EROFS_FLAGS
            self.chunk_size = self.block_size
            self.blobs = self._device_blobs()
            self._shared_xattr_base = sb.s_xattr_blkaddr * self.block_size
        self._build_time, self._build_time_nsec = sb.s_build_time, sb.s_build_time_nsec
        self.inode_count = sb.s_inos            # what statfs reports as f_files
        self._chunk_table: dict | None = None
        self._ci_arrays: dict[int, list] = {}
        self._zdata = None
        self._record = functools.lru_cache(maxsize=inode_cache_size)(self._decode_record)
        self._cached_inode = functools.lru_cache(maxsize=inode_cache_size)(self._inode)
        self.inode_uncached = self._inode
        self.inode = self._cached_inode         # the cached decoder itself: no extra call per lookup
        self._dir_blocks = functools.lru_cache(maxsize=256)(self._parse_dir_block)
        self._lookup_tables = functools.lru_cache(maxsize=LOOKUP_TABLES)(self._lookup_table)
        if not self.inode(self.root_ino).is_dir:
            raise InvalidImageError(f"root nid {self.root_ino} is not a directory", structure="v6 superblock",
                                    offset=layout.EROFS_SUPER_OFFSET + 14)

    # -- superblock and tables -------------------------------------------------------------------

    def _validate_superblock(self, sb) -> None:
        def bad(message, field_offset=0):
            raise InvalidImageError(message, structure="v6 superblock",
                                    offset=layout.EROFS_SUPER_OFFSET + field_offset)

        bits = sb.s_blkszbits
        if self.is_rafs:
            if bits not in (9, 12):
                bad(f"s_blkszbits {bits} is neither 9 nor 12", 12)
            if self.size < layout.RAFSV6_ALIGNMENT or self.size % self.block_size:
                bad(f"bootstrap size {self.size} is below 4096 or not a multiple of the block size")
            if sb.s_checksum:
                bad(f"s_checksum {sb.s_checksum:#x} is not 0", 4)
            if sb.s_extslots:
                bad(f"s_extslots {sb.s_extslots} is not 0", 13)
            if sb.s_inos == 0:
                bad("s_inos is 0", 16)
            if sb.s_u:
                bad(f"s_u {sb.s_u:#x} is not 0", 84)
            if sb.s_xattr_blkaddr:
                bad(f"s_xattr_blkaddr {sb.s_xattr_blkaddr} is not 0 (RAFS has no shared xattrs)", 44)
            if sb.s_feature_incompat != layout.RAFSV6_FEATURE_INCOMPAT:
                bad(f"s_feature_incompat {sb.s_feature_incompat:#x} is not CHUNKED_FILE|DEVICE_TABLE", 80)
            if sb.s_devt_slotoff * layout.EROFS_DEVT_SLOT_SIZE != layout.RAFSV6_DEVTABLE_OFFSET:
                bad(f"s_devt_slotoff {sb.s_devt_slotoff} does not put the device table at 1408", 88)
        else:
            if not layout.EROFS_BLKSZBITS_MIN <= bits <= 16:
                bad(f"s_blkszbits {bits} outside 9..16", 12)
            if sb.s_feature_compat & layout.EROFS_FEATURE_COMPAT_SB_CHKSUM:
                if self.size < layout.EROFS_SUPER_OFFSET + _checksum_length(self.block_size):
                    bad("image too small for its superblock checksum")
                expected = erofs_sb_checksum(self.data, self.block_size)
                if expected != sb.s_checksum:
                    bad(f"superblock checksum {sb.s_checksum:#010x} != computed {expected:#010x}", 4)
            unknown = sb.s_feature_incompat & ~((layout.EROFS_FEATURE_INCOMPAT_METABOX << 1) - 1)
            if unknown:
                raise UnsupportedError(f"EROFS image with unknown incompatible features {unknown:#x}")
            for bit in (layout.EROFS_FEATURE_INCOMPAT_48BIT, layout.EROFS_FEATURE_INCOMPAT_METABOX):
                if sb.s_feature_incompat & bit:
                    raise UnsupportedError(f"EROFS images with the {layout.EROFS_FEATURE_INCOMPAT_NAMES[bit]} "
                                           "feature are not supported")
            if layout.EROFS_SUPER_BLOCK_SIZE + layout.EROFS_SB_EXTSLOT_SIZE * sb.s_extslots > \
                    4096 - layout.EROFS_SUPER_OFFSET:
                bad(f"s_extslots {sb.s_extslots} makes the superblock larger than its block", 13)
        if sb.s_dirblkbits:
            raise UnsupportedError(f"EROFS directory block bits {sb.s_dirblkbits} are not supported")
        if sb.s_meta_blkaddr * self.block_size > self.size:
            bad(f"s_meta_blkaddr {sb.s_meta_blkaddr} lies past the end of the image", 40)

    def _read_devices(self, sb) -> list:
        count = self.extra_devices
        if not count:
            return []
        start = sb.s_devt_slotoff * layout.EROFS_DEVT_SLOT_SIZE
        if start < layout.EROFS_SUPER_OFFSET + layout.EROFS_SUPER_BLOCK_SIZE or \
                start + count * layout.EROFS_DEVT_SLOT_SIZE > self.size:
            raise InvalidImageError(f"device table of {count} slots at {start:#x} overlaps the superblock or "
                                    "runs past the image", structure="v6 device table", offset=start)
        devices = list(DEVICE.iter_unpack(self.data, start, count))
        if self.is_rafs:
            seen = set()
            for i, dev in enumerate(devices):
                at = start + i * layout.EROFS_DEVT_SLOT_SIZE
                if dev.blocks == 0:
                    raise InvalidImageError(f"device slot {i} has 0 blocks", structure="v6 device table", offset=at)
                blob_id = self._blob_id_text(dev.blob_id, "v6 device table", at)
                if blob_id in seen:
                    raise InvalidImageError(f"duplicate blob id {blob_id} in the device table",
                                            structure="v6 device table", offset=at)
                seen.add(blob_id)
        return devices

    @staticmethod
    def _blob_id_text(raw: bytes, structure: str, offset: int) -> str:
        text = raw.rstrip(b"\0")
        try:
            return text.decode("ascii")
        except UnicodeDecodeError:
            raise InvalidImageError(f"blob id {text!r} is not ASCII", structure=structure, offset=offset) from None

    def _validate_ext(self, ext) -> None:
        def bad(message, field_offset=0):
            raise InvalidImageError(message, structure="v6 superblock ext",
                                    offset=layout.EROFS_SUPER_OFFSET + layout.EROFS_SUPER_BLOCK_SIZE + field_offset)

        flags = ext.s_flags
        unknown = flags & ~SuperFlags.known_mask()
        if unknown:
            bad(f"s_flags has unknown bits {unknown:#x}")
        compression = flags & (SuperFlags.COMPRESSION_NONE | SuperFlags.COMPRESSION_LZ4 |
                               SuperFlags.COMPRESSION_GZIP | SuperFlags.COMPRESSION_ZSTD)
        if bin(compression).count("1") != 1:
            bad(f"s_flags {flags:#x} does not name exactly one compressor")
        if bin(flags & (SuperFlags.HASH_BLAKE3 | SuperFlags.HASH_SHA256)).count("1") != 1:
            bad(f"s_flags {flags:#x} does not name exactly one digester")
        cs = ext.s_chunk_size
        if not (MIN_CHUNK_SIZE <= cs <= MAX_CHUNK_SIZE and cs & (cs - 1) == 0):
            bad(f"s_chunk_size {cs:#x} is not a power of two in [0x1000, 0x1000000]", 20)
        devslot_end = layout.RAFSV6_DEVTABLE_OFFSET + layout.EROFS_DEVT_SLOT_SIZE * self.extra_devices
        spans = []
        offset, size = ext.s_blob_table_offset, ext.s_blob_table_size
        if offset % layout.RAFSV6_ALIGNMENT or offset < max(layout.RAFSV6_ALIGNMENT, devslot_end) or \
                size % layout.RAFSV6_BLOB_ENTRY_SIZE or offset + size > self.size:
            bad(f"blob table [{offset:#x}, +{size:#x}) is misplaced", 8)
        spans.append((offset, offset + size, "blob table"))
        offset, size = ext.s_chunk_table_offset, ext.s_chunk_table_size
        if size:
            if offset % layout.RAFSV6_ALIGNMENT or offset < max(layout.RAFSV6_ALIGNMENT, devslot_end) or \
                    size % layout.RAFSV6_CHUNK_INFO_SIZE or offset + size > self.size:
                bad(f"chunk table [{offset:#x}, +{size:#x}) is misplaced", 24)
            spans.append((offset, offset + size, "chunk table"))
        offset, size = ext.s_prefetch_table_offset, ext.s_prefetch_table_size
        # Legacy builds may leave a size with a zero offset for empty file systems.
        if size and offset:
            if offset < max(layout.RAFSV6_ALIGNMENT, devslot_end) or size % 4 or offset + size > self.size:
                bad(f"prefetch table [{offset:#x}, +{size:#x}) is misplaced", 40)
            spans.append((offset, offset + size, "prefetch table"))
        spans.sort()
        for (_, end, name), (start, _, other) in zip(spans, spans[1:]):
            if start < end:
                bad(f"{name} overlaps {other}")

    def _read_blob_table(self, ext) -> list[Blob]:
        count = ext.s_blob_table_size // layout.RAFSV6_BLOB_ENTRY_SIZE
        mapped = {}
        for i, dev in enumerate(self.devices):
            mapped[dev.blob_id.rstrip(b"\0")] = dev.mapped_blkaddr
        tarfs = bool(self.flags & SuperFlags.TARTFS_MODE)
        blobs = []
        for i, entry in enumerate(BLOB.iter_unpack(self.data, ext.s_blob_table_offset, count)):
            at = ext.s_blob_table_offset + i * layout.RAFSV6_BLOB_ENTRY_SIZE
            self._validate_blob_entry(entry, i, tarfs, at)
            raw_id = self._blob_id_text(entry.blob_id, "v6 blob table", at)
            cipher = CIPHER_NAMES[entry.cipher_algo]
            blob = Blob(index=i, blob_id=raw_id, compressor=COMPRESSOR_NAMES[entry.compression_algo],
                        digester=DIGESTER_NAMES[entry.digest_algo], chunk_size=entry.chunk_size,
                        chunk_count=entry.chunk_count, compressed_size=entry.compressed_size,
                        uncompressed_size=entry.uncompressed_size, features=entry.features,
                        ci_compressor=COMPRESSOR_NAMES[entry.ci_compressor], ci_offset=entry.ci_offset,
                        ci_compressed_size=entry.ci_compressed_size,
                        ci_uncompressed_size=entry.ci_uncompressed_size, toc_digest=entry.blob_toc_digest,
                        toc_size=entry.blob_toc_size, cipher=cipher,
                        mapped_blkaddr=mapped.get(entry.blob_id.rstrip(b"\0"), 0))
            if cipher == "none":
                blob.meta_digest, blob.meta_size = entry.blob_meta_digest, entry.blob_meta_size
            else:
                # encrypted blobs reuse these fields for the key and the first half of the IV
                blob.cipher_key = entry.blob_meta_digest
                blob.cipher_iv = entry.blob_meta_size.to_bytes(8, "little") + entry.cipher_iv
            blobs.append(blob)
        self._apply_blob_id_hint(blobs)
        return blobs

    def _validate_blob_entry(self, entry, index: int, tarfs: bool, at: int) -> None:
        """The checks of v6.rs ``RafsV6Blob::validate``."""
        def bad(message):
            raise InvalidImageError(f"blob entry {index}: {message}", structure="v6 blob table", offset=at)

        if entry.blob_index != index:
            bad(f"blob_index {entry.blob_index} is not its position")
        if entry.chunk_size != self.chunk_size:
            bad(f"chunk_size {entry.chunk_size:#x} differs from the superblock's")
        if entry.chunk_count > MAX_CHUNKS_PER_BLOB:
            bad(f"chunk_count {entry.chunk_count} exceeds {MAX_CHUNKS_PER_BLOB}")
        if entry.compression_algo not in COMPRESSOR_NAMES or entry.ci_compressor not in COMPRESSOR_NAMES or \
                entry.digest_algo not in DIGESTER_NAMES or entry.cipher_algo not in CIPHER_NAMES:
            bad(f"unknown algorithm ids {entry.compression_algo}/{entry.ci_compressor}/{entry.digest_algo}/"
                f"{entry.cipher_algo}")
        if entry.uncompressed_size > _BLOB_MAX_UNCOMPRESSED or entry.compressed_size > _BLOB_MAX_COMPRESSED:
            bad("blob sizes exceed the reference's limits")
        features = entry.features
        if features & BLOB_FEATURES_INVALID_MASK:
            bad(f"invalid feature bits {features:#x}")
        if bool(features & BlobFeatures.ALIGNED) == tarfs:
            bad("ALIGNED must be set exactly when the image is not in tarfs mode")
        if entry.ci_compressed_size > entry.ci_uncompressed_size:
            bad("ci_compressed_size exceeds ci_uncompressed_size")
        count, ci = entry.chunk_count, entry.ci_uncompressed_size
        special = features & (BlobFeatures.BATCH | BlobFeatures.ZRAN | BlobFeatures.ENCRYPTED)
        if features & BlobFeatures.CHUNK_INFO_V2:
            if (ci < count * _CI_V2_SIZE) if special else (ci != count * _CI_V2_SIZE):
                bad(f"ci_uncompressed_size {ci} does not fit {count} v2 chunk infos")
        elif special:
            bad("BATCH/ZRAN/ENCRYPTED blobs need CHUNK_INFO_V2")
        elif not (features & BlobFeatures.IS_CHUNKDICT_GENERATED) and not tarfs and ci != count * _CI_V1_SIZE:
            bad(f"ci_uncompressed_size {ci} does not fit {count} v1 chunk infos")

    def _apply_blob_id_hint(self, blobs: list[Blob]) -> None:
        """Blobs that carried this bootstrap take the id they were found under (``BlobInfo::blob_id``):
        the placeholder id always; with a single blob also an inline-meta or pre-ToC blob's own id."""
        hint = self.blob_id_hint
        if not hint:
            return
        for blob in blobs:
            inline = blob.has(BlobFeatures.INLINED_FS_META) and not blob.has(BlobFeatures.SEPARATE)
            if blob.blob_id == layout.RAFSV6_INLINE_BLOB_ID_PLACEHOLDER or \
                    (len(blobs) == 1 and (inline or not blob.has(BlobFeatures.CAP_TAR_TOC))):
                blob.blob_id = hint

    def _device_blobs(self) -> list[Blob]:
        """Plain EROFS: one blob per extra device, named by its tag when it has one."""
        blobs = []
        for i, dev in enumerate(self.devices):
            tag = dev.blob_id.split(b"\0", 1)[0].decode("ascii", "replace")
            size = dev.blocks * self.block_size
            blobs.append(Blob(index=i, blob_id=tag or f"erofs-device-{i + 1}", compressor="none",
                              digester="sha256", chunk_size=self.block_size, compressed_size=size,
                              uncompressed_size=size, mapped_blkaddr=dev.mapped_blkaddr))
        return blobs

    def prefetch_inodes(self) -> list[int]:
        ext = self.superblock_ext
        if ext is None or not ext.s_prefetch_table_offset or not ext.s_prefetch_table_size:
            return []
        offset, size = ext.s_prefetch_table_offset, ext.s_prefetch_table_size
        return [nid for (nid,) in _U32.iter_unpack(bytes(self.data[offset:offset + size]))]

    def chunk_table(self) -> dict:
        """{(blob index, CI index): chunk info record} of the bootstrap's chunk info table, built once."""
        if self._chunk_table is None:
            table = {}
            ext = self.superblock_ext
            if ext is not None and ext.s_chunk_table_size:
                count = ext.s_chunk_table_size // layout.RAFSV6_CHUNK_INFO_SIZE
                for rec in CHUNK_INFO.iter_unpack(self.data, ext.s_chunk_table_offset, count):
                    table.setdefault((rec.blob_index, rec.index), rec)
            self._chunk_table = table
        return self._chunk_table

    # -- inodes ----------------------------------------------------------------------------------

    def inode_offset(self, nid: int) -> int:
        return self.meta_base + nid * layout.EROFS_INODE_SLOT_SIZE

    def _attributes(self, nid: int) -> tuple:
        """What every decoder of inode ``nid`` starts from, checked against the image: the inode and its
        inline xattrs inside it, a known format, layout and file type, a size below 2^63, a symlink
        target of at most MAX_SYMLINK_SIZE bytes. One ``struct`` unpack of the compact or extended record.

        The first ten values are :class:`rafs.Stat`'s fields (st_mode, st_ino, st_nlink, st_uid, st_gid,
        st_size, st_mtime_ns, st_rdev, st_blocks, st_dev), then offset, i_format, data layout, xattr
        icount, i_u, offset of the inline xattrs, mtime and mtime_nsec. Compact and extended records
        answer alike: a compact inode's mtime is the superblock's build time plus its i_mtime (kernel
        >= 6.15; 0, the former reserved field, in older images), and its nlink is 1 when
        EROFS_I_NLINK_1_BIT says so (the field then holds high bits of i_u)."""
        offset = self.meta_base + (nid << 5)
        image_size = self.size
        if nid < 0 or offset + _COMPACT_SIZE > image_size:
            raise InvalidImageError(f"nid {nid} lies outside the image", structure="v6 inode",
                                    offset=self.inode_offset(nid))
        data = self.data
        ifmt = data[offset] | data[offset + 1] << 8
        datalayout = ifmt >> _DATALAYOUT_BIT & _DATALAYOUT_MASK
        if ifmt not in _KNOWN_I_FORMATS:
            if ifmt & _UNKNOWN_I_FORMAT:
                raise InvalidImageError(f"nid {nid} has unsupported i_format {ifmt:#x}", structure="v6 inode",
                                        offset=offset)
            raise InvalidImageError(f"nid {nid} has unknown data layout {datalayout}", structure="v6 inode",
                                    offset=offset)
        if ifmt & _EXTENDED_BIT:
            body = offset + _EXTENDED_SIZE
            if body > image_size:
                raise InvalidImageError(f"nid {nid} inode runs past the image", structure="v6 inode",
                                        offset=offset)
            _, icount, mode, _, size, i_u, _, uid, gid, mtime, mtime_nsec, nlink = _EXTENDED_UNPACK(data, offset)
        else:
            body = offset + _COMPACT_SIZE
            _, icount, mode, nlink, size, reserved, i_u, _, uid, gid = _COMPACT_UNPACK(data, offset)
            mtime, mtime_nsec = self._build_time + reserved, self._build_time_nsec
            if (ifmt >> _NLINK_1_BIT) & 1 and mode & _S_IFMT != _S_IFDIR:
                nlink = 1
        if icount and body + xattr.body_size(icount) > image_size:
            raise InvalidImageError(f"nid {nid} inode and xattrs run past the image", structure="v6 inode",
                                    offset=offset)
        if size >> 63:
            raise InvalidImageError(f"nid {nid} has a negative size", structure="v6 inode", offset=offset)
        kind = mode & _S_IFMT
        if kind not in _FILE_TYPES:
            raise InvalidImageError(f"nid {nid} has unknown file type in mode {mode:#o}",
                                    structure="v6 inode", offset=offset)
        rdev = 0
        if kind == _S_IFCHR or kind == _S_IFBLK:
            rdev = _decode_dev(i_u)
        elif kind == _S_IFLNK and size > MAX_SYMLINK_SIZE:
            raise InvalidImageError(f"nid {nid} symlink target of {size} bytes is too long",
                                    structure="v6 inode", offset=offset)
        # st_blocks, in 512-byte units: a compressed inode's i_u counts its blocks, others are rounded up
        bits = self.block_bits
        blocks = (i_u if datalayout in _COMPRESSED_LAYOUTS else (size + self.block_size - 1) >> bits) << (bits - 9)
        return (mode, nid, nlink, uid, gid, size, mtime * 1_000_000_000 + mtime_nsec, rdev, blocks, 0,
                offset, ifmt, datalayout, icount, i_u, body, mtime, mtime_nsec)

    def _decode_record(self, nid: int) -> _Record:
        (mode, _, _, _, _, size, _, _, _, _, offset, ifmt, datalayout, icount, i_u, body, _,
         _) = self._attributes(nid)
        rec = _Record()
        rec.nid, rec.offset, rec.format, rec.datalayout, rec.mode, rec.size = nid, offset, ifmt, datalayout, mode, size
        rec.extended = ifmt & _EXTENDED_BIT
        rec.inode_size = body - offset
        rec.xattr_size = xattr.body_size(icount)
        rec.data = self.data
        rec.startblk = i_u
        if not rec.extended and mode & _S_IFMT != _S_IFDIR and ifmt & _NLINK_1:
            # the compact i_nlink field then holds the high 16 bits of the start block
            rec.startblk |= _U16.unpack_from(self.data, offset + _COMPACT_NLINK_OFFSET)[0] << 32
        return rec

    def record(self, nid: int) -> _Record:
        return self._record(nid)

    def inode(self, ino: int) -> Inode:
        """The inode ``ino`` (an nid); every instance replaces this with its cached decoder."""
        return self._cached_inode(ino)

    def stat_values(self, ino: int) -> tuple:
        """The stat fields of nid ``ino`` straight from its record: no xattrs, symlink target or chunk
        count decoded, no :class:`Inode` made (what a bulk walk such as :meth:`rafs.Image.iter_stats`
        needs)."""
        return self._attributes(ino)[:10]

    def stat_list(self, inos) -> list[tuple]:
        """:meth:`stat_values` of every nid in ``inos`` (a directory's children, say), in bulk.

        When the records are all extended or all compact, of the uncompressed layouts and no device
        among them (what nydus-image and mkfs.erofs write for most directories), they are unpacked in
        one pass and checked as a whole: bounds by the highest offset, xattrs by the largest count,
        sizes by the largest, symlinks by the longest. Anything else, a failed check included, goes
        through :meth:`_attributes` one by one, which names the culprit. The values are the same.
        """
        if not inos:
            return []
        data, count = self.data, len(inos)
        offsets = list(map(operator.add, itertools.repeat(self.meta_base, count),
                           map(operator.lshift, inos, itertools.repeat(5, count))))
        last = max(offsets)
        if min(inos) < 0 or last + _EXTENDED_SIZE > self.size:
            return [self._attributes(nid)[:10] for nid in inos]
        rows = list(map(_EXTENDED_UNPACK, itertools.repeat(data, count), offsets))
        columns = list(zip(*rows))
        formats = set(columns[0])
        if formats <= _BULK_EXTENDED_FORMATS:
            if self._bulk_sound(columns, last + _EXTENDED_SIZE):
                bits, mask = self.block_bits, self.block_size - 1
                return [(mode, nid, nlink, uid, gid, size, mtime * 1_000_000_000 + mtime_nsec, 0,
                         ((size + mask) >> bits) << (bits - 9), 0)
                        for nid, (_, _, mode, _, size, _, _, uid, gid, mtime, mtime_nsec, nlink) in zip(inos, rows)]
        elif formats <= _BULK_COMPACT_FORMATS:          # both records start with the 16-bit i_format
            rows = list(map(_COMPACT_UNPACK, itertools.repeat(data, count), offsets))
            columns = list(zip(*rows))
            if self._bulk_sound(columns, last + _COMPACT_SIZE):
                bits, mask = self.block_bits, self.block_size - 1
                epoch, epoch_nsec = self._build_time, self._build_time_nsec
                return [(mode, nid, 1 if ifmt & _NLINK_1 and mode & _S_IFMT != _S_IFDIR else nlink, uid, gid, size,
                         (epoch + mtime) * 1_000_000_000 + epoch_nsec, 0, ((size + mask) >> bits) << (bits - 9), 0)
                        for nid, (ifmt, _, mode, nlink, size, mtime, _, _, uid, gid) in zip(inos, rows)]
        return [self._attributes(nid)[:10] for nid in inos]

    def _bulk_sound(self, columns: list[tuple], end: int) -> bool:
        """Whether unpacked records, given column by column (compact or extended: icount, mode and size
        are columns 1, 2 and 4 of both), pass :meth:`_attributes`' checks as a whole; ``end`` is where
        the last record ends."""
        _, icounts, modes, _, sizes = columns[:5]
        most_xattrs = max(icounts)
        if most_xattrs and end + xattr.body_size(most_xattrs) > self.size:
            return False
        if max(sizes) >> 63:
            return False
        kinds = {mode & _S_IFMT for mode in set(modes)}
        if not kinds <= _BULK_FILE_TYPES:
            return False
        return _S_IFLNK not in kinds or max(size for mode, size in zip(modes, sizes)
                                            if mode & _S_IFMT == _S_IFLNK) <= MAX_SYMLINK_SIZE

    def _inode(self, nid: int) -> Inode:
        """The model inode, straight from the unpacked fields (no :class:`_Record` unless the inode's
        data is needed: a symlink's target)."""
        (mode, _, nlink, uid, gid, size, _, rdev, blocks, _, _, _, datalayout, icount, i_u, body, mtime,
         mtime_nsec) = self._attributes(nid)
        kind = mode & _S_IFMT
        xattrs = xattr.decode(self.data, body, icount, shared_base=self._shared_xattr_base) if icount else {}
        flags = _XATTR_FLAG if xattrs else 0
        symlink, chunk_count = None, 0
        if kind == _S_IFREG:
            if self.is_rafs and datalayout == _CHUNK_BASED:
                chunk_count = -(-size // self.chunk_size)
            else:
                chunk_count = self._chunk_positions(nid, datalayout, size, i_u)
            if nlink > 1:
                flags |= _HARDLINK_FLAG
        elif kind == _S_IFLNK:
            symlink = self._meta_data(self._record(nid))
            flags |= _SYMLINK_FLAG
        # positional, in the order of rafs.model.Inode's fields (keywords cost a microsecond an inode)
        return Inode(nid, mode, uid, gid, size, mtime, mtime_nsec, nlink, rdev, blocks, flags, symlink, xattrs,
                     None, chunk_count)

    # -- data extents ----------------------------------------------------------------------------

    def _chunk_bits(self, rec: _Record) -> int:
        return self._chunk_format_bits(rec.nid, rec.raw.i_u)

    def _chunk_format_bits(self, nid: int, i_u: int) -> int:
        """log2 of the chunk size a chunk-based inode's i_u declares."""
        fmt = i_u & 0xFFFF
        if fmt & ~layout.EROFS_CHUNK_FORMAT_ALL or fmt & layout.EROFS_CHUNK_FORMAT_48BIT:
            raise UnsupportedError(f"nid {nid}: chunk format {fmt:#x} is not supported")
        return self.block_bits + (fmt & layout.EROFS_CHUNK_FORMAT_BLKBITS_MASK)

    def _chunk_positions(self, nid: int, datalayout: int, size: int, i_u: int) -> int:
        """Number of chunk positions (index entries, or flat pieces) of a regular file."""
        if datalayout == layout.EROFS_INODE_CHUNK_BASED:
            unit = self.chunk_size if self.is_rafs else 1 << self._chunk_format_bits(nid, i_u)
        else:
            unit = FLAT_PIECE_SIZE
        return -(-size // unit)

    @property
    def zdata(self):
        """The mapper and decoder of compressed inodes (:class:`rafs.v6.zdata.ZDataReader`), made on first
        use: most images have none."""
        if self._zdata is None:
            from .zdata import ZDataReader
            self._zdata = ZDataReader(self)
        return self._zdata

    def zdata_chunk_reader(self):
        """The chunk reader of :data:`rafs.model.ZDATA_BLOB_INDEX` (compressed EROFS extents)."""
        return self.zdata

    def _unified(self, address: int, length: int, nid: int) -> tuple[int, int]:
        """(blob index, offset) of ``length`` bytes at ``address`` in the unified (device 0) space.

        RAFS device slots map blobs' *uncompressed* space, which only the kernel's view has: RAFS
        addresses in device 0 always mean the bootstrap itself.
        """
        for i, dev in enumerate(() if self.is_rafs else self.devices):
            if not dev.mapped_blkaddr:
                continue
            start = dev.mapped_blkaddr * self.block_size
            end = start + dev.blocks * self.block_size
            if start <= address < end:
                if address + length > end:
                    break
                return i, address - start
        else:
            if address + length <= self.size:
                return META_BLOB_INDEX, address
        raise InvalidImageError(f"nid {nid}: data [{address:#x}, +{length:#x}) lies outside the image and its "
                                "devices", structure="v6 inode", offset=self.inode_offset(nid))

    def flat_extents(self, rec: _Record) -> list[tuple[int, int, int, int]]:
        return self._extents(rec)

    def _extents(self, rec: _Record) -> list[tuple[int, int, int, int]]:
        """(file offset, length, blob index, offset) of the data of a non-RAFS-chunked inode; holes left
        out. Compressed inodes have none: their bytes come from :attr:`zdata`."""
        size, bs = rec.size, self.block_size
        if size == 0 or rec.datalayout in _COMPRESSED_LAYOUTS:
            return []
        if rec.datalayout == layout.EROFS_INODE_CHUNK_BASED:
            return self._plain_chunk_extents(rec)
        nblocks = -(-size // bs)
        inline = rec.datalayout == layout.EROFS_INODE_FLAT_INLINE
        plain_bytes = (nblocks - 1) * bs if inline else size
        extents = []
        if plain_bytes and rec.startblk != layout.EROFS_NULL_ADDR:
            blob, offset = self._unified(rec.startblk * bs, plain_bytes, rec.nid)
            extents.append((0, plain_bytes, blob, offset))
        if inline:
            tail_at, tail = rec.body_end, size - plain_bytes
            if tail_at % bs + tail > bs or tail_at + tail > self.size:
                raise InvalidImageError(f"nid {rec.nid}: inline data of {tail} bytes crosses a block boundary",
                                        structure="v6 inode", offset=rec.offset)
            extents.append((plain_bytes, tail, META_BLOB_INDEX, tail_at))
        return extents

    def _index_array(self, rec: _Record, unit: int, count: int) -> int:
        start = (rec.body_end + unit - 1) // unit * unit
        if start + unit * count > self.size:
            raise InvalidImageError(f"nid {rec.nid}: {count} chunk index entries run past the image",
                                    structure="v6 chunk index", offset=start)
        return start

    def _plain_chunk_extents(self, rec: _Record) -> list[tuple[int, int, int, int]]:
        bits = self._chunk_bits(rec)
        if bits > 48:
            raise InvalidImageError(f"nid {rec.nid}: chunk size 2^{bits} is absurd", structure="v6 inode",
                                    offset=rec.offset)
        chunk = 1 << bits
        count = -(-rec.size // chunk)
        indexes = rec.raw.i_u & layout.EROFS_CHUNK_FORMAT_INDEXES
        unit = layout.EROFS_CHUNK_INDEX_SIZE if indexes else layout.EROFS_BLOCK_MAP_ENTRY_SIZE
        start = self._index_array(rec, unit, count)
        if indexes:
            entries = ((e.c_blob_addr_hi & self.device_id_mask, e.c_blk_addr)
                       for e in CHUNK_INDEX.iter_unpack(self.data, start, count))
        else:
            entries = ((0, blkaddr) for (blkaddr,) in _U32.iter_unpack(bytes(self.data[start:start + 4 * count])))
        extents = []
        for position, (device, blkaddr) in enumerate(entries):
            if blkaddr == layout.EROFS_NULL_ADDR:
                continue
            file_offset = position * chunk
            length = min(chunk, rec.size - file_offset)
            address = blkaddr * self.block_size
            if device == 0:
                blob, offset = self._unified(address, length, rec.nid)
            elif device <= len(self.devices):
                blob, offset = device - 1, address
                # erofs-utils 1.5 leaves blocks 0 in --blobdev slots: only a recorded size is a bound
                blocks = self.devices[blob].blocks
                if blocks and offset + length > blocks * self.block_size:
                    raise InvalidImageError(f"nid {rec.nid}: chunk {position} runs past device {device}",
                                            structure="v6 chunk index", offset=start + unit * position)
            else:
                raise InvalidImageError(f"nid {rec.nid}: chunk {position} names device {device} of "
                                        f"{len(self.devices)}", structure="v6 chunk index",
                                        offset=start + unit * position)
            extents.append((file_offset, length, blob, offset))
        return extents

    def _meta_data(self, rec: _Record) -> bytes:
        """All bytes of a directory or symlink, which must live in the image itself."""
        if rec.size > self.size:
            raise InvalidImageError(f"nid {rec.nid}: size {rec.size} exceeds the image", structure="v6 inode",
                                    offset=rec.offset)
        if rec.datalayout in _COMPRESSED_LAYOUTS:
            return self.zdata.read_all(rec)
        out = bytearray(rec.size)
        for file_offset, length, blob, offset in self._extents(rec):
            if blob != META_BLOB_INDEX:
                raise InvalidImageError(f"nid {rec.nid}: directory or symlink data outside the image",
                                        structure="v6 inode", offset=rec.offset)
            out[file_offset:file_offset + length] = self.data[offset:offset + length]
        return bytes(out)

    # -- directories -----------------------------------------------------------------------------

    def _dir_record(self, nid: int) -> _Record | None:
        rec = self._record(nid)
        return rec if _stat.S_ISDIR(rec.mode) else None

    def _block_count(self, rec: _Record) -> int:
        if rec.size > self.size:
            raise InvalidImageError(f"directory nid {rec.nid} size {rec.size} exceeds the image",
                                    structure="v6 inode", offset=rec.offset)
        return -(-rec.size // self.block_size)

    def _parse_dir_block(self, nid: int, index: int):
        """One decoded block of a directory (the blocks :meth:`lookup` visits are cached)."""
        rec = self._record(nid)
        return self._dir_block(rec, self._extents(rec), index)

    def _dir_block(self, rec: _Record, extents, index: int):
        """(names, nids, file types) of block ``index`` of a directory whose extents are given."""
        bs = self.block_size
        start = index * bs
        length = min(bs, rec.size - start)
        if rec.datalayout in _COMPRESSED_LAYOUTS:
            return dirent.decode_block(self.zdata.read_range(rec.nid, start, length), where=rec.offset)
        for file_offset, ext_len, blob, offset in extents:
            if file_offset <= start and start + length <= file_offset + ext_len:
                if blob != META_BLOB_INDEX:
                    break
                at = offset + start - file_offset
                return dirent.decode_block(bytes(self.data[at:at + length]), where=at)
        raise InvalidImageError(f"directory nid {rec.nid} block {index} is a hole or outside the image",
                                structure="v6 directory block", offset=rec.offset)

    def entries(self, ino: int) -> Iterator[tuple[bytes, int]]:
        """(name, nid) of every entry but ``.`` and ``..``; the whole directory is decoded at once."""
        return zip(*self.listing(ino))

    def listing(self, ino: int) -> tuple[list[bytes], list[int]]:
        """The names and nids of a directory's entries but ``.`` and ``..``, as two lists.

        Most directories are one block stored inline after the inode (FLAT_INLINE, i_size at most a
        block): those are decoded straight from the inode's fields, without the extent machinery."""
        (mode, _, _, _, _, size, _, _, _, _, _, _, datalayout, icount, _, body, _,
         _) = self._attributes(ino)
        if mode & _S_IFMT != _S_IFDIR:
            return [], []
        if datalayout == _FLAT_INLINE and 0 < size <= self.block_size:
            at = body + xattr.body_size(icount) if icount else body
            if at % self.block_size + size <= self.block_size and at + size <= self.size:
                names, nids, _ = dirent.decode_block(bytes(self.data[at:at + size]), where=at)
                return dirent.without_dots(names, nids)
        rec = self._dir_record(ino)
        if rec is None:
            return [], []
        extents = self._extents(rec)            # once per listing, not once per block
        count = self._block_count(rec)
        if count == 1:
            names, nids, _ = self._dir_block(rec, extents, 0)
        else:
            names, nids = [], []
            for index in range(count):
                block_names, block_nids, _ = self._dir_block(rec, extents, index)
                names += block_names
                nids += block_nids
        return dirent.without_dots(names, nids)

    def _lookup_table(self, nid: int):
        """What :meth:`lookup` searches in directory ``nid``: a name -> nid dict when the directory has
        at most :data:`LOOKUP_TABLE_BLOCKS` blocks, else its block count (binary search over blocks);
        None when ``nid`` is not a directory."""
        rec = self._dir_record(nid)
        if rec is None:
            return None
        count = self._block_count(rec)
        if count > LOOKUP_TABLE_BLOCKS:
            return count
        return dict(self.entries(nid))

    def lookup(self, ino: int, name: bytes) -> int | None:
        """A dict lookup in a small directory; in a large one a binary search over the directory's
        blocks by their first and last names, then inside the block."""
        table = self._lookup_tables(ino)
        if table is None or name == b"." or name == b"..":
            return None
        if type(table) is dict:
            return table.get(name)
        lo, hi = 0, table - 1
        while lo <= hi:
            mid = (lo + hi) // 2
            names, nids, _ = self._dir_blocks(ino, mid)
            if name < names[0]:
                hi = mid - 1
            elif name > names[-1]:
                lo = mid + 1
            else:
                return dirent.find(names, nids, name)
        return None

    # -- chunks ----------------------------------------------------------------------------------

    def chunks(self, ino: int) -> list[Chunk]:
        rec = self._record(ino)
        if not _stat.S_ISREG(rec.mode):
            return []
        if rec.datalayout in _COMPRESSED_LAYOUTS:
            return self.zdata.chunks(rec)
        if self.is_rafs and rec.datalayout == layout.EROFS_INODE_CHUNK_BASED:
            table = self.chunk_table()
            if not table or int(self.flags) & int(SuperFlags.TARTFS_MODE):
                return self._rafs_chunks(rec)
            # the usual RAFS file, every chunk in the bootstrap's chunk info table: one pass over the
            # chunk indexes without intermediate records (a mount asks this once per file); anything
            # unusual (a CI-only chunk, a bad blob index, an overrun) goes the long way, which says why
            size, chunk_size, blob_count = rec.size, self.chunk_size, len(self.blobs)
            count = -(-size // chunk_size)
            start = self._index_array(rec, layout.EROFS_CHUNK_INDEX_SIZE, count)
            end = start + count * layout.EROFS_CHUNK_INDEX_SIZE
            result = []
            file_offset = -chunk_size
            for lo, hi, blkaddr in CHUNK_INDEX.struct.iter_unpack(memoryview(self.data)[start:end]):
                file_offset += chunk_size
                if blkaddr == layout.EROFS_NULL_ADDR:
                    continue
                blob_index = (hi & 0xFF) - 1
                ci_index = ((hi >> 8) << 16) | lo
                info = table.get((blob_index, ci_index)) if 0 <= blob_index < blob_count else None
                if info is None or info.uncompressed_size > min(chunk_size, size - file_offset):
                    return self._rafs_chunks(rec)
                result.append(Chunk(info.block_id, blob_index, info.compressed_offset, info.compressed_size,
                                    info.uncompressed_offset, info.uncompressed_size, file_offset, ci_index,
                                    info.flags, info.crc32))
            return result
        result = []
        for file_offset, length, blob, offset in self._extents(rec):
            # hand flat data out in pieces aligned to FLAT_PIECE_SIZE in the file
            end = file_offset + length
            while file_offset < end:
                piece = min(end, (file_offset // FLAT_PIECE_SIZE + 1) * FLAT_PIECE_SIZE) - file_offset
                result.append(Chunk(digest=b"", blob_index=blob, compressed_offset=offset,
                                    compressed_size=piece, uncompressed_offset=offset, uncompressed_size=piece,
                                    file_offset=file_offset, index=offset // self.block_size))
                file_offset += piece
                offset += piece
        return result

    def _rafs_chunk_addrs(self, rec: _Record):
        """(position, blob index, CI index, c_blk_addr, entry offset) of a RAFS file's chunk indexes."""
        count = -(-rec.size // self.chunk_size)
        start = self._index_array(rec, layout.EROFS_CHUNK_INDEX_SIZE, count)
        for position, e in enumerate(CHUNK_INDEX.iter_unpack(self.data, start, count)):
            if e.c_blk_addr == layout.EROFS_NULL_ADDR:
                continue
            at = start + position * layout.EROFS_CHUNK_INDEX_SIZE
            blob_index = (e.c_blob_addr_hi & 0xFF) - 1
            if not 0 <= blob_index < len(self.blobs):
                raise InvalidImageError(f"nid {rec.nid}: chunk {position} names blob {blob_index} of "
                                        f"{len(self.blobs)}", structure="v6 chunk index", offset=at)
            yield position, blob_index, ((e.c_blob_addr_hi >> 8) << 16) | e.c_blob_addr_lo, e.c_blk_addr, at

    def _rafs_chunks(self, rec: _Record) -> list[Chunk]:
        table = self.chunk_table()
        tarfs = bool(self.flags & SuperFlags.TARTFS_MODE)
        result = []
        for position, blob_index, ci_index, blkaddr, at in self._rafs_chunk_addrs(rec):
            file_offset = position * self.chunk_size
            info = None if tarfs else table.get((blob_index, ci_index))
            if tarfs:
                # the tar is the blob: data sits uncompressed at c_blk_addr (512-byte blocks), no digest
                length = min(self.chunk_size, rec.size - file_offset)
                offset = blkaddr * self.block_size
                chunk = Chunk(digest=b"", blob_index=blob_index, compressed_offset=offset, compressed_size=length,
                              uncompressed_offset=offset, uncompressed_size=length, file_offset=file_offset,
                              index=ci_index)
            elif info is not None:
                chunk = Chunk(digest=info.block_id, blob_index=blob_index, compressed_offset=info.compressed_offset,
                              compressed_size=info.compressed_size, uncompressed_offset=info.uncompressed_offset,
                              uncompressed_size=info.uncompressed_size, file_offset=file_offset, index=ci_index,
                              flags=info.flags, crc32=info.crc32)
            else:
                chunk = self._chunk_from_ci(blob_index, ci_index, file_offset, rec.nid, at)
            if chunk.uncompressed_size > min(self.chunk_size, rec.size - file_offset):
                raise InvalidImageError(f"nid {rec.nid}: chunk {position} of {chunk.uncompressed_size} bytes "
                                        "overruns its place in the file", structure="v6 chunk info", offset=at)
            result.append(chunk)
        return result

    def _chunk_from_ci(self, blob_index: int, ci_index: int, file_offset: int, nid: int, at: int) -> Chunk:
        if self.chunk_info_source is None:
            raise InvalidImageError(f"nid {nid}: chunk {ci_index} of blob {blob_index} is not in the chunk "
                                    "table and no blob meta (CI array) is available", structure="v6 chunk index",
                                    offset=at)
        infos = self._ci_arrays.get(blob_index)
        if infos is None:
            infos = self._ci_arrays[blob_index] = self.chunk_info_source(self.blobs[blob_index])
        if infos is None or not 0 <= ci_index < len(infos):
            raise InvalidImageError(f"nid {nid}: CI index {ci_index} outside blob {blob_index}'s "
                                    f"{0 if infos is None else len(infos)} chunk infos",
                                    structure="v6 chunk index", offset=at)
        ci = infos[ci_index]
        return Chunk(digest=b"", blob_index=blob_index, compressed_offset=ci.compressed_offset,
                     compressed_size=ci.compressed_size, uncompressed_offset=ci.uncompressed_offset,
                     uncompressed_size=ci.uncompressed_size, file_offset=file_offset, index=ci_index,
                     flags=int(ci.flags), crc32=getattr(ci, "crc32", 0))

    # -- checks and description ------------------------------------------------------------------

    def verify_structure(self) -> Iterator[str]:
        """Walk every inode reachable from the root and report what does not decode or agree.

        RAFS chunk indexes must agree with their chunk info (``c_blk_addr`` = uncompressed offset /
        block size); every chunk in the table must be valid for its blob; every blob id must be one a
        blob can be found by.
        """
        if self.is_rafs:
            yield from blob_table_faults(blob.blob_id for blob in self.blobs)
        seen, todo = set(), [self.root_ino]
        while todo:
            nid = todo.pop()
            if nid in seen:
                continue
            seen.add(nid)
            try:
                inode = self.inode(nid)
                if inode.is_dir:
                    todo.extend(child for _, child in self.entries(nid))
                elif inode.is_reg:
                    self.chunks(nid)
                    if self.is_rafs:
                        yield from self._check_chunk_addrs(nid)
            except (InvalidImageError, UnsupportedError) as exc:
                yield f"nid {nid}: {exc}"
        for (blob_index, ci_index), info in self.chunk_table().items():
            if not 0 <= blob_index < len(self.blobs):
                yield f"chunk table entry for CI index {ci_index} names blob {blob_index} of {len(self.blobs)}"
            elif self.blobs[blob_index].chunk_count and ci_index >= self.blobs[blob_index].chunk_count:
                yield (f"chunk table entry CI index {ci_index} exceeds blob {blob_index}'s "
                       f"{self.blobs[blob_index].chunk_count} chunks")

    def _check_chunk_addrs(self, nid: int) -> Iterator[str]:
        rec = self._record(nid)
        if rec.datalayout != layout.EROFS_INODE_CHUNK_BASED:
            if rec.size:
                yield f"nid {nid}: regular file with {rec.layout_name} layout in a RAFS image"
            return
        if self.flags & SuperFlags.TARTFS_MODE:
            return                              # tarfs chunk tables carry no usable addresses
        table = self.chunk_table()
        for position, blob_index, ci_index, blkaddr, _ in self._rafs_chunk_addrs(rec):
            info = table.get((blob_index, ci_index))
            if info is not None and info.uncompressed_offset != blkaddr * self.block_size:
                yield (f"nid {nid}: chunk {position} c_blk_addr {blkaddr} disagrees with uncompressed offset "
                       f"{info.uncompressed_offset:#x}")

    def describe_extra(self) -> dict:
        sb = self.superblock
        info = {
            "flavour": "rafs" if self.is_rafs else "erofs",
            "block_size": self.block_size,
            "meta_blkaddr": sb.s_meta_blkaddr,
            "root_nid": sb.s_root_nid,
            "inos": sb.s_inos,
            "feature_compat": sb.s_feature_compat,
            "feature_incompat": [name for bit, name in layout.EROFS_FEATURE_INCOMPAT_NAMES.items()
                                 if sb.s_feature_incompat & bit],
            "devices": [{"index": i + 1, "tag": dev.blob_id.rstrip(b"\0").decode("ascii", "replace"),
                         "blocks": dev.blocks, "mapped_blkaddr": dev.mapped_blkaddr}
                        for i, dev in enumerate(self.devices)],
        }
        if self.superblock_ext is not None:
            ext = self.superblock_ext
            info["chunk_table_entries"] = ext.s_chunk_table_size // layout.RAFSV6_CHUNK_INFO_SIZE
            info["superblock_ext"] = {key: value for key, value in dict(ext).items()
                                      if not key.startswith("_") and key != "s_reserved"}
        else:
            info["build_time"] = sb.s_build_time
            if sb.s_feature_incompat & (layout.EROFS_FEATURE_INCOMPAT_ZERO_PADDING |
                                        layout.EROFS_FEATURE_INCOMPAT_COMPR_CFGS):
                try:
                    info["compression"] = self.zdata.mapper.describe()
                except (InvalidImageError, UnsupportedError) as exc:
                    info["compression"] = {"error": str(exc)}
        return info
