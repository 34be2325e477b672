"""The format limits: what the reference tools accept and write, so what rafs refuses beyond. Every
bound that input is checked against before it becomes an allocation, a loop or a read lives here once.
"""

DEFAULT_CHUNK_SIZE = 0x100000       # RAFS_DEFAULT_CHUNK_SIZE, storage/src/lib.rs
# Upper bound of one merged blob request by default: nydusd's fs_prefetch.merging_size (v1) and
# prefetch batch_size (v2) defaults, and what rafs merges adjacent chunk reads up to.
DEFAULT_MERGE_SIZE = 0x100000
MIN_CHUNK_SIZE = 0x1000
# The RAFS block size (v5's and v6's 4 KiB blocks): what stat reports as st_blksize and statfs as
# f_bsize for every image.
BLOCK_SIZE = 4096
MAX_CHUNK_SIZE = 0x1000000          # RAFS_MAX_CHUNK_SIZE
# The reference's rule for chunk sizes, batch sizes and a v5 superblock's block size, in its words
CHUNK_SIZE_RULE = f"a power of two in [{MIN_CHUNK_SIZE:#x}, {MAX_CHUNK_SIZE:#x}]"
MAX_CHUNKS_PER_BLOB = 1 << 24       # RAFS_MAX_CHUNKS_PER_BLOB
MAX_BLOBS = 255                     # blob index is a u8 (v6 stores index + 1)
MAX_NAME_SIZE = 255                 # one file name in a directory (EROFS, tar, Linux's NAME_MAX)
# The longest name the reference takes from a directory source: its u16 ``i_name_size`` field. Linux
# stops names at MAX_NAME_SIZE first, so on Linux this bound only states the reference's own check.
MAX_INODE_NAME_SIZE = 0xFFFF
# Symlink targets the builders accept, as the reference does (its u16 ``i_symlink_size``).
MAX_SYMLINK_SIZE = 0xFFFF
# Symlink targets a reader accepts from an EROFS inode: longer ones cannot come from a Linux file
# system (PATH_MAX - 1), whatever the 64-bit ``i_size`` declares.
MAX_LINUX_SYMLINK_SIZE = 4095
MAX_XATTR_NAME_SIZE = 255           # the reference's RafsXAttrs::add and Linux's XATTR_NAME_MAX
MAX_XATTR_VALUE_SIZE = 0x10000
# Deepest directory nesting a walk of an image accepts (InvalidImageError beyond). Not a limit of the
# formats, which nest without bound, but of every system that names files by path: PATH_MAX (4096
# bytes, NUL included) holds at most 2048 levels ("/a" each), so a deeper entry cannot be created,
# opened or extracted by path on Linux, nor come out of a directory a builder walked. Walks keep memory
# linear in depth; the bound also caps the time and output that grow with depth times path length.
MAX_DEPTH = 2048
# A bootstrap's size: RAFS_MAX_METADATA_SIZE (rafs/src/metadata/mod.rs), 2 GiB. The v5 writer refuses
# to write more; readers refuse to load more, so reading a whole bootstrap into memory is bounded.
MAX_BOOTSTRAP_SIZE = 0x8000_0000
# Compressed bytes of an OCI layer that carries a bootstrap (a gzip stream of a small tar around it).
MAX_BOOTSTRAP_LAYER = 1 << 31


def is_chunk_size(value: int) -> bool:
    """Whether ``value`` follows :data:`CHUNK_SIZE_RULE`."""
    return MIN_CHUNK_SIZE <= value <= MAX_CHUNK_SIZE and value & (value - 1) == 0
