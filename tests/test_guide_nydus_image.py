"""The command lines of nydus-image's own guide (docs/nydus-image.md in dragonflyoss/nydus), as written,
through a ``nydus-image`` shim: create in native mode (directory, inlined metadata, tar.gz), merge,
unpack by ``--blob`` and ``--blob-dir=``, and export as a block device with dm-verity data; each with
the reference's summary lines (``data blobs: ["<id>"]``)."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import tarfile

from test_cli_dropin import env, shim, tar_members


def nydus_image(tmp_path, *argv: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([shim(tmp_path / "bin", "nydus-image"), *argv], check=False, capture_output=True, text=True,
                          cwd=tmp_path, env=env(), timeout=120, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr
    return proc


def summary(proc) -> tuple[str | None, list[str]]:
    """(meta blob path or None, data blob ids) from the reference's summary lines."""
    meta = re.search(r"^meta blob path: (.*)$", proc.stderr, re.MULTILINE).group(1)
    blobs = json.loads(re.search(r"^data blobs: (.*)$", proc.stderr, re.MULTILINE).group(1))
    return (None if meta == "<none>" else meta), blobs


def _tree(path):
    (path / "d").mkdir(parents=True)
    (path / "d/a").write_bytes(b"a\n")
    (path / "b").write_bytes(os.urandom(5000))


def test_create_merge_unpack_export_as_the_guide_writes_them(tmp_path):
    _tree(tmp_path / "src")
    (tmp_path / "images").mkdir()
    meta, blobs = summary(nydus_image(tmp_path, "create", "-t", "dir-rafs", "-D", "images/", "src"))
    assert meta.startswith("images/") and len(blobs) == 1 and sorted(os.listdir(tmp_path / "images")) == \
        sorted([os.path.basename(meta), blobs[0]])
    # unpack by --blob and by --blob-dir=
    nydus_image(tmp_path, "unpack", "--blob", f"images/{blobs[0]}", meta, "--output", "tmp.tar")
    nydus_image(tmp_path, "unpack", "--blob-dir=images/", meta, "--output", "tmp2.tar")
    members = tar_members((tmp_path / "tmp.tar").read_bytes())
    assert members["d/a"] == ("file", b"a\n") and members == tar_members((tmp_path / "tmp2.tar").read_bytes())
    # export --block --verity -D images/ -B <bootstrap>: the disk next to the bootstrap, and the options
    proc = nydus_image(tmp_path, "export", "--block", "--verity", "-D", "images/", "-B", meta)
    assert (tmp_path / f"{meta}.disk").stat().st_size > 0
    assert re.search(r"dm-verity options: --no-superblock --format=1 .* [0-9a-f]{64}", proc.stdout + proc.stderr)


def test_inline_meta_targz_and_merge_as_the_guide_writes_them(tmp_path):
    _tree(tmp_path / "src")
    (tmp_path / "blobfs").mkdir()
    (tmp_path / "blobfs/extra").write_bytes(b"upper\n")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(tmp_path / "src", arcname=".")
    (tmp_path / "src.tar.gz").write_bytes(buf.getvalue())
    (tmp_path / "images").mkdir()
    meta, (targz_blob,) = summary(nydus_image(tmp_path, "create", "-t", "targz-rafs", "-D", "images/", "src.tar.gz"))
    assert meta is not None and (tmp_path / "images" / targz_blob).exists()
    inline = []
    for source in ("src", "blobfs/"):
        meta, blobs = summary(nydus_image(tmp_path, "create", "--blob-inline-meta", "-D", "images/", source))
        assert meta is None and len(blobs) == 1
        inline += blobs
    proc = nydus_image(tmp_path, "merge", "-D", "images/", *(f"images/{b}" for b in inline))
    merged, merged_blobs = summary(proc)
    assert merged_blobs == inline and os.path.exists(tmp_path / merged)
    import rafs
    with rafs.open(str(tmp_path / merged), blob_dir=str(tmp_path / "images")) as image:
        assert image.read("/extra") == b"upper\n" and image.read("/d/a") == b"a\n"
