"""The format limits: what the reference tools accept and write, so what rafs refuses beyond. Every
bound that input is checked against before it becomes an allocation, a loop or a read lives here once.
"""

DEFAULT_CHUNK_SIZE = 0x100000       # RAFS_DEFAULT_CHUNK_SIZE, storage/src/lib.rs
MIN_CHUNK_SIZE = 0x1000
MAX_CHUNK_SIZE = 0x1000000          # RAFS_MAX_CHUNK_SIZE
# The reference's rule for chunk sizes, batch sizes and a v5 superblock's block size, in its words
CHUNK_SIZE_RULE = f"a power of two in [{MIN_CHUNK_SIZE:#x}, {MAX_CHUNK_SIZE:#x}]"
MAX_CHUNKS_PER_BLOB = 1 << 24       # RAFS_MAX_CHUNKS_PER_BLOB
MAX_BLOBS = 255                     # blob index is a u8 (v6 stores index + 1)
MAX_NAME_SIZE = 255
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
