"""A bootstrap replaced or truncated under a reader (issue 12, mmap safety).

Someone copying a new image over a mounted one truncates the file the daemon opened. rafs reads a
snapshot of the bootstrap when it opens it, never an mmap (whose pages past the new end would raise
SIGBUS and kill the daemon): the mount keeps serving the image it was started with.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import rafs
from test_fuse_support import Mount, _env, need_fuse


def _tree(top) -> dict[str, bytes]:
    """Enough directories and files that their inodes span many pages of the bootstrap."""
    files = {}
    for d in range(40):
        os.makedirs(top / f"dir{d:02d}")
        for f in range(40):
            rel = f"dir{d:02d}/file{f:02d}"
            data = (rel.encode() * 50)[: 100 + d * 40 + f]
            (top / rel).write_bytes(data)
            files[rel] = data
    return files


@pytest.fixture
def built(tmp_path):
    source = tmp_path / "src"
    files = _tree(source)
    (tmp_path / "blobs").mkdir()
    boot = tmp_path / "image.boot"
    rafs.Builder(str(source), fs_version=5, compressor="none").write(bootstrap=str(boot),
                                                                     blob_dir=str(tmp_path / "blobs"))
    return boot, tmp_path / "blobs", files


_READ_AFTER_TRUNCATION = """
import os, sys, rafs
boot, blobs = sys.argv[1:3]
with rafs.open(boot, blob_dir=blobs) as image:
    os.truncate(boot, 0)
    for path, inode in image.iter_entries():      # every inode, after the file lost its bytes
        if inode.is_reg:
            sys.stdout.buffer.write(path + b"=" + image.read(path) + b"\\n")
"""


def test_api_reader_survives_truncation(built):
    boot, blobs, files = built
    # in a subprocess: a SIGBUS would take pytest down with it
    done = subprocess.run([sys.executable, "-c", _READ_AFTER_TRUNCATION, str(boot), str(blobs)],
                          capture_output=True, env=_env(), timeout=120)
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-2000:]
    expected = b"".join(b"/" + rel.encode() + b"=" + data + b"\n" for rel, data in sorted(files.items()))
    assert done.stdout == expected


@pytest.mark.privileged
@pytest.mark.parametrize("how", ["truncate", "replace-in-place"])
def test_mount_survives_its_bootstrap_truncated(built, tmp_path, how):
    need_fuse()
    boot, blobs, files = built
    mount = Mount(["-B", str(boot), "-D", str(blobs)], tmp_path / "mnt", tmp_path / "rafs.log")
    try:
        assert (mount.path / "dir00" / "file00").read_bytes() == files["dir00/file00"]
        if how == "truncate":
            os.truncate(boot, 0)
        else:                                            # cp new-image over-the-mounted-one
            with open(boot, "r+b") as f:
                f.truncate(0)
                f.write(b"\0" * 100)
        served = 0
        for rel, data in files.items():                 # lookups and reads the kernel has not cached
            try:
                got = (mount.path / rel).read_bytes()
            except OSError as exc:
                assert exc.errno == 5, exc              # EIO is a clean failure; anything else is not
                continue
            assert got == data
            served += 1
        assert mount.process.poll() is None, mount.log_text()
        assert served == len(files), mount.log_text()
    finally:
        mount.close()
