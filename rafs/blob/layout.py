"""On-disk structures nydus-image appends to RAFS v6 data blobs, declared once.

A native v6 data blob built with ``--features blob-toc`` (builder/src/core/blob.rs, builder/src/lib.rs)
reads, front to back, as a "reversed tar": every payload is followed by the 512-byte GNU tar header
that names it::

    chunk data | hdr(image.blob) | CI | CI header | hdr(blob.meta) | chunk digests | hdr(blob.digest)
               | [bootstrap | hdr(image.boot)] | ToC entries | hdr(rafs.blob.toc)

Without blob-toc the blob is ``chunk data | CI | CI header`` (and with ``--blob-inline-meta`` the
bootstrap and its ``image.boot`` header follow). The CI ("compression context", alias blob meta) is the
array of per-chunk records below, optionally followed by batch or ZRAN inflate contexts and ZRAN
dictionaries; it is compressed as one unit and followed by its plaintext header.

The chunk-info records pack several bit fields into u64 words, which construct does not express well:
they are declared here as raw u64 words plus the masks and shifts that cut them (storage/src/meta/
chunk_info_v1.rs, chunk_info_v2.rs); ``rafs.blob.meta`` applies them. Integers are little-endian.
"""

from construct import Bytes, Const, Int8ul, Int32ul, Int64ul, Struct

# -- blob compression context (CI) header: storage/src/meta/mod.rs -----------------------------------

BLOB_CCT_MAGIC = 0xB10B_B10B
BLOB_CCT_HEADER_SIZE = 0x1000
BLOB_CCT_CHUNK_SIZE_MASK = 0xFF_FFFF          # chunk sizes are 24-bit (v1 and v2 store size - 1)
# Upper bounds of a plain CI array (RAFS_MAX_CHUNK_SIZE * record size), checked on the 4K-aligned size.
BLOB_CCT_V1_MAX_SIZE = 0x100_0000 * 16
BLOB_CCT_V2_MAX_SIZE = 0x100_0000 * 24
# Name of the nydusd cache file holding the decompressed CI and its header: `<blob id>.blob.meta`.
BLOB_CCT_FILE_SUFFIX = "blob.meta"

BlobCompressionContextHeader = Struct(
    "s_magic" / Const(BLOB_CCT_MAGIC, Int32ul),
    "s_features" / Int32ul,              # BlobFeatures, as in the blob table entry
    "s_ci_compressor" / Int32ul,         # compressor id of the CI array (falls back to 0 when not smaller)
    "s_ci_entries" / Int32ul,            # number of chunk-info records (= blob chunk_count)
    "s_ci_offset" / Int64ul,             # where the (compressed) CI starts in the blob file
    "s_ci_compressed_size" / Int64ul,
    "s_ci_uncompressed_size" / Int64ul,  # records + batch/ZRAN contexts + ZRAN dictionaries
    "s_ci_zran_offset" / Int64ul,        # batch/ZRAN contexts, inside the uncompressed CI (= records end)
    "s_ci_zran_size" / Int64ul,          # contexts + dictionaries
    "s_ci_zran_count" / Int32ul,         # number of batch or ZRAN contexts
    "s_reserved" / Bytes(4032),
    "s_magic2" / Const(BLOB_CCT_MAGIC, Int32ul),
)

# -- chunk info v1, 16 bytes: storage/src/meta/chunk_info_v1.rs --------------------------------------
# uncomp_info: bits 12..43 uncompressed offset (4K aligned), bits 44..63 (size-1) bits 0..19,
#              bits 8..11 (size-1) bits 20..23, bits 0..7 reserved.
# comp_info:   bits 0..39 compressed offset, bits 40..43 (size-1) bits 20..23, bits 44..63 (size-1)
#              bits 0..19. A v1 chunk is compressed exactly when its two sizes differ.

ChunkInfoV1Ondisk = Struct(
    "uncomp_info" / Int64ul,
    "comp_info" / Int64ul,
)

CI_V1_COMP_OFFSET_MASK = 0xFF_FFFF_FFFF
CI_V1_UNCOMP_OFFSET_MASK = 0xFFF_FFFF_F000
CI_V1_SIZE_LOW_MASK = 0x0F_FFFF               # low 20 bits of size - 1 ...
CI_V1_SIZE_LOW_SHIFT = 44                     # ... stored at bits 44..63 of both words
CI_V1_SIZE_HIGH_MASK = 0xF0_0000              # high 4 bits of size - 1 ...
CI_V1_COMP_SIZE_HIGH_SHIFT = 20               # ... at comp_info bits 40..43 (shift right by 20 to store)
CI_V1_UNCOMP_SIZE_HIGH_SHIFT = 12             # ... at uncomp_info bits 8..11 (shift right by 12 to store)
CI_V1_COMP_SIZE_HIGH_BITS = 0xF00_0000_0000   # comp_info bits 40..43
CI_V1_UNCOMP_SIZE_HIGH_BITS = 0xF00           # uncomp_info bits 8..11

# -- chunk info v2, 24 bytes: storage/src/meta/chunk_info_v2.rs --------------------------------------
# uncomp_info: bits 0..31 uncompressed offset >> 12, bits 32..55 size - 1, bits 56..63 flags.
# comp_info:   bits 0..39 compressed offset, bits 40..63 compressed size (not minus one; 0 for batch).
# data:        ZRAN: context index << 32 | offset in the context's output; BATCH: batch index << 32 |
#              offset in the batch buffer; otherwise the CRC-32C of the chunk when HAS_CRC32.

ChunkInfoV2Ondisk = Struct(
    "uncomp_info" / Int64ul,
    "comp_info" / Int64ul,
    "data" / Int64ul,
)

CI_V2_COMP_OFFSET_MASK = 0xFF_FFFF_FFFF
CI_V2_COMP_SIZE_SHIFT = 40
CI_V2_UNCOMP_OFFSET_MASK = 0xFFFF_FFFF
CI_V2_UNCOMP_OFFSET_SHIFT = 12
CI_V2_UNCOMP_SIZE_SHIFT = 32
CI_V2_FLAGS_SHIFT = 56
CI_V2_FLAG_COMPRESSED = 0x01
CI_V2_FLAG_ZRAN = 0x02
CI_V2_FLAG_BATCH = 0x04
CI_V2_FLAG_ENCRYPTED = 0x08
CI_V2_FLAG_HAS_CRC32 = 0x10
CI_V2_FLAGS_VALID = 0x1F
CI_V2_DATA_INDEX_SHIFT = 32
CI_V2_DATA_LOW_MASK = 0xFFFF_FFFF

# -- batch and ZRAN inflate contexts, 40 bytes each, after the records inside the CI -----------------

# storage/src/meta/batch.rs. (A short-lived 2023 layout put a u64 compressed_offset first and had three
# reserved words; the current one keeps the offset in each member's CI record instead.)
BatchInflateContext = Struct(
    "compressed_size" / Int32ul,         # compressed size of the whole batch
    "uncompressed_batch_size" / Int32ul,  # its uncompressed size, not 4K aligned
    "reserved" / Bytes(32),
)

# storage/src/meta/zran.rs: a restart point inside a gzip stream, with its inflate dictionary.
ZranInflateContext = Struct(
    "in_offset" / Int64ul,               # offset in the gzip stream
    "out_offset" / Int64ul,              # offset in the decompressed stream
    "dict_offset" / Int64ul,             # offset of the dictionary inside the dictionary table
    "in_len" / Int32ul,                  # compressed bytes covered by this context
    "out_len" / Int32ul,                 # decompressed bytes produced from it
    "dict_size" / Int32ul,               # <= 32 KiB
    "ctx_byte" / Int8ul,                 # previous byte, used when ctx_bits is non-zero
    "ctx_bits" / Int8ul,
    "reserved" / Bytes(2),
)

INFLATE_CONTEXT_SIZE = 40
ZRAN_MAX_DICT_SIZE = 0x8000

# -- chunk digest array (`blob.digest`): 32 raw bytes per chunk, in chunk-index order -----------------

CHUNK_DIGEST_SIZE = 32

# -- blob ToC: storage/src/meta/toc.rs ---------------------------------------------------------------

TOC_ENTRY_BLOB_RAW = "image.blob"             # the chunk data
TOC_ENTRY_BOOTSTRAP = "image.boot"            # an inline RAFS bootstrap
TOC_ENTRY_BLOB_META = "blob.meta"             # the CI array
TOC_ENTRY_BLOB_META_HEADER = "blob.meta.header"
TOC_ENTRY_BLOB_DIGEST = "blob.digest"         # the chunk digest array
TOC_ENTRY_BLOB_TOC = "rafs.blob.toc"          # tar name of the ToC itself

TOC_ENTRY_COMPRESSION_NONE = 0x1
TOC_ENTRY_COMPRESSION_ZSTD = 0x2
TOC_ENTRY_COMPRESSION_LZ4_BLOCK = 0x4
TOC_ENTRY_COMPRESSION_MASK = 0xF
TOC_FLAGS_BY_COMPRESSOR = {"none": TOC_ENTRY_COMPRESSION_NONE, "zstd": TOC_ENTRY_COMPRESSION_ZSTD,
                           "lz4_block": TOC_ENTRY_COMPRESSION_LZ4_BLOCK}
TOC_COMPRESSOR_BY_FLAGS = {v: k for k, v in TOC_FLAGS_BY_COMPRESSOR.items()}

TOC_ENTRY_SIZE = 128
TOC_ENTRY_NAME_SIZE = 16
# The reader takes the last 4 KiB of a blob (or all of it rounded down to 128 when smaller).
TOC_AUTO_DETECT_SIZE = 0x1000
# A located ToC (blob table `blob_toc_size`) must be 512..64 KiB and a multiple of 128 (`TocLocation`).
TOC_MIN_SIZE = 512
TOC_MAX_SIZE = 0x10000

TocEntry = Struct(
    "flags" / Int32ul,                   # TOC_ENTRY_COMPRESSION_* of the stored bytes
    "reserved1" / Int32ul,
    "name" / Bytes(TOC_ENTRY_NAME_SIZE),  # NUL padded
    "uncompressed_digest" / Bytes(32),   # sha256 of the uncompressed content (zero: not recorded)
    "compressed_offset" / Int64ul,
    "compressed_size" / Int64ul,
    "uncompressed_size" / Int64ul,
    "reserved2" / Bytes(48),             # the builder leaves garbage here; kept for byte identity
)

# -- GNU tar header written after each section (the Rust `tar` crate's `Header::new_gnu`) ------------
# Name, size ("%011o\0"), mtime ("00000000000\0"), checksum ("%07o\0" over the header with the checksum
# field read as spaces), type "0"; mode/uid/gid and everything else left as zero bytes.

TAR_BLOCK_SIZE = 512
TAR_GNU_MAGIC = b"ustar "
TAR_GNU_VERSION = b" \0"
TAR_TYPE_REGULAR = b"0"
TAR_CHECKSUM_OFFSET = 148
TAR_CHECKSUM_SIZE = 8

TarHeader = Struct(
    "name" / Bytes(100),                 # NUL padded entry name
    "mode" / Bytes(8),
    "uid" / Bytes(8),
    "gid" / Bytes(8),
    "size" / Bytes(12),                  # octal payload size
    "mtime" / Bytes(12),
    "chksum" / Bytes(8),                 # octal sum of the header bytes, checksum field as spaces
    "typeflag" / Bytes(1),
    "linkname" / Bytes(100),
    "magic" / Const(TAR_GNU_MAGIC),
    "version" / Const(TAR_GNU_VERSION),
    "uname" / Bytes(32),
    "gname" / Bytes(32),
    "devmajor" / Bytes(8),
    "devminor" / Bytes(8),
    "gnu_extra" / Bytes(167),            # atime, ctime, offset, longnames, sparse map, realsize, pad
)


# The bootstrap's chunk record, ``RafsV5ChunkInfo`` (rafs/src/metadata/layout/v5.rs), 80 bytes: the
# chunk array of every v5 regular-file inode, and the v6 chunk info table (sorted there by digest and
# blob index, with the file_offset of one of the files sharing the chunk). It describes where a chunk
# lives in a blob, so it is declared here once and re-exported by both bootstrap layouts.
RAFS_CHUNK_INFO_SIZE = 80
RafsChunkInfo = Struct(
    "block_id" / Bytes(32),              # chunk digest (digester of the uncompressed bytes)
    "blob_index" / Int32ul,              # position of the blob in the bootstrap's blob table
    "flags" / Int32ul,                   # BlobChunkFlags
    "compressed_size" / Int32ul,
    "uncompressed_size" / Int32ul,
    "compressed_offset" / Int64ul,       # in the blob file
    "uncompressed_offset" / Int64ul,     # in the blob's uncompressed (cache) space; 4K-aligned for v6
    "file_offset" / Int64ul,
    "index" / Int32ul,                   # chunk number within its blob (index into the v6 CI array)
    "crc32" / Int32ul,                   # CRC-32C of the uncompressed data when HAS_CRC32 (>= 2.3.1)
)

assert BlobCompressionContextHeader.sizeof() == BLOB_CCT_HEADER_SIZE
assert ChunkInfoV1Ondisk.sizeof() == 16
assert ChunkInfoV2Ondisk.sizeof() == 24
assert BatchInflateContext.sizeof() == INFLATE_CONTEXT_SIZE
assert ZranInflateContext.sizeof() == INFLATE_CONTEXT_SIZE
assert TocEntry.sizeof() == TOC_ENTRY_SIZE
assert TarHeader.sizeof() == TAR_BLOCK_SIZE
assert RafsChunkInfo.sizeof() == RAFS_CHUNK_INFO_SIZE
