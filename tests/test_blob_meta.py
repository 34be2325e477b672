"""Blob meta (CI arrays): the reference fixtures, the fast struct path against construct, the encoders
the builder uses (byte-identical to nydus-image), nydusd's .blob.meta cache files, hostile CIs."""

from __future__ import annotations

import dataclasses
import io
import random
import tracemalloc

import construct
import pytest
import zstandard

import rafs
from rafs.blob import layout
from rafs.blob.meta import (BATCH_CONTEXT, CHUNK_INFO_V1, CHUNK_INFO_V2, ZRAN_CONTEXT, ChunkInfo,
                            blob_meta_file_bytes, build_ci_header, decode_blob_meta, encode_chunk_info_v1,
                            encode_chunk_info_v2, load_blob_meta, load_blob_meta_file, load_chunk_infos,
                            pack_chunk_infos, parse_ci_header, read_blob_meta_at, write_blob_meta_file)
from rafs.blob.toc import TOC_ENTRY
from rafs.errors import InvalidArgumentError, InvalidImageError
from rafs.model import Blob, BlobFeatures, ChunkFlags

V6_BLOB_ID = "be7d77eeb719f70884758d1aa800ed0fb09d701aaec469964e9d54325f0d5fef"
ZRAN_META = "233c72f2b6b698c07021c4da367cfe2dff4f049efbaa885ca0ff760ea297865a.blob.meta"
# The v6 fixture's blob table entry (spec E; rafs-v6-2.2.boot)
V6_BLOB = Blob(0, V6_BLOB_ID, compressor="zstd", digester="blake3", chunk_size=0x100000, chunk_count=2,
               compressed_size=14554, uncompressed_size=36864, features=0x7000_0021, ci_compressor="none",
               ci_offset=8314, ci_compressed_size=32, ci_uncompressed_size=32, toc_size=1024)
# The BlobInfo of storage/src/meta/mod.rs test_load_meta_ci_zran_* for the ZRAN fixture
ZRAN_BLOB = Blob(0, ZRAN_META.split(".")[0], compressor="gzip", digester="sha256", chunk_count=163,
                 compressed_size=9839040, uncompressed_size=0x16C6000, features=0xF, ci_compressor="none",
                 ci_offset=0, ci_compressed_size=0xA1290, ci_uncompressed_size=0xA1290)
V6_CHUNKS = [(0, 4828, 0, 16931), (4828, 2974, 20480, 13400)]


def _addresses(chunks):
    return [(c.compressed_offset, c.compressed_size, c.uncompressed_offset, c.uncompressed_size) for c in chunks]


@pytest.fixture(scope="module")
def v6_blob(fixtures):
    return fixtures / "blobs" / V6_BLOB_ID


@pytest.fixture(scope="module")
def zran_meta(fixtures):
    return fixtures / "zran" / ZRAN_META


# -- fixtures ----------------------------------------------------------------------------------------

def test_v6_blob_ci(v6_blob):
    chunks = load_chunk_infos(V6_BLOB, v6_blob.read_bytes())
    assert _addresses(chunks) == V6_CHUNKS
    assert all(c.flags == ChunkFlags.COMPRESSED and c.crc32 == 0 and c.context is None for c in chunks)
    meta = load_blob_meta(V6_BLOB, v6_blob.read_bytes())
    assert meta.version == 1 and meta.header.s_features == 0x7000_0021 and meta.header.s_ci_compressor == 0
    assert read_blob_meta_at(v6_blob.read_bytes(), 8346).chunks == chunks


def test_v6_blob_ci_through_the_bootstrap(v6_fixture):
    """Needs the RAFS v6 reader: the blob table entry it reads drives the CI load."""
    bootstrap, blob_dir = v6_fixture
    with rafs.open(bootstrap, blob_dir=blob_dir) as image:
        blob = image.blobs[0]
        assert (blob.ci_offset, blob.ci_compressed_size, blob.ci_compressor) == (8314, 32, "none")
        assert _addresses(load_chunk_infos(blob, (blob_dir / blob.blob_id).read_bytes())) == V6_CHUNKS


def test_encoders_rebuild_the_v6_blob_ci_byte_for_byte(v6_blob):
    data = v6_blob.read_bytes()
    chunks = [ChunkInfo(*address, ChunkFlags.COMPRESSED) for address in V6_CHUNKS]
    assert pack_chunk_infos(chunks, 1) == data[8314:8346]
    header = build_ci_header(features=0x7000_0021, ci_compressor="none", ci_entries=2, ci_offset=8314,
                             ci_compressed_size=32, ci_uncompressed_size=32)
    assert header == data[8346:8346 + 4096]


def test_zran_cache_file(zran_meta):
    meta = load_blob_meta_file(zran_meta.read_bytes())
    header = meta.header
    assert (header.s_features, header.s_ci_entries, header.s_ci_uncompressed_size) == (0xF, 0xA3, 660112)
    assert (header.s_ci_zran_offset, header.s_ci_zran_size, header.s_ci_zran_count) == (3912, 0xA0348, 21)
    assert len(meta.chunks) == 163 and len(meta.zran_contexts) == 21 and not meta.batch_contexts
    assert len(meta.zran_dicts) == 0xA0348 - 0x15 * 40
    assert all(c.zran and c.is_compressed for c in meta.chunks)
    assert meta.chunks[0] == ChunkInfo(184, 649, 0, 1404, ChunkFlags.COMPRESSED, 0, True, 0, 1024)
    assert meta.chunks[-1].context_index == 20
    assert [c.context_index for c in meta.chunks] == sorted(c.context_index for c in meta.chunks)
    ctx = meta.zran_contexts[1]
    assert (ctx.in_offset, ctx.out_offset, ctx.in_len, ctx.out_len, ctx.dict_size, ctx.ctx_byte, ctx.ctx_bits) \
        == (187761, 987149, 592813, 1801715, 32768, 103, 5)
    assert len(meta.zran_dict(1)) == 32768 and meta.zran_dict(0) == b""
    # round trip: records re-encode, the cache file rebuilds byte for byte
    assert pack_chunk_infos(meta.chunks, 2) == meta.ci_data[:3912]
    assert meta.file_bytes() == zran_meta.read_bytes()
    # with the blob table entry the reference's tests use, and a wrong one
    assert load_blob_meta_file(zran_meta.read_bytes(), ZRAN_BLOB).chunks == meta.chunks
    with pytest.raises(InvalidImageError):
        load_blob_meta_file(zran_meta.read_bytes(), dataclasses.replace(ZRAN_BLOB, chunk_count=162))
    with pytest.raises(InvalidImageError):
        load_blob_meta_file(zran_meta.read_bytes(), dataclasses.replace(ZRAN_BLOB, uncompressed_size=0x100000))


def test_cache_file_writer(v6_blob, tmp_path):
    meta = load_blob_meta(V6_BLOB, v6_blob.read_bytes())
    expected = meta.ci_data + bytes(4096 - 32) + meta.header_bytes
    assert blob_meta_file_bytes(meta.ci_data, meta.header_bytes) == expected == meta.file_bytes()
    path = tmp_path / f"{V6_BLOB_ID}.blob.meta"
    with open(path, "wb") as f:
        assert write_blob_meta_file(f, meta.ci_data, meta.header_bytes) == 8192
    assert load_blob_meta_file(path.read_bytes(), V6_BLOB).chunks == meta.chunks
    assert load_blob_meta_file(expected).chunks == meta.chunks
    with pytest.raises(InvalidArgumentError):
        blob_meta_file_bytes(meta.ci_data[:16], meta.header_bytes)


# -- fast path agrees with construct; encoders round trip --------------------------------------------

def _random_values(schema, rng):
    values = {}
    for sub in schema.subcons:
        size = sub.sizeof()
        if sub.name.startswith(("s_magic",)):
            values[sub.name] = layout.BLOB_CCT_MAGIC
        elif isinstance(sub.subcon, (construct.Bytes, construct.Const)):
            values[sub.name] = bytes(rng.randrange(256) for _ in range(size))
        else:
            values[sub.name] = rng.randrange(1 << (8 * size))
    return values


@pytest.mark.parametrize("record", [CHUNK_INFO_V1, CHUNK_INFO_V2, BATCH_CONTEXT, ZRAN_CONTEXT, TOC_ENTRY],
                         ids=lambda r: r.name)
def test_fast_records_agree_with_construct(record):
    rng = random.Random(record.size)
    for _ in range(200):
        values = _random_values(record.schema, rng)
        packed = record.pack(**values)
        assert packed == record.schema.build(values)
        parsed = record.schema.parse(packed)
        assert record.unpack_from(packed)._asdict() == {k: parsed[k] for k in record.fields}


def _random_chunks(rng, count, version):
    chunks, uoff, coff = [], 0, 0
    for i in range(count):
        # v2 stores the compressed size itself in 24 bits, so a raw 16 MiB chunk only fits v1
        top = 0x1000000 if version == 1 else 0xFFFFFF
        usize = rng.choice([1, 4096, top, rng.randrange(1, top + 1)])
        compressed = rng.random() < 0.7
        csize = rng.randrange(1, usize + 1) if compressed and usize > 1 else usize
        flags = ChunkFlags.COMPRESSED if csize != usize or (version == 2 and compressed) else ChunkFlags(0)
        crc = 0
        if version == 2 and rng.random() < 0.5:
            flags |= ChunkFlags.HAS_CRC32
            crc = rng.randrange(1 << 32)
        chunks.append(ChunkInfo(coff, csize, uoff, usize, flags, crc))
        coff += csize
        uoff += (usize + 4095) & ~4095
    return chunks


def _header_for(ci_data, count, features, **extra):
    return build_ci_header(features=features, ci_compressor="none", ci_entries=count, ci_offset=1 << 39,
                           ci_compressed_size=len(ci_data), ci_uncompressed_size=len(ci_data), **extra)


@pytest.mark.parametrize("version", [1, 2])
def test_chunk_info_round_trip(version):
    rng = random.Random(version)
    chunks = _random_chunks(rng, 3000, version)
    ci = pack_chunk_infos(chunks, version)
    features = BlobFeatures.ALIGNED | (BlobFeatures.CHUNK_INFO_V2 if version == 2 else 0)
    assert decode_blob_meta(_header_for(ci, len(chunks), features), ci).chunks == chunks
    # the fast path and construct read the same words
    record = CHUNK_INFO_V1 if version == 1 else CHUNK_INFO_V2
    for i in rng.sample(range(len(chunks)), 50):
        parsed = record.schema.parse(ci[i * record.size:(i + 1) * record.size])
        assert tuple(parsed[k] for k in record.fields) == record.struct.unpack_from(ci, i * record.size)


def test_v1_bit_layout_matches_the_reference():
    # chunk_info_v1.rs test_new_chunk_on_disk "old format compatibility" words
    uncomp, comp = 0xFFFF_FFFF_F100_0000, 0xFFFF_F0FF_FFFF_FFFF
    header = _header_for(bytes(16), 1, BlobFeatures.ALIGNED)
    (chunk,) = decode_blob_meta(header, CHUNK_INFO_V1.struct.pack(uncomp, comp)).chunks
    assert (chunk.uncompressed_size, chunk.uncompressed_offset) == (0x10_0000, 0xFFFF_1000 * 0x1000)
    assert (chunk.compressed_size, chunk.compressed_offset) == (0x10_0000, 0xFF_FFFF_FFFF)
    assert encode_chunk_info_v1(0xFF_FFFF_FFFF, 0x1000000, 0xFFF_FFFF_F000, 0x1000000) == (
        0xFFFF_FFFF_FFFF_FF00, 0xFFFF_FFFF_FFFF_FFFF)


def test_v2_batch_and_zran_records_round_trip():
    batch = [ChunkInfo(0x5000, 0, 0, 100, ChunkFlags.COMPRESSED | ChunkFlags.BATCH, 0, False, 0, 0),
             ChunkInfo(0x5000, 0, 4096, 200, ChunkFlags.COMPRESSED | ChunkFlags.BATCH, 0, False, 0, 100),
             ChunkInfo(0x5100, 50, 8192, 50, ChunkFlags.HAS_CRC32, 0xDEADBEEF)]
    records = pack_chunk_infos(batch, 2)
    contexts = BATCH_CONTEXT.pack(0x100, 300, bytes(32))
    ci = records + contexts
    features = BlobFeatures.ALIGNED | BlobFeatures.CHUNK_INFO_V2 | BlobFeatures.BATCH
    header = _header_for(ci, 3, features, ci_zran_offset=len(records), ci_zran_size=40, ci_zran_count=1)
    meta = decode_blob_meta(header, ci)
    assert meta.chunks == batch and meta.chunks[1].context == (0, 100)
    assert meta.batch_contexts[0].compressed_size == 0x100
    # a member reaching past its batch's output, or naming a batch that does not exist
    for bad in (batch[1]._replace(context_offset=250), batch[1]._replace(context_index=1)):
        with pytest.raises(InvalidImageError):
            decode_blob_meta(header, pack_chunk_infos([batch[0], bad, batch[2]], 2) + contexts)
    with pytest.raises(InvalidImageError):            # batch data past the compressed limit
        decode_blob_meta(header, ci, compressed_limit=0x5080)
    assert encode_chunk_info_v2(0, 0x100, 0x1000, 0x100, ChunkFlags.COMPRESSED, zran=True, context_index=3,
                                context_offset=5) == (0x0300_00FF_0000_0001, 0x0001_0000_0000_0000, 0x3_0000_0005)


def test_encoders_refuse_what_does_not_fit():
    for args in ((0, 0, 0, 1), (0, 1, 0, 0), (0, 1, 0, 0x1000001), (1 << 40, 1, 0, 1), (0, 1, 0x800, 1)):
        with pytest.raises(InvalidArgumentError):
            encode_chunk_info_v1(*args)
    with pytest.raises(InvalidArgumentError):
        encode_chunk_info_v2(0, 0x1000000, 0, 1)
    with pytest.raises(InvalidArgumentError):
        pack_chunk_infos([], 3)
    with pytest.raises(InvalidArgumentError):
        build_ci_header(features=0, ci_compressor="brotli", ci_entries=1, ci_offset=0, ci_compressed_size=16,
                        ci_uncompressed_size=16)


# -- hostile CIs ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("change", [
    dict(ci_uncompressed_size=48), dict(ci_compressed_size=48), dict(ci_offset=8310), dict(ci_offset=14000),
    dict(ci_compressed_size=1 << 40, ci_uncompressed_size=1 << 40), dict(chunk_count=3), dict(chunk_count=0),
    dict(chunk_count=(1 << 24) + 1), dict(ci_compressor="zstd"), dict(features=0x7000_0025),
    dict(features=0x7000_0029), dict(uncompressed_size=20480), dict(compressed_size=7000),
])
def test_ci_sizes_that_lie(v6_blob, change):
    with pytest.raises(InvalidImageError):
        load_chunk_infos(dataclasses.replace(V6_BLOB, **change), v6_blob.read_bytes())


def test_huge_declared_ci_is_refused_before_reading(v6_blob):
    count = 1 << 24
    blob = dataclasses.replace(V6_BLOB, chunk_count=count, ci_compressed_size=16 * count,
                               ci_uncompressed_size=16 * count)
    _fails_within(lambda: load_chunk_infos(blob, v6_blob.read_bytes()), 4 << 20)


def _fails_within(call, memory_limit: int) -> None:
    """``call`` raises InvalidImageError with Python allocations peaking below ``memory_limit``."""
    tracemalloc.start()
    try:
        with pytest.raises(InvalidImageError):
            call()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < memory_limit


def _blob_with_ci(ci: bytes, count: int, compressor: str, stored: bytes | None = None) -> tuple[Blob, bytes]:
    stored = ci if stored is None else stored
    data = bytes(0x2000)
    header = build_ci_header(features=BlobFeatures.ALIGNED, ci_compressor=compressor, ci_entries=count,
                             ci_offset=len(data), ci_compressed_size=len(stored), ci_uncompressed_size=len(ci))
    blob = Blob(0, "c" * 64, compressor="zstd", chunk_count=count, compressed_size=len(data) + len(stored) + 4096,
                uncompressed_size=count * 4096, features=BlobFeatures.ALIGNED, ci_compressor=compressor,
                ci_offset=len(data), ci_compressed_size=len(stored), ci_uncompressed_size=len(ci))
    return blob, data + stored + header


def test_compressed_ci_and_bombs():
    chunks = [ChunkInfo(i * 16, 16, i * 4096, 4096, ChunkFlags.COMPRESSED) for i in range(256)]
    ci = pack_chunk_infos(chunks, 1)
    packed = zstandard.ZstdCompressor().compress(ci)
    blob, data = _blob_with_ci(ci, 256, "zstd", packed)
    assert load_chunk_infos(blob, data) == chunks
    # a frame inflating far beyond the declared CI size, with and without a content size
    bomb = bytes(128 << 20)
    for frame in (zstandard.ZstdCompressor(level=1).compress(bomb),
                  zstandard.ZstdCompressor(level=1, write_content_size=False).compress(bomb)):
        blob, data = _blob_with_ci(ci, 256, "zstd", frame)
        _fails_within(lambda: load_chunk_infos(blob, data), 16 << 20)
    # records pointing past the blob data or space
    for bad in (chunks[5]._replace(compressed_offset=0x1FFF), chunks[5]._replace(uncompressed_offset=256 * 4096)):
        broken = pack_chunk_infos(chunks[:5] + [bad] + chunks[6:], 1)
        blob, data = _blob_with_ci(broken, 256, "none")
        with pytest.raises(InvalidImageError, match="chunk 5"):
            load_chunk_infos(blob, data)


def test_bit_flips_and_truncations_raise_only_invalid_image(v6_blob, zran_meta):
    data = v6_blob.read_bytes()
    rng = random.Random(3)
    for _ in range(400):
        at = rng.randrange(8314, 8346 + 4096)
        mutant = bytearray(data)
        mutant[at] ^= 1 << rng.randrange(8)
        for call in (lambda: load_chunk_infos(V6_BLOB, bytes(mutant)), lambda: read_blob_meta_at(bytes(mutant), 8346)):
            try:
                call()
            except InvalidImageError:
                pass
    for cut in (0, 100, 8314, 8346, 9000, 12441):
        with pytest.raises(InvalidImageError):
            load_chunk_infos(V6_BLOB, data[:cut])
    cache = zran_meta.read_bytes()
    for cut in (0, 4095, 4096, 8192, len(cache) - 4096, len(cache) - 1):
        with pytest.raises(InvalidImageError):
            load_blob_meta_file(cache[:cut])
    for _ in range(300):
        at = rng.choice([rng.randrange(len(cache) - 4096, len(cache)), rng.randrange(0, 3912 + 21 * 40)])
        mutant = bytearray(cache)
        mutant[at] ^= 1 << rng.randrange(8)
        try:
            load_blob_meta_file(bytes(mutant))
        except InvalidImageError:
            pass


def test_encrypted_ci_needs_the_tables_key_but_cache_records_decode():
    features = BlobFeatures.ALIGNED | BlobFeatures.CHUNK_INFO_V2 | BlobFeatures.ENCRYPTED
    chunks = [ChunkInfo(0, 4112, 0, 4096, ChunkFlags.COMPRESSED | ChunkFlags.ENCRYPTED),
              ChunkInfo(4112, 4096, 4096, 4096, ChunkFlags.ENCRYPTED)]
    ci = pack_chunk_infos(chunks, 2)
    header = build_ci_header(features=features, ci_compressor="none", ci_entries=2, ci_offset=8208,
                             ci_compressed_size=len(ci), ci_uncompressed_size=len(ci))
    assert load_blob_meta_file(io.BytesIO(blob_meta_file_bytes(ci, header))).chunks == chunks
    blob = Blob(0, "e" * 64, chunk_count=2, compressed_size=20000, uncompressed_size=8192, features=features,
                ci_compressor="none", ci_offset=8208, ci_compressed_size=48, ci_uncompressed_size=48,
                cipher="aes128xts")
    with pytest.raises(InvalidImageError, match="32-byte key"):
        load_chunk_infos(blob, bytes(20000))           # decrypted with the blob table's key: none here
    assert parse_ci_header(header).s_features == features
