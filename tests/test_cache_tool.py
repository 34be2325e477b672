"""``rafs cache report|verify|prune`` on a blob cache warmed by reading images, checked against the chunk
maps decoded here by hand (header of 4096 bytes, then one bit per chunk, most significant first)."""

from __future__ import annotations

import json
import os

import pytest

import rafs
from rafs import cachetool
from rafs.cli.main import main as cli_main


def _config(blob_dir, work_dir) -> dict:
    return {"version": 2, "backend": {"type": "localfs", "localfs": {"dir": str(blob_dir)}},
            "cache": {"type": "blobcache", "filecache": {"work_dir": str(work_dir)}}}


def _ready(work_dir, blob_id: str, count: int) -> list[int]:
    bits = (work_dir / f"{blob_id}.blob.data.chunk_map").read_bytes()[4096:]
    return [i for i in range(count) if bits[i >> 3] & (0x80 >> (i & 7))]


def _chunk_sizes(image) -> dict[int, int]:
    sizes = {}
    for _, inode in image.iter_entries():
        if inode.is_reg:
            for chunk in image.reader.chunks(inode.ino):
                sizes[chunk.index] = chunk.uncompressed_size
    return sizes


@pytest.fixture
def warmed(tmp_path):
    """Three images, each with its own blob; a cache holding all of b and c and one file of a."""
    blobs, work = tmp_path / "blobs", tmp_path / "cache"
    blobs.mkdir()
    boots = {}
    for name in "abc":
        src = tmp_path / f"src-{name}"
        src.mkdir()
        for i in range(6):
            (src / f"f{i}").write_bytes(os.urandom(50_000 + 4_000 * i) + name.encode())
        rafs.Builder(str(src), fs_version=6, chunk_size=0x4000).write(bootstrap=tmp_path / name, blob_dir=blobs)
        boots[name] = tmp_path / name
    for name, files in (("a", ["/f0"]), ("b", None), ("c", None)):
        with rafs.open(boots[name], config=_config(blobs, work)) as image:
            for path, inode in image.iter_entries():
                if inode.is_reg and (files is None or os.fsdecode(path) in files):
                    image.read(path)
    (work / "notes.txt").write_text("mine")
    return boots, blobs, work


def test_report_matches_the_chunk_maps(warmed, capsys):
    boots, blobs, work = warmed
    images = [rafs.open(boots[n], blob_dir=blobs) for n in "ab"]
    try:
        records, others = cachetool.report(work, images)
        by_id = {r.blob_id: r for r in records}
        for image in images:
            blob = image.blobs[0]
            record = by_id[blob.blob_id]
            ready = _ready(work, blob.blob_id, blob.chunk_count)
            sizes = _chunk_sizes(image)
            assert record.ready_chunks == len(ready) and record.chunk_count == blob.chunk_count
            assert record.cached_bytes == sum(sizes[i] for i in ready)
            assert record.size == blob.uncompressed_size and record.images == [image.name]
        a, b = (by_id[im.blobs[0].blob_id] for im in images)
        assert b.ready_chunks == b.chunk_count and b.cached_bytes == sum(_chunk_sizes(images[1]).values())
        assert 0 < a.ready_chunks < a.chunk_count           # one file of six read
    finally:
        for image in images:
            image.close()
    assert len(records) == 3 and others == ["notes.txt"]
    assert cli_main(["cache", "report", "--work-dir", str(work), "-B", str(boots["a"]), "-D", str(blobs),
                     "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert {b["blob_id"] for b in doc["blobs"]} == {r.blob_id for r in records}
    assert doc["other_files"] == ["notes.txt"]


def test_verify_finds_a_corrupted_cached_chunk(warmed, capsys):
    boots, blobs, work = warmed
    argv = ["cache", "verify", "--work-dir", str(work), "-B", str(boots["b"]), "-D", str(blobs)]
    assert cli_main(argv) == 0
    assert " 0 bad" in capsys.readouterr().out
    with rafs.open(boots["b"], blob_dir=blobs) as image:
        blob = image.blobs[0]
        chunk = image.chunks("/f3")[0]
    with open(work / f"{blob.blob_id}.blob.data", "r+b") as f:
        f.seek(chunk.uncompressed_offset + 10)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xff]))
    assert cli_main(argv + ["--json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert [(b["blob_id"], b["chunk"]) for b in doc["bad"]] == [(blob.blob_id, chunk.index)]


def test_prune_removes_only_unreferenced_blobs(warmed, capsys):
    boots, blobs, work = warmed
    with rafs.open(boots["c"], blob_dir=blobs) as image:
        gone = image.blobs[0].blob_id
    before = set(os.listdir(work))
    argv = ["cache", "prune", "--work-dir", str(work), "-B", str(boots["a"]), "-B", str(boots["b"]),
            "-D", str(blobs)]
    assert cli_main(argv + ["--dry-run"]) == 0
    assert set(os.listdir(work)) == before
    capsys.readouterr()
    assert cli_main(argv) == 0
    removed = {line.split()[-1] for line in capsys.readouterr().out.splitlines()}
    assert removed and all(name.startswith(gone) for name in removed)
    assert set(os.listdir(work)) == before - removed
    assert not any(name.startswith(gone) for name in os.listdir(work))
    assert "notes.txt" in os.listdir(work)
    with rafs.open(boots["a"], blob_dir=blobs) as image:
        assert any(name.startswith(image.blobs[0].blob_id) for name in os.listdir(work))


def test_prune_needs_images(tmp_path, capsys):
    assert cli_main(["cache", "prune", "--work-dir", str(tmp_path)]) == 2
    assert "at least one --bootstrap" in capsys.readouterr().err
