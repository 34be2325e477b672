"""Build the every-entry-type tree with each fs version, compressor, digester and chunk size, then read
it back: what ``rafs.open()`` reports must equal the source, and ``rafs check BOOT -D DIR`` must pass."""

from __future__ import annotations


import pytest

import rafs
from rafs.cli.main import main as cli_main

from helpers import verify_tree

MATRIX = [(v, c, d, cs) for v in (5, 6) for c in ("none", "lz4_block", "zstd") for d in ("blake3", "sha256")
          for cs in (0x1000, 0x100000)]


@pytest.mark.parametrize("fs_version,compressor,digester,chunk_size", MATRIX,
                         ids=[f"v{v}-{c}-{d}-{cs:#x}" for v, c, d, cs in MATRIX])
def test_round_trip(source_tree, tmp_path, fs_version, compressor, digester, chunk_size):
    result = rafs.Builder(source_tree, fs_version=fs_version, compressor=compressor, digester=digester,
                          chunk_size=chunk_size).write(bootstrap=tmp_path / "bootstrap", blob_dir=tmp_path)
    assert len(result.blob_ids) == 1
    with rafs.open(result.bootstrap, blob_dir=tmp_path, validate=True) as image:
        assert (image.version, image.compressor, image.digester, image.chunk_size) == \
            (fs_version, compressor, digester, chunk_size)
        blob = image.blobs[0]
        assert blob.blob_id == result.blob_ids[0]
        assert blob.compressed_size == (tmp_path / blob.blob_id).stat().st_size
        assert verify_tree(image, source_tree) > 600
        # identical contents are stored once: dup1 and sub/dup2 point at the same chunks
        assert image.chunks("/dup1") == [c for c in image.chunks("/sub/dup2")]
    assert cli_main(["check", str(result.bootstrap), "-D", str(tmp_path)]) == 0


@pytest.mark.parametrize("fs_version", [5, 6])
def test_round_trip_repeatable_and_aligned(source_tree, tmp_path, fs_version):
    result = rafs.Builder(source_tree, fs_version=fs_version, repeatable=True, aligned_chunk=True,
                          chunk_size=0x4000).write(bootstrap=tmp_path / "bootstrap", blob=tmp_path / "blob")
    with rafs.open(result.bootstrap, blobs=[str(tmp_path / "blob")]) as image:
        verify_tree(image, source_tree, repeatable=True)
        offsets = [c.uncompressed_offset for _, i in image.iter_entries() if i.is_reg
                   for c in image.reader.chunks(i.ino)]
        assert offsets and all(o % 4096 == 0 for o in offsets)
