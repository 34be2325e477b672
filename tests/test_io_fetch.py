"""Lazy reads: only the chunks asked for, adjacent ones merged up to a bound, never twice at once."""

from __future__ import annotations

import threading
import time

import pytest

import rafs
from rafs.image import Image, detect_reader
from rafs.io.blobs import BlobLocator
from rafs.io.fetch import ChunkFetcher, merge_ranges
from rafs.io.source import LocalRangeReader, load_bytes
from rafs.model import Chunk

BUSYBOX = "/normal-file-test/busybox/1f777dbdd68d1c4d554bc0d20e027bfef9ed2dfe2d8d5f029e958552a0e12475"
LAYER_TAR = BUSYBOX + "/layer.tar"       # two adjacent chunks: 1 MiB + 367104 bytes
GROUP = BUSYBOX + "/etc/group"           # one chunk of 307 bytes


class CountingReader:
    """A RangeReader that records every range asked for, optionally slowly."""

    def __init__(self, inner, delay: float = 0.0):
        self.inner = inner
        self.size = inner.size
        self.delay = delay
        self.calls: list[tuple[int, int]] = []
        self._lock = threading.Lock()

    def read_range(self, offset: int, size: int) -> bytes:
        with self._lock:
            self.calls.append((offset, size))
        if self.delay:
            time.sleep(self.delay)
        return self.inner.read_range(offset, size)

    def close(self):
        self.inner.close()

    @property
    def bytes(self) -> int:
        return sum(size for _, size in self.calls)


def run_threads(count: int, target) -> tuple[list, list]:
    """Run ``target()`` in ``count`` threads released together: (results, exceptions)."""
    results, errors = [], []
    barrier = threading.Barrier(count)

    def worker():
        try:
            barrier.wait()
            results.append(target())
        except Exception as exc:  # noqa: BLE001 - reported to the caller
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return results, errors


def open_counted(v5_fixture, *, cache_dir=None, delay=0.0, merge_size=None, validate=False):
    bootstrap, blob_dir, _ = v5_fixture
    (blob_path,) = blob_dir.iterdir()
    counter = CountingReader(LocalRangeReader(blob_path), delay)
    locator = BlobLocator(blobs={blob_path.name: counter}, cache_dir=cache_dir)
    if merge_size:
        locator.merge_size = merge_size
    return Image(detect_reader(load_bytes(bootstrap)), locator, validate=validate), counter


def chunk(offset, size, index=0):
    return Chunk(digest=b"", blob_index=0, compressed_offset=offset, compressed_size=size,
                 uncompressed_offset=offset, uncompressed_size=size, file_offset=0, index=index)


def test_merge_ranges():
    chunks = [chunk(300, 100), chunk(0, 100), chunk(100, 100), chunk(200, 100), chunk(1000, 10)]
    assert [[c.compressed_offset for c in g] for g in merge_ranges(chunks, 300)] == [[0, 100, 200], [300], [1000]]
    assert [[c.compressed_offset for c in g] for g in merge_ranges(chunks, 10_000)] == [[0, 100, 200, 300], [1000]]
    # a gap is never bridged: bytes nobody asked for are not fetched
    assert [len(g) for g in merge_ranges([chunk(0, 100), chunk(101, 100)], 10_000)] == [1, 1]
    # a chunk larger than the bound still goes alone; overlapping ranges (shared data) merge
    assert [len(g) for g in merge_ranges([chunk(0, 500), chunk(500, 500)], 100)] == [1, 1]
    assert [len(g) for g in merge_ranges([chunk(0, 100), chunk(50, 100)], 150)] == [2]
    assert merge_ranges([], 10) == []


def test_reading_one_file_fetches_only_its_chunks(v5_fixture):
    image, counter = open_counted(v5_fixture)
    with image:
        assert len(image.read(GROUP)) == 307
        (c,) = image.chunks(GROUP)
        assert counter.calls == [(c.compressed_offset, 307)]
        assert len(image.read(BUSYBOX + "/VERSION")) == 3
        assert counter.bytes == 310 and len(counter.calls) == 2
        # a ranged pread of a big file touches only the chunk holding those bytes
        counter.calls.clear()
        with image.open(LAYER_TAR) as f:
            assert len(f.pread(10, 1_048_576 + 5)) == 10
        first, second = image.chunks(LAYER_TAR)
        assert counter.calls == [(second.compressed_offset, second.compressed_size)]


def test_adjacent_chunks_merge_up_to_the_bound(v5_fixture):
    first_second = None
    for merge_size, expected_requests in ((0x200000, 1), (0x100000, 2)):
        image, counter = open_counted(v5_fixture, merge_size=merge_size)
        with image:
            data = image.read(LAYER_TAR)
            first_second = image.chunks(LAYER_TAR)
        assert len(data) == 1415680
        assert len(counter.calls) == expected_requests, counter.calls
        assert counter.bytes == sum(c.compressed_size for c in first_second)


def test_the_same_data_shared_by_files_is_fetched_once(v5_fixture):
    image, counter = open_counted(v5_fixture)
    with image:
        # head-hole-1 refers to chunk 13 twice; head-hole-3 too
        image.read("/normal-file-test/holefiles/head-hole-1")
        assert [size for _, size in counter.calls].count(1048576) == 1


def test_concurrent_readers_do_not_fetch_a_chunk_twice(v5_fixture, tmp_path):
    for cache_dir in (None, tmp_path / "cache"):
        image, counter = open_counted(v5_fixture, cache_dir=cache_dir, delay=0.2)
        expected = rafs.open(v5_fixture[0], blob_dir=v5_fixture[1]).read(LAYER_TAR)
        results, errors = run_threads(6, lambda: image.read(LAYER_TAR))
        image.close()
        assert not errors and len(results) == 6 and all(r == expected for r in results)
        fetched = sorted(counter.calls)
        assert len(fetched) == len(set(fetched)), f"a range was fetched twice: {fetched}"
        first, second = rafs.open(v5_fixture[0], blob_dir=v5_fixture[1]).chunks(LAYER_TAR)
        assert counter.bytes == first.compressed_size + second.compressed_size


def test_failed_fetch_is_reported_to_every_waiter(v5_fixture):
    image, counter = open_counted(v5_fixture, delay=0.1)

    def broken(offset, size):
        time.sleep(0.1)
        raise rafs.errors.BackendError(f"injected failure at {offset}")

    counter.read_range = broken
    results, errors = run_threads(3, lambda: image.read(GROUP))
    assert results == [] and all(isinstance(e, rafs.errors.BackendError) for e in errors)
    assert len(errors) == 3


def test_fetcher_reads_in_given_order_with_duplicates(v5_fixture):
    bootstrap, blob_dir, _ = v5_fixture
    image = rafs.open(bootstrap, blob_dir=blob_dir)
    chunks = image.chunks("/normal-file-test/holefiles/head-hole-1")
    (blob_path,) = blob_dir.iterdir()
    fetcher = ChunkFetcher(image.blobs[0], CountingReader(LocalRangeReader(blob_path)), validate=True)
    datas = fetcher.read_many(chunks)
    assert [len(d) for d in datas] == [c.uncompressed_size for c in chunks]
    assert datas[0] == datas[1]
    assert fetcher.stats.requests == 2 and fetcher.read_many(chunks, keep=False) == []


@pytest.mark.parametrize("how", ["table", "all", "paths"])
def test_prefetch_fills_the_cache_so_reads_fetch_nothing(v5_fixture, tmp_path, how):
    image, counter = open_counted(v5_fixture, cache_dir=tmp_path)
    with image:
        if how == "paths":
            handle = image.prefetch([BUSYBOX + "/etc"], threads=2)
            assert handle.fetched == 4 and not handle.errors
            assert sum(size for _, size in counter.calls) == 307 + 127 + 340 + 243
            counter.calls.clear()
            image.read(GROUP)
            assert counter.calls == []
            return
        # the fixture has no prefetch table: nothing to do unless everything is asked for
        handle = image.prefetch(all=how == "all", threads=3, batch_size=0x80000, wait=False)
        assert handle.wait(30)
        if how == "table":
            assert handle.fetched == 0 and counter.calls == []
            return
        assert handle.fetched == 23 and not handle.errors
        assert max(size for _, size in counter.calls) <= 0x100000      # merged up to batch_size or one chunk
        counter.calls.clear()
        for path, inode in image.iter_entries():
            if inode.is_reg:
                image.read(path)
        assert counter.calls == []
        # prefetching again finds everything cached
        assert image.prefetch(all=True).fetched == 0


def test_prefetch_without_cache_does_nothing(v5_fixture):
    image, counter = open_counted(v5_fixture)
    with image:
        assert image.prefetch(all=True).fetched == 0 and counter.calls == []


def test_prefetch_bandwidth_limit(v5_fixture, tmp_path):
    image, counter = open_counted(v5_fixture, cache_dir=tmp_path)
    with image:
        image.chunk_reader(0).bandwidth_limit = 4_000_000             # bytes per second
        start = time.monotonic()
        handle = image.prefetch(all=True, threads=4)
        elapsed = time.monotonic() - start
    assert handle.fetched == 23 and handle.bandwidth_limit == 4_000_000
    # 3.5 MB at 4 MB/s: the last request may start only after ~0.6 s of budget
    assert elapsed >= 0.5, elapsed
