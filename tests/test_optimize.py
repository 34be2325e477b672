"""``rafs optimize`` (nydus-image optimize): the files a trace lists get their chunks copied, contiguous and in
trace order, into a new prefetch blob; the image reads as before and its prefetch table follows the trace."""

from __future__ import annotations

import contextlib
import json
import os
import random

import pytest

import rafs
from helpers import ranged_blob_server
from rafs.builder.optimize import PrefetchFile, optimize, read_prefetch_files
from rafs.cli.main import main as cli_main
from rafs.errors import InvalidArgumentError
from rafs.model import BlobFeatures
from rafs.serve import trace
from s3server import moto_server, s3, s3_proxy  # noqa: F401  (pytest fixtures)
from test_mount_trace import tree  # noqa: F401  (a pytest fixture)

CHUNK = 0x10000
TRACE = ["/d2/small1", "/d0/small3", "/big-b", "/d1/small0", "/d0/small0"]


def _image(top, version: int):
    """Small files between big ones (which the trace leaves out), a hard link to a traced file."""
    rng = random.Random(1818)
    files = {}
    for d in range(3):
        for i in range(4):
            files[f"d{d}/small{i}"] = rng.randbytes(3000 + 500 * i)
            files[f"d{d}/filler{i}"] = rng.randbytes(2 * CHUNK + 77)
    files["big-b"] = rng.randbytes(3 * CHUNK + 5)
    src = top / "src"
    for rel, data in files.items():
        os.makedirs(src / os.path.dirname(rel), exist_ok=True)
        (src / rel).write_bytes(data)
    os.link(src / "d0/small3", src / "small3-link")
    files["small3-link"] = files["d0/small3"]
    blobs = top / "blobs"
    blobs.mkdir()
    rafs.Builder(str(src), fs_version=version, compressor="zstd", chunk_size=CHUNK).write(
        bootstrap=top / "boot", blob_dir=blobs)
    return files, blobs


def _contents(image) -> dict:
    return {path: image.read(path) for path, st in image.iter_stats() if st.st_mode & 0o170000 == 0o100000}


def _prefetch_paths(image) -> list[str]:
    inos = list(image.reader.prefetch_inodes())
    by_ino = {}
    for path, st in image.iter_stats():
        by_ino.setdefault(st.st_ino, path)
    return [os.fsdecode(by_ino[ino]) for ino in inos]


@pytest.mark.parametrize("version", [5, 6])
@pytest.mark.parametrize("form", ["lines", "records", "nydusify"])
def test_prefetch_blob_holds_the_trace_contiguously(tmp_path, version, form):
    _, blobs = _image(tmp_path, version)
    listing = tmp_path / ("trace.json" if form != "lines" else "trace.txt")
    if form == "nydusify":
        listing.write_text(json.dumps({"version": "v1", "files": [{"path": p, "ranges": None} for p in TRACE]}))
    else:           # what rafs mount --access-pattern-file writes
        trace.write_pattern_file(listing, [{"ino": i, "nr_read": 1, "first_access_time_secs": i,
                                            "first_access_time_nanos": 0, "path": p} for i, p in enumerate(TRACE)])
    with rafs.open(tmp_path / "boot", blob_dir=blobs) as image:
        before = _contents(image)
        old_blobs = [b.blob_id for b in image.blobs]
    out = tmp_path / "optimized.boot"
    assert cli_main(["optimize", "-B", str(tmp_path / "boot"), "-D", str(blobs), "-p", str(listing),
                     "-O", str(out), "--output-blob-dir", str(blobs), "-J", str(tmp_path / "out.json")]) == 0
    report = json.loads((tmp_path / "out.json").read_text())
    with rafs.open(out, blob_dir=blobs, validate=True) as image:
        assert _contents(image) == before
        assert [b.blob_id for b in image.blobs[:-1]] == old_blobs
        prefetch_blob = image.blobs[-1]
        assert report["blobs"] == old_blobs + [prefetch_blob.blob_id] and report["bootstrap"] == str(out)
        assert prefetch_blob.has(BlobFeatures.IS_SEPARATED_WITH_PREFETCH_FILES)
        index = len(old_blobs)
        end = 0
        for path in TRACE:                       # back to back, in trace order, from the blob's start
            for chunk in image.chunks(path):
                assert chunk.blob_index == index and chunk.compressed_offset == end, path
                end += chunk.compressed_size
        assert end == prefetch_blob.compressed_size if version == 5 else end <= prefetch_blob.compressed_size
        assert prefetch_blob.chunk_count == sum(len(image.chunks(p)) for p in TRACE)
        # the other link of a traced file moved with it; untraced files stayed where they were
        assert image.chunks("/small3-link") == image.chunks("/d0/small3")
        assert all(c.blob_index < index for c in image.chunks("/d1/filler0"))
        assert _prefetch_paths(image) == TRACE
        assert not list(image.check(verify_data=True))
    assert cli_main(["check", str(out), "-D", str(blobs)]) == 0


def test_ranges_move_only_the_chunks_they_overlap(tmp_path):
    files, blobs = _image(tmp_path, 6)
    listing = tmp_path / "ranges.json"
    # bytes [CHUNK + 10, CHUNK + 20) lie in the second chunk only; a range ending where a chunk starts
    # does not touch it
    listing.write_text(json.dumps({"version": "v1", "files": [
        {"path": "/big-b", "ranges": [[CHUNK + 10, 10], [0, 0]]}, {"path": "/d2/filler1", "ranges": [[0, CHUNK]]}]}))
    result = optimize(tmp_path / "boot", read_prefetch_files(listing), output_blob_dir=blobs,
                      output_bootstrap=tmp_path / "out.boot", blob_dir=blobs)
    with rafs.open(tmp_path / "out.boot", blob_dir=blobs) as image:
        moved = [c.blob_index == 1 for c in image.chunks("/big-b")]
        assert moved == [False, True, False, False]
        assert [c.blob_index == 1 for c in image.chunks("/d2/filler1")] == [True, False, False]
        assert result.blob_ids[-1] == image.blobs[1].blob_id and image.blobs[1].chunk_count == 2
        assert image.read("/big-b") == files["big-b"] and image.read("/d2/filler1") == files["d2/filler1"]


def test_unknown_and_relative_paths_are_skipped(tmp_path, caplog):
    files, blobs = _image(tmp_path, 6)
    result = optimize(tmp_path / "boot", [PrefetchFile("/nowhere"), PrefetchFile("d0/small1"),
                                          PrefetchFile("/d0"), PrefetchFile("/d0/small1")],
                      output_blob_dir=blobs, output_bootstrap=tmp_path / "out.boot", blob_dir=blobs)
    assert "not in the image" in caplog.text and "not absolute" in caplog.text
    with rafs.open(tmp_path / "out.boot", blob_dir=blobs) as image:
        assert _prefetch_paths(image) == ["/d0/small1"]
        assert image.blobs[-1].blob_id == result.blob_id and image.read("/d0/small1") == files["d0/small1"]


@pytest.mark.parametrize("text, message", [
    ('{"version": "v2", "files": []}', "unsupported prefetch file version"),
    ('{"version": "v1", "files": [{"path": "/a", "ranges": [[1]]}]}', "files[0].ranges must be"),
    ('{"version": "v1", "files": [{"ranges": null}]}', "files[0] needs a \"path\""),
    ('{"version": "v1", "files": [', "failed to parse prefetch file as JSON"),
])
def test_bad_prefetch_lists(tmp_path, text, message):
    listing = tmp_path / "list.json"
    listing.write_text(text)
    with pytest.raises(InvalidArgumentError, match=message.replace("[", r"\[")):
        read_prefetch_files(listing)


def test_cli_needs_its_outputs(tmp_path, capsys):
    _, blobs = _image(tmp_path, 6)
    (tmp_path / "list").write_text("/d0/small0\n")
    assert cli_main(["optimize", "-B", str(tmp_path / "boot"), "-D", str(blobs), "-p", str(tmp_path / "list")]) != 0
    assert "missing parameter `output-blob-dir`" in capsys.readouterr().err
    assert cli_main(["optimize", "-B", str(tmp_path / "boot"), "-p", str(tmp_path / "list"),
                     "--output-blob-dir", str(blobs)]) != 0
    assert "--blob-dir or --backend-type must be specified" in capsys.readouterr().err


@pytest.mark.parametrize("backend", ["s3", "http-proxy"])
def test_optimize_reads_blobs_through_a_backend(tmp_path, backend, request):
    files, blobs = _image(tmp_path, 6)
    (tmp_path / "list").write_text("\n".join(TRACE) + "\n")
    (blob_id,) = os.listdir(blobs)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    with contextlib.ExitStack() as stack:
        if backend == "s3":
            s3 = request.getfixturevalue("s3")
            s3.put("nydus-demo/blob/" + blob_id, (blobs / blob_id).read_bytes())
            config = s3.backend_config()
        else:
            config = {"addr": stack.enter_context(ranged_blob_server(blobs))}
        (tmp_path / "backend.json").write_text(json.dumps(config))
        assert cli_main(["optimize", "-B", str(tmp_path / "boot"), "-p", str(tmp_path / "list"), "--backend-type",
                         backend, "--backend-config-file", str(tmp_path / "backend.json"), "--output-blob-dir",
                         str(out_dir), "-O", str(tmp_path / "out.boot")]) == 0
    (prefetch_id,) = os.listdir(out_dir)
    os.link(blobs / blob_id, out_dir / blob_id)
    with rafs.open(tmp_path / "out.boot", blob_dir=out_dir) as image:
        assert [b.blob_id for b in image.blobs] == [blob_id, prefetch_id]
        assert _contents(image) == {os.fsencode("/" + rel): data for rel, data in files.items()}


@pytest.mark.privileged
def test_optimized_image_starts_with_fewer_backend_requests(s3, tmp_path, tree):
    """The loop of issue 18 with ``rafs optimize``: the trace's files, moved into the prefetch blob, are
    fetched by the mount's prefetch in one merged request; the original image asks once per file."""
    from test_mount_trace import WORKLOAD, _s3_start
    _, files, blobs = tree
    (tmp_path / "trace.txt").write_text("".join(f"/{rel}\n" for rel in WORKLOAD))
    out_dir = tmp_path / "optimized-blobs"
    out_dir.mkdir()
    result = optimize(tmp_path / "boot", read_prefetch_files(tmp_path / "trace.txt"), output_blob_dir=out_dir,
                      output_bootstrap=tmp_path / "optimized.boot", blob_dir=blobs)
    (original_id,) = os.listdir(blobs)
    s3.put(f"nydus-demo/blob/{original_id}", (blobs / original_id).read_bytes())
    s3.put(f"nydus-demo/blob/{result.blob_id}", (out_dir / result.blob_id).read_bytes())

    without = _s3_start(s3, tmp_path, "original", tmp_path / "boot", original_id, files, prefetches=False)
    with_blob = _s3_start(s3, tmp_path, "optimized", tmp_path / "optimized.boot", result.blob_id, files,
                          prefetches=True)
    original_after = len(s3.proxy.requests_for(f"nydus-demo/blob/{original_id}"))
    assert without >= len(WORKLOAD), f"the original image's workload took only {without} requests"
    # the prefetch blob: its meta and one merged request; the original blob is not asked for the workload
    assert with_blob <= 2 and original_after <= 1, (with_blob, original_after)
    assert with_blob + original_after < without
