"""``rafs mount`` of an image whose blob lives on S3 (moto server on loopback, through the counting
proxy), with the guide's nydusd-config.s3.json: cold reads fetch ranges of the blob, a second mount
reads everything from the blobcache, and a slow remote fetch does not hold up reads the cache serves.
"""

from __future__ import annotations

import json
import os
import random
import threading
import time

import pytest

import rafs
from s3server import moto_server, s3, s3_proxy  # noqa: F401  (pytest fixtures)
from test_fuse_support import Mount, need_fuse

pytestmark = pytest.mark.privileged

FILES = {
    "etc/hostname": b"rafs-on-s3\n",
    "usr/lib/big.so": random.Random(3).randbytes(2 * 1024 * 1024 + 333),
    "usr/share/doc/README": b"read me\n" * 5000,
    "var/slow.bin": random.Random(4).randbytes(300_000),
}


@pytest.fixture
def s3_image(s3, tmp_path):
    """(bootstrap path, blob id, nydusd config path): the tree built as RAFS v6, its blob pushed to S3
    under the guide's blob_prefix, the bootstrap kept local (the guide downloads it before mounting)."""
    need_fuse()
    source = tmp_path / "src"
    for rel, data in FILES.items():
        (source / rel).parent.mkdir(parents=True, exist_ok=True)
        (source / rel).write_bytes(data)
    out = tmp_path / "out"
    out.mkdir()
    result = rafs.Builder(str(source), fs_version=6, compressor="zstd").write(
        bootstrap=str(tmp_path / "image.meta"), blob_dir=str(out))
    (blob_id,) = result.blob_ids
    s3.put(f"nydus-demo/blob/{blob_id}", (out / blob_id).read_bytes())
    config = tmp_path / "nydusd-config.s3.json"
    config.write_text(json.dumps(s3.nydusd_config(tmp_path / "cache")))
    s3.proxy.reset()
    return tmp_path / "image.meta", blob_id, config


def _mount(tmp_path, bootstrap, config, name):
    return Mount(["--config", str(config), "--bootstrap", str(bootstrap)], tmp_path / name,
                 tmp_path / f"{name}.log")


def test_s3_mount_cold_then_cached(s3, s3_image, tmp_path):
    bootstrap, blob_id, config = s3_image
    mount = _mount(tmp_path, bootstrap, config, "cold")
    try:
        for rel, data in FILES.items():
            assert (mount.path / rel).read_bytes() == data, rel
    finally:
        mount.close()
    fetched = s3.proxy.requests_for(f"nydus-demo/blob/{blob_id}")
    assert fetched, "a cold mount must fetch the blob"
    assert any(n.endswith(".blob.data") for n in os.listdir(tmp_path / "cache"))

    s3.proxy.reset()
    mount = _mount(tmp_path, bootstrap, config, "warm")
    try:
        for rel, data in FILES.items():
            assert (mount.path / rel).read_bytes() == data, rel
    finally:
        mount.close()
    assert s3.proxy.requests_for(f"nydus-demo/blob/{blob_id}") == [], "everything should come from the cache"


def test_slow_fetch_does_not_block_cached_reads(s3, s3_image, tmp_path):
    bootstrap, _, config = s3_image
    mount = _mount(tmp_path, bootstrap, config, "mnt")
    try:
        cached = mount.path / "usr/lib/big.so"
        assert cached.read_bytes() == FILES["usr/lib/big.so"]
        s3.proxy.delay = 3.0                              # every blob GET now takes 3 s
        slow_result = {}

        def read_slow():
            start = time.monotonic()
            slow_result["data"] = (mount.path / "var/slow.bin").read_bytes()
            slow_result["seconds"] = time.monotonic() - start

        slow = threading.Thread(target=read_slow)
        slow.start()
        time.sleep(0.5)                                   # the slow read is now waiting on S3
        fd = os.open(cached, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)   # make the kernel ask the daemon again
            start = time.monotonic()
            data = b""
            while block := os.read(fd, 1 << 20):
                data += block
            cached_seconds = time.monotonic() - start
        finally:
            os.close(fd)
        listing = sorted(os.listdir(mount.path / "usr/share/doc"))
        still_waiting = slow.is_alive()
        slow.join(60)
        assert data == FILES["usr/lib/big.so"]
        assert listing == ["README"]
        assert still_waiting, "the slow read finished before the cached one was tried"
        assert cached_seconds < 1.0, f"a cached read took {cached_seconds:.2f} s behind a slow fetch"
        assert slow_result["data"] == FILES["var/slow.bin"] and slow_result["seconds"] >= 2.5
    finally:
        s3.proxy.delay = 0.0
        mount.close()
