"""``rafs build`` (nydusify build) without a backend: output layout, options, refusals."""

from __future__ import annotations

import json
import os

import pytest

import rafs
from rafs.cli.main import main as rafs_main


@pytest.fixture
def source(tmp_path):
    root = tmp_path / "origin-root-dir"
    (root / "dir_1" / "subdir_a").mkdir(parents=True)
    (root / "dir_1" / "subdir_a" / "file_a").write_text("file_a\n")
    (root / "big").write_bytes(bytes(range(256)) * 64)            # 16 KiB: 4 chunks of 4 KiB
    os.symlink("big", root / "big_ln")
    return root


@pytest.mark.parametrize("fs_version, compressor", [("6", "zstd"), ("5", "none"), ("6", "lz4_block")])
def test_build_writes_nydusify_outputs(source, tmp_path, capsys, fs_version, compressor):
    out = tmp_path / "out"
    assert rafs_main(["build", "--name", "img", "--source-dir", str(source), "--output-dir", str(out),
                      "--fs-version", fs_version, "--compressor", compressor, "--chunk-size", "0x1000"]) == 0
    output = json.loads((out / "output.json").read_text())
    (blob_id,) = output["blobs"]
    assert output["fs_version"] == fs_version and output["compressor"] == compressor
    assert sorted(os.listdir(out)) == sorted([blob_id, "img.meta", "output.json"])
    assert f"blob: {out / blob_id}" in capsys.readouterr().out
    with rafs.open(out / "img.meta", blob_dir=out) as image:
        assert image.version == int(fs_version) and image.chunk_size == 0x1000
        assert image.read("/dir_1/subdir_a/file_a") == b"file_a\n"
        assert image.read("/big_ln") == bytes(range(256)) * 64 and len(image.chunks("/big")) == 4


def test_build_default_output_dir(source, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert rafs_main(["build", "--name", "image-basic-01", "--source-dir", str(source)]) == 0
    assert "image-basic-01.meta" in os.listdir(tmp_path / ".nydus-build-output")


@pytest.mark.parametrize("args, words", [
    (["--source-dir", "/nonexistent"], "not a directory"),
    (["--name", "a/b"], "cannot name a file"),
    (["--backend-push"], "--backend-config"),
    (["--backend-push", "--backend-config", "{not json"], "not JSON"),
    (["--backend-push", "--backend-config", "[]"], "JSON object"),
    (["--backend-push", "--backend-config", "{}"], "bucket_name"),
    (["--backend-push", "--backend-type", "oss", "--backend-config", "{}"], "'oss' is not supported"),
    (["--backend-push", "--backend-config-file", "/nonexistent.json"], "cannot read backend config"),
    (["--chunk-size", "0x1234"], "chunk size"),
])
def test_build_refusals(source, tmp_path, capsys, args, words):
    base = {"--name": "img", "--source-dir": str(source), "--output-dir": str(tmp_path / "out")}
    argv = ["build"]
    for key, value in base.items():
        if key not in args:
            argv += [key, value]
    assert rafs_main(argv + args) in (1, 2)
    assert words in capsys.readouterr().err
    # refused before anything was built
    assert not (tmp_path / "out" / "output.json").exists()
