"""On-demand EROFS: the kernel mounts a RAFS v6 bootstrap itself, and rafs fills blobs as they are read.

The successor of nydusd's fscache mode (deprecated in Linux 6.12), as nydus pull request 1982 designs
it, on fanotify pre-content events (Linux 6.14+):

- the bootstrap is mounted file-backed (mount(2) with the bootstrap file as its source, type ``erofs``);
- each blob is one ``device=`` option naming that blob's nydusd cache data file
  ``<work_dir>/<blob id>.blob.data``: a sparse file holding each decompressed chunk at its
  ``uncompressed_offset``, which RAFS v6 aligns to 4 KiB, so the kernel reads it as an EROFS device;
- every data file that is not complete is marked for ``FAN_PRE_ACCESS``. A kernel read of a range not
  yet there raises an event with the range; rafs fetches and decodes the chunks that cover it from the
  configured backend, writes them through the event's file descriptor (which raises no event), marks
  them ready (their ``chunk_map`` bits follow once a batched sync has made them durable, see
  :mod:`rafs.io.cache`), and answers ``FAN_ALLOW``. A chunk that cannot be had
  is answered ``FAN_DENY`` with ``EIO``, so the reader gets an I/O error, never wrong data;
- every event is answered exactly once and within a deadline; ranges already cached are answered at
  once on the event loop (the fast path); a complete data file is never marked, so a warm cache is read
  at the kernel's own speed with no daemon work at all.

The kernel answers ``FAN_ALLOW`` for every pending event when a group's last file descriptor closes,
which would let readers see the zeros of the holes if the daemon died. A small guardian process
(:mod:`rafs.serve.guardian`) therefore holds the group too: when the daemon dies it denies every
pending and later event with ``EIO`` until the mount is gone, and a new mount then serves every file
from what the cache holds (bits only ever reach the chunk map after their data is durable).
"""

from __future__ import annotations

import bisect
import ctypes
import ctypes.util
import errno
import logging
import os
import resource
import select
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from .. import _fanotify
from ..errors import InvalidArgumentError, RafsError, UnsupportedError
from ..limits import DEFAULT_MERGE_SIZE
from ..io.cache import BlobCache
from ..io.chunkmap import PersistChunkMap
from ..io.fetch import ChunkFetcher
from ..io.lazy import LazySource
from ..model import Chunk
from ..progress import Progress, Ticker

log = logging.getLogger(__name__)

MS_RDONLY = 1
MNT_DETACH = 2
DEFAULT_DEADLINE = 60.0            # seconds an event may wait for its data before EIO
DEFAULT_THREADS = 4
# Data filled beyond an event's own chunks, following them in the blob (see BlobFiller.with_readahead).
DEFAULT_READAHEAD = 1 << 20
_EVENT_BUFFER = 64 * 1024
# The guardian answers every event fd number below this after a crash (see rafs.serve.guardian).
_FD_LIMIT = 65536


class OnDemandError(RafsError):
    """On-demand EROFS cannot start here (kernel, permissions, configuration)."""


class BlobFiller:
    """One blob's cache data file, used as an EROFS device and filled chunk by chunk on demand.

    ``chunks`` are the blob's distinct chunks (by chunk index) in ``uncompressed_offset`` order; they
    say which chunks cover a range of the device. Reads go to ``source`` (the backend) through a
    :class:`~rafs.io.fetch.ChunkFetcher` without a cache: the data file is written only through event
    file descriptors, since a write through any other descriptor would raise an event of its own.
    """

    def __init__(self, blob, source, chunks: list[Chunk], work_dir: str, *, validate: bool, merge_size: int):
        self.blob = blob
        self.cache = BlobCache(work_dir, blob)        # creates the sparse data file and the chunk map
        self.data_path = self.cache.data_path
        self.chunk_map = self.cache.chunk_map
        self.fetcher = ChunkFetcher(blob, source, validate=validate, cache=None, merge_size=merge_size)
        self.chunks = sorted(chunks, key=lambda c: c.uncompressed_offset)
        self.starts = [c.uncompressed_offset for c in self.chunks]
        st = os.stat(self.data_path)
        self.identity = (st.st_dev, st.st_ino)
        self.fetched_chunks = 0
        self.watched = False

    @property
    def complete(self) -> bool:
        """Whether every chunk is in the data file (its chunk map says so)."""
        chunk_map = self.chunk_map
        if isinstance(chunk_map, PersistChunkMap):
            return chunk_map.ready_count >= chunk_map.count or all(chunk_map.is_ready(c) for c in self.chunks)
        return not self.chunks

    def covering(self, offset: int | None, count: int | None) -> list[Chunk]:
        """The chunks that overlap ``[offset, offset + count)`` of the device (all of them for no range)."""
        if offset is None or count is None:
            return list(self.chunks)
        end = offset + count
        first = max(bisect.bisect_right(self.starts, offset) - 1, 0)
        out = []
        for chunk in self.chunks[first:]:
            if chunk.uncompressed_offset >= end:
                break
            if chunk.uncompressed_offset + chunk.uncompressed_size > offset:
                out.append(chunk)
        return out

    def missing(self, offset: int | None, count: int | None) -> list[Chunk]:
        """The chunks of the range that are not in the data file yet."""
        return [c for c in self.covering(offset, count) if not self.chunk_map.is_ready(c)]

    def with_readahead(self, chunks: list[Chunk], limit: int) -> list[Chunk]:
        """``chunks`` plus the missing chunks that follow the last of them in the blob, up to ``limit``
        bytes of data in all: files laid out together are read together (a walk, a start-up), so one
        event and one ranged fetch serve the reads that would each have raised their own."""
        if not chunks:
            return chunks
        total = sum(c.uncompressed_size for c in chunks)
        out = list(chunks)
        position = bisect.bisect_right(self.starts, chunks[-1].uncompressed_offset)
        for chunk in self.chunks[position:]:
            if total + chunk.uncompressed_size > limit:
                break
            if not self.chunk_map.is_ready(chunk):
                out.append(chunk)
                total += chunk.uncompressed_size
        return out

    def fill(self, fd: int, chunks: list[Chunk]) -> None:
        """Fetch, decode (and verify, with validation) ``chunks``, write them through ``fd`` and mark them
        ready. Nothing is written unless every chunk was read whole."""
        datas = self.fetcher.read_many(chunks)
        for chunk, data in zip(chunks, datas):
            if len(data) != chunk.uncompressed_size:
                raise RafsError(f"blob {self.blob.blob_id}: chunk {chunk.index} decoded to {len(data)} bytes, "
                                f"not {chunk.uncompressed_size}")
        for chunk, data in zip(chunks, datas):
            os.pwrite(fd, data, chunk.uncompressed_offset)
        # ready now for this mount (the kernel reads the page cache); the bits reach the chunk map
        # after the cache's next flush has synced this data (rafs.io.cache)
        self.cache.mark_written(chunks)
        self.fetched_chunks += len(chunks)

    def close(self) -> None:
        self.fetcher.close()
        self.cache.close()


def _libc():
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def mount_file_backed(bootstrap: str, mountpoint: str, devices: list[str]) -> None:
    """mount(2) the EROFS image file ``bootstrap`` read-only at ``mountpoint``, file-backed (no loop
    device; Linux 6.12+), with ``devices`` (plain files) as its extra devices in device-table order."""
    if any("," in d for d in devices):
        raise InvalidArgumentError("a device path with ',' cannot be passed in EROFS device= options")
    options = ",".join(f"device={d}" for d in devices)
    if _libc().mount(os.fsencode(bootstrap), os.fsencode(mountpoint), b"erofs", MS_RDONLY,
                     options.encode() or None) != 0:
        code = ctypes.get_errno()
        raise OnDemandError(f"mount -t erofs {bootstrap} {mountpoint}: {os.strerror(code)} (the kernel needs "
                            f"EROFS with file-backed mounts, Linux 6.12 or later)")


def unmount(mountpoint: str) -> None:
    """umount(2), detaching lazily when the mount is busy."""
    libc = _libc()
    if libc.umount2(os.fsencode(mountpoint), 0) != 0:
        libc.umount2(os.fsencode(mountpoint), MNT_DETACH)


def blob_chunks(image) -> dict[int, list[Chunk]]:
    """Every blob's distinct chunks (by chunk index), from the files of the image."""
    by_blob: dict[int, dict[int, Chunk]] = {}
    reader = image.reader
    seen: set[int] = set()
    for _, inode in image.iter_entries("/"):
        if not inode.is_reg or inode.ino in seen:
            continue
        seen.add(inode.ino)
        for chunk in reader.chunks(inode.ino):
            by_blob.setdefault(chunk.blob_index, {}).setdefault(chunk.index, chunk)
    return {index: list(chunks.values()) for index, chunks in by_blob.items()}


class _Event:
    """A pre-content event in flight: answered exactly once (by a worker, or by the deadline)."""

    __slots__ = ("fd", "deadline", "answered", "lock")

    def __init__(self, fd: int, deadline: float):
        self.fd = fd
        self.deadline = deadline
        self.answered = False
        self.lock = threading.Lock()


class OnDemandMount:
    """A kernel EROFS mount of ``image`` whose blobs are filled on demand; a context manager.

    ``bootstrap``: the local bootstrap file the kernel mounts (a URL or a non-file source is copied
    into ``work_dir`` first). ``work_dir``: the nydusd blob cache directory holding each blob's
    ``.blob.data`` and ``.chunk_map``. ``deadline``: seconds an event may wait for the backend before
    the read fails with EIO. ``threads``: events served at once. ``validate``: verify chunk digests
    before anything reaches the cache. ``readahead``: bytes of following chunks filled with each event's.
    """

    def __init__(self, image, mountpoint, *, work_dir, bootstrap=None, threads: int = DEFAULT_THREADS,
                 deadline: float = DEFAULT_DEADLINE, validate: bool | None = None, guardian: bool = True,
                 readahead: int = DEFAULT_READAHEAD):
        if image.version != 6:
            raise UnsupportedError(f"the erofs driver serves RAFS v6 images (EROFS on disk); this is RAFS "
                                   f"v{image.version}: use the fuse driver")
        self.image = image
        self.mountpoint = os.path.abspath(os.fspath(mountpoint))
        self.work_dir = os.path.abspath(os.fspath(work_dir))
        self.bootstrap = bootstrap
        self.threads = max(1, threads)
        self.deadline = deadline
        self.validate = image.validate if validate is None else validate
        self.use_guardian = guardian
        self.readahead = max(0, readahead)
        self.fillers: list[BlobFiller] = []
        self.group = -1
        self._by_identity: dict[tuple[int, int], BlobFiller] = {}
        self._pending: dict[int, _Event] = {}
        self._pending_lock = threading.Lock()
        self._wake_r = self._wake_w = -1
        self._loop: threading.Thread | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._guardian: subprocess.Popen | None = None
        self._guardian_pipe = -1
        self._temporary_bootstrap: str | None = None
        self._mounted = False
        self.events = 0
        self.denied = 0

    # -- set-up ---------------------------------------------------------------------------------

    def start(self) -> "OnDemandMount":
        """Prepare the cache files, mark the incomplete ones, start serving and mount."""
        if "," in self.work_dir:
            raise InvalidArgumentError(f"work_dir {self.work_dir}: a ',' cannot be passed in EROFS device= options")
        if not os.path.isdir(self.mountpoint):
            raise InvalidArgumentError(f"mountpoint {self.mountpoint} is not a directory")
        os.makedirs(self.work_dir, exist_ok=True)
        try:
            self._prepare_blobs()
            incomplete = [f for f in self.fillers if not f.complete]
            if incomplete:
                self._start_events(incomplete)
            self._mount(self._local_bootstrap())
        except BaseException:
            self.stop()
            raise
        log.info("on-demand EROFS at %s: %d blobs, %d to fill on demand", self.mountpoint, len(self.fillers),
                 sum(1 for f in self.fillers if not f.complete))
        return self

    def _prepare_blobs(self) -> None:
        image = self.image
        chunks = blob_chunks(image) if image.blobs else {}
        locator = image.locator
        merge_size = getattr(locator, "merge_size", DEFAULT_MERGE_SIZE)
        for blob in image.blobs:
            source = LazySource(locator, blob)
            filler = BlobFiller(blob, source, chunks.get(blob.index, []), self.work_dir,
                                validate=self.validate, merge_size=merge_size)
            self.fillers.append(filler)
            self._by_identity[filler.identity] = filler

    def _local_bootstrap(self) -> str:
        source = self.bootstrap if self.bootstrap is not None else self.image.name
        if isinstance(source, (str, os.PathLike)) and os.path.isfile(os.fspath(source)):
            path = os.path.abspath(os.fspath(source))
            if "," not in path:
                return path
        # not a local file (a URL, bytes): the kernel needs a file, so keep a copy beside the cache
        fd, path = tempfile.mkstemp(prefix=".rafs-bootstrap-", suffix=".boot", dir=self.work_dir)
        with os.fdopen(fd, "wb") as f:
            f.write(bytes(self.image.reader.data))
        self._temporary_bootstrap = path
        return path

    def _start_events(self, fillers: list[BlobFiller]) -> None:
        try:
            self.group = _fanotify.init_precontent()
        except OSError as exc:
            raise OnDemandError(f"fanotify pre-content events are not available ({exc.strerror}); the erofs "
                                f"driver needs Linux 6.14 or later and root") from None
        for filler in fillers:
            try:
                _fanotify.mark(self.group, filler.data_path)
                filler.watched = True
            except OSError as exc:
                raise OnDemandError(f"cannot watch {filler.data_path}: {exc.strerror}") from None
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC)
        self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="rafs-ondemand")
        if self.use_guardian:
            self._start_guardian()
        self._loop = threading.Thread(target=self._serve, name="rafs-ondemand-events", daemon=True)
        self._loop.start()

    def _start_guardian(self) -> None:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft > _FD_LIMIT:      # event fds stay below what the guardian sweeps after a crash
            resource.setrlimit(resource.RLIMIT_NOFILE, (_FD_LIMIT, hard))
        read_end, write_end = os.pipe2(0)
        os.set_inheritable(self.group, True)
        try:
            self._guardian = subprocess.Popen(
                [sys.executable, "-m", "rafs.serve.guardian", str(self.group), str(read_end), self.mountpoint,
                 str(min(soft, _FD_LIMIT))],
                pass_fds=(self.group, read_end), stdin=subprocess.DEVNULL, start_new_session=True,
                env=_env_finding_rafs())
        finally:
            os.close(read_end)
            os.set_inheritable(self.group, False)
        self._guardian_pipe = write_end
        os.set_inheritable(write_end, False)

    def _mount(self, bootstrap: str) -> None:
        mount_file_backed(bootstrap, self.mountpoint, [f.data_path for f in self.fillers])
        self._mounted = True
        if self._guardian_pipe >= 0:
            os.write(self._guardian_pipe, f"dev {os.stat(self.mountpoint).st_dev}\n".encode())

    # -- serving --------------------------------------------------------------------------------

    def _serve(self) -> None:
        poller = select.poll()
        poller.register(self.group, select.POLLIN)
        poller.register(self._wake_r, select.POLLIN)
        while True:
            timeout = self._expire_deadlines()
            ready = poller.poll(timeout)
            if any(fd == self._wake_r for fd, _ in ready):
                return
            if not ready:
                continue
            try:
                buffer = os.read(self.group, _EVENT_BUFFER)
            except OSError as exc:
                if exc.errno in (errno.EAGAIN, errno.EINTR):
                    continue
                log.error("fanotify read failed: %s", exc)
                return
            for event in _fanotify.parse_events(buffer):
                self._dispatch(event)

    def _dispatch(self, event: _fanotify.Event) -> None:
        self.events += 1
        if event.fd < 0:
            return                                     # a queue overflow notice: nothing to answer
        try:
            st = os.fstat(event.fd)
            filler = self._by_identity.get((st.st_dev, st.st_ino))
            missing = filler.missing(event.offset, event.count) if filler is not None else []
        except Exception as exc:  # noqa: BLE001 - never leave a reader waiting on a bug
            log.error("on-demand event for fd %d: %s", event.fd, exc)
            self._answer_now(event.fd, allow=False)
            return
        if not missing:                                # the fast path: already there (or not chunk data)
            self._answer_now(event.fd, allow=True)
            return
        pending = _Event(event.fd, time.monotonic() + self.deadline)
        with self._pending_lock:
            self._pending[event.fd] = pending
        self._pool.submit(self._fill, filler, pending, missing, event)

    def _fill(self, filler: BlobFiller, pending: _Event, missing: list[Chunk], event) -> None:
        allow = False
        try:
            todo = filler.missing(event.offset, event.count)      # another event may have filled some
            if todo:
                filler.fill(pending.fd, filler.with_readahead(todo, self.readahead))
                if filler.complete:
                    self._unmark(filler)
            allow = True
            log.debug("filled blob %s [%#x, +%#x): %d chunks", filler.blob.blob_id, event.offset or 0,
                      event.count or 0, len(missing))
        except Exception as exc:  # noqa: BLE001 - logged; the reader is answered either way
            log.error("blob %s: cannot fill [%#x, +%#x): %s", filler.blob.blob_id, event.offset or 0,
                      event.count or 0, exc)
        finally:
            self._answer(pending, allow=allow)
            with self._pending_lock:
                self._pending.pop(pending.fd, None)
            os.close(pending.fd)

    def _unmark(self, filler: BlobFiller) -> None:
        """Stop watching a data file that became complete: the kernel then reads it with no event at all."""
        with self._pending_lock:
            if filler.watched:
                filler.watched = False
            else:
                return
        try:
            _fanotify.mark(self.group, filler.data_path, remove=True)
            log.debug("blob %s is complete: no longer watched", filler.blob.blob_id)
        except OSError as exc:
            log.warning("cannot stop watching %s: %s", filler.data_path, exc)

    def _answer(self, pending: _Event, *, allow: bool) -> None:
        with pending.lock:
            if pending.answered:
                return
            pending.answered = True
        self._respond(pending.fd, allow)

    def _answer_now(self, fd: int, *, allow: bool) -> None:
        try:
            self._respond(fd, allow)
        finally:
            os.close(fd)

    def _respond(self, fd: int, allow: bool) -> None:
        if not allow:
            self.denied += 1
        try:
            _fanotify.respond(self.group, fd, allow=allow)
        except OSError as exc:
            log.warning("fanotify response for fd %d: %s", fd, exc)

    def _expire_deadlines(self) -> int:
        """Deny the events whose deadline passed; the poll timeout (ms) until the next deadline."""
        now = time.monotonic()
        with self._pending_lock:
            pending = list(self._pending.values())
        expired = [p for p in pending if p.deadline <= now]
        for p in expired:
            log.error("an on-demand read waited %.0f s for its data: answering EIO", self.deadline)
            self._answer(p, allow=False)
        upcoming = [p.deadline - now for p in pending if p.deadline > now]
        return int(min(upcoming) * 1000) + 1 if upcoming else 1000

    # -- the running mount ----------------------------------------------------------------------

    @property
    def fetched_chunks(self) -> int:
        """Chunks fetched from the backend since the mount started."""
        return sum(f.fetched_chunks for f in self.fillers)

    def prefetch(self, *, wait: bool = True, progress: Progress | None = None) -> threading.Thread:
        """Fill every blob in the background (nydusd's ``fs_prefetch``): each incomplete data file is read
        in 1 MiB pieces, which raises the same events a reader would, so foreground reads are never
        blocked behind it for longer than one piece. ``progress(done, total)`` (:mod:`rafs.progress`)
        counts the uncompressed bytes of the chunks gone through, from the prefetch's thread."""
        def run():
            todo = [filler for filler in self.fillers if not filler.complete]
            ticker = Ticker(progress, sum(c.uncompressed_size for f in todo for c in f.chunks)).start()
            for filler in todo:
                try:
                    with open(filler.data_path, "rb", buffering=0) as f:
                        for chunk in filler.chunks:
                            if not filler.chunk_map.is_ready(chunk):
                                os.pread(f.fileno(), 1, chunk.uncompressed_offset)
                            ticker.advance(chunk.uncompressed_size)
                except OSError as exc:
                    log.warning("prefetch of blob %s stopped: %s", filler.blob.blob_id, exc)
            ticker.finish()
        thread = threading.Thread(target=run, name="rafs-ondemand-prefetch", daemon=True)
        thread.start()
        if wait:
            thread.join()
        return thread

    def wait(self, poll_interval: float = 1.0) -> None:
        """Block until the mount is gone (``umount`` from outside)."""
        while self.is_mounted():
            time.sleep(poll_interval)

    def is_mounted(self) -> bool:
        """Whether the mountpoint still shows this mount."""
        if not self._mounted:
            return False
        try:
            return os.path.ismount(self.mountpoint)
        except OSError:
            return False

    def stop(self) -> None:
        """Unmount (lazily when busy), answer what is still pending, and release everything."""
        if self._mounted and self.is_mounted():
            unmount(self.mountpoint)
        self._mounted = False
        if self._loop is not None:
            os.write(self._wake_w, b"x")
            self._loop.join(10)
            self._loop = None
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=False)
            self._pool = None
        with self._pending_lock:
            leftovers = list(self._pending.values())
        for pending in leftovers:
            self._answer(pending, allow=False)
        if self._guardian is not None:
            try:
                os.write(self._guardian_pipe, b"bye\n")
            except OSError:
                pass
            os.close(self._guardian_pipe)
            self._guardian_pipe = -1
            try:
                self._guardian.wait(10)
            except subprocess.TimeoutExpired:
                self._guardian.kill()
            self._guardian = None
        for fd in (self._wake_r, self._wake_w, self.group):
            if fd >= 0:
                os.close(fd)
        self._wake_r = self._wake_w = self.group = -1
        for filler in self.fillers:
            filler.close()
        self.fillers.clear()
        if self._temporary_bootstrap is not None:
            try:
                os.unlink(self._temporary_bootstrap)
            except OSError:
                pass
            self._temporary_bootstrap = None

    def __enter__(self) -> "OnDemandMount":
        return self if self._mounted else self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _env_finding_rafs() -> dict:
    """The environment for a child ``python -m rafs...``: this rafs first on its path, installed or not."""
    package_parent = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    path = os.environ.get("PYTHONPATH")
    return dict(os.environ, PYTHONPATH=package_parent + (os.pathsep + path if path else ""))


def mount_erofs(image, mountpoint, *, work_dir, **options) -> OnDemandMount:
    """Mount ``image`` (RAFS v6) at ``mountpoint`` through the kernel's EROFS, filling its blobs into
    ``work_dir`` on demand; returns the running :class:`OnDemandMount` (``stop()`` or ``with``)."""
    return OnDemandMount(image, mountpoint, work_dir=work_dir, **options).start()
