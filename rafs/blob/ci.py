"""The CI's records (storage/src/meta/): the fast records of the header, the v1 and v2 chunk records
and the batch and ZRAN inflate contexts, the encoders the blob writer packs them with (the one place
each bit layout is written), and the bytes of a nydusd ``<blob id>.blob.meta`` cache file. Reading,
checking and decoding them is :mod:`rafs.blob.meta`'s job.
"""

from __future__ import annotations

from .._records import FastRecord, build, parse
from ..errors import InvalidArgumentError
from ..model import COMPRESSOR_IDS, ChunkFlags
from . import layout as L  # noqa: N812 - the layout module, short in long field expressions

CI_HEADER = FastRecord(L.BlobCompressionContextHeader, "CI header")
CHUNK_INFO_V1 = FastRecord(L.ChunkInfoV1Ondisk, "chunk info v1")
CHUNK_INFO_V2 = FastRecord(L.ChunkInfoV2Ondisk, "chunk info v2")
BATCH_CONTEXT = FastRecord(L.BatchInflateContext, "batch inflate context")
ZRAN_CONTEXT = FastRecord(L.ZranInflateContext, "ZRAN inflate context")

# The 4 KiB page the CI addresses in (CI_V2_UNCOMP_OFFSET_SHIFT): aligned chunks' uncompressed offsets
# and the .blob.meta padding.
CI_PAGE = 0x1000


def round_up_4k(value: int) -> int:
    """``value`` rounded up to the 4 KiB page the CI addresses in: aligned chunks' uncompressed
    offsets, the ``.blob.meta`` padding (the reference's ``round_up_4k``)."""
    return (value + CI_PAGE - 1) & ~(CI_PAGE - 1)


# -- encoders (the builder packs records with these) -------------------------------------------------

def _check_sizes(compressed_size: int, uncompressed_size: int, *, v2: bool) -> None:
    low = 0 if v2 else 1
    if not low <= compressed_size <= (L.BLOB_CCT_CHUNK_SIZE_MASK if v2 else L.BLOB_CCT_CHUNK_SIZE_MASK + 1):
        raise InvalidArgumentError(f"compressed size {compressed_size} does not fit a v{2 if v2 else 1} CI record")
    if not 1 <= uncompressed_size <= L.BLOB_CCT_CHUNK_SIZE_MASK + 1:
        raise InvalidArgumentError(f"uncompressed size {uncompressed_size} is not in 1..16 MiB")


def encode_chunk_info_v1(compressed_offset: int, compressed_size: int, uncompressed_offset: int,
                         uncompressed_size: int) -> tuple[int, int]:
    """The (uncomp_info, comp_info) words of a v1 record."""
    _check_sizes(compressed_size, uncompressed_size, v2=False)
    if compressed_offset & ~L.CI_V1_COMP_OFFSET_MASK or compressed_offset < 0:
        raise InvalidArgumentError(f"compressed offset {compressed_offset:#x} does not fit 40 bits")
    if uncompressed_offset & ~L.CI_V1_UNCOMP_OFFSET_MASK or uncompressed_offset < 0:
        raise InvalidArgumentError(f"uncompressed offset {uncompressed_offset:#x} is not 4K aligned below 2^44")
    return _chunk_info_v1_words(compressed_offset, compressed_size, uncompressed_offset, uncompressed_size)


def _chunk_info_v1_words(compressed_offset: int, compressed_size: int, uncompressed_offset: int,
                         uncompressed_size: int) -> tuple[int, int]:
    """The v1 words, each offset masked to its field as the reference's setters do (storage/src/meta/
    chunk_info_v1.rs): the one place the ``BlobChunkInfoV1Ondisk`` bit layout is written."""
    usize, csize = uncompressed_size - 1, compressed_size - 1
    uncomp = ((uncompressed_offset & L.CI_V1_UNCOMP_OFFSET_MASK)
              | (usize & L.CI_V1_SIZE_LOW_MASK) << L.CI_V1_SIZE_LOW_SHIFT
              | (usize & L.CI_V1_SIZE_HIGH_MASK) >> L.CI_V1_UNCOMP_SIZE_HIGH_SHIFT)
    comp = ((compressed_offset & L.CI_V1_COMP_OFFSET_MASK)
            | (csize & L.CI_V1_SIZE_LOW_MASK) << L.CI_V1_SIZE_LOW_SHIFT
            | (csize & L.CI_V1_SIZE_HIGH_MASK) << L.CI_V1_COMP_SIZE_HIGH_SHIFT)
    return uncomp, comp


def ci_v1_entry(compressed_offset: int, compressed_size: int, uncompressed_offset: int,
                uncompressed_size: int) -> bytes:
    """A 16-byte v1 record as the blob writer stores it: unchecked, offsets masked to their fields
    (an unaligned v5 build's uncompressed offsets lose their low 12 bits, as the reference's do)."""
    return CHUNK_INFO_V1.struct.pack(*_chunk_info_v1_words(compressed_offset, compressed_size,
                                                           uncompressed_offset, uncompressed_size))


def encode_chunk_info_v2(compressed_offset: int, compressed_size: int, uncompressed_offset: int,
                         uncompressed_size: int, flags: int = 0, *, crc32: int = 0, zran: bool = False,
                         context_index: int = 0, context_offset: int = 0) -> tuple[int, int, int]:
    """The (uncomp_info, comp_info, data) words of a v2 record; ``flags`` are ChunkFlags."""
    _check_sizes(compressed_size, uncompressed_size, v2=True)
    if compressed_offset & ~L.CI_V2_COMP_OFFSET_MASK or compressed_offset < 0:
        raise InvalidArgumentError(f"compressed offset {compressed_offset:#x} does not fit 40 bits")
    page = uncompressed_offset >> L.CI_V2_UNCOMP_OFFSET_SHIFT
    if uncompressed_offset < 0 or page << L.CI_V2_UNCOMP_OFFSET_SHIFT != uncompressed_offset \
            or page > L.CI_V2_UNCOMP_OFFSET_MASK:
        raise InvalidArgumentError(f"uncompressed offset {uncompressed_offset:#x} is not 4K aligned below 2^44")
    batch = bool(flags & ChunkFlags.BATCH)
    bits = ((L.CI_V2_FLAG_COMPRESSED if flags & ChunkFlags.COMPRESSED else 0)
            | (L.CI_V2_FLAG_ENCRYPTED if flags & ChunkFlags.ENCRYPTED else 0)
            | (L.CI_V2_FLAG_BATCH if batch else 0)
            | (L.CI_V2_FLAG_ZRAN if zran else 0)
            | (L.CI_V2_FLAG_HAS_CRC32 if flags & ChunkFlags.HAS_CRC32 and not (batch or zran) else 0))
    if zran or batch:
        if not (0 <= context_index <= 0xFFFF_FFFF and 0 <= context_offset <= 0xFFFF_FFFF):
            raise InvalidArgumentError("batch/ZRAN context index and offset are 32-bit")
        data = context_index << L.CI_V2_DATA_INDEX_SHIFT | context_offset
    else:
        data = crc32 & L.CI_V2_DATA_LOW_MASK if bits & L.CI_V2_FLAG_HAS_CRC32 else 0
    uncomp = page | (uncompressed_size - 1) << L.CI_V2_UNCOMP_SIZE_SHIFT | bits << L.CI_V2_FLAGS_SHIFT
    comp = compressed_offset | compressed_size << L.CI_V2_COMP_SIZE_SHIFT
    return uncomp, comp, data


def pack_chunk_infos(infos, version: int) -> bytes:
    """The uncompressed CI records (without contexts) for a sequence of :class:`rafs.blob.meta.ChunkInfo`."""
    out = bytearray()
    if version == 1:
        pack = CHUNK_INFO_V1.struct.pack
        for i in infos:
            out += pack(*encode_chunk_info_v1(i.compressed_offset, i.compressed_size, i.uncompressed_offset,
                                              i.uncompressed_size))
    elif version == 2:
        pack = CHUNK_INFO_V2.struct.pack
        for i in infos:
            out += pack(*encode_chunk_info_v2(i.compressed_offset, i.compressed_size, i.uncompressed_offset,
                                              i.uncompressed_size, i.flags, crc32=i.crc32, zran=i.zran,
                                              context_index=i.context_index, context_offset=i.context_offset))
    else:
        raise InvalidArgumentError(f"chunk info version {version} (expected 1 or 2)")
    return bytes(out)


def build_ci_header(*, features: int, ci_compressor, ci_entries: int, ci_offset: int, ci_compressed_size: int,
                    ci_uncompressed_size: int, ci_zran_offset: int = 0, ci_zran_size: int = 0,
                    ci_zran_count: int = 0, reserved: bytes | None = None) -> bytes:
    """The 4096-byte ``BlobCompressionContextHeader``; ``ci_compressor`` is a name or an id."""
    if isinstance(ci_compressor, str):
        if ci_compressor not in COMPRESSOR_IDS:
            raise InvalidArgumentError(f"unknown CI compressor {ci_compressor!r}")
        ci_compressor = COMPRESSOR_IDS[ci_compressor]
    return build(L.BlobCompressionContextHeader,
                 dict(s_magic=L.BLOB_CCT_MAGIC, s_features=features, s_ci_compressor=ci_compressor,
                      s_ci_entries=ci_entries, s_ci_offset=ci_offset, s_ci_compressed_size=ci_compressed_size,
                      s_ci_uncompressed_size=ci_uncompressed_size, s_ci_zran_offset=ci_zran_offset,
                      s_ci_zran_size=ci_zran_size, s_ci_zran_count=ci_zran_count,
                      s_reserved=reserved if reserved is not None else bytes(4032), s_magic2=L.BLOB_CCT_MAGIC),
                 structure="CI header")


def parse_ci_header(data, offset: int = 0):
    """The CI header at ``data[offset:]`` (a construct Container); both magics are checked."""
    return parse(L.BlobCompressionContextHeader, data, offset, structure="CI header")


def blob_meta_file_bytes(ci_data, header) -> bytes:
    """A nydusd ``<blob id>.blob.meta`` cache file: CI data, zeros to 4 KiB, the 4096-byte header."""
    return b"".join(_blob_meta_file_parts(ci_data, header))


def write_blob_meta_file(fileobj, ci_data, header) -> int:
    """Stream the cache file of :func:`blob_meta_file_bytes` into ``fileobj``; returns its size."""
    total = 0
    for part in _blob_meta_file_parts(ci_data, header):
        fileobj.write(part)
        total += len(part)
    return total


def _blob_meta_file_parts(ci_data, header):
    header = bytes(header)
    fields = parse_ci_header(header)
    if len(ci_data) != fields.s_ci_uncompressed_size:
        raise InvalidArgumentError(f"CI data of {len(ci_data)} bytes, header says {fields.s_ci_uncompressed_size}")
    yield bytes(ci_data)
    yield bytes(round_up_4k(len(ci_data)) - len(ci_data))
    yield header
