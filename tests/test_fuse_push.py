"""Small files pushed into the kernel's page cache (``fuse_lowlevel_notify_store``) after a read of
their neighbour: the reader gets them without a request, byte for byte, including a last page that
ends mid-page (zero past the end, as mmap shows) and sparse files."""

from __future__ import annotations

import ctypes
import mmap
import os
import random
import threading
import time

import pytest

import rafs
import rafs.fuse
from test_fuse_support import need_fuse

pytestmark = pytest.mark.privileged

# name -> content; sorted names are the listing order: "a00" is read first, "a01" is what the
# reader is about to read next (left to it), the rest after it are pushed unless too large or empty
_rng = random.Random(5)
FILES = {
    "a00-first": b"first\n",
    "a01-next": b"next\n",
    "a02-one-byte": b"x",
    "a03-page-less-one": _rng.randbytes(4095),
    "a04-page": _rng.randbytes(4096),
    "a05-page-plus-one": _rng.randbytes(4097),
    "a06-too-large": _rng.randbytes(rafs.fuse.PUSH_FILE_LIMIT + 1),
    "a07-sparse": b"\0" * 9000 + b"middle" + b"\0" * 7000,
    "a08-all-hole": b"\0" * 12288,
    "a09-empty": b"",
    "a10-text": b"".join(b"line %d\n" % i for i in range(3000)),
}
PUSHED = {"a02-one-byte", "a03-page-less-one", "a04-page", "a05-page-plus-one", "a07-sparse", "a08-all-hole",
          "a10-text"}


class Recording(rafs.fuse.RafsOperations):
    """The handlers, noting every read request's inode."""

    instances: list = []

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.read_inos: list[int] = []
        Recording.instances.append(self)

    def read(self, req, ino, size, offset, fi) -> None:
        self.read_inos.append(ino)
        super().read(req, ino, size, offset, fi)


@pytest.mark.parametrize("fs_version", [5, 6])
def test_pushed_files_read_without_requests(tmp_path, monkeypatch, fs_version):
    need_fuse()
    source = tmp_path / "src"
    (source / "dir" / "a055-subdir").mkdir(parents=True)
    for name, data in FILES.items():
        with open(source / "dir" / name, "wb") as f:
            if name in ("a07-sparse", "a08-all-hole"):       # real holes, not written zeros
                f.seek(data.find(b"m") if b"m" in data else 0)
                f.write(data.strip(b"\0"))
                f.truncate(len(data))
            else:
                f.write(data)
    os.symlink("a00-first", source / "dir" / "a045-link")
    blob_dir = tmp_path / "blobs"
    blob_dir.mkdir()
    rafs.Builder(str(source), fs_version=fs_version, compressor="zstd").write(
        bootstrap=str(tmp_path / "image.boot"), blob_dir=str(blob_dir))
    image = rafs.open(str(tmp_path / "image.boot"), blob_dir=str(blob_dir))
    monkeypatch.setattr(rafs.fuse, "RafsOperations", Recording)
    Recording.instances.clear()
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    ready = threading.Event()
    server = threading.Thread(target=rafs.fuse.mount, args=(image, str(mountpoint)),
                              kwargs=dict(ready=ready.set, handle_signals=False), daemon=True)
    server.start()
    try:
        assert ready.wait(10)
        operations = Recording.instances[0]
        top = mountpoint / "dir"
        os.listdir(top)                                 # readdirplus: the kernel knows every inode
        assert (top / "a00-first").read_bytes() == FILES["a00-first"]
        deadline = time.monotonic() + 10
        while operations.pushed < len(PUSHED) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert operations.pushed == len(PUSHED)
        for name, data in FILES.items():
            assert (top / name).read_bytes() == data, name
        requested = set(operations.read_inos)
        for name in FILES:
            ino = os.stat(top / name).st_ino
            assert (ino in requested) == (name not in PUSHED and FILES[name] != b""), name
        # the last page past the end of a pushed file is zero (what mmap shows of it)
        with open(top / "a05-page-plus-one", "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY) as m:
            view = ctypes.c_char.from_buffer(m)
            try:
                assert ctypes.string_at(ctypes.addressof(view), 8192) == FILES["a05-page-plus-one"] + bytes(4095)
            finally:
                del view
    finally:
        rafs.fuse.unmount(str(mountpoint))
        server.join(10)
    assert not server.is_alive()
