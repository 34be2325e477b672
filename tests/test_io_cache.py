"""The nydusd blob cache: file layout byte for byte, crash safety, validation, sharing between processes."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import signal
import struct
import subprocess
import sys
import time

import pytest

import rafs
from rafs.image import Image, detect_reader
from rafs.io.blobs import BlobLocator
from rafs.io.cache import BlobCache
from rafs.io.chunkmap import DigestChunkMap, PersistChunkMap
from rafs.io.layout import CHUNK_MAP_ALL_READY, CHUNK_MAP_MAGIC, CHUNK_MAP_MAGIC2
from rafs.io.source import LocalRangeReader, load_bytes

from test_io_fetch import BUSYBOX, GROUP, LAYER_TAR, CountingReader, open_counted

BLOB_ID = "7334a2594e133cf8ae364189c2276b090fc490c627bcc3fb1077f0419a538e00"


def cache_files(cache_dir):
    base = os.path.join(cache_dir, BLOB_ID)
    return base + ".blob.data", base + ".blob.data.chunk_map"


def ready_bits(map_path, count=23) -> set[int]:
    raw = open(map_path, "rb").read()
    return {i for i in range(count) if raw[4096 + (i >> 3)] & (0x80 >> (i & 7))}


def reference(v5_fixture):
    return rafs.open(v5_fixture[0], blob_dir=v5_fixture[1])


def test_layout_matches_nydusd(v5_fixture, tmp_path):
    image, counter = open_counted(v5_fixture, cache_dir=tmp_path)
    with image:
        image.read(GROUP)
        image.read(LAYER_TAR)
        blob = image.blobs[0]
        wanted = image.chunks(GROUP) + image.chunks(LAYER_TAR)
    data_path, map_path = cache_files(tmp_path)
    assert sorted(os.listdir(tmp_path)) == sorted(os.path.basename(p) for p in (data_path, map_path))
    assert os.path.getsize(data_path) == blob.uncompressed_size
    raw = open(map_path, "rb").read()
    assert len(raw) == 4096 + (23 + 7) // 8
    assert struct.unpack_from("<4I", raw) == (CHUNK_MAP_MAGIC, 1, CHUNK_MAP_MAGIC2, 0)
    assert raw[16:4096] == bytes(4080)
    assert ready_bits(map_path) == {c.index for c in wanted} == {6, 7, 8}
    assert raw[4096:] == bytes([0b0000_0011, 0b1000_0000, 0])     # MSB first: 6, 7 then 8
    ref = reference(v5_fixture)
    content = open(data_path, "rb").read()
    for c in wanted:
        expected = ref.read_chunks([c])[0]
        assert content[c.uncompressed_offset:c.uncompressed_offset + c.uncompressed_size] == expected
    # a chunk never read is still a hole
    (version,) = ref.chunks(BUSYBOX + "/VERSION")
    assert content[version.uncompressed_offset:version.uncompressed_offset + 3] == b"\0\0\0"


def test_all_ready_flag_and_reuse(v5_fixture, tmp_path):
    image, counter = open_counted(v5_fixture, cache_dir=tmp_path)
    with image:
        files = [p for p, i in image.iter_entries() if i.is_reg]
        for path in files:
            image.read(path)
    data_path, map_path = cache_files(tmp_path)
    assert struct.unpack_from("<I", open(map_path, "rb").read(), 12)[0] == CHUNK_MAP_ALL_READY
    assert ready_bits(map_path) == set(range(23))
    again, counter = open_counted(v5_fixture, cache_dir=tmp_path, validate=True)
    ref = reference(v5_fixture)
    with again:
        for path in files:
            assert again.read(path) == ref.read(path)
    assert counter.calls == []


def test_cache_written_by_nydusd_is_used(v5_fixture, tmp_path):
    """A chunk map and data file laid out as nydusd writes them: ready chunks come from the cache."""
    ref = reference(v5_fixture)
    (group,) = ref.chunks(GROUP)
    data_path, map_path = cache_files(tmp_path)
    with open(data_path, "wb") as f:
        f.truncate(ref.blobs[0].uncompressed_size)
        f.seek(group.uncompressed_offset)
        f.write(b"X" * group.uncompressed_size)          # visibly not the backend's bytes
    bitmap = bytearray(3)
    bitmap[group.index >> 3] |= 0x80 >> (group.index & 7)
    with open(map_path, "wb") as f:
        f.write(struct.pack("<4I", CHUNK_MAP_MAGIC, 1, CHUNK_MAP_MAGIC2, 0) + bytes(4080) + bytes(bitmap))
    image, counter = open_counted(v5_fixture, cache_dir=tmp_path)
    with image:
        assert image.read(GROUP) == b"X" * 307 and counter.calls == []
        assert image.read(BUSYBOX + "/VERSION") == ref.read(BUSYBOX + "/VERSION")
    # nydusd trusts all_ready alone
    with open(map_path, "r+b") as f:
        f.seek(12)
        f.write(struct.pack("<I", CHUNK_MAP_ALL_READY))
    image, counter = open_counted(v5_fixture, cache_dir=tmp_path)
    with image:
        image.read(BUSYBOX + "/etc/passwd")
        assert counter.calls == []


def test_corrupt_cached_chunk_is_refetched_when_validating(v5_fixture, tmp_path):
    image, _ = open_counted(v5_fixture, cache_dir=tmp_path)
    with image:
        good = image.read(GROUP)
        (group,) = image.chunks(GROUP)
    data_path, map_path = cache_files(tmp_path)
    with open(data_path, "r+b") as f:
        f.seek(group.uncompressed_offset + 10)
        f.write(b"corrupted!")
    image, counter = open_counted(v5_fixture, cache_dir=tmp_path, validate=True)
    with image:
        assert image.read(GROUP) == good
        assert counter.calls == [(group.compressed_offset, group.compressed_size)]
        assert image.chunk_reader(0).stats.refetched_corrupt == 1
    with open(data_path, "rb") as f:
        f.seek(group.uncompressed_offset)
        assert f.read(group.uncompressed_size) == good       # the cache was repaired


def test_chunk_map_of_the_wrong_size_is_discarded(tmp_path):
    path = str(tmp_path / "x.blob.data.chunk_map")
    with open(path, "wb") as f:
        f.write(b"\xff" * 5000)
    chunk_map = PersistChunkMap(path, 23)
    assert chunk_map.ready_indexes() == [] and os.path.getsize(path) == 4099
    chunk_map.close()
    with open(path, "r+b") as f:
        f.write(b"JUNK")
    with pytest.raises(rafs.RafsError):
        PersistChunkMap(path, 23)


def test_blob_without_chunk_count_keeps_readiness_in_memory(v5_fixture, tmp_path):
    """v5 without an extended blob table: nydusd's digest map, no .chunk_map file."""
    ref = reference(v5_fixture)
    blob = dataclasses.replace(ref.blobs[0], chunk_count=0, uncompressed_size=0)
    cache = BlobCache(tmp_path, blob)
    assert isinstance(cache.chunk_map, DigestChunkMap)
    (group,) = ref.chunks(GROUP)
    assert cache.read(group) is None
    cache.store([(group, ref.read(GROUP))])
    assert cache.read(group) == ref.read(GROUP)
    cache.close()
    assert sorted(os.listdir(tmp_path)) == [BLOB_ID + ".blob.data"]
    assert BlobCache(tmp_path, blob).read(group) is None       # nothing persisted about readiness


def test_blob_id_cannot_escape_the_cache_dir(v5_fixture, tmp_path):
    blob = dataclasses.replace(reference(v5_fixture).blobs[0], blob_id="../evil")
    with pytest.raises(rafs.InvalidArgumentError):
        BlobCache(tmp_path / "cache", blob)


CHILD = r"""
import os, sys, time
from rafs.image import Image, detect_reader
from rafs.io.blobs import BlobLocator
from rafs.io.source import LocalRangeReader, load_bytes
bootstrap, blob, cache, delay, order = sys.argv[1:6]

class Slow(LocalRangeReader):
    def read_range(self, offset, size):
        time.sleep(float(delay))
        return super().read_range(offset, size)

locator = BlobLocator(blobs={os.path.basename(blob): Slow(blob)}, cache_dir=cache)
locator.merge_size = 4096
image = Image(detect_reader(load_bytes(bootstrap)), locator)
files = [p for p, i in image.iter_entries() if i.is_reg]
for path in (reversed(files) if order == "reverse" else files):
    image.read(path)
print("done", flush=True)
"""


def spawn(v5_fixture, cache_dir, *, delay, order="forward"):
    bootstrap, blob_dir, _ = v5_fixture
    (blob,) = blob_dir.iterdir()
    return subprocess.Popen([sys.executable, "-c", CHILD, str(bootstrap), str(blob), str(cache_dir), str(delay),
                             order], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def check_every_file(v5_fixture, cache_dir):
    """Reopen the cache with validation: every file is right, and so is every chunk marked ready."""
    ref = reference(v5_fixture)
    image, counter = open_counted(v5_fixture, cache_dir=cache_dir, validate=True)
    data_path, map_path = cache_files(cache_dir)
    ready = ready_bits(map_path)
    content = open(data_path, "rb").read()
    chunks = {c.index: c for _, i in ref.iter_entries() if i.is_reg for c in ref.reader.chunks(i.ino)}
    for index in ready:
        c = chunks[index]
        piece = content[c.uncompressed_offset:c.uncompressed_offset + c.uncompressed_size]
        assert hashlib.sha256(piece).digest() == c.digest, f"chunk {index} marked ready with wrong data"
    with image:
        for path, inode in ref.iter_entries():
            if inode.is_reg:
                assert image.read(path) == ref.read(path), path
        assert image.chunk_reader(0).stats.refetched_corrupt == 0
    return ready, counter


def test_cache_survives_a_reader_killed_while_filling_it(v5_fixture, tmp_path):
    child = spawn(v5_fixture, tmp_path, delay=0.08)
    _, map_path = cache_files(tmp_path)
    deadline = time.monotonic() + 30
    try:
        while time.monotonic() < deadline:
            if os.path.exists(map_path) and os.path.getsize(map_path) == 4099 and len(ready_bits(map_path)) >= 3:
                break
            assert child.poll() is None, f"child ended early: {child.communicate()}"
            time.sleep(0.01)
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.wait(10)
    assert child.returncode == -signal.SIGKILL
    ready, counter = check_every_file(v5_fixture, tmp_path)
    assert 3 <= len(ready) < 23, "the kill should land in the middle of the fill"
    fetched = {offset for offset, _ in counter.calls}
    ref = reference(v5_fixture)
    ready_offsets = {c.compressed_offset for _, i in ref.iter_entries() if i.is_reg
                     for c in ref.reader.chunks(i.ino) if c.index in ready}
    assert not fetched & ready_offsets, "chunks already in the cache were fetched again"
    assert ready_bits(map_path) == set(range(23))


def test_processes_share_one_cache_directory(v5_fixture, tmp_path):
    children = [spawn(v5_fixture, tmp_path, delay=0.01, order=order) for order in ("forward", "reverse")]
    for child in children:
        out, err = child.communicate(timeout=60)
        assert child.returncode == 0 and out.strip() == "done", err
    ready, counter = check_every_file(v5_fixture, tmp_path)
    assert ready == set(range(23)) and counter.calls == []
    _, map_path = cache_files(tmp_path)
    assert struct.unpack_from("<I", open(map_path, "rb").read(), 12)[0] == CHUNK_MAP_ALL_READY


def test_read_only_cache_still_serves_data(v5_fixture, tmp_path):
    """A cache that cannot be written must not break reads (the data comes from the backend)."""
    bootstrap, blob_dir, _ = v5_fixture
    (blob_path,) = blob_dir.iterdir()
    locator = BlobLocator(blobs={BLOB_ID: CountingReader(LocalRangeReader(blob_path))}, cache_dir=tmp_path)
    image = Image(detect_reader(load_bytes(bootstrap)), locator)
    cache = image.chunk_reader(0).cache
    os.close(cache._fd)
    cache._fd = os.open(cache.data_path, os.O_RDONLY)          # writes now fail with EBADF
    assert image.read(GROUP) == reference(v5_fixture).read(GROUP)
    assert ready_bits(cache_files(tmp_path)[1]) == set()
    image.close()


def test_hostile_blob_sizes_do_not_break_the_cache(v5_fixture, tmp_path):
    ref = reference(v5_fixture)
    blob = dataclasses.replace(ref.blobs[0], uncompressed_size=1 << 62, chunk_count=1 << 30)
    cache = BlobCache(tmp_path, blob)
    assert isinstance(cache.chunk_map, DigestChunkMap)             # no 128 MiB bitmap for a lie
    (group,) = ref.chunks(GROUP)
    cache.store([(group, ref.read(GROUP))])
    assert cache.read(group) == ref.read(GROUP)
    far = dataclasses.replace(group, uncompressed_offset=1 << 62)
    cache.store([(far, ref.read(GROUP))])                          # EFBIG: logged, not raised
    assert cache.read(far) in (None, ref.read(GROUP))
    cache.close()
