"""Background prefetch into the blob cache, the way nydusd's ``fs_prefetch`` does it.

The caller (``Image.prefetch``) turns files into chunk lists per blob; this module fetches them with a
bounded pool of workers, each request merging adjacent chunks up to ``batch_size`` bytes (with
``grow_ranges``, more, up to ``LARGE_RANGE``, when there is enough to give every worker such a range),
and lets the
caller wait for it, cancel it, or ignore it. Chunks already cached are not fetched again, and chunks
that a reader is fetching at the same time are not fetched twice (:class:`~rafs.io.fetch.ChunkFetcher`).
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from ..progress import Progress, Ticker
from ..limits import DEFAULT_MERGE_SIZE
from .fetch import merge_ranges

log = logging.getLogger(__name__)

# The largest merged request of a prefetch: few enough requests for a whole image, while what the
# workers hold at once (a range and its decoded chunks each) stays modest.
LARGE_RANGE = 8 << 20


class Prefetch:
    """A prefetch of ``work`` = [(ChunkFetcher, chunks)] with ``threads`` workers."""

    def __init__(self, work, *, threads: int = 8, batch_size: int = DEFAULT_MERGE_SIZE, bandwidth_limit: int = 0,
                 grow_ranges: bool = False, progress: Progress | None = None):
        self.work = [(fetcher, chunks) for fetcher, chunks in work if getattr(fetcher, "cache", None) is not None]
        self.threads = max(1, threads)
        self.batch_size = max(1, batch_size)
        # ranges may grow past batch_size, up to LARGE_RANGE (see range_size)
        self.grow_ranges = grow_ranges
        # bytes per second over all workers, 0 = unlimited (nydusd's bandwidth_rate / bandwidth_limit)
        # (when not given: what the blobs' locator was configured with, fs_prefetch.bandwidth_rate)
        self.bandwidth_limit = max(0, bandwidth_limit or max(
            (getattr(fetcher, "bandwidth_limit", 0) for fetcher, _ in self.work), default=0))
        self._budget_start = None
        self._budget_bytes = 0
        self.fetched = 0                 # chunks fetched from the backend by this prefetch
        self.total = 0                   # merged requests planned, and done so far (progress)
        self.requests_done = 0
        self.errors: list[BaseException] = []
        self._stop = threading.Event()
        self._done = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._ticker = Ticker(progress)     # bytes (compressed) fetched, against those planned

    def start(self) -> "Prefetch":
        if not self.work:
            self._done.set()
            return self
        self._thread = threading.Thread(target=self._run, name="rafs-prefetch", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            started = time.monotonic()
            tasks = []
            for fetcher, chunks in self.work:
                todo = [c for c in chunks if not fetcher.cache.is_ready(c)]
                size = self.range_size(sum(c.compressed_size for c in todo))
                tasks.extend((fetcher, group, size) for group in merge_ranges(todo, size))
            self.total = len(tasks)
            self._ticker.total = sum(c.compressed_size for _, group, _ in tasks for c in group)
            self._ticker.start()
            log.debug("prefetch: %d chunks to fetch in %d requests from %d blobs, %d threads",
                      sum(len(g) for _, g, _ in tasks), len(tasks), len(self.work), self.threads)
            with ThreadPoolExecutor(max_workers=self.threads, thread_name_prefix="rafs-prefetch") as pool:
                for future in [pool.submit(self._fetch, *task) for task in tasks]:
                    future.result()
            self._flush()
            self._ticker.finish()              # 100% once the chunk maps say so too
            log.debug("prefetch: done, %d chunks fetched in %.2f s, %d failed requests%s", self.fetched,
                      time.monotonic() - started, len(self.errors), " (cancelled)" if self._stop.is_set() else "")
        except BaseException as exc:  # noqa: BLE001 - reported through wait()
            self.errors.append(exc)
        finally:
            self._flush()                      # what was fetched is in the chunk maps when wait() returns
            self._done.set()

    def _flush(self) -> None:
        for fetcher, _ in self.work:
            fetcher.cache.flush()

    def _throttle(self, size: int) -> None:
        """Sleep so that the bytes fetched so far stay within ``bandwidth_limit`` per second."""
        if not self.bandwidth_limit:
            return
        with self._lock:
            now = time.monotonic()
            if self._budget_start is None:
                self._budget_start = now
            self._budget_bytes += size
            due = self._budget_start + self._budget_bytes / self.bandwidth_limit
        while not self._stop.is_set() and time.monotonic() < due:
            self._stop.wait(min(0.5, due - time.monotonic()))

    def range_size(self, todo_bytes: int) -> int:
        """The largest request for ``todo_bytes`` of a blob: ``batch_size``, grown (up to
        :data:`LARGE_RANGE`) while every worker still gets a range of its own. A whole image then
        comes in a few large ranges, which a remote store serves far faster than many small ones.
        Without ``grow_ranges``: ``batch_size``."""
        if not self.grow_ranges:
            return self.batch_size
        return max(self.batch_size, min(LARGE_RANGE, -(-todo_bytes // self.threads)))

    def _fetch(self, fetcher, group, size: int) -> None:
        if self._stop.is_set():
            return
        nbytes = sum(c.compressed_size for c in group)
        self._throttle(nbytes)
        if self._stop.is_set():
            return
        try:
            fetcher.read_many(group, keep=False, merge_size=size)
        except Exception as exc:  # noqa: BLE001 - one failed range must not stop the others
            log.warning("prefetch of blob %s failed: %s", fetcher.blob.blob_id, exc)
            with self._lock:
                self.errors.append(exc)
            return
        with self._lock:
            self.fetched += len(group)
            self.requests_done += 1
            done = self.requests_done
        self._ticker.advance(nbytes)
        log.debug("prefetch: %d/%d requests done (blob %s, %d chunks)", done, self.total, fetcher.blob.blob_id,
                  len(group))

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the prefetch ends (or ``timeout``); True when it has ended."""
        return self._done.wait(timeout)

    def cancel(self) -> None:
        """Stop issuing new requests; those under way finish."""
        self._stop.set()
