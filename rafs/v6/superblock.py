"""The superblocks of a RAFS v6 bootstrap or plain EROFS image, checked, and the geometry they declare.

The EROFS superblock (``struct erofs_super_block``, fs/erofs/erofs_fs.h) sits at byte 1024 with magic
0xE0F5E1E2; a RAFS v6 bootstrap marks itself with ``EROFS_FEATURE_COMPAT_RAFS_V6`` and follows it with
the 256-byte RAFS superblock extension (``RafsV6SuperBlockExt``, rafs/src/metadata/layout/v6.rs) that
names the compressor and digester (``s_flags``), the chunk size and where the blob, chunk info and
prefetch tables lie. The checks are those of the reference's ``RafsV6SuperBlock::validate`` and
``RafsV6SuperBlockExt::validate`` for RAFS, and of the kernel's ``erofs_read_superblock`` for plain
EROFS (fs/erofs/super.c), which also verifies the crc32c checksum when ``SB_CHKSUM`` is set.

:class:`Geometry` is what the rest of the reader needs of all that: a small frozen value handed to the
inode, extent, chunk and directory helpers instead of the whole reader.
"""

from __future__ import annotations

import dataclasses
import struct

from .. import _records
from ..blob import codecs
from ..errors import InvalidImageError, UnsupportedError
from ..limits import CHUNK_SIZE_RULE, is_chunk_size
from ..model import SuperFlags
from ..table_checks import first_overlap
from . import layout

_U32 = struct.Struct("<I")
# Plain EROFS images have no compressor or digester of their own.
PLAIN_EROFS_FLAGS = SuperFlags.COMPRESSION_NONE | SuperFlags.HASH_SHA256
_TARFS_MODE = int(SuperFlags.TARTFS_MODE)      # a plain int: IntFlag arithmetic costs microseconds


@dataclasses.dataclass(frozen=True, slots=True)
class Geometry:
    """Where things are in one image and in what units, from its superblocks and device table.

    ``size`` is the image's length in bytes; ``block_bits`` is ``s_blkszbits`` (9 or 12 in RAFS, 9..16
    in plain EROFS) and ``block_size`` its power of two; ``meta_base`` the byte offset of the meta area
    (``s_meta_blkaddr`` blocks), where nid ``n`` lies at ``meta_base + 32 * n``; ``is_rafs`` whether
    ``COMPAT_RAFS_V6`` is set; ``flags`` the RAFS ``s_flags`` (compressor, digester, tarfs mode) or
    :data:`PLAIN_EROFS_FLAGS`; ``chunk_size`` the RAFS ``s_chunk_size`` or, in plain EROFS, the block
    size; ``build_time`` and ``build_time_nsec`` the superblock's epoch that compact inodes' mtimes
    count from; ``shared_xattr_base`` the byte offset of the shared xattr area (``s_xattr_blkaddr``
    blocks, plain EROFS only; None in RAFS, which has none); ``devices`` the device table's slots
    (``struct erofs_deviceslot``: ``blob_id`` or tag, ``blocks``, ``mapped_blkaddr``) and
    ``device_id_mask`` the bits of a chunk index's ``c_blob_addr_hi`` that name a device.
    """

    size: int
    block_bits: int
    block_size: int
    meta_base: int
    is_rafs: bool
    flags: int
    chunk_size: int
    build_time: int
    build_time_nsec: int
    shared_xattr_base: int | None
    devices: tuple
    device_id_mask: int

    @property
    def tarfs(self) -> bool:
        """Whether a RAFS image is in tarfs mode (``TARTFS_MODE``): the tar itself is the blob."""
        return bool(self.flags & _TARFS_MODE)

    def inode_offset(self, nid: int) -> int:
        """Byte offset of inode ``nid`` (32-byte slots from the meta area)."""
        return self.meta_base + nid * layout.EROFS_INODE_SLOT_SIZE


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


def read_superblock(data, size: int):
    """The checked EROFS superblock of ``data`` (``size`` bytes long)."""
    if not is_erofs(data) or size < layout.EROFS_SUPER_OFFSET + layout.EROFS_SUPER_BLOCK_SIZE:
        raise InvalidImageError("no EROFS superblock (magic 0xe0f5e1e2 at 1024)", structure="v6 superblock",
                                offset=layout.EROFS_SUPER_OFFSET)
    sb = _records.parse(layout.SuperBlock, data, layout.EROFS_SUPER_OFFSET, structure="v6 superblock")
    _validate_superblock(sb, data, size)
    return sb


def is_rafs(sb) -> bool:
    """Whether the superblock marks a RAFS v6 bootstrap (``COMPAT_RAFS_V6``)."""
    return bool(sb.s_feature_compat & layout.EROFS_FEATURE_COMPAT_RAFS_V6)


def block_size_of(sb) -> int:
    """The block size ``s_blkszbits`` declares (capped, so that a hostile value cannot make a huge int)."""
    return 1 << min(sb.s_blkszbits, 63)


def extra_devices(sb) -> int:
    """Number of device table slots: ``s_extra_devices`` when ``DEVICE_TABLE`` is set, else none."""
    return sb.s_extra_devices if sb.s_feature_incompat & layout.EROFS_FEATURE_INCOMPAT_DEVICE_TABLE else 0


def _validate_superblock(sb, data, size: int) -> None:
    def bad(message, field_offset=0):
        raise InvalidImageError(message, structure="v6 superblock", offset=layout.EROFS_SUPER_OFFSET + field_offset)

    bits = sb.s_blkszbits
    block_size = block_size_of(sb)
    if is_rafs(sb):
        if bits not in (9, 12):
            bad(f"s_blkszbits {bits} is neither 9 nor 12", 12)
        if size < layout.RAFSV6_ALIGNMENT or size % block_size:
            bad(f"bootstrap size {size} is below 4096 or not a multiple of the block size")
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
            if size < layout.EROFS_SUPER_OFFSET + _checksum_length(block_size):
                bad("image too small for its superblock checksum")
            expected = erofs_sb_checksum(data, block_size)
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
    if sb.s_meta_blkaddr * block_size > size:
        bad(f"s_meta_blkaddr {sb.s_meta_blkaddr} lies past the end of the image", 40)


def read_superblock_ext(data, size: int, device_count: int):
    """The checked RAFS v6 superblock extension that follows the EROFS superblock; ``device_count`` is
    the number of device table slots (the tables must lie after them)."""
    ext = _records.parse(layout.SuperBlockExt, data, layout.EROFS_SUPER_OFFSET + layout.EROFS_SUPER_BLOCK_SIZE,
                       structure="v6 superblock ext")
    _validate_ext(ext, size, device_count)
    return ext


def _validate_ext(ext, size: int, device_count: int) -> None:
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
    if not is_chunk_size(cs):
        bad(f"s_chunk_size {cs:#x} is not {CHUNK_SIZE_RULE}", 20)
    devslot_end = layout.RAFSV6_DEVTABLE_OFFSET + layout.EROFS_DEVT_SLOT_SIZE * device_count
    spans = []
    offset, length = ext.s_blob_table_offset, ext.s_blob_table_size
    if offset % layout.RAFSV6_ALIGNMENT or offset < max(layout.RAFSV6_ALIGNMENT, devslot_end) or \
            length % layout.RAFSV6_BLOB_ENTRY_SIZE or offset + length > size:
        bad(f"blob table [{offset:#x}, +{length:#x}) is misplaced", 8)
    spans.append((offset, offset + length, "blob table"))
    offset, length = ext.s_chunk_table_offset, ext.s_chunk_table_size
    if length:
        if offset % layout.RAFSV6_ALIGNMENT or offset < max(layout.RAFSV6_ALIGNMENT, devslot_end) or \
                length % layout.RAFSV6_CHUNK_INFO_SIZE or offset + length > size:
            bad(f"chunk table [{offset:#x}, +{length:#x}) is misplaced", 24)
        spans.append((offset, offset + length, "chunk table"))
    offset, length = ext.s_prefetch_table_offset, ext.s_prefetch_table_size
    # Legacy builds may leave a size with a zero offset for empty file systems.
    if length and offset:
        if offset < max(layout.RAFSV6_ALIGNMENT, devslot_end) or length % 4 or offset + length > size:
            bad(f"prefetch table [{offset:#x}, +{length:#x}) is misplaced", 40)
        spans.append((offset, offset + length, "prefetch table"))
    overlap = first_overlap(spans)
    if overlap:
        bad("{} overlaps {}".format(*overlap))
