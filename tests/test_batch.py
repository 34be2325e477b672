"""Batch chunks (``rafs create --batch-size``): written as nydus-image writes them, read back from
inside their batch, checked by ``rafs check -D``, mounted by the kernel and served by FUSE, and
hostile batch contexts refused cleanly."""

from __future__ import annotations

import json
import os
import random
import struct

import pytest

import rafs
from rafs.blob import codecs, layout
from rafs.blob.meta import BATCH_CONTEXT, CHUNK_INFO_V2, decode_blob_meta, load_blob_meta, parse_ci_header
from rafs.cli.main import main as cli_main
from rafs.model import BlobFeatures, ChunkFlags

from helpers import verify_tree

BATCH_SIZES = [0x1000, 0x10000, 0x100000]
COMPRESSORS = ["zstd", "lz4_block", "none"]


@pytest.fixture(scope="module")
def small_files(tmp_path_factory):
    """Many small files of every size around the batch thresholds, a duplicate, a hardlink, an
    empty file and files of one and of several chunks, interleaved in dump order."""
    top = tmp_path_factory.mktemp("batch-src") / "tree"
    rng = random.Random(17)
    os.makedirs(top / "d")
    for i in range(60):
        size = rng.choice([1, 100, 2047, 2048, 3000, 5000, 30000, 33000, 70000, 600000])
        data = rng.randbytes(size // 2) + b"x" * (size - size // 2)
        (top / "d" / f"f{i:02}").write_bytes(data)
    (top / "dup").write_bytes((top / "d" / "f03").read_bytes())
    os.link(top / "d" / "f04", top / "link")
    (top / "empty").write_bytes(b"")
    (top / "multi").write_bytes(rng.randbytes(0x260000))
    return top


def build(source, tmp_path, batch_size, compressor="zstd", **options):
    result = rafs.Builder(str(source), fs_version=6, compressor=compressor, batch_size=batch_size,
                          **options).write(bootstrap=tmp_path / "boot", blob_dir=tmp_path)
    return result


@pytest.mark.parametrize("compressor", COMPRESSORS)
@pytest.mark.parametrize("batch_size", BATCH_SIZES, ids=hex)
def test_round_trip(small_files, source_tree, tmp_path, batch_size, compressor):
    for name, source in (("small", small_files), ("tree", source_tree)):
        out = tmp_path / name
        out.mkdir()
        result = build(source, out, batch_size, compressor)
        with rafs.open(result.bootstrap, blob_dir=out, validate=True) as image:
            blob = image.blobs[0]
            assert blob.has(BlobFeatures.BATCH) and blob.has(BlobFeatures.CHUNK_INFO_V2)
            meta = load_blob_meta(blob, open(out / blob.blob_id, "rb"))
            assert meta.batch_contexts and any(info.is_batch for info in meta.chunks)
            assert list(image.check(verify_data=True)) == []
            verify_tree(image, source)
        assert cli_main(["check", str(result.bootstrap), "-D", str(out)]) == 0


def test_layout_is_nydus_images(small_files, tmp_path):
    """Members: CI v2 records with BATCH|COMPRESSED, compressed size 0, the offset where their batch
    starts and (batch index, offset in the buffer); a 40-byte context per batch after the records;
    the bootstrap's record of a member has no compressed range and no BATCH flag; each batch holds
    the members' bytes back to back in dump order and was cut before reaching the batch size."""
    batch_size = 0x10000
    result = build(small_files, tmp_path, batch_size)
    blob_bytes = (tmp_path / result.blob_id).read_bytes()
    with rafs.open(result.bootstrap, blob_dir=tmp_path) as image:
        blob = image.blobs[0]
        meta = load_blob_meta(blob, open(tmp_path / blob.blob_id, "rb"))
        header = meta.header
        assert header.s_features & (BlobFeatures.BATCH | BlobFeatures.CHUNK_INFO_V2)
        assert header.s_ci_zran_offset == blob.chunk_count * CHUNK_INFO_V2.size
        assert header.s_ci_zran_count == len(meta.batch_contexts)
        assert header.s_ci_zran_size == 40 * len(meta.batch_contexts)
        assert len(meta.ci_data) == header.s_ci_zran_offset + header.s_ci_zran_size
        table = image.reader.chunk_table()
        members: dict[int, list] = {}
        for index, info in enumerate(meta.chunks):
            record = table[(0, index)]
            if info.is_batch:
                assert info.compressed_size == 0 and info.flags & ChunkFlags.COMPRESSED
                assert not info.flags & ChunkFlags.HAS_CRC32
                assert (record.compressed_offset, record.compressed_size) == (0, 0)
                assert record.flags == ChunkFlags.HAS_CRC32
                assert info.uncompressed_size < batch_size // 2
                members.setdefault(info.context_index, []).append(info)
            else:
                assert info.compressed_size > 0 and info.flags & ChunkFlags.HAS_CRC32
                assert (record.compressed_offset, record.compressed_size) == (info.compressed_offset,
                                                                              info.compressed_size)
        assert sorted(members) == list(range(len(meta.batch_contexts)))
        digests = {index: table[(0, index)].block_id for index in range(blob.chunk_count)}
        for batch, infos in members.items():
            context = meta.batch_contexts[batch]
            start = infos[0].compressed_offset
            assert all(info.compressed_offset == start for info in infos)
            stored = blob_bytes[start:start + context.compressed_size]
            data = (codecs.decompress("zstd", stored, context.uncompressed_batch_size)
                    if len(stored) != context.uncompressed_batch_size else stored)
            offset = 0
            for info in infos:
                assert info.context_offset == offset
                member = data[offset:offset + info.uncompressed_size]
                assert codecs.digest("blake3", member) == digests[meta.chunks.index(info)]
                offset += info.uncompressed_size
            assert offset == context.uncompressed_batch_size < batch_size


def test_small_files_are_batched_only_below_half_the_batch_size(small_files, tmp_path):
    result = build(small_files, tmp_path, 0x10000)
    with rafs.open(result.bootstrap, blob_dir=tmp_path) as image:
        meta = load_blob_meta(image.blobs[0], open(tmp_path / result.blob_id, "rb"))
        for path, inode in image.iter_entries():
            if not inode.is_reg or not inode.size:
                continue
            batched = [meta.chunks[c.index].is_batch for c in image.chunks(path)]
            assert batched == [inode.size < 0x8000] * len(batched), path


def test_a_batch_is_fetched_and_decompressed_once(small_files, tmp_path, monkeypatch):
    result = build(small_files, tmp_path, 0x100000)
    calls = []
    real = codecs.decompress

    def counting(algorithm, data, size, **kw):
        calls.append(size)
        return real(algorithm, data, size, **kw)

    with rafs.open(result.bootstrap, blob_dir=tmp_path) as image:
        meta = load_blob_meta(image.blobs[0], open(tmp_path / result.blob_id, "rb"))
        sizes = {ctx.uncompressed_batch_size for ctx in meta.batch_contexts}
        monkeypatch.setattr(codecs, "decompress", counting)
        names = [p for p, i in image.iter_entries() if i.is_reg and 0 < i.size < 0x80000]
        assert len(names) > 20
        for name in names:
            assert image.read(name) == (small_files / name.decode().lstrip("/")).read_bytes()
    # every file read is a batch member; each batch was decompressed at most once (not when stored raw)
    assert len(names) > 2 * len(meta.batch_contexts)
    assert 0 < len([c for c in calls if c in sizes]) <= len(meta.batch_contexts)


def test_unchanged_without_batch_size(small_files, tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    plain = rafs.Builder(str(small_files), fs_version=6).write(bootstrap=tmp_path / "a" / "boot",
                                                              blob_dir=tmp_path / "a")
    zero = build(small_files, tmp_path / "b", 0)
    assert (tmp_path / "a" / "boot").read_bytes() == (tmp_path / "b" / "boot").read_bytes()
    assert plain.blob_id == zero.blob_id


@pytest.mark.parametrize("options, message", [
    ({"fs_version": 5, "batch_size": 0x1000}, "`--batch-size` with non-zero value conflicts with `--fs-version 5`"),
    ({"batch_size": 0x1800}, "invalid batch size: 6144"),
    ({"batch_size": 0x800}, "invalid batch size: 2048"),
    ({"batch_size": 0x2000000}, "invalid batch size: 33554432"),
    ({"batch_size": 0x20000, "chunk_size": 0x10000}, "batch size 0x20000 is bigger than chunk size 0x10000"),
    ({"batch_size": 0x1000, "compressor": "none", "blob_layout": "mapped"}, "mapped"),
])
def test_refused_options(small_files, options, message):
    with pytest.raises(rafs.InvalidArgumentError, match=message.replace("(", r"\(")):
        rafs.Builder(str(small_files), **options)


def test_cli_batch_size(small_files, tmp_path, capsys):
    assert cli_main(["create", str(small_files), "-B", str(tmp_path / "boot"), "-D", str(tmp_path),
                     "--batch-size", "0x4000", "-J", str(tmp_path / "out.json")]) == 0
    (blob_id,) = json.loads((tmp_path / "out.json").read_text())["blobs"]
    with rafs.open(tmp_path / "boot", blob_dir=tmp_path) as image:
        assert image.blobs[0].has(BlobFeatures.BATCH) and image.blobs[0].blob_id == blob_id
    assert cli_main(["create", str(small_files), "-B", str(tmp_path / "b2"), "-D", str(tmp_path),
                     "--batch-size", "12k"]) != 0
    assert "invalid batch size 12k" in capsys.readouterr().err


# -- hostile batch contexts ------------------------------------------------------------------------

def _tampered(small_files, tmp_path, edit):
    """A batch image whose raw CI (compressor none keeps it raw) went through ``edit(ci, header)``."""
    result = build(small_files, tmp_path, 0x10000, compressor="none")
    path = tmp_path / result.blob_id
    blob = bytearray(path.read_bytes())
    with rafs.open(result.bootstrap, blob_dir=tmp_path) as image:
        entry = image.blobs[0]
    assert entry.ci_compressor == "none"
    ci = memoryview(blob)[entry.ci_offset:entry.ci_offset + entry.ci_uncompressed_size]
    header = parse_ci_header(bytes(blob), entry.ci_offset + entry.ci_compressed_size)
    edit(ci, header)
    path.write_bytes(blob)
    return result


def _member(ci, header, want):
    """(record offset, uncomp, comp, data) of the first batch member for which ``want`` holds."""
    for index in range(header.s_ci_entries):
        at = index * CHUNK_INFO_V2.size
        uncomp, comp, data = struct.unpack_from("<QQQ", ci, at)
        if uncomp >> 56 & layout.CI_V2_FLAG_BATCH and want(index, data):
            return at, uncomp, comp, data
    raise AssertionError("no batch member")


def _context_at(header, index):
    return header.s_ci_zran_offset + index * BATCH_CONTEXT.size


def _outside_the_blob(ci, header):
    struct.pack_into("<I", ci, _context_at(header, 0), 0x7FFF_FFFF)


def _overlapping_members(ci, header):
    at, uncomp, comp, data = _member(ci, header, lambda i, d: d & 0xFFFF_FFFF)
    struct.pack_into("<Q", ci, at + 16, data - 1)


def _past_the_batch(ci, header):
    at, uncomp, comp, data = _member(ci, header, lambda i, d: True)
    size = struct.unpack_from("<I", ci, _context_at(header, data >> 32) + 4)[0]
    struct.pack_into("<Q", ci, at + 16, (data >> 32) << 32 | size - 1)


def _oversized_batch(ci, header):
    struct.pack_into("<I", ci, _context_at(header, 0) + 4, 0x2000000)


def _missing_batch(ci, header):
    at, uncomp, comp, data = _member(ci, header, lambda i, d: True)
    struct.pack_into("<Q", ci, at + 16, 0xFFFF << 32)


@pytest.mark.parametrize("edit, message", [
    (_outside_the_blob, "runs past the blob data"),
    (_overlapping_members, "overlaps another member"),
    (_past_the_batch, "outside its context"),
    (_oversized_batch, "16 MiB"),
    (_missing_batch, "batch 65535 does not exist"),
], ids=lambda v: getattr(v, "__name__", "")[1:] if callable(v) else "")
def test_hostile_batch_contexts_are_invalid_images(small_files, tmp_path, edit, message):
    result = _tampered(small_files, tmp_path, edit)
    with rafs.open(result.bootstrap, blob_dir=tmp_path) as image:
        names = [p for p, i in image.iter_entries() if i.is_reg and 0 < i.size < 0x8000]
        with pytest.raises(rafs.InvalidImageError, match=message):
            for name in names:
                image.read(name)
        faults = list(image.check(verify_data=True))
        assert faults and any(message in fault for fault in faults)


def test_decode_refuses_a_member_at_another_batchs_offset():
    """Members of one batch must share the offset where it starts."""
    records = b"".join(CHUNK_INFO_V2.struct.pack(
        0 | 99 << 32 | (layout.CI_V2_FLAG_BATCH | layout.CI_V2_FLAG_COMPRESSED) << 56, offset, 100 * i)
        for i, offset in enumerate((0, 0x40)))
    contexts = BATCH_CONTEXT.pack(0x80, 200, bytes(32))
    features = BlobFeatures.ALIGNED | BlobFeatures.CHUNK_INFO_V2 | BlobFeatures.BATCH
    from rafs.blob.meta import build_ci_header
    header = build_ci_header(features=features, ci_compressor="none", ci_entries=2, ci_offset=0x100,
                             ci_compressed_size=len(records) + len(contexts),
                             ci_uncompressed_size=len(records) + len(contexts), ci_zran_offset=len(records),
                             ci_zran_size=len(contexts), ci_zran_count=1)
    with pytest.raises(rafs.InvalidImageError, match="starts at 0x40 for this member"):
        decode_blob_meta(header, records + contexts)


# -- the kernel and FUSE ---------------------------------------------------------------------------

@pytest.mark.privileged
@pytest.mark.parametrize("compressor", COMPRESSORS)
def test_kernel_mounts_a_batch_bootstrap(source_tree, tmp_path, kernel_mount, compressor):
    from test_build_kernel import assert_mount_matches
    result = build(source_tree, tmp_path, 0x10000, compressor)
    assert_mount_matches(kernel_mount(result.bootstrap), source_tree)


@pytest.mark.privileged
def test_fuse_serves_batch_images(small_files, tmp_path):
    from test_fuse_support import Mount, diff_r, guide_config, need_fuse
    need_fuse()
    result = build(small_files, tmp_path, 0x10000)
    config = tmp_path / "config.json"
    config.write_text(json.dumps(guide_config(tmp_path, tmp_path / "cache")))
    mount = Mount(["--config", str(config), "--bootstrap", str(result.bootstrap)], tmp_path / "mnt",
                  tmp_path / "rafs.log")
    try:
        assert diff_r(small_files, mount.path) == []
    finally:
        mount.close()


def test_chunk_dict_and_parent_of_batch_images(small_files, tmp_path):
    """Batch members found in a chunk dictionary or a parent keep their records (no compressed
    range, no BATCH flag) and read back through the dictionary's or parent's CI."""
    (tmp_path / "dict").mkdir()
    dictionary = build(small_files, tmp_path / "dict", 0x10000)
    for name, options in (("with-dict", {"chunk_dict": str(dictionary.bootstrap)}),
                          ("on-parent", {"parent_bootstrap": str(dictionary.bootstrap)})):
        out = tmp_path / name
        out.mkdir()
        result = build(small_files, out, 0x10000, **options)
        blobs = [tmp_path / "dict" / dictionary.blob_id]
        with rafs.open(result.bootstrap, blob_dir=tmp_path / "dict", validate=True) as image:
            assert [b.blob_id for b in image.blobs] == [dictionary.blob_id]
            chunks = [c for p, i in image.iter_entries() if i.is_reg for c in image.chunks(p)]
            assert any(c.compressed_size == 0 for c in chunks)
            assert not any(c.flags & ChunkFlags.BATCH for c in chunks)
            assert list(image.check(verify_data=True)) == []
            verify_tree(image, small_files)
        assert blobs[0].exists()
