"""``rafs build`` (nydusify build) without a backend: output layout, options, refusals."""

from __future__ import annotations

import json
import os

import pytest

import rafs
from rafs.cli.main import main as rafs_main

from conftest import ROOT


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
    # as nydusify: the blob keeps its build name until pushed; the guide renames it by hand
    assert sorted(os.listdir(out)) == sorted(["img.blob", "img.meta", "output.json"])
    assert f"blob: {out / 'img.blob'}" in capsys.readouterr().out
    os.rename(out / "img.blob", out / blob_id)
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
    (["--backend-push", "--backend-config-file", "/nonexistent.json"],
     "--backend-config-file /nonexistent.json: no such file"),
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


def test_build_help_offers_no_backend_it_cannot_push_to(source, tmp_path, capsys):
    """nydusify's oss is refused by the parser, not after --help offered it."""
    with pytest.raises(SystemExit) as exit_info:
        rafs_main(["build", "--name", "img", "--source-dir", str(source), "--output-dir", str(tmp_path / "out"),
                   "--backend-push", "--backend-type", "oss", "--backend-config", "{}"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'oss'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        rafs_main(["build", "--help"])
    assert "--backend-type {s3}" in capsys.readouterr().out


def test_the_guides_basic_commands(tmp_path, monkeypatch):
    """01-basic of the users' guide, its commands as written with rafs in place of nydusify."""
    import shutil
    import subprocess
    monkeypatch.chdir(tmp_path)
    shutil.copytree(ROOT / "samples" / "origin-root-dir", "origin-root-dir", symlinks=True)
    os.makedirs("origin-root-dir/dir_1/subdir_b", exist_ok=True)
    assert rafs_main(["build", "--name", "image-basic-01", "--source-dir", "origin-root-dir",
                      "--output-dir", "image-store/"]) == 0
    subprocess.run("mv image-store/image-basic-01.blob image-store/$(python3 -c 'import json; "
                   "print(json.load(open(\"image-store/output.json\"))[\"blobs\"][0])')",
                   shell=True, check=True, executable="/bin/bash")
    blob_id = "58048df580011d3a700076d8a1ec9ccaee6881f7feb8352aa298959ee8866f28"   # as in the guide
    assert sorted(os.listdir("image-store")) == [blob_id, "image-basic-01.meta", "output.json"]
    config = {"device": {"backend": {"type": "localfs", "config": {"dir": "image-store"}},
                         "cache": {"type": "blobcache", "config": {"work_dir": "cache"}}},
              "mode": "direct", "digest_validate": False, "iostats_files": False, "enable_xattr": True}
    with rafs.open("image-store/image-basic-01.meta", config=config) as image:
        assert image.read("/dir_1/subdir_a/file_a") == b"file_a\n"
        assert image.read("/file_c_ln") == b"file_c\n"
    assert sorted(os.listdir("cache")) == [f"{blob_id}.blob.data", f"{blob_id}.blob.data.chunk_map",
                                           f"{blob_id}.blob.meta"]
