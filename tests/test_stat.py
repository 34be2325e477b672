"""``rafs stat`` (nydus-image stat) on three images built from overlapping trees, checked against a count
the test makes itself from the source files: chunk boundaries every 64 KiB, sha256 of each piece."""

from __future__ import annotations

import hashlib
import json
import os

import pytest

import rafs
from rafs.cli.main import main as cli_main
from rafs.stat import ImageStat

CHUNK = 0x10000


def _write(path, data: bytes) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Three trees sharing some files (and some chunks inside files), built as v6 sha256 images.

    Returns (directory of the bootstraps, {name: (source dir, bootstrap)}).
    """
    top = tmp_path_factory.mktemp("stat")
    rng = __import__("random").Random(18)
    blocks = [rng.randbytes(CHUNK) for _ in range(8)]
    common = blocks[0] + blocks[1] + b"tail-common"             # in every tree
    pair = blocks[2] + blocks[3]                                 # in a and b
    trees = {
        "a": {"common": common, "pair": pair, "own/a1": blocks[4] + blocks[4] + b"x" * 10,   # chunk repeated
              "empty": b""},
        "b": {"sub/common": common, "pair2": pair, "own/b1": blocks[5] + blocks[0]},          # shares a chunk
        "c": {"common": common, "own/c1": blocks[6] + blocks[7], "own/c2": blocks[2] + b"y"},
    }
    out = top / "boots"
    out.mkdir()
    (top / "blobs").mkdir()
    built = {}
    for name, files in trees.items():
        src = top / f"src-{name}"
        for rel, data in files.items():
            _write(src / rel, data)
        os.symlink("common", src / "link")
        if name == "a":
            os.link(src / "pair", src / "pair-hardlink")
        rafs.Builder(str(src), fs_version=6, digester="sha256", chunk_size=CHUNK).write(
            bootstrap=out / name, blob_dir=top / "blobs")
        built[name] = (src, out / name)
    return out, built


def _count(src) -> dict:
    """The statistics of one source tree, counted from its files."""
    dirs = files = symlinks = chunks = size = padding = 0
    digests: dict[bytes, int] = {}
    seen = set()
    for root, dnames, fnames in os.walk(src):
        dirs += 1
        for name in fnames:
            path = os.path.join(root, name)
            st = os.lstat(path)
            if os.path.islink(path):
                symlinks += 1
                continue
            files += 1
            data = open(path, "rb").read()
            pieces = [data[i:i + CHUNK] for i in range(0, len(data), CHUNK)]
            for piece in pieces:
                digests[hashlib.sha256(piece).digest()] = len(piece)
            if (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            chunks += len(pieces)
            size += len(data)
            padding += -len(data) % 4096
        symlinks += sum(os.path.islink(os.path.join(root, d)) for d in dnames)
    return {"dirs": dirs, "files": files, "symlinks": symlinks, "chunks": chunks, "file_size": size,
            "padding_size": padding, "digests": digests}


def test_single_image_matches_an_independent_count(images, tmp_path):
    _, built = images
    src, boot = built["a"]
    assert cli_main(["stat", "-B", str(boot), "-J", str(tmp_path / "out.json"), "--digester", "sha256"]) == 0
    doc = json.loads((tmp_path / "out.json").read_text())
    assert list(doc) == ["dedup_enabled", "target_enabled", "base_image", "target_image"]
    base, want = doc["base_image"], _count(src)
    for key in ("dirs", "files", "symlinks", "chunks", "file_size", "padding_size"):
        assert base[key] == want[key], key
    assert base["own_chunks"] == len(want["digests"])
    assert base["own_uncomp_size"] == sum(want["digests"].values())
    assert base["uncomp_size"] == want["file_size"] + want["padding_size"]
    assert len(base["file_sizes"]) == 45 and len(base["chunk_sizes"]) == 9
    assert base["chunk_sizes"][16 - 12] == want["chunks"]          # 64 KiB chunks: as built
    assert doc["dedup_enabled"] is False and doc["target_enabled"] is False


def test_directory_and_target_match_an_independent_count(images, tmp_path):
    out, built = images
    assert cli_main(["stat", "-D", str(out), "-T", str(built["c"][1]), "--digester", "sha256",
                     "-J", str(tmp_path / "out.json")]) == 0
    doc = json.loads((tmp_path / "out.json").read_text())
    a, b, c = (_count(built[n][0]) for n in "abc")
    base, target = doc["base_image"], doc["target_image"]
    assert doc["dedup_enabled"] and doc["target_enabled"]
    for key in ("dirs", "files", "symlinks", "chunks", "file_size"):
        assert base[key] == a[key] + b[key], key                # the bases are summed
        assert target[key] == c[key], key
    union = {**a["digests"], **b["digests"]}
    assert base["own_chunks"] == len(a["digests"]) + len(b["digests"])
    assert base["dedup_chunks"] == len(union)
    assert base["dedup_uncomp_size"] == sum(union.values())
    shared = {d: s for d, s in c["digests"].items() if d in union}
    assert target["ref_chunks"] == len(shared) and shared
    assert target["ref_uncomp_size"] == sum(shared.values())
    assert target["own_chunks"] == len(c["digests"]) - len(shared)


def test_text_report_and_tables(images, capsys):
    out, built = images
    assert cli_main(["stat", "-D", str(out), "--digester", "sha256"]) == 0
    text = capsys.readouterr().out
    a, b = _count(built["a"][0]), _count(built["b"][0])
    assert f"Files:                  {a['files'] + b['files'] + _count(built['c'][0])['files']}" in text
    assert "Chunk Deduplication Statistics:" in text
    union = {**a["digests"], **b["digests"], **_count(built["c"][0])["digests"]}
    stat = ImageStat("sha256")
    stat.dedup_enabled = True
    for name in "abc":
        with rafs.open(built[name][1], blob_dir=out.parent / "blobs") as image:
            stat.add(image)
    rows = stat.dedup_table()
    # threshold 1: every distinct chunk stored once
    assert rows[0]["threshold"] == 1 and rows[0]["dedup_chunks"] == len(union)
    counts = {}
    for name in "abc":
        for d in _count(built[name][0])["digests"]:
            counts[d] = counts.get(d, 0) + 1
    assert rows[0]["raw_chunks"] == sum(counts.values())
    # threshold 2: chunks in a single image are not shared, so each counts once per image it is in
    assert rows[1]["dedup_chunks"] == sum(1 if n > 1 else n for n in counts.values())
    summary = stat.summary_table()
    assert summary[0]["image"] == "base" and summary[0]["dedup_chunks"] == len(union)
    assert 0 < summary[0]["dedup_ratio"] <= 1 and "Image statistics" in str(summary)


def test_digester_mismatch_skips_cross_image_dedup(images, tmp_path):
    """As the reference: a sha256 image's chunks only enter the shared dictionary with --digester sha256."""
    out, _ = images
    assert cli_main(["stat", "-D", str(out), "-J", str(tmp_path / "out.json")]) == 0
    assert json.loads((tmp_path / "out.json").read_text())["base_image"]["dedup_chunks"] == 0


def test_stat_needs_an_image(capsys):
    assert cli_main(["stat"]) == 2
    assert "--bootstrap and --blob-dir" in capsys.readouterr().err


def test_directory_mode_skips_what_is_not_a_bootstrap(images, tmp_path):
    """Data blobs, notes and FIFOs beside the bootstraps are passed over without being read whole."""
    out, _ = images
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for name in "ab":
        (mixed / name).write_bytes((out / name).read_bytes())
    for blob in (out.parent / "blobs").iterdir():
        (mixed / blob.name).write_bytes(blob.read_bytes())
    (mixed / "notes").write_text("not an image")
    os.mkfifo(mixed / "fifo")
    from rafs.stat import images_in
    assert [os.path.basename(p) for p in images_in(mixed)] == ["a", "b"]
    assert cli_main(["stat", "-D", str(mixed), "-J", str(tmp_path / "out.json"), "--digester", "sha256"]) == 0
    both = json.loads((tmp_path / "out.json").read_text())["base_image"]
    assert both["files"] == _count(out.parent / "src-a")["files"] + _count(out.parent / "src-b")["files"]
