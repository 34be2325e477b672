"""Fetching chunks lazily: only the chunks asked for, adjacent ones merged into one ranged request.

:class:`ChunkFetcher` is a :class:`rafs.blob.reader.ChunkReader` that reads many chunks at once. It
serves what the blob cache already holds, merges the rest into ranged requests of at most
``merge_size`` bytes over runs of adjacent (or overlapping) compressed ranges, decodes and stores them
in the cache. Threads asking for a chunk that another thread is already fetching wait for that fetch
instead of issuing their own, so no chunk is fetched twice at the same time; except that a reader
never waits for a prefetch (whose ranges may be large): it fetches the chunks it needs itself.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from ..blob.reader import ChunkReader
from ..errors import DigestMismatchError
from ..limits import DEFAULT_MERGE_SIZE
from ..model import Blob, BlobFeatures, Chunk
from .cache import BlobCache
from .latency import BackendLatency
from .source import LocalRangeReader

log = logging.getLogger(__name__)


def chunk_key(chunk: Chunk) -> tuple[int, int, int, int]:
    """What identifies a chunk's bytes inside its blob, whatever file refers to it."""
    return (chunk.compressed_offset, chunk.compressed_size, chunk.uncompressed_offset, chunk.uncompressed_size)


def merge_ranges(chunks: list[Chunk], limit: int) -> list[list[Chunk]]:
    """Chunks in blob order, grouped into runs whose compressed ranges touch or overlap and span at
    most ``limit`` bytes (a single chunk larger than that still forms a group of its own).
    """
    groups: list[list[Chunk]] = []
    start = end = 0
    for chunk in sorted(chunks, key=lambda c: (c.compressed_offset, c.compressed_size)):
        c_start, c_end = chunk.compressed_offset, chunk.compressed_offset + chunk.compressed_size
        if groups and c_start <= end and max(end, c_end) - start <= limit:
            groups[-1].append(chunk)
            end = max(end, c_end)
        else:
            groups.append([chunk])
            start, end = c_start, c_end
    return groups


@dataclass
class FetchStats:
    """Counters of what a fetcher did: backend requests and bytes, chunks served from the cache."""

    requests: int = 0
    bytes: int = 0
    cache_hits: int = 0
    refetched_corrupt: int = 0
    # every backend request again, with failures and latencies: nydusd's BackendMetrics
    latency: BackendLatency = field(default_factory=BackendLatency, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, **counts) -> None:
        with self._lock:
            for name, value in counts.items():
                setattr(self, name, getattr(self, name) + value)


class _Pending:
    __slots__ = ("event", "data", "background")

    def __init__(self, background: bool = False):
        self.event = threading.Event()
        self.data: bytes | None = None
        self.background = background          # claimed by a prefetch, not by a reader


class ChunkFetcher(ChunkReader):
    """A ChunkReader with batch reads, range merging, in-flight de-duplication and an optional cache."""

    def __init__(self, blob: Blob, source, *, validate: bool = False, cache: BlobCache | None = None,
                 merge_size: int = DEFAULT_MERGE_SIZE, meta_opener=None):
        super().__init__(blob, source, validate=validate, meta_opener=meta_opener)
        self.cache = cache
        self.merge_size = max(1, merge_size)
        self.stats = FetchStats()
        self._lock = threading.Lock()
        self._inflight: dict[tuple, _Pending] = {}
        # a local blob file without a cache: nothing to share between threads and nothing to store, so
        # reads skip the in-flight bookkeeping (two threads reading one chunk each pread it)
        self._direct = cache is None and isinstance(source, LocalRangeReader)
        # a single chunk through the cache takes the short way (_read_one); batch members do not
        self._single = cache is not None and not int(blob.features) & int(BlobFeatures.BATCH)

    def read(self, chunk: Chunk, *, path: str | None = None) -> bytes:
        return self.read_many([chunk], path=path)[0]

    def is_cached(self, chunk: Chunk) -> bool:
        return self.cache is not None and self.cache.is_ready(chunk)

    def _cached(self, chunk: Chunk, path: str | None) -> bytes | None:
        if self.cache is None:
            return None
        data = self.cache.read(chunk)
        if data is None:
            return None
        if self.validate:
            try:
                self.verify(chunk, data, path=path)
            except DigestMismatchError as exc:
                log.warning("blob cache %s: corrupt chunk %d, fetching it again (%s)",
                            self.blob.blob_id, chunk.index, exc)
                self.stats.add(refetched_corrupt=1)
                return None
        self.stats.add(cache_hits=1)
        return data

    def read_many(self, chunks: list[Chunk], *, path: str | None = None, keep: bool = True,
                  merge_size: int | None = None) -> list[bytes]:
        """The uncompressed bytes of each chunk, in the order given (``keep=False``: only warm the
        cache and return an empty list).
        """
        chunks = self.resolve_many(chunks)      # batch members: the range of their batch
        if len(chunks) == 1 and keep and self._single:
            data = self._read_one(chunks[0], path)
            if data is not None:
                return [data]
        if self._direct:
            if not keep:
                return []
            if len(chunks) == 1:
                chunk = chunks[0]
                data = self.cached_member(chunk, path=path)
                if data is not None:
                    return [data]
                self.check_address(chunk)
                started = time.monotonic()
                raw = self._backend_read(chunk.compressed_offset, chunk.compressed_size, started)
                if log.isEnabledFor(logging.DEBUG):
                    self._log_fetch(chunk.compressed_offset, chunk.compressed_size, 1, started, path)
                self.stats.requests += 1            # counters of the direct path: no lock, best effort
                self.stats.bytes += chunk.compressed_size
                return [self.decode(chunk, raw, path=path)]
            results: dict[tuple, bytes] = {}
            unique = {chunk_key(c): c for c in chunks}
            self._fetch([(key, c, None) for key, c in unique.items()], results, path,
                        merge_size or self.merge_size)
            return [results[chunk_key(chunk)] for chunk in chunks]
        wanted: dict[tuple, Chunk] = {}
        for chunk in chunks:
            wanted.setdefault(chunk_key(chunk), chunk)
        results: dict[tuple, bytes] = {}
        missing = []
        looked = set()              # keys whose cached copy was absent or corrupt a moment ago
        for key, chunk in wanted.items():
            data = self._cached(chunk, path)
            if data is None:
                data = self.cached_member(chunk, path=path)
            if data is None:
                missing.append((key, chunk))
                if self.cache is not None and self.cache.is_ready(chunk):
                    looked.add(key)
            else:
                results[key] = data
        if self.cache is not None and log.isEnabledFor(logging.DEBUG):
            log.debug("blob %s: %d chunks from the cache, %d missing%s", self.blob.blob_id, len(results),
                      len(missing), f" ({path})" if path else "")
        mine, theirs, ahead = [], [], []
        with self._lock:
            for key, chunk in missing:
                pending = self._inflight.get(key)
                if pending is None:
                    pending = self._inflight[key] = _Pending(background=not keep)
                    mine.append((key, chunk, pending))
                elif keep and pending.background:
                    ahead.append((key, chunk, None))      # a reader does not queue behind a prefetch
                else:
                    theirs.append((key, chunk, pending))
        try:
            if mine and self.cache is not None:
                # a fetch that finished between our cache look-up and our claim already stored these
                still = []
                for key, chunk, pending in mine:
                    data = self._cached(chunk, path) if key not in looked and self.cache.is_ready(chunk) else None
                    if data is None:
                        still.append((key, chunk, pending))
                    else:
                        results[key] = pending.data = data
                fetch = still
            else:
                fetch = mine
            if fetch or ahead:
                self._fetch(fetch + ahead, results, path, merge_size or self.merge_size)
        finally:
            with self._lock:
                for key, _, pending in mine:
                    self._inflight.pop(key, None)
                    pending.event.set()        # waiters of a failed fetch see no data and try themselves
        for key, chunk, pending in theirs:
            pending.event.wait()
            data = pending.data
            if data is None:
                data = self.read_many([chunk], path=path)[0]
            results[key] = data
        if not keep:
            return []
        return [results[chunk_key(chunk)] for chunk in chunks]

    def _read_one(self, chunk: Chunk, path: str | None) -> bytes | None:
        """One chunk through the cache (most reads of a mount): what :meth:`read_many` does, without
        its grouping and merging. None when another thread is fetching the chunk (then read_many
        waits for it)."""
        data = self._cached(chunk, path)
        if data is not None:
            return data
        corrupt = self.cache.is_ready(chunk)         # ready, yet absent or corrupt a moment ago
        key = chunk_key(chunk)
        with self._lock:
            if key in self._inflight:
                return None
            pending = self._inflight[key] = _Pending()
        try:
            if not corrupt and self.cache.is_ready(chunk):     # stored by a fetch that ended since we looked
                data = self._cached(chunk, path)
            if data is None:
                self.check_address(chunk)
                started = time.monotonic()
                raw = self._backend_read(chunk.compressed_offset, chunk.compressed_size, started)
                if log.isEnabledFor(logging.DEBUG):
                    self._log_fetch(chunk.compressed_offset, chunk.compressed_size, 1, started, path)
                self.stats.add(requests=1, bytes=chunk.compressed_size)
                data = self.decode(chunk, raw, path=path)
                self.cache.store([(chunk, data)])
            pending.data = data
            return data
        finally:
            with self._lock:
                self._inflight.pop(key, None)
                pending.event.set()

    def _fetch(self, mine, results: dict, path: str | None, merge_size: int) -> None:
        pendings = {key: pending for key, _, pending in mine}
        for chunk in (c for _, c, _ in mine):
            self.check_address(chunk)
        for group in merge_ranges([c for _, c, _ in mine], merge_size):
            start = group[0].compressed_offset
            end = max(c.compressed_offset + c.compressed_size for c in group)
            started = time.monotonic()
            raw = self._backend_read(start, end - start, started)
            if log.isEnabledFor(logging.DEBUG):
                self._log_fetch(start, end - start, len(group), started, path)
            self.stats.add(requests=1, bytes=end - start)
            decoded = []
            for chunk in group:
                offset = chunk.compressed_offset - start
                data = self.decode(chunk, raw[offset:offset + chunk.compressed_size], path=path)
                decoded.append((chunk, data))
            if self.cache is not None:
                # ZRAN: the rest of each context just inflated goes into the cache too, as nydusd does
                self.cache.store(decoded + self._zran.siblings(decoded) if self._zran is not None else decoded)
            for chunk, data in decoded:
                key = chunk_key(chunk)
                results[key] = data
                pending = pendings[key]
                if pending is not None:
                    pending.data = data

    def _backend_read(self, offset: int, size: int, started: float) -> bytes:
        """One request to the blob's source, its latency (or failure) counted for the metrics API."""
        try:
            raw = self.source.read_range(offset, size)
        except BaseException:
            self.stats.latency.record(0, time.monotonic() - started, error=True)
            raise
        self.stats.latency.record(len(raw), time.monotonic() - started)
        return raw

    def _log_fetch(self, offset: int, size: int, chunks: int, started: float, path: str | None) -> None:
        log.debug("fetch blob %s range [%#x, %#x) %d bytes, %d chunk%s, %.1f ms from %s%s", self.blob.blob_id,
                  offset, offset + size, size, chunks, "" if chunks == 1 else "s",
                  (time.monotonic() - started) * 1000, getattr(self.source, "name", None) or
                  getattr(self.source, "path", None) or type(self.source).__name__,
                  f" for {path}" if path else "")

    def prefetch(self, chunks: list[Chunk], *, threads: int = 1, batch_size: int = DEFAULT_MERGE_SIZE,
                 stop: threading.Event | None = None) -> int:
        """Fetch into the cache every chunk not cached yet, ``threads`` requests at a time; returns the
        number of chunks that had to be fetched. Without a cache there is nowhere to keep them: no-op.
        """
        if self.cache is None:
            return 0
        todo = {chunk_key(c): c for c in self.resolve_many(chunks) if not self.cache.is_ready(c)}
        if not todo:
            return 0
        groups = merge_ranges(list(todo.values()), batch_size)

        def run(group):
            if stop is not None and stop.is_set():
                return
            self.read_many(group, keep=False, merge_size=batch_size)

        if threads <= 1:
            for group in groups:
                run(group)
        else:
            with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="rafs-prefetch") as pool:
                for future in [pool.submit(run, g) for g in groups]:
                    future.result()
        self.cache.flush()              # what was fetched is in the chunk map when prefetch returns
        return len(todo)

    def close(self) -> None:
        if self.cache is not None:
            self.cache.close()
