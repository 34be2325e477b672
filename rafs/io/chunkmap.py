"""Chunk readiness of a blob cache: which chunks of ``<blob id>.blob.data`` hold their data.

:class:`PersistChunkMap` is nydusd's ``.chunk_map`` file (layout in :mod:`rafs.io.layout`): a
4096-byte header and an MSB-first bitmap with one bit per chunk, shared with nydusd and with other
processes using the same ``work_dir``. The read-modify-write of bitmap bytes happens under an ``fcntl``
record lock on those bytes (plus a thread lock, since record locks are per process); bits set by
others are learnt by looking at the file again, at most every :data:`PEEK_SECONDS`.
:class:`DigestChunkMap` keeps readiness in memory, keyed by chunk digest, as nydusd's
``DigestedChunkMap`` does, for blobs without chunk counts (v5 without an extended blob table) or with
``disable_indexed_map``.

Both take chunks as ready in two steps: ``mark`` (the data is written, this process may read it back)
then ``take_unsynced`` / ``write_bits`` once the cache (:mod:`rafs.io.cache`) has synced the data, so
a bit never reaches the disk before the data it stands for.
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
import time
from typing import Iterable

from .. import _records
from ..errors import InvalidArgumentError, RafsError
from ..model import Chunk
from .cachefiles import O_CLOEXEC, CacheError, open_cache_file
from .layout import CHUNK_MAP_ALL_READY, CHUNK_MAP_HEADER, CHUNK_MAP_HEADER_SIZE, CHUNK_MAP_MAGIC2, CHUNK_MAP_VERSION

log = logging.getLogger(__name__)

# How often a chunk map missing a chunk looks at the file again for bits other processes wrote.
PEEK_SECONDS = 0.05
# Record locks belong to the process, so threads of one process serialise on these instead.
_path_locks: dict[str, threading.Lock] = {}
_path_locks_guard = threading.Lock()


def _lock_for(path: str) -> threading.Lock:
    with _path_locks_guard:
        lock = _path_locks.get(path)
        if lock is None:
            lock = _path_locks[path] = threading.Lock()
        return lock


def _count_bits(bitmap, count: int) -> int:
    """Set bits among the first ``count`` of an MSB-first bitmap (bits past the last chunk never count)."""
    total = int.from_bytes(bitmap, "big").bit_count()
    spare = len(bitmap) * 8 - count
    if spare > 0:
        total -= (bitmap[-1] & ((1 << spare) - 1)).bit_count()
    return total


def _mask(index: int) -> int:
    """Bit of chunk ``index`` inside its bitmap byte: MSB first (persist_map.rs ``index_to_mask``)."""
    return 0x80 >> (index & 7)


class PersistChunkMap:
    """The ``.chunk_map`` file: a 4096-byte header and an MSB-first bitmap of ``chunk_count`` bits."""

    def __init__(self, path: str, chunk_count: int, *, dir_fd: int | None = None):
        """``path`` is the map file; with ``dir_fd`` (the cache directory, open) its base name is opened
        relative to that descriptor, so a ``work_dir`` renamed meanwhile cannot redirect it."""
        if chunk_count <= 0:
            raise InvalidArgumentError("a persistent chunk map needs a chunk count")
        self.path = path
        self.count = chunk_count
        self.bitmap_size = (chunk_count + 7) // 8
        self.size = CHUNK_MAP_HEADER_SIZE + self.bitmap_size
        own_dir = dir_fd is None
        if own_dir:
            dir_fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY | os.O_DIRECTORY | O_CLOEXEC)
        try:
            self._fd = open_cache_file(dir_fd, os.path.basename(path))
            ident = os.fstat(dir_fd)
        finally:
            if own_dir:
                os.close(dir_fd)
        # threads of this process serialise per file: the same directory and name is the same file
        self._lock = _lock_for(f"{ident.st_dev}:{ident.st_ino}/{os.path.basename(path)}")
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
        self._unsynced: dict[int, int] = {}
        self._all_ready_written = False
        self._peeked = 0.0
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
            header = _records.parse(CHUNK_MAP_HEADER, raw, 0, structure="chunk_map header")
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
        # no sync: every bit is on disk after its data, so a lost all_ready only costs a look at them
        os.pwrite(self._fd, CHUNK_MAP_ALL_READY.to_bytes(4, "little"), 12)
        self._all_ready_written = True

    def is_ready(self, chunk: Chunk) -> bool:
        index = chunk.index
        if not 0 <= index < self.count:
            return False
        mask = _mask(index)
        if self._bits[index >> 3] & mask:
            return True
        # another process may have filled it since we looked; looking costs a read of the map, so a
        # cold fill (a miss per chunk) looks at most every PEEK_SECONDS: a chunk missed meanwhile is
        # fetched again, which is harmless (the same bytes at the same offset)
        now = time.monotonic()
        if now - self._peeked < PEEK_SECONDS:
            return False
        self._peeked = now
        self._learn(os.pread(self._fd, self.bitmap_size, CHUNK_MAP_HEADER_SIZE))
        return bool(self._bits[index >> 3] & mask)

    def _learn(self, on_disk: bytes) -> None:
        """Merge the bits another process wrote (``on_disk``, the file's bitmap) into ours."""
        if len(on_disk) != self.bitmap_size:
            return
        spare = self.bitmap_size * 8 - self.count
        valid = ((1 << self.count) - 1) << spare          # bits past the last chunk never count
        with self._lock:
            ours = int.from_bytes(self._bits, "big")
            fresh = int.from_bytes(on_disk, "big") & valid & ~ours
            if fresh:
                self._bits[:] = (ours | fresh).to_bytes(self.bitmap_size, "big")
                self.ready_count += fresh.bit_count()

    def accepts(self, chunk: Chunk) -> bool:
        return 0 <= chunk.index < self.count

    def mark(self, chunks: Iterable[Chunk]) -> None:
        """Count ``chunks`` (whose data is written, maybe not yet durable) as ready in this process;
        their bits reach the file with the next :meth:`write_bits` of :meth:`take_unsynced`."""
        with self._lock:
            for chunk in chunks:
                index = chunk.index
                if not 0 <= index < self.count:
                    continue
                mask = _mask(index)
                if not self._bits[index >> 3] & mask:
                    self._bits[index >> 3] |= mask
                    self.ready_count += 1
                    self._unsynced[index >> 3] = self._unsynced.get(index >> 3, 0) | mask

    def take_unsynced(self) -> dict[int, int]:
        """The bits marked since the last call (bitmap byte -> mask), for the caller to write once the
        data behind them is durable."""
        with self._lock:
            taken, self._unsynced = self._unsynced, {}
        return taken

    def set_ready(self, chunks: Iterable[Chunk]) -> None:
        """Set the bits of ``chunks``, whose data is already durable, in memory and in the file."""
        self.mark(chunks)
        self.write_bits(self.take_unsynced())

    def write_bits(self, updates: dict[int, int]) -> None:
        """OR ``updates`` (bitmap byte -> mask) into the file, under a record lock on those bytes, and
        learn the bits other processes set there meanwhile. Not synced: see the module docstring."""
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
            finally:
                fcntl.lockf(self._fd, fcntl.LOCK_UN, hi - lo, start, os.SEEK_SET)
            for offset, value in enumerate(current):
                fresh = value & ~self._bits[lo + offset]
                if fresh:
                    self._bits[lo + offset] |= fresh
                    self.ready_count += fresh.bit_count()
            if self.ready_count >= self.count and not self._all_ready_written:
                # all_ready speaks for the file, not for this process: bits marked here but not yet
                # written (their data not yet durable) must not count
                on_disk = os.pread(self._fd, self.bitmap_size, CHUNK_MAP_HEADER_SIZE)
                if _count_bits(on_disk, self.count) >= self.count:
                    self._mark_all_ready()

    def _count_ready(self) -> int:
        return _count_bits(self._bits, self.count)

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

    mark = set_ready            # nothing persisted, so nothing waits for a sync

    def take_unsynced(self) -> dict[int, int]:
        return {}

    def write_bits(self, updates: dict[int, int]) -> None:
        pass

    def close(self) -> None:
        pass
