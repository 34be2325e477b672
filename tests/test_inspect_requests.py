"""``rafs inspect -R REQUEST``: nydus-image inspect's whole request set (src/bin/nydus-image/inspect.rs),
its compact JSON answers (what nydusify's checker and nydus-snapshotter's tarfs parse), its text for
``ls``/``stat``/``chunk``/``icheck`` in the reference's wording, and one-line errors for the rest."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import rafs
from conftest import ROOT

ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def inspect(boot, *request, ok: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "rafs", "inspect", str(boot), *request], check=False,
                          capture_output=True, text=True, env=ENV, timeout=60)
    if ok:
        assert proc.returncode == 0, proc.stderr
    return proc


@pytest.fixture(scope="module", params=[5, 6])
def built(request, tmp_path_factory):
    """A small tree built as v5 or v6, with a hard link, a symlink, a subdirectory, a name with a
    control character and a file of two chunks; prefetch table /sub."""
    tmp = tmp_path_factory.mktemp(f"v{request.param}")
    src = tmp / "src"
    (src / "sub").mkdir(parents=True)
    (src / "sub/big").write_bytes(os.urandom(0x1800))
    (src / "a.txt").write_bytes(b"alpha\n")
    os.link(src / "a.txt", src / "sub/hard")
    os.symlink("a.txt", src / "link")
    (src / "bad\nname").write_bytes(b"x")
    for path in (src / "sub/big", src / "a.txt", src / "bad\nname", src / "sub", src):
        os.utime(path, (1700000000, 1700000000))
    (tmp / "blobs").mkdir()
    rafs.Builder(str(src), fs_version=request.param, chunk_size=0x1000, prefetch_patterns=["/sub"]) \
        .write(bootstrap=str(tmp / "boot"), blob_dir=str(tmp / "blobs"))
    return tmp / "boot"


def test_blobs_is_the_reference_json(built):
    with rafs.open(str(built)) as image:
        blob = image.blobs[0]
    # nydus-snapshotter's tarfs runs ``inspect "-R blobs" BOOT`` (one argument) and looks for this text
    text = inspect(built, "-R blobs").stdout
    assert f'"blob_id":"{blob.blob_id}"' in text
    value = json.loads(text)
    # nydusify's checker: inspect BOOT --request blobs, into BlobInfo
    assert value == json.loads(inspect(built, "--request", "blobs").stdout)
    assert {k: value[0][k] for k in ("blob_id", "compressed_size", "decompressed_size", "readahead_offset",
                                     "readahead_size")} == {
        "blob_id": blob.blob_id, "compressed_size": blob.compressed_size,
        "decompressed_size": blob.uncompressed_size, "readahead_offset": blob.readahead_offset,
        "readahead_size": blob.readahead_size}
    assert "cipher_key" not in text


def test_stats_gives_the_inode_count(built):
    value = json.loads(inspect(built, "-R", "stats").stdout)
    with rafs.open(str(built)) as image:
        assert value["inodes_count"] == image.statfs().f_files > 0
    assert value["files"] == 3 and value["directories"] == 2


def test_prefetch_names_every_path_of_each_inode(built):
    value = json.loads(inspect(built, "-R", "prefetch").stdout)
    with rafs.open(str(built)) as image:
        assert [entry["inode"] for entry in value] == image.reader.prefetch_inodes()
        ino = image.stat("/sub").st_ino
    paths = {entry["inode"]: entry["path"] for entry in value}
    assert paths[ino] == ["/sub"]


def test_ls_lists_the_root_with_kinds_and_quoted_names(built):
    text = inspect(built, "-R", "ls").stdout
    lines = text.splitlines()
    assert lines[-1] == "null"
    with rafs.open(str(built)) as image:
        inos = {name: image.lstat("/" + name).st_ino for name in ("a.txt", "link", "sub", "bad\nname")}
    bad = inos["bad\nname"]
    assert f"-    {inos['a.txt']:<8} \"a.txt\"" in lines
    assert f"l    {inos['link']:<8} \"link\"" in lines
    assert f"d    {inos['sub']:<8} \"sub\"" in lines
    assert f"-    {bad:<8} \"bad\\nname\"" in lines         # never a raw control character


def test_stat_shows_the_inode_and_its_chunks(built):
    text = inspect(built, "-R", "stat a.txt").stdout
    with rafs.open(str(built)) as image:
        st = image.stat("/a.txt")
        chunk = image.chunks("/a.txt")[0]
        blob_id = image.blobs[0].blob_id
    assert f"\nInode Number:       {st.st_ino}\nName:               \"a.txt\"\nSize:               6\n" in text
    assert f"Mode:               0x{st.st_mode:X}\nPermissions:        {st.st_mode:o}\nNlink:              2\n" in text
    assert "Mtime:              1700000000\n" in text
    assert ("  Chunk list:\n        0 ->\n        file offset: 0, chunk index: "
            f"{chunk.index}\n        compressed size: {chunk.compressed_size}, decompressed size: 6\n") in text
    assert f"        blob id: {blob_id}\n        chunk id: {chunk.digest.hex()}\n" in text
    assert text.endswith("null\n")
    assert inspect(built, "-R", "stat missing").stdout == "null\n"
    assert "Chunk list" not in inspect(built, "-R", "stat sub").stdout


def test_chunk_finds_the_file_at_an_offset(built):
    with rafs.open(str(built)) as image:
        chunk = image.chunks("/sub/big")[1]
    text = inspect(built, "-R", f"chunk {chunk.compressed_offset}").stdout
    assert f"\nFile: {'big':32} Parent Path: {'/sub':32}\n" in text
    assert (f"Compressed Offset: {chunk.compressed_offset}, Compressed Size: {chunk.compressed_size}\n"
            f"Decompressed Offset: {chunk.uncompressed_offset}, Decompressed Size: {chunk.uncompressed_size}\n"
            f"Chunk ID: {chunk.digest.hex():50},\n") in text
    assert inspect(built, "-R", "chunk 999999999").stdout == "null\n"


def test_icheck_names_every_path_of_the_inode(built):
    with rafs.open(str(built)) as image:
        ino = image.stat("/a.txt").st_ino
        sub = image.stat("/sub").st_ino
    text = inspect(built, "-R", f"icheck {ino}").stdout
    assert text.startswith("/a.txt\n\nInode Number:")
    assert "\n/sub/hard\n\nInode Number:" in text and f"Parent:             {sub}\n" in text


def test_cd_exit_and_q_answer_null(built):
    assert inspect(built, "-R", "cd sub").stdout == "null\n"
    assert inspect(built, "-R", "cd a.txt").stdout == "a.txt is not a directory\nnull\n"
    for request in ("exit", "q"):
        assert inspect(built, "-R", request).stdout == "null\n"


def test_all_is_rafs_summary(built):
    value = json.loads(inspect(built, "-R", "all").stdout)
    assert value["version"] in (5, 6) and value["blobs"]


@pytest.mark.parametrize("request_, message", [
    ("bogus", "unsupported inspect request `bogus`"),
    ("stats extra", "unsupported inspect request `stats extra`"),
    ("stat", "unsupported inspect request `stat`"),
    ("chunk x", "invalid arguments in inspect request `chunk x`"),
    ("icheck -1", "invalid arguments in inspect request `icheck -1`"),
    ("icheck 99999999999999999999", "invalid arguments"),
    ("", "empty inspect request"),
    ("help", "help is not supported in inspect request mode"),
])
def test_bad_requests_are_one_line_errors(built, request_, message):
    proc = inspect(built, "-R", request_, ok=False)
    assert proc.returncode != 0 and message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_reference_fixture_answers_as_the_reference_lays_out(fixtures):
    """The nydus-image-built v6 fixture: ls and stat in the reference's layout, byte for byte."""
    fixture = fixtures / "bootstrap" / "rafs-v6-2.2.boot"
    assert inspect(fixture, "-R", "ls").stdout == '-    133      "lib.rs"\n-    136      "sync_io.rs"\nnull\n'
    text = inspect(fixture, "-R", "stat lib.rs").stdout
    assert text.startswith("\nInode Number:       133\nName:               \"lib.rs\"\nSize:               16931\n"
                           "Parent:             128\nMode:               0x81A4\nPermissions:        100644\n")
    assert "Blocks:             40\n  Chunk list:\n        0 ->\n        file offset: 0, chunk index: 0\n" in text
