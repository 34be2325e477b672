"""Conformance with nydus-image's own output.

The repeatable v5 fixture (made by nydus-image 2.2 from a directory) is unpacked and rebuilt with the
same options: the blob must come out byte for byte, and the bootstrap too, structure by structure.
The fixture's ``s_inodes_count`` is 51 for 52 distinct inodes: nydus-image 2.2 left the root out (its
``build()`` never put the root into ``inode_map``; nydus PR #1275 fixed that), so ``compat="2.2"`` does
too, while the current layout counts the root as today's builder does. The v6 fixture's blob meta is
re-encoded with the writer's encoders.
"""

from __future__ import annotations

import dataclasses
import hashlib
import struct

import pytest

import rafs
from rafs.blob import layout as blob_layout
from rafs.blob.toc import read_toc
from rafs.blob.writer import CI_HEADER, ci_v1_entry
from rafs.v5 import layout as v5_layout
from rafs.v5.reader import V5Reader

from helpers import verify_tree

V5_FIXTURE_BLOB = "7334a2594e133cf8ae364189c2276b090fc490c627bcc3fb1077f0419a538e00"
V6_FIXTURE_BLOB = "be7d77eeb719f70884758d1aa800ed0fb09d701aaec469964e9d54325f0d5fef"
DISTINCT_INODES = 52        # 54 records, one hardlink group of 3 (ino 5), root included


@pytest.fixture(scope="module")
def unpacked_v5(v5_fixture, tmp_path_factory):
    bootstrap, blob_dir, _ = v5_fixture
    dest = tmp_path_factory.mktemp("v5-unpacked") / "rootfs"
    with rafs.open(bootstrap, blob_dir=blob_dir) as image:
        image.extractall(dest, filter="fully_trusted")
    return dest


def _rebuild(source, tmp_path, **options):
    return rafs.Builder(source, fs_version=5, compressor="none", digester="sha256", repeatable=True,
                        **options).write(bootstrap=tmp_path / "bootstrap", blob_dir=tmp_path)


def test_v22_layout_reproduced(v5_fixture, unpacked_v5, tmp_path):
    bootstrap, blob_dir, _ = v5_fixture
    result = _rebuild(unpacked_v5, tmp_path, compat="2.2")
    assert result.blob_ids == [V5_FIXTURE_BLOB]
    assert (tmp_path / V5_FIXTURE_BLOB).read_bytes() == (blob_dir / V5_FIXTURE_BLOB).read_bytes()

    want, got = bootstrap.read_bytes(), result.bootstrap and open(result.bootstrap, "rb").read()
    assert len(got) == len(want)
    ref, ours = V5Reader(want), V5Reader(got)
    assert len({ref.record(i)[0].i_ino for i in range(1, ref.inode_count + 1)}) == DISTINCT_INODES
    for field in v5_layout.SuperBlock.subcons:
        assert ours.superblock[field.name] == ref.superblock[field.name], field.name
    assert ours.superblock.s_inodes_count == DISTINCT_INODES - 1      # the root left out, as 2.2 did
    sb = ref.superblock
    tables_end = sb.s_extended_blob_table_offset + 64 * sb.s_extended_blob_table_entries
    assert got[8192:tables_end] == want[8192:tables_end]          # inode, prefetch, blob, ext tables
    for index in range(1, ref.inode_count + 1):
        (theirs, at), (mine, at2) = ref.record(index), ours.record(index)
        assert at == at2
        assert mine == theirs, index
        if mine.i_ino == index:                   # hardlink records repeat their group's chunks
            assert ours.chunks(index) == ref.chunks(index), index
    assert got == want


def test_current_layout_of_the_same_tree(v5_fixture, unpacked_v5, tmp_path):
    """The current builder's layout: DFS record order, CRC-32C in chunk records, CAP_TAR_TOC."""
    bootstrap, blob_dir, _ = v5_fixture
    result = _rebuild(unpacked_v5, tmp_path)
    assert result.blob_ids == [V5_FIXTURE_BLOB]       # chunk data does not depend on the metadata layout
    ref = V5Reader(bootstrap.read_bytes())
    ours = V5Reader(open(result.bootstrap, "rb").read())
    assert ours.superblock.s_inodes_count == DISTINCT_INODES    # root counted (builder/src/core/bootstrap.rs)
    assert ours.blobs[0].features == rafs.model.BlobFeatures.CAP_TAR_TOC
    # records follow the tree in DFS pre-order: a directory's record is followed by its first child's
    offsets = {i: ours.record_offset(i) for i in range(1, ours.inode_count + 1)}
    assert offsets[2] < offsets[5] < offsets[3]       # hardlink-test, its child foo, then normal-file-test
    for index in range(1, ref.inode_count + 1):
        theirs, mine = ref.record(index)[0], ours.record(index)[0]
        assert mine == theirs, index
        if mine.i_ino != index:
            continue
        for a, b in zip(ref.chunks(index), ours.chunks(index), strict=True):
            assert b.crc32 and b.flags == a.flags | rafs.model.ChunkFlags.HAS_CRC32
            assert dataclasses.replace(b, crc32=0, flags=a.flags) == a
    with rafs.open(result.bootstrap, blob_dir=tmp_path) as image:
        verify_tree(image, unpacked_v5, repeatable=True)
        assert list(image.check(verify_data=True)) == []


def test_ci_and_header_encoders_match_v6_fixture(v6_fixture):
    """Decode the fixture blob's CI records and header, encode them again: same bytes."""
    _, blob_dir = v6_fixture
    blob = (blob_dir / V6_FIXTURE_BLOB).read_bytes()
    header_at = 8314 + 32
    header = CI_HEADER.unpack_from(blob, header_at)
    assert CI_HEADER.pack(*header) == blob[header_at:header_at + 4096]
    assert (header.s_ci_entries, header.s_ci_offset, header.s_ci_compressed_size) == (2, 8314, 32)
    chunks = [(0, 4828, 0, 16931), (4828, 2974, 20480, 13400)]
    ci = b"".join(ci_v1_entry(*c) for c in chunks)
    assert ci == blob[8314:8346]


def test_blob_toc_sections_like_the_fixture(v6_fixture, tmp_path):
    """A v6 blob-toc build has the fixture's section order, ToC entries and blob-id rule."""
    _, blob_dir = v6_fixture
    fixture = blob_dir / V6_FIXTURE_BLOB
    src = tmp_path / "src"
    src.mkdir()
    with rafs.open(v6_fixture[0], blob_dir=blob_dir) as image:
        for name in ("lib.rs", "sync_io.rs"):
            (src / name).write_bytes(image.read("/" + name))
    result = rafs.Builder(src, fs_version=6, compressor="zstd", digester="blake3", features=["blob-toc"]) \
        .write(bootstrap=tmp_path / "boot", blob_dir=tmp_path)
    ours = (tmp_path / result.blob_ids[0]).read_bytes()
    theirs = fixture.read_bytes()

    def toc_of(data):
        return read_toc(data)

    mine, ref = toc_of(ours), toc_of(theirs)
    assert [e.name for e in mine] == [e.name for e in ref] == ["image.blob", "blob.meta", "blob.meta.header",
                                                               "blob.digest"]
    by_name = {e.name: e for e in mine}
    ref_by_name = {e.name: e for e in ref}
    # same chunk digests (blake3 of the same data), CI of two records, uncompressed sizes
    assert ours[by_name["blob.digest"].compressed_offset:][:64] == \
        theirs[ref_by_name["blob.digest"].compressed_offset:][:64]
    for name in ("blob.meta.header", "blob.digest"):
        assert by_name[name].uncompressed_size == ref_by_name[name].uncompressed_size
    assert by_name["image.blob"].uncompressed_size == ref_by_name["image.blob"].uncompressed_size == 36864
    assert by_name["image.blob"].compressed_offset == 0        # the fixed builder (fixture: 7802)
    # blob id = sha256 of everything but the digest array
    digests = by_name["blob.digest"]
    cut = ours[:digests.compressed_offset] + ours[digests.compressed_offset + digests.compressed_size:]
    assert hashlib.sha256(cut).hexdigest() == result.blob_ids[0] != hashlib.sha256(ours).hexdigest()
    header = CI_HEADER.unpack_from(ours, by_name["blob.meta.header"].compressed_offset)
    ref_header = CI_HEADER.unpack_from(theirs, ref_by_name["blob.meta.header"].compressed_offset)
    assert header.s_features == ref_header.s_features == 0x70000021
    assert header.s_ci_entries == 2
    assert struct.unpack_from("<I", ours, 0) == struct.unpack_from("<I", theirs, 0)   # zstd frame magic
    assert blob_layout.TOC_ENTRY_SIZE * 4 + 512 == result.blobs[0].toc_size
