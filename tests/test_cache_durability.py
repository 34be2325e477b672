"""The blob cache without a sync per chunk (issue 14): bits reach the chunk map only after one batched
``fdatasync`` of the data, so a process killed while filling a cache never leaves a chunk marked ready
with wrong data; and a warm cache needs no backend, through FUSE (``rafs mount``) and on-demand EROFS,
with the localfs directory removed or the S3 endpoint gone.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

import rafs
from rafs.io import cache as cache_module
from rafs.io import chunkmap as chunkmap_module
from rafs.io.cache import BlobCache
from s3server import S3Proxy, moto_server, s3, s3_proxy  # noqa: F401  (pytest fixtures)
from test_fuse_support import Mount, diff_r, guide_config, need_fuse
from test_io_cache import cache_files, check_every_file, ready_bits, reference
from test_io_fetch import GROUP, open_counted

# -- no sync per chunk, bits after the data -----------------------------------------------------------


def _trace(monkeypatch, cache):
    """Record every pwrite and fdatasync on the cache's two files, in order."""
    events = []
    names = {cache._fd: "data", cache.chunk_map._fd: "map"}
    real_pwrite, real_fdatasync = os.pwrite, os.fdatasync
    monkeypatch.setattr(os, "pwrite", lambda fd, data, off: events.append(("write", names.get(fd))) or
                        real_pwrite(fd, data, off))
    monkeypatch.setattr(os, "fdatasync", lambda fd: events.append(("sync", names.get(fd))) or real_fdatasync(fd))
    return events


def test_stores_cost_no_sync_and_bits_follow_one_data_sync(v5_fixture, tmp_path, monkeypatch):
    monkeypatch.setattr(cache_module, "FLUSH_SECONDS", 3600.0)      # only close flushes here
    ref = reference(v5_fixture)
    chunks = {c.index: c for _, i in ref.iter_entries() if i.is_reg for c in ref.reader.chunks(i.ino)}
    cache = BlobCache(tmp_path, ref.blobs[0])
    events = _trace(monkeypatch, cache)
    for chunk in chunks.values():                  # one store per chunk, as FUSE reads do
        cache.store([(chunk, ref.read_chunks([chunk])[0])])
    assert events == [("write", "data")] * len(chunks), "a store must not sync"
    _, map_path = cache_files(tmp_path)
    assert ready_bits(map_path) == set(), "no bit before its data is durable"
    for chunk in chunks.values():                  # ready for this process at once (page cache)
        assert cache.read(chunk) == ref.read_chunks([chunk])[0]
    del events[:]
    cache.close()
    monkeypatch.undo()
    # the map is written after the one data sync and never synced itself
    assert events[0] == ("sync", "data") and set(events[1:]) == {("write", "map")}, events
    assert ready_bits(map_path) == set(chunks)


def _store_one_and_wait_for_its_bit(ref, cache_dir) -> BlobCache:
    """A cache (left open) that stored one chunk, once the flusher has written that chunk's bit."""
    (group,) = ref.chunks(GROUP)
    cache = BlobCache(cache_dir, ref.blobs[0])
    cache.store([(group, ref.read(GROUP))])
    _, map_path = cache_files(cache_dir)
    deadline = time.monotonic() + 10
    while ready_bits(map_path) != {group.index}:
        if time.monotonic() > deadline:
            cache.close()
            raise AssertionError("the flusher never wrote the bit")
        time.sleep(0.02)
    return cache


def test_the_flusher_writes_bits_without_a_close(v5_fixture, tmp_path, monkeypatch):
    """Another user of the cache (a process) sees what this one cached within FLUSH_SECONDS, with
    the cache still open."""
    monkeypatch.setattr(cache_module, "FLUSH_SECONDS", 0.05)
    ref = reference(v5_fixture)
    (group,) = ref.chunks(GROUP)
    cache = _store_one_and_wait_for_its_bit(ref, tmp_path)
    try:
        other = BlobCache(tmp_path, ref.blobs[0])
        assert other.read(group) == ref.read(GROUP)
        other.close()
    finally:
        cache.close()


def test_flush_bytes_makes_the_flusher_run_at_once(v5_fixture, tmp_path, monkeypatch):
    monkeypatch.setattr(cache_module, "FLUSH_SECONDS", 3600.0)
    monkeypatch.setattr(cache_module, "FLUSH_BYTES", 1)
    _store_one_and_wait_for_its_bit(reference(v5_fixture), tmp_path).close()


def test_a_failed_sync_writes_no_bit(v5_fixture, tmp_path, monkeypatch):
    ref = reference(v5_fixture)
    (group,) = ref.chunks(GROUP)
    cache = BlobCache(tmp_path, ref.blobs[0])
    cache.store([(group, ref.read(GROUP))])

    def broken(fd):
        raise OSError(5, "Input/output error")
    monkeypatch.setattr(os, "fdatasync", broken)
    cache.close()
    monkeypatch.undo()
    assert ready_bits(cache_files(tmp_path)[1]) == set()


# -- kill -9 while filling ----------------------------------------------------------------------------

FILLER = r"""
import os, sys, time
import rafs.io.cache
from rafs.image import Image, detect_reader
from rafs.io.blobs import BlobLocator
from rafs.io.source import LocalRangeReader, load_bytes
bootstrap, blob, cache, flush_seconds = sys.argv[1:5]
rafs.io.cache.FLUSH_SECONDS = float(flush_seconds)

class Slow(LocalRangeReader):
    def read_range(self, offset, size):
        time.sleep(0.05)
        return super().read_range(offset, size)

locator = BlobLocator(blobs={os.path.basename(blob): Slow(blob)}, cache_dir=cache)
locator.merge_size = 4096
image = Image(detect_reader(load_bytes(bootstrap)), locator)
for i, path in enumerate(p for p, inode in image.iter_entries() if inode.is_reg):
    image.read(path)
    print(i, flush=True)
time.sleep(3600)
"""


def _fill_and_kill(v5_fixture, cache_dir, *, flush_seconds: float, after_files: int) -> None:
    bootstrap, blob_dir, _ = v5_fixture
    (blob,) = blob_dir.iterdir()
    child = subprocess.Popen([sys.executable, "-c", FILLER, str(bootstrap), str(blob), str(cache_dir),
                              str(flush_seconds)], stdout=subprocess.PIPE, text=True)
    try:
        for _ in range(after_files):
            assert child.stdout.readline(), "the filler ended early"
        if flush_seconds < 1:
            time.sleep(flush_seconds * 4)           # let the flusher write some bits
        child.send_signal(signal.SIGKILL)
    finally:
        child.wait(10)
        child.stdout.close()
    assert child.returncode == -signal.SIGKILL


@pytest.mark.parametrize("flush_seconds", [0.05, 3600.0], ids=["after-flushes", "before-any-flush"])
def test_kill_9_while_filling_then_every_file_reads_correctly(v5_fixture, tmp_path, flush_seconds):
    _fill_and_kill(v5_fixture, tmp_path, flush_seconds=flush_seconds, after_files=6)
    data_path, map_path = cache_files(tmp_path)
    written = ready_bits(map_path)
    if flush_seconds > 1:
        # data was written (the page cache keeps it) but no bit: nothing is trusted without its sync
        assert written == set()
        assert any(open(data_path, "rb").read())
    else:
        assert 0 < len(written) < 23, "the kill should land in the middle of the fill"
    before, counter = check_every_file(v5_fixture, tmp_path)     # also: every set bit has right data
    assert before == written
    assert ready_bits(map_path) == set(range(23))


def test_corrupt_chunk_behind_a_set_bit_is_refetched_not_served(v5_fixture, tmp_path):
    """After a kill, what the disk holds behind a set bit is checked when validation is on (the
    guide's digest_validate): a chunk damaged there is fetched again and repaired."""
    _fill_and_kill(v5_fixture, tmp_path, flush_seconds=0.05, after_files=6)
    data_path, map_path = cache_files(tmp_path)
    ref = reference(v5_fixture)
    chunks = {c.index: c for _, i in ref.iter_entries() if i.is_reg for c in ref.reader.chunks(i.ino)}
    victim = chunks[min(ready_bits(map_path))]
    good = ref.read_chunks([victim])[0]
    with open(data_path, "r+b") as f:
        f.seek(victim.uncompressed_offset)
        f.write(bytes(b ^ 0xFF for b in good[:16]))
    image, counter = open_counted(v5_fixture, cache_dir=tmp_path, validate=True)
    with image:
        for path, inode in ref.iter_entries():
            if inode.is_reg:
                assert image.read(path) == ref.read(path), path
        assert image.chunk_reader(0).stats.refetched_corrupt == 1
        assert (victim.compressed_offset, victim.compressed_size) in counter.calls
    with open(data_path, "rb") as f:
        f.seek(victim.uncompressed_offset)
        assert f.read(victim.uncompressed_size) == good


# -- FUSE: kill -9 mid-fill, two mounts sharing one cache, a warm cache without its backend -----------

def _tree(top) -> str:
    import random
    rng = random.Random(14)
    for d in range(6):
        os.makedirs(f"{top}/d{d}/sub")
        for i in range(25):
            size = rng.choice([1, 100, 5000, 70000, 300000])
            data = rng.randbytes(size) if i % 2 else (b"text %d " % i) * (size // 7 + 1)
            with open(f"{top}/d{d}/{'sub/' if i % 3 else ''}f{i}", "wb") as f:
                f.write(data[:size])
    with open(f"{top}/large", "wb") as f:
        f.write(rng.randbytes(3 * 1024 * 1024 + 5))
    return top


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """(source tree, bootstrap, blob dir) of a RAFS v6 zstd image."""
    root = tmp_path_factory.mktemp("durability")
    source = _tree(str(root / "src"))
    blobs = root / "blobs"
    blobs.mkdir()
    result = rafs.Builder(source, fs_version=6, compressor="zstd").write(bootstrap=root / "image.boot",
                                                                          blob_dir=blobs)
    return source, str(result.bootstrap), blobs


def _copy_blobs(built, tmp_path):
    blobs = tmp_path / "blobs"
    shutil.copytree(built[2], blobs)
    return blobs


def _fuse_mount(tmp_path, name, bootstrap, config: dict) -> Mount:
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(config))
    return Mount(["--config", str(path), "--bootstrap", bootstrap], tmp_path / name, tmp_path / f"{name}.log")


def _files(top) -> list[str]:
    return sorted(os.path.relpath(os.path.join(d, n), top) for d, _, names in os.walk(top) for n in names)


def _check_cache_bits(bootstrap, blobs, work):
    """Every chunk the chunk map calls ready holds the right bytes in the data file."""
    with rafs.open(bootstrap, blob_dir=blobs) as image:
        blob = image.blobs[0]
        data_path, map_path = (os.path.join(work, blob.blob_id + s) for s in (".blob.data", ".blob.data.chunk_map"))
        raw = open(map_path, "rb").read()[4096:]
        ready = {i for i in range(blob.chunk_count) if raw[i >> 3] & (0x80 >> (i & 7))}
        content = open(data_path, "rb").read()
        seen = set()
        for _, inode in image.iter_entries():
            if not inode.is_reg:
                continue
            for c in image.reader.chunks(inode.ino):
                if c.index in ready and c.index not in seen:
                    seen.add(c.index)
                    piece = content[c.uncompressed_offset:c.uncompressed_offset + c.uncompressed_size]
                    assert piece == image.read_chunks([c])[0], f"chunk {c.index} ready with wrong data"
    return ready


def test_fuse_mount_killed_while_filling_then_a_new_mount_reads_everything(built, tmp_path):
    need_fuse()
    source, bootstrap, _ = built
    blobs = _copy_blobs(built, tmp_path)
    work = tmp_path / "cache"
    config = guide_config(blobs, work, enable_xattr=False)
    mount = _fuse_mount(tmp_path, "first", bootstrap, config)
    try:
        files = _files(source)
        for rel in files[:len(files) // 2]:
            assert (mount.path / rel).read_bytes() == open(os.path.join(source, rel), "rb").read()
        time.sleep(cache_module.FLUSH_SECONDS * 1.5)          # some bits flushed, later ones not
        for rel in files[len(files) // 2:]:
            (mount.path / rel).read_bytes()
        assert mount.signal(signal.SIGKILL) == -signal.SIGKILL
    finally:
        mount.close()
    ready = _check_cache_bits(bootstrap, blobs, work)
    assert ready, "the first half was flushed before the kill"
    mount = _fuse_mount(tmp_path, "second", bootstrap, config)
    try:
        assert diff_r(source, mount.path) == []
    finally:
        mount.close()
    _check_cache_bits(bootstrap, blobs, work)


def test_two_fuse_mounts_fill_one_cache_at_once(built, tmp_path):
    need_fuse()
    source, bootstrap, _ = built
    blobs = _copy_blobs(built, tmp_path)
    work = tmp_path / "cache"
    config = guide_config(blobs, work, enable_xattr=False)
    mounts = [_fuse_mount(tmp_path, name, bootstrap, config) for name in ("one", "two")]
    try:
        files = _files(source)
        readers = [subprocess.Popen([sys.executable, "-c",
                                     "import hashlib, sys\nfor p in sys.argv[1:]:\n"
                                     "    print(hashlib.sha256(open(p, 'rb').read()).hexdigest())",
                                     *[str(m.path / rel) for rel in order]], stdout=subprocess.PIPE, text=True)
                   for m, order in zip(mounts, (files, files[::-1]))]
        expected = {rel: hashlib.sha256(open(os.path.join(source, rel), "rb").read()).hexdigest() for rel in files}
        for reader, order in zip(readers, (files, files[::-1])):
            out, _ = reader.communicate(timeout=120)
            assert reader.returncode == 0
            assert out.split() == [expected[rel] for rel in order]
    finally:
        for m in mounts:
            m.close()
    assert len(_check_cache_bits(bootstrap, blobs, work)) > 0


def test_fuse_warm_cache_without_the_localfs_dir(built, tmp_path):
    """The guide's localfs + blobcache config: fill, unmount, remove the blob directory, mount again."""
    need_fuse()
    source, bootstrap, _ = built
    blobs = _copy_blobs(built, tmp_path)
    work = tmp_path / "cache"
    config = guide_config(blobs, work, enable_xattr=False)
    mount = _fuse_mount(tmp_path, "cold", bootstrap, config)
    try:
        assert diff_r(source, mount.path) == []
    finally:
        mount.close()
    shutil.rmtree(blobs)
    mount = _fuse_mount(tmp_path, "warm", bootstrap, config)
    try:
        assert diff_r(source, mount.path) == []
    finally:
        mount.close()
    assert "not found" not in mount.log.read_text(errors="replace")


def _s3_blob(s3, built):
    _, bootstrap, blobs = built
    (blob,) = os.listdir(blobs)
    s3.put(f"nydus-demo/blob/{blob}", (blobs / blob).read_bytes())
    return blob


def test_fuse_warm_cache_with_the_s3_endpoint_gone(s3, built, tmp_path):
    need_fuse()
    source, bootstrap, _ = built
    _s3_blob(s3, built)
    proxy = S3Proxy(s3.server.endpoint)            # this test's own endpoint, stopped below
    try:
        config = s3.nydusd_config(tmp_path / "cache", endpoint=proxy.endpoint)
        mount = _fuse_mount(tmp_path, "cold", bootstrap, config)
        try:
            assert diff_r(source, mount.path) == []
        finally:
            mount.close()
        assert proxy.requests_for("nydus-demo/blob/"), "the cold mount read from S3"
    finally:
        proxy.stop()
    mount = _fuse_mount(tmp_path, "warm", bootstrap, config)
    try:
        assert diff_r(source, mount.path) == []
    finally:
        mount.close()


def test_ondemand_warm_cache_with_the_s3_bucket_deleted_and_the_localfs_dir_gone(s3, built, tmp_path):
    from test_ondemand import need_ondemand, mount as ondemand_mount
    need_ondemand()
    source, bootstrap, _ = built
    blob = _s3_blob(s3, built)
    work = tmp_path / "cache"
    config = s3.nydusd_config(work)
    with rafs.open(bootstrap, config=config) as image:
        with ondemand_mount(image, tmp_path / "mnt", work) as served:
            assert diff_r(source, tmp_path / "mnt") == []
            assert served.fetched_chunks > 0
    s3.fs.rm(f"{s3.bucket}/nydus-demo/blob/{blob}")
    s3.fs.call_s3("delete_bucket", Bucket=s3.bucket)
    with rafs.open(bootstrap, config=config) as image:
        with ondemand_mount(image, tmp_path / "mnt", work) as served:
            assert diff_r(source, tmp_path / "mnt") == []
            assert served.fetched_chunks == 0
    # the same cache through a localfs config whose directory does not exist
    gone = guide_config(tmp_path / "no-such-dir", work)
    with rafs.open(bootstrap, config=gone) as image:
        with ondemand_mount(image, tmp_path / "mnt", work) as served:
            assert diff_r(source, tmp_path / "mnt") == []
            assert served.fetched_chunks == 0


def test_bits_another_user_wrote_are_learned_on_a_miss(v5_fixture, tmp_path, monkeypatch):
    """A miss looks at the file again (at most every PEEK_SECONDS): a chunk another process cached
    is then served from the cache; stray bits past the last chunk never count."""
    monkeypatch.setattr(chunkmap_module, "PEEK_SECONDS", 0.0)
    ref = reference(v5_fixture)
    (group,) = ref.chunks(GROUP)
    ours, theirs = BlobCache(tmp_path, ref.blobs[0]), BlobCache(tmp_path, ref.blobs[0])
    try:
        assert ours.read(group) is None
        theirs.store([(group, ref.read(GROUP))])
        theirs.flush()
        _, map_path = cache_files(tmp_path)
        with open(map_path, "r+b") as f:            # 23 chunks: the last byte's low bit is past the end
            f.seek(4096 + 2)
            last = f.read(1)[0]
            f.seek(4096 + 2)
            f.write(bytes([last | 1]))
        assert ours.read(group) == ref.read(GROUP)
        assert ours.chunk_map.ready_count == 1
    finally:
        ours.close()
        theirs.close()
