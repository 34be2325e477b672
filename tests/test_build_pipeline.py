"""The chunk pipeline: the workers' chunk processing agrees with the codecs, output failures are
build errors, and the pipeline's results are laid out as a sequential build would lay them out."""

from __future__ import annotations

import functools
import os

import pytest

import rafs
from rafs.blob import writer as blob_writer
from rafs.builder import builder as builder_module


@pytest.fixture
def mixed_tree(tmp_path):
    """Small and multi-chunk files across nested directories, hardlinks whose first link is met early
    and late, duplicates (dedup) and empty files."""
    src = tmp_path / "src"
    for d in ("a", "a/x", "a/y", "b", "b/deep/er", "c"):
        (src / d).mkdir(parents=True)
    payload = os.urandom(40_000)
    for i in range(60):
        d = ("a", "a/x", "a/y", "b", "b/deep/er", "c", "")[i % 7]
        (src / d / f"f{i:03d}").write_bytes(payload[i * 500:i * 500 + 300 + 37 * i] * (1 + i % 3))
    (src / "a" / "big").write_bytes(os.urandom(5 * 0x10000 + 123))      # several chunks of 64 KiB
    (src / "c" / "big-copy").write_bytes((src / "a" / "big").read_bytes())
    (src / "a" / "empty").write_bytes(b"")
    os.link(src / "a" / "f000", src / "c" / "link-to-early")
    os.link(src / "c" / "f005", src / "a" / "x" / "link-from-late")
    return src


def _build(src, out, **options):
    out.mkdir()
    rafs.Builder(src, repeatable=True, chunk_size=0x10000, **options).write(bootstrap=out / "boot",
                                                                           blob=out / "blob")
    return (out / "boot").read_bytes(), (out / "blob").read_bytes()


@pytest.mark.parametrize("fs_version", [5, 6])
def test_workers_and_bounds_change_nothing(mixed_tree, tmp_path, monkeypatch, fs_version):
    """One worker, many, and a tiny in-flight bound (results stored while others are still read)
    give the same bytes, and the image checks out."""
    images = [_build(mixed_tree, tmp_path / f"w{workers}", fs_version=fs_version, workers=workers)
              for workers in (1, 4)]
    monkeypatch.setattr(builder_module, "BlobWriter",
                        functools.partial(blob_writer.BlobWriter, inflight_bytes=4 * 0x10000))
    images.append(_build(mixed_tree, tmp_path / "tight", fs_version=fs_version))
    assert images[0] == images[1] == images[2]
    with rafs.open(tmp_path / "w4" / "boot", blobs=[tmp_path / "w4" / "blob"]) as image:
        assert list(image.check(verify_data=True)) == []


@pytest.mark.parametrize("compressor", ["none", "zstd", "lz4_block"])
@pytest.mark.parametrize("digester", ["blake3", "sha256"])
def test_chunk_processor_agrees_with_the_codecs(compressor, digester):
    from rafs.blob import codecs
    process = codecs.chunk_processor(compressor, digester)
    for data in (b"x", b"abc" * 5000, os.urandom(5000), bytes(0x10000)):
        assert process(data) == (codecs.digest(digester, data), codecs.crc32c(data),
                                 *codecs.compress_chunk(compressor, data))


def test_an_output_that_fails_is_a_build_error(mixed_tree):
    """A write failing on the sink thread (a full disk) reaches the caller as a BuildError."""
    import errno
    import io

    class Full(io.RawIOBase):
        def writable(self):
            return True

        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(rafs.errors.BuildError, match="No space left on device"):
        rafs.Builder(mixed_tree, compressor="none").write_fp(Full(), io.BytesIO())


@pytest.mark.privileged
def test_create_on_a_full_disk(mixed_tree, tmp_path, capsys):
    """rafs create onto a filesystem too small for the blob: a one-line error, exit 1, nothing left."""
    import subprocess

    from conftest import need
    from rafs.cli.main import main as cli_main

    need(os.geteuid() == 0, "mounting a tmpfs needs root")
    target = tmp_path / "small"
    target.mkdir()
    (mixed_tree / "bulk").write_bytes(os.urandom(600_000))
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(target)],
                             capture_output=True, text=True)
    need(mounted.returncode == 0, f"mount -t tmpfs failed: {mounted.stderr.strip()}")
    try:
        assert cli_main(["create", str(mixed_tree), "-D", str(target), "--compressor", "none"]) == 1
        err = capsys.readouterr().err
        assert "No space left on device" in err and "Traceback" not in err
        assert os.listdir(target) == []
    finally:
        subprocess.run(["umount", str(target)], check=True)
