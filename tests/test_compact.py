"""``rafs compact`` (nydus-image compact) on an image merged from three layers built from overlapping trees:
upper layers replace files of lower ones, so the lower blobs hold chunks no file uses any more. Compaction
keeps every file's content, stores fewer blob bytes, and the result passes ``rafs check -D``."""

from __future__ import annotations

import contextlib
import json
import os
import random

import pytest

import rafs
from helpers import ranged_blob_server
from rafs.builder.compact import CompactConfig, Compactor, compact, default_output
from rafs.builder.merge import Merger
from rafs.cli.main import main as cli_main
from rafs.errors import InvalidArgumentError
from s3server import moto_server, s3, s3_proxy  # noqa: F401  (pytest fixtures)

CHUNK = 0x10000


def _write(path, data: bytes) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


def _layers(top, version: int):
    """Three layer bootstraps (lower to upper) and their blob directory; the trees overlap: b and c replace
    files of a, c also repeats chunks a and b store."""
    rng = random.Random(1813)
    blocks = [rng.randbytes(CHUNK) for _ in range(10)]
    trees = {
        "a": {"common": blocks[0] + blocks[1], "replaced": blocks[2] * 2 + blocks[3], "gone/x": blocks[4],
              "kept-a": blocks[5] + b"a-tail"},
        "b": {"replaced": blocks[6] + b"b", "gone/x": blocks[7], "kept-b": blocks[1] + blocks[8]},
        "c": {"gone/x": b"small", "kept-c": blocks[0] + blocks[9], "also": blocks[5]},
    }
    blobs = top / "blobs"
    blobs.mkdir()
    layers = []
    for name, files in trees.items():
        src = top / f"src-{name}"
        for rel, data in files.items():
            _write(src / rel, data)
        boot = top / f"{name}.boot"
        rafs.Builder(str(src), fs_version=version, digester="sha256", compressor="zstd",
                     chunk_size=CHUNK).write(bootstrap=boot, blob_dir=blobs)
        layers.append(boot)
    merged = top / "merged.boot"
    Merger(layers, blob_accessible=True).write(bootstrap=merged)
    return merged, blobs


def _contents(image) -> dict:
    return {path: image.read(path) for path, st in image.iter_stats() if st.st_mode & 0o170000 == 0o100000}


def _blob_bytes(image, blob_dir) -> int:
    return sum(os.path.getsize(os.path.join(blob_dir, blob.blob_id)) for blob in image.blobs)


@pytest.mark.parametrize("version", [5, 6])
def test_compact_keeps_content_and_drops_unused_chunks(tmp_path, version):
    merged, blobs = _layers(tmp_path, version)
    with rafs.open(merged, blob_dir=blobs) as image:
        before = _contents(image)
        bytes_before = _blob_bytes(image, blobs)
        assert len(image.blobs) == 3
    out = tmp_path / "compacted.boot"
    result = compact(merged, blob_dir=blobs, output_bootstrap=out)
    assert result is not None and result.bootstrap == str(out)
    with rafs.open(out, blob_dir=blobs, validate=True) as image:
        assert _contents(image) == before
        # the three small blobs became one holding only the chunks some file uses
        assert len(image.blobs) == 1
        assert _blob_bytes(image, blobs) < bytes_before
        assert image.blobs[0].blob_id == result.blob_id
        assert not list(image.check(verify_data=True))
    assert cli_main(["check", str(out), "-D", str(blobs)]) == 0


def test_compact_cli_options_and_json(tmp_path, capsys):
    merged, blobs = _layers(tmp_path, 6)
    report = tmp_path / "out.json"
    # blobs of at most 1 byte are never small enough: nothing merges, nothing is dropped (every blob is used)
    assert cli_main(["compact", "-B", str(merged), "-D", str(blobs), "--compact-blob-size", "1",
                     "-J", str(report)]) == 0
    out = default_output(merged)
    assert out.endswith("merged.bootstrap.compact")
    doc = json.loads(report.read_text())
    assert doc["bootstrap"] == out and len(doc["blobs"]) == 3 and doc["fs_version"] == "6"
    with rafs.open(merged, blob_dir=blobs) as a, rafs.open(out, blob_dir=blobs) as b:
        assert [x.blob_id for x in a.blobs] == [x.blob_id for x in b.blobs]
        assert _contents(a) == _contents(b)
    # --min-used-ratio 99 rebuilds every blob that wastes bytes; merging is off (size bound 1)
    out2 = tmp_path / "ratio.boot"
    assert cli_main(["compact", "-B", str(merged), "-D", str(blobs), "--compact-blob-size", "1",
                     "--min-used-ratio", "99", "-O", str(out2)]) == 0
    with rafs.open(merged, blob_dir=blobs) as a, rafs.open(out2, blob_dir=blobs) as b:
        assert len(b.blobs) == 3
        assert {x.blob_id for x in a.blobs} != {x.blob_id for x in b.blobs}
        assert _contents(a) == _contents(b)
    # --layers-to-compact above the blob count: nothing happens, nothing is written
    out3 = tmp_path / "none.boot"
    assert cli_main(["compact", "-B", str(merged), "-D", str(blobs), "--layers-to-compact", "4",
                     "-O", str(out3)]) == 0
    assert not out3.exists()
    assert "no chance to compact" in capsys.readouterr().err


def test_compact_max_size_splits_merges(tmp_path):
    merged, blobs = _layers(tmp_path, 6)
    plan = Compactor(merged, blob_dir=blobs, settings=CompactConfig(max_compact_size=1)).plan()
    # no two blobs fit together within 1 byte: every blob is kept as it is
    assert plan.actions == ["keep", "keep", "keep"] and not plan.merged_into
    plan = Compactor(merged, blob_dir=blobs).plan()
    assert plan.actions.count("rebuild") == 1 and plan.actions.count("delete") == 2
    assert set(plan.merged_into) == {0, 1, 2} and len(set(plan.merged_into.values())) == 1


@pytest.mark.parametrize("argv, message", [
    (["--min-used-ratio", "100"], "--min-used-ratio 100: must be within 0-99"),
    (["--compact-blob-size", "lots"], "--compact-blob-size lots: not a number"),
    (["--backend-type", "localfs", "--backend-config", "{}"], "Use --blob-dir to specify localfs backend"),
])
def test_compact_bad_options(tmp_path, capsys, argv, message):
    merged, blobs = _layers(tmp_path, 6)
    assert cli_main(["compact", "-B", str(merged), "-D", str(blobs), *argv]) != 0
    assert message in capsys.readouterr().err


def test_compact_config_keys():
    assert CompactConfig.from_dict({"min_used_ratio": 5, "compact_blob_size": 10485760,
                                    "max_compact_size": 104857600, "layers_to_compact": 32}).layers_to_compact == 32
    with pytest.raises(InvalidArgumentError, match="unknown compact configuration key 'ratio'"):
        CompactConfig.from_dict({"ratio": 5})
    with pytest.raises(InvalidArgumentError, match="min_used_ratio"):
        CompactConfig(min_used_ratio=100)


@pytest.mark.parametrize("backend", ["s3", "http-proxy"])
def test_compact_reads_blobs_through_a_backend(tmp_path, backend, request):
    """--backend-type s3 (a moto server) or http-proxy (a loopback ranged server): the blobs are read from
    the backend, the new blob is written to --blob-dir."""
    merged, blobs = _layers(tmp_path, 6)
    with rafs.open(merged, blob_dir=blobs) as image:
        before = _contents(image)
        ids = [blob.blob_id for blob in image.blobs]
    out_dir = tmp_path / "out-blobs"
    out_dir.mkdir()
    out = tmp_path / "compacted.boot"
    with contextlib.ExitStack() as stack:
        if backend == "s3":
            s3 = request.getfixturevalue("s3")
            for blob_id in ids:
                s3.put("nydus-demo/blob/" + blob_id, (blobs / blob_id).read_bytes())
            config = s3.backend_config()
        else:
            config = {"addr": stack.enter_context(ranged_blob_server(blobs))}
        assert cli_main(["compact", "-B", str(merged), "-D", str(out_dir), "--backend-type", backend,
                         "--backend-config", json.dumps(config), "-O", str(out)]) == 0
    (new_id,) = os.listdir(out_dir)
    with rafs.open(out, blob_dir=out_dir) as image:
        assert [blob.blob_id for blob in image.blobs] == [new_id]
        assert _contents(image) == before
        copied = image.blobs[0].chunk_count
    if backend == "s3":          # chunks stored back to back come in one request
        requests = sum(len(s3.proxy.requests_for(blob_id)) for blob_id in ids)
        assert requests < copied, (requests, copied)


def test_compact_with_a_chunk_dictionary(tmp_path):
    """The dictionary's blobs are kept as they are; chunks it holds are referenced there, not copied."""
    merged, blobs = _layers(tmp_path, 5)
    dictionary = tmp_path / "a.boot"                 # the lowest layer, as a chunk dictionary
    with rafs.open(merged, blob_dir=blobs) as image:
        before = _contents(image)
    with rafs.open(dictionary, blob_dir=blobs) as image:
        dict_blob = image.blobs[0].blob_id
        dict_digests = {c.digest for path, st in image.iter_stats() if st.st_mode & 0o170000 == 0o100000
                        for c in image.chunks(path)}
    out = tmp_path / "compacted.boot"
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"version": 2, "backend": {"type": "localfs", "localfs": {"dir": str(blobs)}}}))
    assert cli_main(["compact", "-B", str(merged), "-D", str(blobs), "-C", str(config), "--chunk-dict",
                     f"bootstrap={dictionary}", "-O", str(out)]) == 0
    with rafs.open(out, blob_dir=blobs) as image:
        assert _contents(image) == before
        ids = [blob.blob_id for blob in image.blobs]
        assert dict_blob in ids and len(ids) == 2
        for path, st in image.iter_stats():
            if st.st_mode & 0o170000 == 0o100000:
                for chunk in image.chunks(path):
                    assert (ids[chunk.blob_index] == dict_blob) == (chunk.digest in dict_digests), path
