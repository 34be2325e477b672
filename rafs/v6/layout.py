"""On-disk structures of RAFS v6 and plain EROFS, declared once.

A RAFS v6 bootstrap *is* an EROFS image (rafs/src/metadata/layout/v6.rs, builder/src/core/v6.rs); the
kernel's definitions are fs/erofs/erofs_fs.h. Where RAFS and the kernel name a field differently both
names are given. File order written by the reference builder::

    0     1024 zero bytes
    1024  EROFS superblock (128)                    -- SuperBlock
    1152  RAFS v6 superblock extension (256)        -- SuperBlockExt (RAFS only)
    1408  device table, 128 bytes per blob          -- Device (s_devt_slotoff = 11)
    4K    blob table (256 per blob), prefetch table -- Blob, PrefetchTableEntry (RAFS only)
    4K    meta area (s_meta_blkaddr): inodes, inline tails, xattrs, chunk indexes, dirent blocks
    4K    chunk info table (80 per chunk)           -- ChunkInfo (RAFS only)

Inodes are addressed by nid: ``offset = s_meta_blkaddr * block_size + nid * 32``. Integers are
little-endian.
"""

from construct import Bytes, Const, Int8ul, Int16ul, Int32ul, Int64ul, Struct

from ..blob.ids import INLINE_BLOB_ID
from ..blob.layout import RafsChunkInfo

EROFS_SUPER_OFFSET = 1024
EROFS_SUPER_MAGIC_V1 = 0xE0F5_E1E2
EROFS_SUPER_BLOCK_SIZE = 128
RAFSV6_EXT_SUPER_BLOCK_SIZE = 256
EROFS_SB_EXTSLOT_SIZE = 16
# The device table follows the two superblocks in RAFS (1408 = 11 * 128).
RAFSV6_DEVTABLE_OFFSET = EROFS_SUPER_OFFSET + EROFS_SUPER_BLOCK_SIZE + RAFSV6_EXT_SUPER_BLOCK_SIZE
EROFS_DEVT_SLOT_SIZE = 128
RAFSV6_BLOB_ENTRY_SIZE = 256
RAFSV6_CHUNK_INFO_SIZE = 80
RAFSV6_ALIGNMENT = 4096                 # blob, chunk and meta areas start 4K-aligned
# Blob ids are sha256 hex strings; blobs carrying their own bootstrap (--blob-inline-meta) are written
# with a placeholder id (rafs.blob.ids.INLINE_BLOB_ID, the reference's RAFSV6_INLINE_BLOB_ID_PLACEHOLDER).
RAFSV6_BLOB_ID_SIZE = 64
RAFSV6_INLINE_BLOB_ID_PLACEHOLDER = INLINE_BLOB_ID

EROFS_BLKSZBITS_MIN = 9                 # kernel: 512-byte blocks up to PAGE_SIZE
EROFS_BLKSZBITS_MAX = 12
EROFS_INODE_SLOT_BITS = 5               # nids count 32-byte slots
EROFS_INODE_SLOT_SIZE = 1 << EROFS_INODE_SLOT_BITS
EROFS_NAME_LEN = 255
EROFS_NULL_ADDR = 0xFFFF_FFFF           # EROFS_NULL_ADDR (-1 as u32): a hole / no data

# s_feature_compat
EROFS_FEATURE_COMPAT_SB_CHKSUM = 0x1    # s_checksum = crc32c of the superblock block
EROFS_FEATURE_COMPAT_MTIME = 0x2
EROFS_FEATURE_COMPAT_XATTR_FILTER = 0x4
EROFS_FEATURE_COMPAT_RAFS_V6 = 0x4000_0000   # marks a RAFS v6 bootstrap (v6.rs)
# s_feature_incompat (several bits are reused: their meaning depends on compression being in use)
EROFS_FEATURE_INCOMPAT_ZERO_PADDING = 0x1    # LZ4_0PADDING: compressed data only
EROFS_FEATURE_INCOMPAT_COMPR_CFGS = 0x2      # also BIG_PCLUSTER
EROFS_FEATURE_INCOMPAT_CHUNKED_FILE = 0x4
EROFS_FEATURE_INCOMPAT_DEVICE_TABLE = 0x8    # also COMPR_HEAD2
EROFS_FEATURE_INCOMPAT_ZTAILPACKING = 0x10
EROFS_FEATURE_INCOMPAT_FRAGMENTS = 0x20      # also DEDUPE
EROFS_FEATURE_INCOMPAT_XATTR_PREFIXES = 0x40
EROFS_FEATURE_INCOMPAT_48BIT = 0x80
EROFS_FEATURE_INCOMPAT_METABOX = 0x100
# What a RAFS v6 superblock must hold exactly (v6.rs RafsV6SuperBlock::validate).
RAFSV6_FEATURE_INCOMPAT = EROFS_FEATURE_INCOMPAT_CHUNKED_FILE | EROFS_FEATURE_INCOMPAT_DEVICE_TABLE
# Incompat bits that only concern compressed inodes (read through rafs/v6/zmap.py and zdata.py).
EROFS_FEATURE_INCOMPAT_COMPRESSION_ONLY = (EROFS_FEATURE_INCOMPAT_ZERO_PADDING
                                           | EROFS_FEATURE_INCOMPAT_COMPR_CFGS
                                           | EROFS_FEATURE_INCOMPAT_ZTAILPACKING
                                           | EROFS_FEATURE_INCOMPAT_FRAGMENTS)
EROFS_FEATURE_INCOMPAT_NAMES = {
    EROFS_FEATURE_INCOMPAT_ZERO_PADDING: "zero_padding", EROFS_FEATURE_INCOMPAT_COMPR_CFGS: "compr_cfgs",
    EROFS_FEATURE_INCOMPAT_CHUNKED_FILE: "chunked_file", EROFS_FEATURE_INCOMPAT_DEVICE_TABLE: "device_table",
    EROFS_FEATURE_INCOMPAT_ZTAILPACKING: "ztailpacking", EROFS_FEATURE_INCOMPAT_FRAGMENTS: "fragments",
    EROFS_FEATURE_INCOMPAT_XATTR_PREFIXES: "xattr_prefixes", EROFS_FEATURE_INCOMPAT_48BIT: "48bit",
    EROFS_FEATURE_INCOMPAT_METABOX: "metabox",
}

# i_format: bit 0 layout version, bits 1..3 data layout, bit 4 NLINK_1 (non-directory compact inodes:
# nlink is 1 and i_nlink holds the high bits of the start block) or DOT_OMITTED (directories).
EROFS_I_VERSION_MASK = 0x1
EROFS_I_DATALAYOUT_BIT = 1
EROFS_I_DATALAYOUT_MASK = 0x7
EROFS_I_NLINK_1_BIT = 4
EROFS_I_ALL = 0x1F
EROFS_INODE_LAYOUT_COMPACT = 0
EROFS_INODE_LAYOUT_EXTENDED = 1
EROFS_INODE_FLAT_PLAIN = 0              # data in whole blocks from i_u (raw_blkaddr)
EROFS_INODE_COMPRESSED_FULL = 1
EROFS_INODE_FLAT_INLINE = 2             # whole blocks from i_u, the last block's bytes after the inode
EROFS_INODE_COMPRESSED_COMPACT = 3
EROFS_INODE_CHUNK_BASED = 4             # i_u is a chunk header; chunk indexes/block map follow the inode
EROFS_COMPRESSED_LAYOUTS = (EROFS_INODE_COMPRESSED_FULL, EROFS_INODE_COMPRESSED_COMPACT)
EROFS_DATALAYOUT_NAMES = {0: "flat_plain", 1: "compressed_full", 2: "flat_inline", 3: "compressed_compact",
                          4: "chunk_based"}

# Chunk header (i_u of chunk-based inodes): chunk size = block size << (format & BLKBITS_MASK).
EROFS_CHUNK_FORMAT_BLKBITS_MASK = 0x1F
EROFS_CHUNK_FORMAT_INDEXES = 0x20       # 8-byte ChunkIndex entries (RAFS always), else 4-byte block map
EROFS_CHUNK_FORMAT_48BIT = 0x40
EROFS_CHUNK_FORMAT_ALL = 0x7F
EROFS_BLOCK_MAP_ENTRY_SIZE = 4
EROFS_CHUNK_INDEX_SIZE = 8

# Dirent file types (EROFS_FT_*), the generic FT_* values.
EROFS_FT_UNKNOWN, EROFS_FT_REG_FILE, EROFS_FT_DIR, EROFS_FT_CHRDEV = 0, 1, 2, 3
EROFS_FT_BLKDEV, EROFS_FT_FIFO, EROFS_FT_SOCK, EROFS_FT_SYMLINK = 4, 5, 6, 7
EROFS_DIRENT_SIZE = 12

# Xattr name indexes and the prefixes they stand for (e_name_index; the name stored is the suffix).
EROFS_XATTR_INDEX_USER = 1
EROFS_XATTR_INDEX_POSIX_ACL_ACCESS = 2
EROFS_XATTR_INDEX_POSIX_ACL_DEFAULT = 3
EROFS_XATTR_INDEX_TRUSTED = 4
EROFS_XATTR_INDEX_LUSTRE = 5
EROFS_XATTR_INDEX_SECURITY = 6
EROFS_XATTR_LONG_PREFIX = 0x80          # index refers to a long prefix table (XATTR_PREFIXES feature)
EROFS_XATTR_PREFIXES = {
    EROFS_XATTR_INDEX_USER: b"user.",
    EROFS_XATTR_INDEX_POSIX_ACL_ACCESS: b"system.posix_acl_access",
    EROFS_XATTR_INDEX_POSIX_ACL_DEFAULT: b"system.posix_acl_default",
    EROFS_XATTR_INDEX_TRUSTED: b"trusted.",
    EROFS_XATTR_INDEX_LUSTRE: b"lustre.",
    EROFS_XATTR_INDEX_SECURITY: b"security.",
}
EROFS_XATTR_ALIGNMENT = 4
EROFS_XATTR_IBODY_HEADER_SIZE = 12

SuperBlock = Struct(
    "s_magic" / Const(EROFS_SUPER_MAGIC_V1, Int32ul),
    "s_checksum" / Int32ul,              # RAFS: 0; EROFS with COMPAT_SB_CHKSUM: crc32c of the sb block
    "s_feature_compat" / Int32ul,        # RAFS: COMPAT_RAFS_V6 (0x40000000)
    "s_blkszbits" / Int8ul,              # 12 (4 KiB); 9 (512 B) for tarfs and small-block EROFS
    "s_extslots" / Int8ul,               # superblock size = 128 + 16 * s_extslots; RAFS: 0
    "s_root_nid" / Int16ul,              # nid of the root directory
    "s_inos" / Int64ul,                  # number of inodes
    "s_build_time" / Int64ul,            # kernel "epoch": mtime base of compact inodes
    "s_build_time_nsec" / Int32ul,       # kernel "fixed_nsec": mtime nsec of compact inodes
    "s_blocks" / Int32ul,                # RAFS: total blob data blocks; EROFS: image blocks (statfs)
    "s_meta_blkaddr" / Int32ul,          # block where nid 0 lives
    "s_xattr_blkaddr" / Int32ul,         # block of the shared xattr area (id * 4 bytes into it); RAFS: 0
    "s_uuid" / Bytes(16),
    "s_volume_name" / Bytes(16),
    "s_feature_incompat" / Int32ul,      # RAFS: CHUNKED_FILE | DEVICE_TABLE exactly
    "s_u" / Int16ul,                     # available_compr_algs / lz4_max_distance; RAFS: 0
    "s_extra_devices" / Int16ul,         # devices besides the primary one (RAFS: number of blobs)
    "s_devt_slotoff" / Int16ul,          # device table at s_devt_slotoff * 128 (RAFS: 11)
    "s_dirblkbits" / Int8ul,             # EROFS: directory block bits beyond the block size; must be 0
    "s_xattr_prefix_count" / Int8ul,     # EROFS: long xattr name prefixes
    "s_xattr_prefix_start" / Int32ul,
    "s_packed_nid" / Int64ul,            # EROFS: nid of the packed (fragments) inode
    "s_xattr_filter_reserved" / Int8ul,
    "s_reserved" / Bytes(23),            # RAFS: all of bytes 90..127 are s_reserved (zero)
)

SuperBlockExt = Struct(
    "s_flags" / Int64ul,                 # RafsSuperFlags: one compressor bit, one digester bit, ...
    "s_blob_table_offset" / Int64ul,     # 4K-aligned, after the device table
    "s_blob_table_size" / Int32ul,       # 256 * blobs
    "s_chunk_size" / Int32ul,            # power of two, 4 KiB .. 16 MiB
    "s_chunk_table_offset" / Int64ul,    # 4K-aligned chunk info table (0 when absent)
    "s_chunk_table_size" / Int64ul,      # 80 * entries
    "s_prefetch_table_offset" / Int64ul,
    "s_prefetch_table_size" / Int32ul,   # 4 * entries (u32 nids)
    "s_padding" / Int32ul,
    "s_reserved" / Bytes(200),
)

# Device slot (kernel erofs_deviceslot; RAFS RafsV6Device): one per extra device / blob.
Device = Struct(
    "blob_id" / Bytes(RAFSV6_BLOB_ID_SIZE),  # kernel "tag": RAFS blob id, NUL padded; may be empty
    "blocks" / Int32ul,                  # blocks of the device (RAFS: uncompressed blob size / block)
    "mapped_blkaddr" / Int32ul,          # start of the device in the unified block address space
    "reserved" / Bytes(56),
)

# Compact inode, 32 bytes (EROFS_INODE_LAYOUT_COMPACT). No mtime of its own and 16-bit ids.
InodeCompact = Struct(
    "i_format" / Int16ul,                # layout version | datalayout << 1 | NLINK_1 << 4
    "i_xattr_icount" / Int16ul,          # inline xattr size = 12 + 4 * (icount - 1), 0 when none
    "i_mode" / Int16ul,
    "i_nlink" / Int16ul,                 # with NLINK_1: start block bits 32..47 instead
    "i_size" / Int32ul,
    "i_reserved" / Int32ul,              # kernel >= 6.15 "i_mtime": seconds after s_build_time
    "i_u" / Int32ul,                     # raw_blkaddr | rdev | chunk header | compressed blocks
    "i_ino" / Int32ul,                   # 32-bit stat compatibility only; not the runtime number
    "i_uid" / Int16ul,
    "i_gid" / Int16ul,
    "i_reserved2" / Bytes(4),
)

# Extended inode, 64 bytes (EROFS_INODE_LAYOUT_EXTENDED); the RAFS builder writes only these.
InodeExtended = Struct(
    "i_format" / Int16ul,
    "i_xattr_icount" / Int16ul,
    "i_mode" / Int16ul,
    "i_reserved" / Int16ul,              # kernel "i_nb": start block bits 32..47 (48-bit layout)
    "i_size" / Int64ul,
    "i_u" / Int32ul,
    "i_ino" / Int32ul,
    "i_uid" / Int32ul,
    "i_gid" / Int32ul,
    "i_mtime" / Int64ul,
    "i_mtime_nsec" / Int32ul,
    "i_nlink" / Int32ul,
    "i_reserved2" / Bytes(16),
)

# Inode schema by i_format bit 0, and their sizes.
INODE_LAYOUTS = {EROFS_INODE_LAYOUT_COMPACT: InodeCompact, EROFS_INODE_LAYOUT_EXTENDED: InodeExtended}
INODE_SIZES = {EROFS_INODE_LAYOUT_COMPACT: 32, EROFS_INODE_LAYOUT_EXTENDED: 64}

# i_u of a chunk-based inode (RafsV6InodeChunkHeader / erofs_inode_chunk_info).
InodeChunkHeader = Struct(
    "format" / Int16ul,                  # INDEXES | (log2(chunk size) - s_blkszbits)
    "reserved" / Int16ul,
)

# Chunk index entry (RafsV6InodeChunkAddr / erofs_inode_chunk_index), 8 bytes, at
# round_up(inode end + xattrs, 8) + 8 * chunk number. RAFS packs (blob index + 1) into the low byte of
# c_blob_addr_hi (the kernel's device_id, masked by the device count) and a 24-bit index into the
# blob's CI array into c_blob_addr_lo and the high byte of c_blob_addr_hi.
ChunkIndex = Struct(
    "c_blob_addr_lo" / Int16ul,          # kernel: startblk_hi (48-bit layout) / advise
    "c_blob_addr_hi" / Int16ul,          # kernel: device_id
    "c_blk_addr" / Int32ul,              # block address in the device (RAFS: uncompressed offset / block)
)

# Block map entry of chunk-based inodes without INDEXES: block address in the image, NULL_ADDR = hole.
BlockMapEntry = Struct("blkaddr" / Int32ul)

# Directory entry (RafsV6Dirent / erofs_dirent), 12 bytes. Each directory block holds n dirents then
# their names (not NUL-terminated); n = e_nameoff of the first dirent / 12; the last name of a block ends
# at the first NUL or the end of the block (or of the directory). Names are sorted, "." and ".." included.
Dirent = Struct(
    "e_nid" / Int64ul,
    "e_nameoff" / Int16ul,               # offset of the name inside the block
    "e_file_type" / Int8ul,              # EROFS_FT_*
    "e_reserved" / Int8ul,
)

# Inline xattrs start with this header right after the inode; h_shared_count u32 ids of shared
# xattrs (at s_xattr_blkaddr * block size + 4 * id) follow it, then the inline entries.
XattrIbodyHeader = Struct(
    "h_reserved" / Int32ul,              # kernel: h_name_filter (XATTR_FILTER bloom bits)
    "h_shared_count" / Int8ul,
    "h_reserved2" / Bytes(7),
)

# Xattr entry: this header, the name suffix, the value, padded to 4 bytes.
XattrEntry = Struct(
    "e_name_len" / Int8ul,               # length of the name after the prefix
    "e_name_index" / Int8ul,             # EROFS_XATTR_INDEX_* (bit 7: long prefix)
    "e_value_size" / Int16ul,
)

# -- compressed EROFS (mkfs.erofs -z): kernel fs/erofs/erofs_fs.h, zmap.c, decompressor*.c --------------
#
# A compressed inode (datalayout COMPRESSED_FULL or COMPRESSED_COMPACT) splits its data into logical
# clusters ("lclusters") of block size << (h_clusterbits & 7) bytes, one index entry each. A HEAD (or
# PLAIN) lcluster starts an extent at lcn * lcluster size + clusterofs; the extent runs to the next head
# (or to i_size) and its data is one physical cluster ("pcluster") of whole blocks at the head's blkaddr,
# compressed (HEAD1/HEAD2: the inode's first/second algorithm) or stored as is (PLAIN). NONHEAD lclusters
# continue the extent before them. The index starts after the inode and its xattrs, aligned to 8, with
# this map header first; full (legacy) indexes skip 8 more bytes and use 8 bytes per lcluster, compact
# ones pack 2 (4B) or 16 (2B) lclusters into 8 or 32 bytes.

# Algorithm numbers (h_algorithmtype nibbles, bits of s_u available_compr_algs with COMPR_CFGS).
Z_EROFS_COMPRESSION_LZ4 = 0             # also lz4hc: the same raw LZ4 block on disk
Z_EROFS_COMPRESSION_LZMA = 1            # MicroLZMA (xz-embedded): LZMA1 with the props byte inverted in front
Z_EROFS_COMPRESSION_DEFLATE = 2         # raw DEFLATE, no zlib or gzip wrapper
Z_EROFS_COMPRESSION_ZSTD = 3            # one zstd frame
Z_EROFS_COMPRESSION_MAX = 4
Z_EROFS_COMPRESSION_NAMES = {0: "lz4", 1: "lzma", 2: "deflate", 3: "zstd"}
# Largest pcluster the kernel reads, and largest decompressed extent it accepts.
Z_EROFS_PCLUSTER_MAX_SIZE = 1024 * 1024
Z_EROFS_PCLUSTER_MAX_DSIZE = 12 * 1024 * 1024
Z_EROFS_LZMA_MAX_DICT_SIZE = 8 * Z_EROFS_PCLUSTER_MAX_SIZE

# h_advise bits
Z_EROFS_ADVISE_COMPACTED_2B = 0x0001    # compact: 4B entries up to 32-byte alignment, then 2B packs, then 4B
Z_EROFS_ADVISE_EXTENTS = 0x0001         # full (kernel >= 6.15, 48-bit images): extent records instead
Z_EROFS_ADVISE_BIG_PCLUSTER_1 = 0x0002  # HEAD1 pclusters may span several blocks (-C): CBLKCNT says how many
Z_EROFS_ADVISE_BIG_PCLUSTER_2 = 0x0004
Z_EROFS_ADVISE_INLINE_PCLUSTER = 0x0008     # ztailpacking: the last pcluster follows the index inline
Z_EROFS_ADVISE_INTERLACED_PCLUSTER = 0x0010  # PLAIN pclusters are stored rotated by the extent's block offset
Z_EROFS_ADVISE_FRAGMENT_PCLUSTER = 0x0020   # the last extent lives in the packed inode (-Efragments)
Z_EROFS_ADVISE_ALL = 0x003F
Z_EROFS_FRAGMENT_INODE_BIT = 7          # bit 7 of h_clusterbits: the whole file is in the packed inode

# lcluster types (low 2 bits of di_advise; 2 bits next to clusterofs in compact entries)
Z_EROFS_LCLUSTER_TYPE_PLAIN = 0
Z_EROFS_LCLUSTER_TYPE_HEAD1 = 1
Z_EROFS_LCLUSTER_TYPE_NONHEAD = 2
Z_EROFS_LCLUSTER_TYPE_HEAD2 = 3
Z_EROFS_LI_LCLUSTER_TYPE_MASK = 0x3
Z_EROFS_LI_PARTIAL_REF = 1 << 15        # full index HEAD: the extent is a prefix of its pcluster's data (dedupe)
Z_EROFS_LI_D0_CBLKCNT = 1 << 11         # first NONHEAD of a big pcluster: delta[0] holds its block count
Z_EROFS_MAP_HEADER_SIZE = 8
Z_EROFS_FULL_INDEX_SKIP = 8             # full indexes start 8 bytes after the map header

# Map header (z_erofs_map_header), 8 bytes at round_up(inode end + xattrs, 8).
ZMapHeader = Struct(
    "h_fragmentoff" / Int32ul,           # fragment offset in the packed inode; else h_reserved1 (u16) and
                                         # h_idata_size (u16, ztailpacking: bytes of the inline pcluster)
    "h_advise" / Int16ul,                # Z_EROFS_ADVISE_*
    "h_algorithmtype" / Int8ul,          # bits 0-3: HEAD1 algorithm, 4-7: HEAD2 algorithm
    "h_clusterbits" / Int8ul,            # bits 0-2: lcluster bits beyond the block bits; bit 7: FRAGMENT_INODE
)

# Full (legacy, non-compact) lcluster index entry (z_erofs_lcluster_index), 8 bytes.
LclusterIndex = Struct(
    "di_advise" / Int16ul,               # lcluster type (bits 0-1), PARTIAL_REF (bit 15)
    "di_clusterofs" / Int16ul,           # HEAD/PLAIN: where in this lcluster the extent starts
    "di_u" / Int32ul,                    # HEAD/PLAIN: blkaddr of the pcluster; NONHEAD: delta[0] (u16, distance
                                         # back to the head, or CBLKCNT | blocks) and delta[1] (u16, to the next head)
)

# Per-algorithm configuration records (COMPR_CFGS): after the superblock (1024 + 128 + 16 * s_extslots),
# one per bit of available_compr_algs in algorithm order, each a u16 length then the record, each
# starting 4-byte aligned.
Lz4Cfgs = Struct(
    "max_distance" / Int16ul,            # LZ4 window; 0 means 64 KiB
    "max_pclusterblks" / Int16ul,        # largest pcluster in blocks (big pcluster)
    "reserved" / Bytes(10),
)
LzmaCfgs = Struct(
    "dict_size" / Int32ul,               # 4 KiB .. 8 MiB
    "format" / Int16ul,                  # 0: MicroLZMA
    "reserved" / Bytes(8),
)
DeflateCfgs = Struct(
    "windowbits" / Int8ul,               # 8..15
    "reserved" / Bytes(5),
)
ZstdCfgs = Struct(
    "format" / Int8ul,
    "windowlog" / Int8ul,                # window log - 10
    "reserved" / Bytes(4),
)
Z_EROFS_CFGS = {Z_EROFS_COMPRESSION_LZ4: Lz4Cfgs, Z_EROFS_COMPRESSION_LZMA: LzmaCfgs,
                Z_EROFS_COMPRESSION_DEFLATE: DeflateCfgs, Z_EROFS_COMPRESSION_ZSTD: ZstdCfgs}

# RAFS v6 blob table entry (RafsV6Blob), 256 bytes.
Blob = Struct(
    "blob_id" / Bytes(RAFSV6_BLOB_ID_SIZE),  # ASCII, NUL padded
    "blob_index" / Int32ul,              # must equal the entry's position
    "chunk_size" / Int32ul,              # must equal s_chunk_size
    "chunk_count" / Int32ul,
    "compression_algo" / Int32ul,        # compressor id of the chunk data
    "digest_algo" / Int32ul,             # digester id of the chunk digests
    "features" / Int32ul,                # BlobFeatures (non-tarfs blobs have ALIGNED)
    "compressed_size" / Int64ul,
    "uncompressed_size" / Int64ul,
    "blob_toc_size" / Int32ul,           # ToC bytes with its 512-byte tar header, 0 if none
    "ci_compressor" / Int32ul,           # compressor id of the CI array
    "ci_offset" / Int64ul,               # offset of the (compressed) CI array in the blob
    "ci_compressed_size" / Int64ul,
    "ci_uncompressed_size" / Int64ul,
    "blob_toc_digest" / Bytes(32),       # sha256 of ToC entries + ToC tar header
    "blob_meta_digest" / Bytes(32),      # SEPARATE: sha256 of the RAFS meta blob; encrypted: cipher key
    "blob_meta_size" / Int64ul,          # SEPARATE: size of the meta blob; encrypted: IV bytes 0..7
    "cipher_iv" / Bytes(8),              # encrypted: IV bytes 8..15
    "cipher_algo" / Int32ul,             # cipher id
    "reserved2" / Bytes(36),
)

# The 80-byte chunk record (RafsV5ChunkInfo) is shared with the other version: see rafs/blob/layout.py.
ChunkInfo = RafsChunkInfo

# Prefetch table: u32 nids of the files and directories to prefetch, in pattern order.
PrefetchTableEntry = Struct("nid" / Int32ul)

assert SuperBlock.sizeof() == EROFS_SUPER_BLOCK_SIZE
assert SuperBlockExt.sizeof() == RAFSV6_EXT_SUPER_BLOCK_SIZE
assert Device.sizeof() == EROFS_DEVT_SLOT_SIZE
assert InodeCompact.sizeof() == INODE_SIZES[EROFS_INODE_LAYOUT_COMPACT]
assert InodeExtended.sizeof() == INODE_SIZES[EROFS_INODE_LAYOUT_EXTENDED]
assert InodeChunkHeader.sizeof() == 4
assert ChunkIndex.sizeof() == EROFS_CHUNK_INDEX_SIZE
assert BlockMapEntry.sizeof() == EROFS_BLOCK_MAP_ENTRY_SIZE
assert Dirent.sizeof() == EROFS_DIRENT_SIZE
assert XattrIbodyHeader.sizeof() == EROFS_XATTR_IBODY_HEADER_SIZE
assert XattrEntry.sizeof() == 4
assert Blob.sizeof() == RAFSV6_BLOB_ENTRY_SIZE
assert ZMapHeader.sizeof() == Z_EROFS_MAP_HEADER_SIZE
assert LclusterIndex.sizeof() == 8
assert Lz4Cfgs.sizeof() == LzmaCfgs.sizeof() == 14 and DeflateCfgs.sizeof() == ZstdCfgs.sizeof() == 6
assert ChunkInfo.sizeof() == RAFSV6_CHUNK_INFO_SIZE

# Dirent file type of each S_IFMT value (builder: RafsV6Dirent::file_type).
EROFS_FILE_TYPE_BY_MODE = {
    0o100000: EROFS_FT_REG_FILE, 0o040000: EROFS_FT_DIR, 0o020000: EROFS_FT_CHRDEV,
    0o060000: EROFS_FT_BLKDEV, 0o010000: EROFS_FT_FIFO, 0o140000: EROFS_FT_SOCK, 0o120000: EROFS_FT_SYMLINK,
}
