"""The FUSE read path's speed features, checked by what the daemon is asked (never by timing):

- when the first small file of a listed directory is read, its siblings are pushed into the kernel's
  page cache (``fuse_lowlevel_notify_store``, rafs/fuse/push.py), so reading them asks the daemon nothing, and returns
  the right bytes;
- a traced mount pushes nothing (the trace must see every read);
- the mount's read-ahead is raised so that a large file comes in 1 MiB requests.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time

import pytest

import rafs
from rafs import fuse
from rafs.fuse import push as fusepush
from test_fuse_support import need_fuse

pytestmark = pytest.mark.privileged


def _tree(top):
    (top / "dir").mkdir(parents=True)
    for i in range(20):
        (top / "dir" / f"f{i:02d}").write_bytes(bytes([i]) * (1000 + 997 * i) + os.urandom(300))
    (top / "big").write_bytes(os.urandom(3 << 20))


@pytest.fixture
def served(tmp_path, monkeypatch):
    """(source, mountpoint, read sizes asked of the daemon, pushers made), mounted in this process."""
    need_fuse()
    source = tmp_path / "src"
    _tree(source)
    blobs = tmp_path / "blobs"
    blobs.mkdir()
    rafs.Builder(str(source), fs_version=6, compressor="zstd").write(bootstrap=str(tmp_path / "boot"),
                                                                     blob_dir=str(blobs))
    reads, pushers = [], []
    read = fuse.RafsOperations.read
    monkeypatch.setattr(fuse.RafsOperations, "read",
                        lambda self, req, ino, size, offset, fi: (reads.append(size), read(self, req, ino, size,
                                                                                            offset, fi))[1])
    init = fusepush.SiblingPusher.__init__
    monkeypatch.setattr(fusepush.SiblingPusher, "__init__",
                        lambda self, *a, **k: (pushers.append(self), init(self, *a, **k))[1])
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    image = rafs.open(str(tmp_path / "boot"), blob_dir=str(blobs))
    ready = threading.Event()
    thread = threading.Thread(target=fuse.mount, args=(image, str(mnt)),
                              kwargs=dict(ready=ready.set, handle_signals=False), daemon=True)
    thread.start()
    assert ready.wait(30)
    try:
        yield source, mnt, reads, pushers
    finally:
        subprocess.run(["umount", str(mnt)], check=False)
        thread.join(30)
        image.close()


def test_siblings_arrive_without_requests(served):
    source, mnt, reads, pushers = served
    names = sorted(os.listdir(mnt / "dir"))
    assert (mnt / "dir" / names[0]).read_bytes() == (source / "dir" / names[0]).read_bytes()
    (pusher,) = pushers
    deadline = time.monotonic() + 20
    while pusher.pushed < len(names) - 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert pusher.pushed == len(names) - 1
    asked = len(reads)
    for name in names:
        assert (mnt / "dir" / name).read_bytes() == (source / "dir" / name).read_bytes(), name
    assert len(reads) == asked          # all from the page cache


def test_large_file_in_one_mib_requests(served):
    source, mnt, reads, _ = served
    assert (mnt / "big").read_bytes() == (source / "big").read_bytes()
    assert max(reads) == 1 << 20 and len(reads) <= 4


def test_a_traced_mount_pushes_nothing(served):
    source, mnt, reads, pushers = served
    # the fixture's mount pushes; a mount with an observer makes no pusher at all
    assert len(pushers) == 1
    from rafs.serve.trace import MountObserver
    image = rafs.open(str(mnt.parent / "boot"), blob_dir=str(mnt.parent / "blobs"))
    other = mnt.parent / "mnt2"
    other.mkdir()
    ready = threading.Event()
    thread = threading.Thread(target=fuse.mount, args=(image, str(other)),
                              kwargs=dict(ready=ready.set, handle_signals=False, observer=MountObserver(trace=True)),
                              daemon=True)
    thread.start()
    try:
        assert ready.wait(30)
        names = sorted(os.listdir(other / "dir"))
        for name in names:
            assert (other / "dir" / name).read_bytes() == (source / "dir" / name).read_bytes()
        assert len(pushers) == 1
    finally:
        subprocess.run(["umount", str(other)], check=False)
        thread.join(30)
        image.close()
