"""The nydusd-compatible blob cache (``blobcache`` / ``filecache``) in a ``work_dir``.

A cache warmed by rafs is read by nydusd and the other way round (layouts in :mod:`rafs.io.layout`):
decompressed chunks at their ``uncompressed_offset`` in ``<blob id>.blob.data``, readiness in the
``<blob id>.blob.data.chunk_map`` bitmap (:mod:`rafs.io.chunkmap`). Blobs without chunk counts (v5
without an extended blob table) or with ``disable_indexed_map`` keep readiness in memory, keyed by chunk
digest, as nydusd's ``DigestedChunkMap`` does.

Crash safety without a sync per chunk: a chunk's bit reaches the ``.chunk_map`` file only after its
data has reached the disk. :meth:`BlobCache.store` writes the data and marks the chunk ready in memory
(this process reads it back from the page cache at once); a background flusher then, at most every
:data:`FLUSH_SECONDS` or once :data:`FLUSH_BYTES` are waiting, and on close, runs one ``fdatasync`` of
the data file and only then writes the bits of everything that sync covered (the map itself is never
synced: a bit lost to a power cut only costs a refetch). So neither a killed process nor a power cut
ever leaves a bit on disk whose data is not there, and the file layout stays exactly nydusd's: no
marker, no header field. Other processes see a chunk as ready after the next flush; until then they
fetch it themselves. Several processes may share one directory: data writes are idempotent (the same
bytes at the same offset) and the read-modify-write of bitmap bytes happens under an ``fcntl`` record
lock on those bytes (plus a thread lock, since record locks are per process).

Hostile neighbours (:mod:`rafs.io.cachefiles`): files are opened relative to a descriptor of
``work_dir`` with ``O_NOFOLLOW`` and must be regular files (checked on the open descriptor), and a
missing file is created with ``O_CREAT | O_EXCL`` at its name, so a symlink, FIFO, device, directory or
hard link planted under a cache file's name is never followed or written through. Such a blob is read
without the cache (a warning says which file is in the way; rafs does not delete it, since another
process may be racing to do the same). ``.blob.meta`` is written whole under an exclusive temporary
name, then renamed into place.
"""

from __future__ import annotations

import atexit
import errno
import logging
import os
import threading
import time

from .. import tempfiles
from ..errors import RafsError
from ..model import MAX_CHUNKS_PER_BLOB, Blob, BlobFeatures, Chunk
from ..blob.ids import check_blob_id
from ..blob.layout import BLOB_CCT_HEADER_SIZE as CI_HEADER_SIZE
from .cachefiles import CacheError, open_cache_file, open_work_dir
from .chunkmap import DigestChunkMap, PersistChunkMap
from .layout import CHUNK_MAP_SUFFIX, DATA_SUFFIX, META_SUFFIX

log = logging.getLogger(__name__)

# How long written chunks may wait for the sync that lets their bits into the chunk map, and how many
# bytes of them make the flusher run at once: a crash loses at most this much readiness (never data).
FLUSH_SECONDS = 1.0
FLUSH_BYTES = 64 << 20


class BlobCache:
    """The cache files of one blob in ``work_dir``: ``read`` cached chunks, ``store`` fetched ones."""

    def __init__(self, work_dir, blob: Blob, *, disable_indexed_map: bool = False):
        self._fd = -1
        self._dir_fd = open_work_dir(work_dir)
        self.work_dir = os.fspath(work_dir)
        self.blob = blob
        try:
            _check_blob_id(blob.blob_id)
        except BaseException:
            os.close(self._dir_fd)
            raise
        self.data_path = os.path.join(self.work_dir, blob.blob_id + DATA_SUFFIX)
        self.map_path = os.path.join(self.work_dir, blob.blob_id + CHUNK_MAP_SUFFIX)
        self.meta_path = os.path.join(self.work_dir, blob.blob_id + META_SUFFIX)
        self.chunk_map = None
        try:
            self._fd = open_cache_file(self._dir_fd, blob.blob_id + DATA_SUFFIX)
            if blob.uncompressed_size and os.fstat(self._fd).st_size < blob.uncompressed_size:
                try:
                    os.ftruncate(self._fd, blob.uncompressed_size)     # sparse, like nydusd's set_len
                except OSError as exc:      # a size no filesystem takes: chunks still land at their offsets
                    log.warning("blob cache %s: cannot size it to %d bytes: %s", self.data_path,
                                blob.uncompressed_size, exc)
            if 0 < blob.chunk_count <= MAX_CHUNKS_PER_BLOB and not disable_indexed_map:
                self.chunk_map = PersistChunkMap(self.map_path, blob.chunk_count, dir_fd=self._dir_fd)
            else:
                self.chunk_map = DigestChunkMap()
        except BaseException:
            if self._fd >= 0:
                os.close(self._fd)
            os.close(self._dir_fd)
            raise
        # close() waits for reads and stores under way (a prefetch thread may still be writing), so a
        # file descriptor is never closed, reused by another open, and then written through
        self._users = 0
        self._closed = False
        # a plain Lock (its ``with`` costs far less than a Condition's, twice on every read and store)
        # guards the counters; close() waits on the Event for the last user to leave
        self._state = threading.Lock()
        self._idle = threading.Event()
        self._flush_lock = threading.Lock()
        self._unflushed = 0             # bytes marked ready since the last flush
        # the flusher's epoch when a flush was last asked for and is still due (a forked child's flusher
        # has a new epoch and knows nothing of the parent's requests), else None
        self._scheduled = None

    def _enter(self) -> bool:
        with self._state:
            if self._closed:
                return False
            self._users += 1
            return True

    def _leave(self) -> None:
        with self._state:
            self._users -= 1
            last = self._users == 0 and self._closed
        if last:                                          # only close() waits
            self._idle.set()

    def is_ready(self, chunk: Chunk) -> bool:
        if not self._enter():
            return False
        try:
            return self.chunk_map.is_ready(chunk)
        finally:
            self._leave()

    @property
    def has_meta(self) -> bool:
        """Whether the blob carries a CI array of its own (v6), which nydusd keeps as ``.blob.meta``."""
        blob = self.blob
        return bool(blob.ci_compressed_size or blob.ci_uncompressed_size) and \
            not blob.features & BlobFeatures.SEPARATE

    def ensure_meta(self, source) -> None:
        """Write ``<blob id>.blob.meta`` from the blob's CI (one ranged read) unless a valid one exists.

        The format and its checks belong to :mod:`rafs.blob.meta`; the file is written to a temporary
        name, synced, and renamed, so readers never see half of it.
        """
        if not self.has_meta:
            return
        from ..blob.meta import load_blob_meta, load_blob_meta_file
        name = self.blob.blob_id + META_SUFFIX
        try:
            fd = open_cache_file(self._dir_fd, name, create=False, readonly=True)
        except CacheError as exc:
            log.warning("blob cache: %s", exc)
            fd = None
            if exc.errno == errno.EISDIR:
                return                  # a directory cannot be renamed over: nothing to write
        if fd is not None:
            try:
                with os.fdopen(fd, "rb") as f:
                    load_blob_meta_file(f, self.blob)
                return
            except (RafsError, OSError) as exc:
                log.warning("%s is not usable (%s); writing it again", self.meta_path, exc)
        if getattr(source, "size", None) is None:
            # a remote blob of unknown size: the CI and its header end at a known place, which is all
            # the reader needs (asking the server for the size would cost a request)
            source = KnownEnd(source, self.blob.ci_offset + self.blob.ci_compressed_size + CI_HEADER_SIZE)
        content = load_blob_meta(self.blob, source).file_bytes()
        tmp = None
        try:
            fd, tmp = tempfiles.create_at(self._dir_fd, suffix=META_SUFFIX, mode=0o644)
            with os.fdopen(fd, "wb") as f:
                f.write(content)
                f.flush()
                os.fsync(f.fileno())
            # rename replaces whatever is at the name (a planted symlink included), never its target
            os.replace(tmp, name, src_dir_fd=self._dir_fd, dst_dir_fd=self._dir_fd)
            log.debug("blob %s: chunk table fetched into %s (%d bytes)", self.blob.blob_id, self.meta_path,
                      len(content))
        except OSError as exc:
            log.warning("blob cache: cannot write %s: %s", self.meta_path, exc)
            if tmp is not None:
                tempfiles.remove(tmp, dir_fd=self._dir_fd)

    def read(self, chunk: Chunk) -> bytes | None:
        """The cached bytes of ``chunk``, or None when it is not cached."""
        if not self._enter():
            return None
        try:
            if not self.chunk_map.is_ready(chunk):
                return None
            data = os.pread(self._fd, chunk.uncompressed_size, chunk.uncompressed_offset)
        finally:
            self._leave()
        return data if len(data) == chunk.uncompressed_size else None

    def store(self, items: list[tuple[Chunk, bytes]]) -> None:
        """Write decompressed chunks at their offsets and mark them ready (in the file after the next
        flush has made their data durable)."""
        items = [(c, d) for c, d in items if self.chunk_map.accepts(c) and len(d) == c.uncompressed_size]
        if not items or not self._enter():
            return
        try:
            for chunk, data in items:
                os.pwrite(self._fd, data, chunk.uncompressed_offset)
            self.mark_written([c for c, _ in items])
        except OSError as exc:
            # a full disk or a read-only cache must not break reads: the data is still returned
            log.warning("blob cache %s: cannot store %d chunks: %s", self.data_path, len(items), exc)
        finally:
            self._leave()

    def mark_written(self, chunks: list[Chunk]) -> None:
        """Count ``chunks`` as ready: their data was written into the data file (by :meth:`store`, or
        through another descriptor of the same file, as the on-demand EROFS driver does). Their bits
        reach the chunk map after the next flush."""
        self.chunk_map.mark(chunks)
        if isinstance(self.chunk_map, PersistChunkMap):
            with self._state:
                self._unflushed += sum(c.uncompressed_size for c in chunks)
                urgent = self._unflushed >= FLUSH_BYTES
                # one word to the flusher per flush, not one per chunk stored (each costs a lock)
                tell = urgent or self._scheduled is not _flusher.epoch
                self._scheduled = _flusher.epoch
            if tell:
                _flusher.schedule(self, urgent=urgent)

    def flush(self) -> None:
        """Make the data written so far durable (one ``fdatasync``), then write the bits it covers."""
        if not self._enter():
            return
        try:
            self._flush()
        finally:
            self._leave()

    def _flush(self) -> None:
        with self._flush_lock:
            with self._state:
                self._unflushed = 0
                self._scheduled = None
            updates = self.chunk_map.take_unsynced()
            if not updates:
                return
            try:
                os.fdatasync(self._fd)
                self.chunk_map.write_bits(updates)
            except OSError as exc:
                # the bits stay unwritten: the chunks are fetched again next time, never served wrong
                log.warning("blob cache %s: cannot make %d chunk bits durable: %s", self.data_path,
                            sum(m.bit_count() for m in updates.values()), exc)

    def close(self) -> None:
        """Flush, then close the files once no read or store is under way; later calls find nothing
        cached."""
        with self._state:
            if self._closed:
                return
            self._closed = True
            busy = self._users > 0
        if busy:
            self._idle.wait()
        _flusher.forget(self)
        if self._fd >= 0:
            self._flush()
        self.chunk_map.close()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if self._dir_fd >= 0:
            os.close(self._dir_fd)
            self._dir_fd = -1

    def __repr__(self) -> str:
        return f"BlobCache({self.data_path!r})"


class _Flusher:
    """One daemon thread that flushes every cache with unwritten bits: at most :data:`FLUSH_SECONDS`
    after the first of them, at once when a cache has :data:`FLUSH_BYTES` waiting, and at exit. Storing
    threads (FUSE workers, fanotify event workers) never wait for a sync."""

    def __init__(self):
        self._cond = threading.Condition()
        self._due: dict[BlobCache, float] = {}
        self._thread: threading.Thread | None = None
        self.epoch = object()

    def schedule(self, cache: BlobCache, *, urgent: bool = False) -> None:
        with self._cond:
            now = time.monotonic()
            due = now if urgent else self._due.get(cache, now + FLUSH_SECONDS)
            if cache not in self._due or due < self._due[cache]:
                self._due[cache] = due
                self._cond.notify()
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="rafs-cache-flush", daemon=True)
                self._thread.start()

    def forget(self, cache: BlobCache) -> None:
        with self._cond:
            self._due.pop(cache, None)

    def _run(self) -> None:
        while True:
            with self._cond:
                now = time.monotonic()
                due = [c for c, t in self._due.items() if t <= now]
                for cache in due:
                    del self._due[cache]
                if not due:
                    self._cond.wait(min(self._due.values()) - now if self._due else None)
                    continue
            for cache in due:
                try:
                    cache.flush()
                except Exception:              # a flusher that dies would leave every later bit unwritten
                    log.exception("blob cache %s: flush failed", cache.data_path)

    def flush_all(self) -> None:
        with self._cond:
            due, self._due = list(self._due), {}
        for cache in due:
            cache.flush()

    def after_fork(self) -> None:
        # the thread is not in the child; what the parent had pending is the parent's to flush
        self._cond = threading.Condition()
        self._due = {}
        self._thread = None
        self.epoch = object()


_flusher = _Flusher()
atexit.register(_flusher.flush_all)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_flusher.after_fork)


class KnownEnd:
    """A RangeReader whose size is taken as ``size``: the blob holds at least that many bytes."""

    def __init__(self, inner, size: int):
        self.inner = inner
        self.size = size

    def read_range(self, offset: int, size: int) -> bytes:
        return self.inner.read_range(offset, size)

    def close(self) -> None:
        pass


def _check_blob_id(blob_id: str) -> None:
    """A blob id becomes a file name in ``work_dir``: held to the blob-id allow-list, which keeps it one
    plain name, short enough for every cache suffix (:mod:`rafs.blob.ids`)."""
    check_blob_id(blob_id, "blob id of a cache file")
