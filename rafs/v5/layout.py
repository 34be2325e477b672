"""On-disk structures of a RAFS v5 bootstrap, declared once (rafs/src/metadata/layout/v5.rs).

File order written by the reference builder (builder/src/core/v5.rs ``Bootstrap::v5_dump``)::

    superblock (8192) | inode table | prefetch table | blob table | extended blob table | inode records

All section offsets and sizes are 8-byte aligned (``RAFSV5_ALIGNMENT``). Integers are little-endian.
"""

from construct import Bytes, Const, Int16ul, Int32ul, Int64ul, Struct

from ..blob.layout import RafsChunkInfo

RAFSV5_SUPER_MAGIC = 0x5241_4653        # "RAFS" read as a little-endian u32 ("SFAR" on disk)
RAFSV5_SUPER_VERSION = 0x500
RAFSV4_SUPER_VERSION = 0x400
RAFSV5_SUPERBLOCK_SIZE = 8192
RAFSV5_ALIGNMENT = 8
RAFSV5_INODE_SIZE = 128
RAFSV5_CHUNK_INFO_SIZE = 80
RAFSV5_EXT_BLOB_ENTRY_SIZE = 64
RAFSV5_XATTR_PAIR_HEADER_SIZE = 4       # u32 pair size before each "key\0value" pair
# Chunk size 4 MiB is accepted besides powers of two up to 16 MiB (stargz builds).
RAFSV5_STARGZ_CHUNK_SIZE = 0x40_0000
# Pseudo size of a directory: sum over children of (name size + 8), rounded up to this.
RAFSV5_DIR_SIZE_ALIGNMENT = 4096
RAFSV5_DIR_ENTRY_OVERHEAD = 8

SuperBlock = Struct(
    "s_magic" / Const(RAFSV5_SUPER_MAGIC, Int32ul),
    "s_fs_version" / Int32ul,            # 0x500; the loader refuses anything else
    "s_sb_size" / Int32ul,               # 8192
    "s_block_size" / Int32ul,            # the chunk size (default 0x100000)
    "s_flags" / Int64ul,                 # RafsSuperFlags: compressor, digester, explicit uid/gid, xattr
    "s_inodes_count" / Int64ul,          # unique inodes (a hardlink group counts once)
    "s_inode_table_offset" / Int64ul,    # 8192
    "s_prefetch_table_offset" / Int64ul,
    "s_blob_table_offset" / Int64ul,
    "s_inode_table_entries" / Int32ul,   # tree nodes: every hardlink path has its own entry
    "s_prefetch_table_entries" / Int32ul,
    "s_blob_table_size" / Int32ul,       # bytes, 8-aligned
    "s_extended_blob_table_entries" / Int32ul,
    "s_extended_blob_table_offset" / Int64ul,
    "s_reserved" / Bytes(8112),
)

# Inode table: u32 per inode index (1-based index i at position i-1) = record offset >> 3.
InodeTableEntry = Struct("offset_div8" / Int32ul)

# Prefetch table: u32 inode numbers, zero-padded to 8 bytes; readers stop at a 0 entry.
PrefetchTableEntry = Struct("ino" / Int32ul)

# Blob table: per blob this header, then the blob id bytes; entries separated by one NUL, no NUL after
# the last, the whole table zero-padded to 8 bytes. readahead_* describe prefetch data at the blob head.
BlobTableEntryHeader = Struct(
    "readahead_offset" / Int32ul,
    "readahead_size" / Int32ul,
)

ExtBlobEntry = Struct(
    "chunk_count" / Int32ul,
    "features" / Int32ul,                # BlobFeatures
    "uncompressed_size" / Int64ul,       # size of the blob's decompressed (cache) address space
    "compressed_size" / Int64ul,         # size of the blob file
    "reserved" / Bytes(40),
)

Inode = Struct(
    "i_digest" / Bytes(32),              # regular: H(chunk digests); symlink: H(target); dir: H(children)
    "i_parent" / Int64ul,                # parent's ino; 0 for the root
    "i_ino" / Int64ul,                   # root is 1; hardlinks share the first link's ino
    "i_uid" / Int32ul,
    "i_gid" / Int32ul,
    "i_projid" / Int32ul,
    "i_mode" / Int32ul,                  # full st_mode
    "i_size" / Int64ul,                  # dir: pseudo size; symlink: target length
    "i_blocks" / Int64ul,                # 512-byte blocks
    "i_flags" / Int64ul,                 # RafsInodeFlags
    "i_nlink" / Int32ul,
    "i_child_index" / Int32ul,           # dir: inode index of the first child
    "i_child_count" / Int32ul,           # dir: number of children; regular file: number of chunks
    "i_name_size" / Int16ul,
    "i_symlink_size" / Int16ul,
    "i_rdev" / Int32ul,
    "i_mtime_nsec" / Int32ul,
    "i_mtime" / Int64ul,
    "i_reserved" / Bytes(8),
)

# The 80-byte chunk record (RafsV5ChunkInfo) is shared with the other version: see rafs/blob/layout.py.
ChunkInfo = RafsChunkInfo

XattrTableHeader = Struct("total_size" / Int64ul)   # sum of (4 + pair size) over the pairs
XattrPairHeader = Struct("pair_size" / Int32ul)      # len(key) + 1 + len(value)

assert SuperBlock.sizeof() == RAFSV5_SUPERBLOCK_SIZE
assert Inode.sizeof() == RAFSV5_INODE_SIZE
assert ChunkInfo.sizeof() == RAFSV5_CHUNK_INFO_SIZE
assert ExtBlobEntry.sizeof() == RAFSV5_EXT_BLOB_ENTRY_SIZE
