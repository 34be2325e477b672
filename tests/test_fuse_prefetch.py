"""Prefetch on mount (issue 14): ``rafs mount`` with the configuration's ``fs_prefetch`` on, or with
``--prefetch-files``, fills the blob cache in the background without a single read of the mount.

The evidence is the cache's ``chunk_map`` on disk (nydusd's layout: a 4096-byte header, then one bit per
chunk, MSB first), polled while nothing reads the mountpoint.
"""

from __future__ import annotations

import json
import os
import time

import pytest

import rafs
from rafs.io.layout import CHUNK_MAP_HEADER_SIZE
from test_fuse_support import Mount, diff_r, guide_config, need_fuse

pytestmark = pytest.mark.privileged

FILL_TIMEOUT = 60


def _tree(top) -> None:
    os.makedirs(f"{top}/app/lib")
    for i in range(6):
        with open(f"{top}/app/lib/mod{i}.so", "wb") as f:
            f.write(os.urandom(300_000 + i))
    with open(f"{top}/app/big", "wb") as f:
        f.write(os.urandom(2_500_000))
    with open(f"{top}/other", "wb") as f:
        f.write(os.urandom(1_200_000))
    os.symlink("app/big", f"{top}/link")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    need_fuse()
    work = tmp_path_factory.mktemp("fuse-prefetch")
    source = work / "src"
    _tree(str(source))
    blob_dir = work / "blobs"
    blob_dir.mkdir()
    bootstrap = work / "image.boot"
    rafs.Builder(str(source), fs_version=6, compressor="zstd", chunk_size=0x40000).write(
        bootstrap=str(bootstrap), blob_dir=str(blob_dir))
    return source, bootstrap, blob_dir


def _bits(work_dir, blob_id: str) -> set[int] | None:
    """Indexes of the chunks the cache has ready (None while the map does not exist yet)."""
    try:
        with open(os.path.join(work_dir, f"{blob_id}.blob.data.chunk_map"), "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        return None
    bitmap = raw[CHUNK_MAP_HEADER_SIZE:]
    return {i for i in range(len(bitmap) * 8) if bitmap[i >> 3] & (0x80 >> (i & 7))}


def _chunks(bootstrap, blob_dir, path=None) -> set[int]:
    with rafs.open(bootstrap, blob_dir=blob_dir) as image:
        if path is not None:
            return {c.index for c in image.reader.chunks(image.inode(path).ino)}
        out = set()
        for _, inode in image.iter_entries("/"):
            if inode.is_reg:
                out |= {c.index for c in image.reader.chunks(inode.ino)}
        return out


def _wait_for(work_dir, blob_id, wanted: set[int]) -> set[int]:
    deadline = time.monotonic() + FILL_TIMEOUT
    while True:
        ready = _bits(work_dir, blob_id) or set()
        if wanted <= ready or time.monotonic() > deadline:
            return ready
        time.sleep(0.05)


def _mount(tmp_path, bootstrap, config: dict, *extra) -> Mount:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    return Mount(["--config", str(path), "--bootstrap", str(bootstrap), "--log-level", "info", *extra],
                 tmp_path / "mnt", tmp_path / "rafs.log")


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_fs_prefetch_fills_the_cache_without_reads(built, tmp_path, version):
    source, bootstrap, blob_dir = built
    (blob_id,) = os.listdir(blob_dir)
    work_dir = tmp_path / "cache"
    if version == "v1":
        config = guide_config(blob_dir, work_dir)
        config["fs_prefetch"] = {"enable": True, "threads_count": 2, "merging_size": 0x80000,
                                 "prefetch_all": True}
    else:
        config = {"version": 2, "backend": {"type": "localfs", "localfs": {"dir": str(blob_dir)}},
                  "cache": {"type": "blobcache", "filecache": {"work_dir": str(work_dir)}},
                  "rafs": {"mode": "direct", "prefetch": {"enable": True, "threads": 2, "prefetch_all": True}}}
    every = _chunks(bootstrap, blob_dir)
    assert len(every) > 10
    mount = _mount(tmp_path, bootstrap, config)
    try:
        ready = _wait_for(work_dir, blob_id, every)
        assert every <= ready, f"{len(ready)} of {len(every)} chunks prefetched:\n{mount.log_text()}"
        assert "prefetch started: the whole image" in mount.log_text()
        # and the mount serves the tree from that cache
        assert diff_r(source, mount.path) == []
    finally:
        mount.close()


def test_no_prefetch_without_asking(built, tmp_path):
    _, bootstrap, blob_dir = built
    (blob_id,) = os.listdir(blob_dir)
    mount = _mount(tmp_path, bootstrap, guide_config(blob_dir, tmp_path / "cache"))
    try:
        time.sleep(1)
        assert not _bits(tmp_path / "cache", blob_id)
        assert "prefetch started" not in mount.log_text()
    finally:
        mount.close()


def test_prefetch_files_fetches_only_the_listed_paths(built, tmp_path):
    _, bootstrap, blob_dir = built
    (blob_id,) = os.listdir(blob_dir)
    work_dir = tmp_path / "cache"
    listing = tmp_path / "prefetch.list"
    listing.write_bytes(b"/app/big\n\n/app/lib/mod2.so\n/not/there\n")
    wanted = _chunks(bootstrap, blob_dir, "/app/big") | _chunks(bootstrap, blob_dir, "/app/lib/mod2.so")
    untouched = _chunks(bootstrap, blob_dir, "/other") | _chunks(bootstrap, blob_dir, "/app/lib/mod0.so")
    mount = _mount(tmp_path, bootstrap, guide_config(blob_dir, work_dir), "--prefetch-files", str(listing))
    try:
        ready = _wait_for(work_dir, blob_id, wanted)
        assert wanted <= ready, mount.log_text()
        assert not ready & untouched, sorted(ready & untouched)
        assert "prefetch started: 2 paths from --prefetch-files" in mount.log_text()
        assert "/not/there" in mount.log_text()           # the missing path is named, not fatal
    finally:
        mount.close()


def test_prefetch_files_unreadable_list_is_a_clear_error(built, tmp_path):
    _, bootstrap, blob_dir = built
    import subprocess
    import sys
    config = tmp_path / "config.json"
    config.write_text(json.dumps(guide_config(blob_dir, tmp_path / "cache")))
    (tmp_path / "mnt").mkdir()
    result = subprocess.run([sys.executable, "-m", "rafs", "mount", "--config", str(config), "--bootstrap",
                             str(bootstrap), "--mountpoint", str(tmp_path / "mnt"), "--prefetch-files",
                             str(tmp_path / "missing.list")], capture_output=True, text=True, timeout=60,
                            env={**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(__file__))})
    assert result.returncode != 0
    assert "--prefetch-files" in result.stderr and "No such file" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
