"""The nydusd-compatible blob cache (``blobcache`` / ``filecache``) in a ``work_dir``.

A cache warmed by rafs is read by nydusd and the other way round (layouts in :mod:`rafs.io.layout`):
decompressed chunks at their ``uncompressed_offset`` in ``<blob id>.blob.data``, readiness in the
``<blob id>.blob.data.chunk_map`` bitmap. Blobs without chunk counts (v5 without an extended blob
table) or with ``disable_indexed_map`` keep readiness in memory, keyed by chunk digest, as nydusd's
``DigestedChunkMap`` does.

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

Hostile neighbours: files are opened relative to a descriptor of ``work_dir`` with ``O_NOFOLLOW``
and must be regular files (checked on the open descriptor), and a missing file is created with
``O_CREAT | O_EXCL`` at its name, so a symlink, FIFO, device, directory or hard link planted under a
cache file's name is never followed or written through. Such a blob is read without the cache (a warning says
which file is in the way; rafs does not delete it, since another process may be racing to do the
same). ``.blob.meta`` is written whole under an exclusive temporary name, then renamed into place.
"""

from __future__ import annotations

import atexit
import errno
import fcntl
import logging
import os
import stat as _stat
import threading
import time
from typing import Iterable

from .. import _records, tempfiles
from ..errors import InvalidArgumentError, RafsError
from ..model import MAX_CHUNKS_PER_BLOB, Blob, BlobFeatures, Chunk
from ..blob.ids import check_blob_id
from ..blob.layout import BLOB_CCT_HEADER_SIZE as CI_HEADER_SIZE
from .layout import (CHUNK_MAP_ALL_READY, CHUNK_MAP_HEADER, CHUNK_MAP_HEADER_SIZE, CHUNK_MAP_MAGIC2,
                     CHUNK_MAP_SUFFIX, CHUNK_MAP_VERSION, DATA_SUFFIX, META_SUFFIX)

log = logging.getLogger(__name__)

# How long written chunks may wait for the sync that lets their bits into the chunk map, and how many
# bytes of them make the flusher run at once: a crash loses at most this much readiness (never data).
FLUSH_SECONDS = 1.0
FLUSH_BYTES = 64 << 20
# How often a chunk map missing a chunk looks at the file again for bits other processes wrote.
PEEK_SECONDS = 0.05

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


class CacheError(RafsError, OSError):
    """The cache directory cannot be used (a file of the wrong shape, a failed write)."""


def _cache_error(code: int, message: str) -> CacheError:
    """A CacheError whose ``errno`` is ``code`` and whose text is ``message`` alone."""
    exc = CacheError(message)
    exc.errno = code
    return exc


def open_work_dir(work_dir) -> int:
    """A descriptor of the cache directory ``work_dir``, created if missing.

    The directory itself is the user's choice (a symlink to it is fine); what is inside it is not
    trusted. A value that cannot name a directory is the caller's fault and says ``work_dir``.
    """
    try:
        path = os.fspath(work_dir)
    except TypeError:
        raise InvalidArgumentError(f"cache work_dir must be a path, not {type(work_dir).__name__}") from None
    shown = os.fsdecode(path)
    if not path or "\0" in shown:
        raise InvalidArgumentError(f"cache work_dir {shown!r} is not a usable path")
    try:
        os.makedirs(path, exist_ok=True)
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | _O_CLOEXEC)
    except (FileExistsError, NotADirectoryError):
        raise InvalidArgumentError(f"cache work_dir {shown!r} is not a directory") from None
    except OSError as exc:
        raise InvalidArgumentError(f"cache work_dir {shown!r}: {exc.strerror or exc}") from None
    try:
        probe, name = tempfiles.create_at(fd)      # /proc, /sys and read-only mounts fail here, not later
    except OSError as exc:
        os.close(fd)
        raise InvalidArgumentError(f"cache work_dir {shown!r} cannot hold cache files: "
                                   f"{exc.strerror or exc}") from None
    os.close(probe)
    tempfiles.remove(name, dir_fd=fd)
    return fd


def open_cache_file(dir_fd: int, name: str, *, create: bool = True, readonly: bool = False) -> int | None:
    """Open the cache file ``name`` in ``dir_fd`` for reading and writing (or only reading), never
    through a link.

    A missing file is created (mode 0644) with ``O_EXCL`` at its name, or None is returned when
    ``create`` is false. Anything but a regular file of one link at the name (a symlink, a
    directory, a FIFO, a device, a hard link to a file elsewhere) raises :class:`CacheError`;
    nothing is written through it.
    """
    flags = (os.O_RDONLY if readonly else os.O_RDWR) | os.O_NOFOLLOW | os.O_NONBLOCK | _O_CLOEXEC
    for _ in range(10):                 # another process may create or remove it between our looks
        try:
            # looked at before opening, so a device or FIFO planted here is not even opened
            mode = os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode
        except FileNotFoundError:
            if not create:
                return None
            try:
                return os.open(name, flags | os.O_CREAT | os.O_EXCL, 0o644, dir_fd=dir_fd)
            except FileExistsError:
                continue
            except OSError as exc:
                raise _cache_error(exc.errno, f"cache file {name}: cannot create it: {exc.strerror}") from None
        except OSError as exc:
            raise _cache_error(exc.errno, f"cache file {name}: {exc.strerror}") from None
        if not _stat.S_ISREG(mode):
            raise _not_regular(name, mode)
        try:
            fd = os.open(name, flags, dir_fd=dir_fd)
        except FileNotFoundError:
            continue
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.EISDIR, errno.ENXIO):      # swapped since we looked
                continue
            raise _cache_error(exc.errno, f"cache file {name}: {exc.strerror}") from None
        st = os.fstat(fd)
        if _stat.S_ISREG(st.st_mode) and st.st_nlink == 1:
            return fd
        os.close(fd)
        if _stat.S_ISREG(st.st_mode):
            # rafs and nydusd create cache files in place with one name; a second name is a file
            # from elsewhere linked in (where fs.protected_hardlinks does not stop it)
            raise _cache_error(errno.EMLINK, f"cache file {name} has {st.st_nlink} hard links; not using it")
        raise _not_regular(name, st.st_mode)
    raise _cache_error(errno.EAGAIN, f"cache file {name} keeps changing under us; not using it")


def _not_regular(name: str, mode: int) -> CacheError:
    kind = next((label for test, label in _KINDS if test(mode)), "a special file")
    return _cache_error(errno.EISDIR if _stat.S_ISDIR(mode) else errno.EINVAL,
                        f"cache file {name} is {kind}, not a regular file; not using it")


_KINDS = ((_stat.S_ISLNK, "a symlink"), (_stat.S_ISDIR, "a directory"), (_stat.S_ISFIFO, "a FIFO"),
          (_stat.S_ISCHR, "a character device"), (_stat.S_ISBLK, "a block device"), (_stat.S_ISSOCK, "a socket"))


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
            dir_fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY | os.O_DIRECTORY | _O_CLOEXEC)
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
        self._idle = threading.Condition()
        self._flush_lock = threading.Lock()
        self._unflushed = 0             # bytes marked ready since the last flush

    def _enter(self) -> bool:
        with self._idle:
            if self._closed:
                return False
            self._users += 1
            return True

    def _leave(self) -> None:
        with self._idle:
            self._users -= 1
            if self._users == 0 and self._closed:      # only close() waits
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
            source = _KnownEnd(source, self.blob.ci_offset + self.blob.ci_compressed_size + CI_HEADER_SIZE)
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
            with self._idle:
                self._unflushed += sum(c.uncompressed_size for c in chunks)
                urgent = self._unflushed >= FLUSH_BYTES
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
            with self._idle:
                self._unflushed = 0
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
        with self._idle:
            if self._closed:
                return
            self._closed = True
            while self._users:
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


_flusher = _Flusher()
atexit.register(_flusher.flush_all)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_flusher.after_fork)


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
