"""The nydusd-compatible blob cache (``blobcache`` / ``filecache``) in a ``work_dir``.

A cache warmed by rafs is read by nydusd and the other way round (layouts in :mod:`rafs.io.layout`):
decompressed chunks at their ``uncompressed_offset`` in ``<blob id>.blob.data``, readiness in the
``<blob id>.blob.data.chunk_map`` bitmap. Blobs without chunk counts (v5 without an extended blob
table) or with ``disable_indexed_map`` keep readiness in memory, keyed by chunk digest, as nydusd's
``DigestedChunkMap`` does.

Crash safety: a chunk's bit is set only after its data has reached the disk (``pwrite`` of the data,
``fdatasync`` of the data file, then the bit, then ``fdatasync`` of the map), so a killed process never
leaves a bit whose data is missing. Several processes may share one directory: data writes are
idempotent (the same bytes at the same offset) and the read-modify-write of bitmap bytes happens under
an ``fcntl`` record lock on those bytes (plus a thread lock, since record locks are per process).
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
from typing import Iterable

from .. import _codec
from ..errors import InvalidArgumentError, RafsError
from ..model import MAX_CHUNKS_PER_BLOB, Blob, BlobFeatures, Chunk
from ..blob.ids import check_blob_id
from ..blob.layout import BLOB_CCT_HEADER_SIZE as CI_HEADER_SIZE
from .layout import (CHUNK_MAP_ALL_READY, CHUNK_MAP_HEADER, CHUNK_MAP_HEADER_SIZE, CHUNK_MAP_MAGIC,
                     CHUNK_MAP_MAGIC2, CHUNK_MAP_SUFFIX, CHUNK_MAP_VERSION, DATA_SUFFIX, META_SUFFIX)

log = logging.getLogger(__name__)

_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
# Record locks belong to the process, so threads of one process serialise on these instead.
_path_locks: dict[str, threading.Lock] = {}
_path_locks_guard = threading.Lock()


def _lock_for(path: str) -> threading.Lock:
    with _path_locks_guard:
        lock = _path_locks.get(path)
        if lock is None:
            lock = _path_locks[path] = threading.Lock()
        return lock


def _mask(index: int) -> int:
    """Bit of chunk ``index`` inside its bitmap byte: MSB first (persist_map.rs ``index_to_mask``)."""
    return 0x80 >> (index & 7)


class CacheError(RafsError, OSError):
    """The cache directory cannot be used (a file of the wrong shape, a failed write)."""


class PersistChunkMap:
    """The ``.chunk_map`` file: a 4096-byte header and an MSB-first bitmap of ``chunk_count`` bits."""

    def __init__(self, path: str, chunk_count: int):
        if chunk_count <= 0:
            raise InvalidArgumentError("a persistent chunk map needs a chunk count")
        self.path = path
        self.count = chunk_count
        self.bitmap_size = (chunk_count + 7) // 8
        self.size = CHUNK_MAP_HEADER_SIZE + self.bitmap_size
        self._lock = _lock_for(os.path.abspath(path))
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | _O_CLOEXEC, 0o644)
        try:
            with self._lock:
                fcntl.lockf(self._fd, fcntl.LOCK_EX)          # whole file while it is set up
                try:
                    self._bits = self._open_or_create()
                finally:
                    fcntl.lockf(self._fd, fcntl.LOCK_UN)
        except BaseException:
            os.close(self._fd)
            raise
        self.ready_count = self._count_ready()
        if self.ready_count >= self.count:
            self._mark_all_ready()

    def _open_or_create(self) -> bytearray:
        size = os.fstat(self._fd).st_size
        if size not in (0, self.size):
            # nydusd refuses such a map; the data it describes cannot be trusted, so start afresh.
            log.warning("%s: %d bytes instead of %d; discarding it", self.path, size, self.size)
            os.ftruncate(self._fd, 0)
            size = 0
        raw = os.pread(self._fd, self.size, 0) if size else b""
        if size == 0 or raw[:4] == b"\0\0\0\0" and not any(raw):
            self._write_header()
            return bytearray(self.bitmap_size)
        try:
            header = _codec.parse(CHUNK_MAP_HEADER, raw, 0, structure="chunk_map header")
        except RafsError as exc:
            raise CacheError(f"{self.path}: not a nydusd chunk map ({exc})") from None
        if header.version >= 1 and header.magic2 != CHUNK_MAP_MAGIC2:
            raise CacheError(f"{self.path}: chunk map header magic2 {header.magic2:#x} != {CHUNK_MAP_MAGIC2:#x}")
        bits = bytearray(raw[CHUNK_MAP_HEADER_SIZE:])
        if header.all_ready == CHUNK_MAP_ALL_READY:
            for i in range(self.count):
                bits[i >> 3] |= _mask(i)
        return bits

    def _write_header(self) -> None:
        # as nydusd: size first (all zeros = not ready), synced, then the header, synced
        os.ftruncate(self._fd, self.size)
        os.fsync(self._fd)
        header = CHUNK_MAP_HEADER.build(dict(version=CHUNK_MAP_VERSION, magic2=CHUNK_MAP_MAGIC2, all_ready=0,
                                             reserved=bytes(CHUNK_MAP_HEADER_SIZE - 16)))
        os.pwrite(self._fd, header, 0)
        os.fsync(self._fd)

    def _mark_all_ready(self) -> None:
        os.pwrite(self._fd, CHUNK_MAP_ALL_READY.to_bytes(4, "little"), 12)
        os.fdatasync(self._fd)

    def is_ready(self, chunk: Chunk) -> bool:
        index = chunk.index
        if not 0 <= index < self.count:
            return False
        mask = _mask(index)
        if self._bits[index >> 3] & mask:
            return True
        # another process may have filled it since we looked
        byte = os.pread(self._fd, 1, CHUNK_MAP_HEADER_SIZE + (index >> 3))
        if byte and byte[0] & mask:
            with self._lock:
                fresh = byte[0] & ~self._bits[index >> 3]
                self._bits[index >> 3] |= fresh
                self.ready_count += fresh.bit_count()
            return True
        return False

    def accepts(self, chunk: Chunk) -> bool:
        return 0 <= chunk.index < self.count

    def set_ready(self, chunks: Iterable[Chunk]) -> None:
        """Set the bits of ``chunks`` (whose data is already durable) and make the bits durable."""
        updates: dict[int, int] = {}
        for chunk in chunks:
            if 0 <= chunk.index < self.count:
                updates[chunk.index >> 3] = updates.get(chunk.index >> 3, 0) | _mask(chunk.index)
        if not updates:
            return
        lo, hi = min(updates), max(updates) + 1
        start = CHUNK_MAP_HEADER_SIZE + lo
        with self._lock:
            fcntl.lockf(self._fd, fcntl.LOCK_EX, hi - lo, start, os.SEEK_SET)
            try:
                current = bytearray(os.pread(self._fd, hi - lo, start))
                for byte, mask in updates.items():
                    current[byte - lo] |= mask
                os.pwrite(self._fd, bytes(current), start)
                os.fdatasync(self._fd)
            finally:
                fcntl.lockf(self._fd, fcntl.LOCK_UN, hi - lo, start, os.SEEK_SET)
            for offset, value in enumerate(current):
                fresh = value & ~self._bits[lo + offset]
                if fresh:
                    self._bits[lo + offset] |= fresh
                    self.ready_count += fresh.bit_count()
            if self.ready_count >= self.count and self._count_ready() >= self.count:
                self._mark_all_ready()

    def _count_ready(self) -> int:
        total = int.from_bytes(self._bits, "big").bit_count()
        spare = self.bitmap_size * 8 - self.count          # bits past the last chunk never count
        if spare:
            total -= (self._bits[-1] & ((1 << spare) - 1)).bit_count()
        return total

    def ready_indexes(self) -> list[int]:
        return [i for i in range(self.count) if self._bits[i >> 3] & _mask(i)]

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class DigestChunkMap:
    """Readiness kept in memory by chunk digest (nydusd's ``DigestedChunkMap``), nothing persisted."""

    def __init__(self):
        self._ready: set = set()
        self._lock = threading.Lock()

    @staticmethod
    def _key(chunk: Chunk):
        return (chunk.digest, chunk.uncompressed_offset, chunk.uncompressed_size)

    def is_ready(self, chunk: Chunk) -> bool:
        return self._key(chunk) in self._ready

    def accepts(self, chunk: Chunk) -> bool:
        return True

    def set_ready(self, chunks: Iterable[Chunk]) -> None:
        with self._lock:
            self._ready.update(self._key(c) for c in chunks)

    def close(self) -> None:
        pass


class BlobCache:
    """The cache files of one blob in ``work_dir``: ``read`` cached chunks, ``store`` fetched ones."""

    def __init__(self, work_dir, blob: Blob, *, disable_indexed_map: bool = False):
        self.work_dir = os.fspath(work_dir)
        os.makedirs(self.work_dir, exist_ok=True)
        self.blob = blob
        _check_blob_id(blob.blob_id)
        self.data_path = os.path.join(self.work_dir, blob.blob_id + DATA_SUFFIX)
        self.map_path = os.path.join(self.work_dir, blob.blob_id + CHUNK_MAP_SUFFIX)
        self.meta_path = os.path.join(self.work_dir, blob.blob_id + META_SUFFIX)
        self._fd = os.open(self.data_path, os.O_RDWR | os.O_CREAT | _O_CLOEXEC, 0o644)
        try:
            if blob.uncompressed_size and os.fstat(self._fd).st_size < blob.uncompressed_size:
                try:
                    os.ftruncate(self._fd, blob.uncompressed_size)     # sparse, like nydusd's set_len
                except OSError as exc:      # a size no filesystem takes: chunks still land at their offsets
                    log.warning("blob cache %s: cannot size it to %d bytes: %s", self.data_path,
                                blob.uncompressed_size, exc)
            if 0 < blob.chunk_count <= MAX_CHUNKS_PER_BLOB and not disable_indexed_map:
                self.chunk_map = PersistChunkMap(self.map_path, blob.chunk_count)
            else:
                self.chunk_map = DigestChunkMap()
        except BaseException:
            os.close(self._fd)
            raise
        # close() waits for reads and stores under way (a prefetch thread may still be writing), so a
        # file descriptor is never closed, reused by another open, and then written through
        self._users = 0
        self._closed = False
        self._idle = threading.Condition()

    def _enter(self) -> bool:
        with self._idle:
            if self._closed:
                return False
            self._users += 1
            return True

    def _leave(self) -> None:
        with self._idle:
            self._users -= 1
            if self._users == 0:
                self._idle.notify_all()

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
        if os.path.exists(self.meta_path):
            try:
                load_blob_meta_file(self.meta_path, self.blob)
                return
            except (RafsError, OSError) as exc:
                log.warning("%s is not usable (%s); writing it again", self.meta_path, exc)
        if getattr(source, "size", None) is None:
            # a remote blob of unknown size: the CI and its header end at a known place, which is all
            # the reader needs (asking the server for the size would cost a request)
            source = _KnownEnd(source, self.blob.ci_offset + self.blob.ci_compressed_size + CI_HEADER_SIZE)
        content = load_blob_meta(self.blob, source).file_bytes()
        tmp = f"{self.meta_path}.{os.getpid()}.{threading.get_ident()}.tmp"
        try:
            with open(tmp, "wb") as f:
                f.write(content)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.meta_path)
            log.debug("blob %s: chunk table fetched into %s (%d bytes)", self.blob.blob_id, self.meta_path,
                      len(content))
        except OSError as exc:
            log.warning("blob cache: cannot write %s: %s", self.meta_path, exc)
            try:
                os.unlink(tmp)
            except OSError:
                pass

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
        """Write decompressed chunks at their offsets, make them durable, then mark them ready."""
        items = [(c, d) for c, d in items if self.chunk_map.accepts(c) and len(d) == c.uncompressed_size]
        if not items or not self._enter():
            return
        try:
            for chunk, data in items:
                os.pwrite(self._fd, data, chunk.uncompressed_offset)
            os.fdatasync(self._fd)
            self.chunk_map.set_ready(c for c, _ in items)
        except OSError as exc:
            # a full disk or a read-only cache must not break reads: the data is still returned
            log.warning("blob cache %s: cannot store %d chunks: %s", self.data_path, len(items), exc)
        finally:
            self._leave()

    def close(self) -> None:
        """Close the files once no read or store is under way; later calls find nothing cached."""
        with self._idle:
            self._closed = True
            while self._users:
                self._idle.wait()
        self.chunk_map.close()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __repr__(self) -> str:
        return f"BlobCache({self.data_path!r})"


class _KnownEnd:
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
