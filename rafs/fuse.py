"""Serve an image through FUSE: each kernel request becomes a call on :class:`rafs.Image`.

This is the adapter behind ``rafs mount`` (nydusd's FUSE mode). It holds no format knowledge: the
image answers by inode number (``get_inode``, ``lookup``, ``dir_entries``, ``open_inode``,
``statfs``); this module only speaks FUSE. It uses pyfuse3, libfuse3's low-level API on trio, so FUSE
inode numbers are the image's own (the root and inode 1 trade places, as FUSE fixes the root at 1),
and nothing is resolved by path.

Speed comes from the kernel: the image never changes, so entries and attributes are cached for a
year, file pages are kept across opens (``keep_cache``) and directory listings carry attributes
(readdirplus). Metadata requests are answered inline on the event loop, since the bootstrap is in
memory. File data is read inline when every chunk it needs is in memory; otherwise in a worker
thread, on one of two lanes of ``threads`` threads each: one for data on local disk or in the blob
cache, one for data that waits on a remote backend, so slow fetches never hold up cached reads.

pyfuse3 keeps one FUSE session per process: one :func:`mount` at a time.
"""

from __future__ import annotations

import collections
import errno
import functools
import itertools
import logging
import os
import shutil
import signal
import subprocess
import threading
from typing import Callable

import pyfuse3
import trio

from . import errors
from .image import Image

log = logging.getLogger(__name__)

# The image is immutable: let the kernel keep entries and attributes as long as it likes.
CACHE_TIMEOUT = 365 * 24 * 3600.0
DEFAULT_THREADS = 4          # nydusd's --fuse-threads default
ATTR_CACHE_SIZE = 1 << 16
LISTING_CACHE_SIZE = 256     # directory listings kept between opendir calls
FILE_CACHE_SIZE = 1024       # open ImageFile objects (chunk lists) kept between open calls

_session_lock = threading.Lock()


class InodeNumbers:
    """FUSE inode numbers for image inode numbers: the same, except that FUSE's root is 1.

    The image's root and the image's inode 1 trade places; an image inode 0 (a v6 nid can be 0),
    which FUSE cannot use, becomes ``ZERO``.
    """

    ZERO = 1 << 63

    def __init__(self, root: int):
        self.root = root
        self._root_slot = self._plain(root)

    def _plain(self, ino: int) -> int:
        return self.ZERO if ino == 0 else ino

    def to_fuse(self, ino: int) -> int:
        if ino == self.root:
            return pyfuse3.ROOT_INODE
        if ino == pyfuse3.ROOT_INODE:
            return self._root_slot
        return self._plain(ino)

    def to_image(self, fuse_ino: int) -> int:
        if fuse_ino == pyfuse3.ROOT_INODE:
            return self.root
        if fuse_ino == self._root_slot:
            return pyfuse3.ROOT_INODE
        return 0 if fuse_ino == self.ZERO else fuse_ino


def errno_for(exc: BaseException) -> int:
    """The errno the kernel gets for a failed request."""
    if isinstance(exc, pyfuse3.FUSEError):
        return exc.errno
    if isinstance(exc, errors.PathError):
        return exc.errno
    if isinstance(exc, errors.UnsupportedError):
        return errno.EOPNOTSUPP
    return errno.EIO         # a broken image, a missing blob, a backend that failed: an I/O error


def _replies_errno(method):
    """Turn whatever a request handler raises into a FUSE error reply (pyfuse3 would stop serving)."""
    @functools.wraps(method)
    async def handler(self, *args):
        try:
            return await method(self, *args)
        except pyfuse3.FUSEError:
            raise
        except errors.PathError as exc:
            raise pyfuse3.FUSEError(exc.errno) from None
        except errors.RafsError as exc:
            log.warning("%s: %s", method.__name__, exc)
            raise pyfuse3.FUSEError(errno_for(exc)) from None
        except Exception:
            log.exception("%s failed", method.__name__)
            raise pyfuse3.FUSEError(errno.EIO) from None
    return handler


class _LRU(collections.OrderedDict):
    def __init__(self, size: int):
        super().__init__()
        self.size = size

    def get(self, key, default=None):
        value = super().get(key, default)
        if value is not default:
            self.move_to_end(key)
        return value

    def put(self, key, value) -> None:
        self[key] = value
        self.move_to_end(key)
        while len(self) > self.size:
            self.popitem(last=False)


class RafsOperations(pyfuse3.Operations):
    """The FUSE request handlers for one image (read-only)."""

    supports_dot_lookup = False
    enable_writeback_cache = False
    enable_acl = False

    def __init__(self, image: Image, *, threads: int = DEFAULT_THREADS, enable_xattr: bool = False):
        super().__init__()
        self.image = image
        self.threads = max(1, int(threads))
        self.enable_xattr = enable_xattr
        self.numbers = InodeNumbers(image.root_ino)
        self._attr = functools.lru_cache(maxsize=ATTR_CACHE_SIZE)(self._make_attr)
        self._parents: dict[int, int] = {}
        self._handles = itertools.count(1)
        self._dirs: dict[int, tuple[int, list]] = {}
        self._files: dict[int, int] = {}
        self._listings = _LRU(LISTING_CACHE_SIZE)
        self._open_files = _LRU(FILE_CACHE_SIZE)
        self._remote_lane: trio.CapacityLimiter | None = None

    def start(self) -> None:
        """Make the worker lane; called inside the trio run that serves the requests."""
        self._remote_lane = trio.CapacityLimiter(self.threads)

    # -- attributes --------------------------------------------------------------------------------

    def _make_attr(self, ino: int) -> pyfuse3.EntryAttributes:
        inode = self.image.get_inode(ino)
        attr = pyfuse3.EntryAttributes()
        attr.st_ino = self.numbers.to_fuse(ino)
        attr.generation = 0
        attr.entry_timeout = CACHE_TIMEOUT
        attr.attr_timeout = CACHE_TIMEOUT
        attr.st_mode = inode.mode
        attr.st_nlink = inode.nlink
        attr.st_uid = inode.uid
        attr.st_gid = inode.gid
        attr.st_rdev = inode.rdev
        attr.st_size = inode.size
        attr.st_blksize = 4096
        attr.st_blocks = inode.blocks
        attr.st_atime_ns = attr.st_mtime_ns = attr.st_ctime_ns = inode.mtime_ns
        return attr

    def _negative_entry(self) -> pyfuse3.EntryAttributes:
        attr = pyfuse3.EntryAttributes()
        attr.st_ino = 0                       # the kernel caches the miss for entry_timeout
        attr.entry_timeout = CACHE_TIMEOUT
        return attr

    # -- lookups and attributes --------------------------------------------------------------------

    @_replies_errno
    async def lookup(self, parent_inode, name, ctx):
        parent = self.numbers.to_image(parent_inode)
        if name == b".":
            return self._attr(parent)
        if name == b"..":
            return self._attr(self._parents.get(parent, self.image.root_ino))
        try:
            inode = self.image.lookup(parent, name)
        except errors.FileNotFoundError:
            return self._negative_entry()
        if inode.is_dir:
            self._parents[inode.ino] = parent
        return self._attr(inode.ino)

    async def forget(self, inode_list):
        pass                                  # nothing is kept per lookup

    @_replies_errno
    async def getattr(self, inode, ctx):
        return self._attr(self.numbers.to_image(inode))

    @_replies_errno
    async def readlink(self, inode, ctx):
        target = self.image.get_inode(self.numbers.to_image(inode)).symlink
        if target is None:
            raise pyfuse3.FUSEError(errno.EINVAL)
        return target

    @_replies_errno
    async def statfs(self, ctx):
        fs = self.image.statfs()
        out = pyfuse3.StatvfsData()
        out.f_bsize = out.f_frsize = fs.f_bsize
        out.f_blocks = fs.f_blocks
        out.f_bfree = out.f_bavail = 0
        out.f_files = fs.f_files
        out.f_ffree = out.f_favail = 0
        out.f_namemax = fs.f_namemax
        return out

    # -- extended attributes -------------------------------------------------------------------------

    @_replies_errno
    async def getxattr(self, inode, name, ctx):
        if not self.enable_xattr:
            raise pyfuse3.FUSEError(errno.ENOSYS)    # as nydusd: the kernel stops asking
        value = self.image.get_inode(self.numbers.to_image(inode)).xattrs.get(name)
        if value is None:
            raise pyfuse3.FUSEError(errno.ENODATA)
        return value

    @_replies_errno
    async def listxattr(self, inode, ctx):
        if not self.enable_xattr:
            raise pyfuse3.FUSEError(errno.ENOSYS)
        return list(self.image.get_inode(self.numbers.to_image(inode)).xattrs)

    # -- directories ---------------------------------------------------------------------------------

    @_replies_errno
    async def opendir(self, inode, ctx):
        ino = self.numbers.to_image(inode)
        entries = self._listings.get(ino)
        if entries is None:
            entries = self.image.dir_entries(ino)
            self._listings.put(ino, entries)
        fh = next(self._handles)
        self._dirs[fh] = (ino, entries)
        return fh

    @_replies_errno
    async def readdir(self, fh, start_id, token):
        ino, entries = self._dirs[fh]
        # offsets: 0 is ".", 1 is "..", 2 + i is entries[i]; each reply names the offset after it
        index = start_id
        while index < len(entries) + 2:
            if index == 0:
                name, attr = b".", self._attr(ino)
            elif index == 1:
                name, attr = b"..", self._attr(self._parents.get(ino, self.image.root_ino))
            else:
                name, child = entries[index - 2]
                attr = self._attr(child)
                if attr.st_mode & 0o170000 == 0o040000:
                    self._parents[child] = ino
            if not pyfuse3.readdir_reply(token, name, attr, index + 1):
                return
            index += 1

    async def releasedir(self, fh):
        self._dirs.pop(fh, None)

    # -- files ---------------------------------------------------------------------------------------

    @_replies_errno
    async def open(self, inode, flags, ctx):
        if flags & os.O_ACCMODE != os.O_RDONLY or flags & os.O_TRUNC:
            raise pyfuse3.FUSEError(errno.EROFS)
        ino = self.numbers.to_image(inode)
        file = self._open_files.get(ino)
        if file is None:
            # the chunk list comes from the bootstrap (in memory); only images whose chunks live in
            # a blob's CI array fetch that array here, once per blob
            file = self.image.open_inode(ino)
            self._open_files.put(ino, file)
        fh = next(self._handles)
        self._files[fh] = file
        return pyfuse3.FileInfo(fh=fh, keep_cache=True)

    @_replies_errno
    async def read(self, fh, off, size):
        file = self._files[fh]
        data = file.pread(size, off, memory_only=True)
        if data is not None:
            return data
        if not file.needs_backend(size, off):
            return file.pread(size, off)      # local disk or blob cache: as quick as a thread hop
        return await trio.to_thread.run_sync(file.pread, size, off, limiter=self._remote_lane)

    async def release(self, fh):
        self._files.pop(fh, None)


# -- mounting ------------------------------------------------------------------------------------------

def is_stale(mountpoint) -> bool:
    """Whether ``mountpoint`` is a FUSE mount whose daemon is gone (ENOTCONN).

    Asked with statfs, which always reaches the daemon: a stat may be answered from attributes the
    kernel still caches.
    """
    try:
        os.statvfs(mountpoint)
    except OSError as exc:
        return exc.errno == errno.ENOTCONN
    return False


def unmount(mountpoint, *, lazy: bool = False) -> None:
    """Unmount a FUSE mount: ``fusermount3 -u`` (``-z`` when lazy), else ``umount`` (``-l``)."""
    mountpoint = os.fspath(mountpoint)
    attempts = []
    if shutil.which("fusermount3"):
        attempts.append(["fusermount3", "-u", *(["-z"] if lazy else []), mountpoint])
    if shutil.which("umount"):
        attempts.append(["umount", *(["-l"] if lazy else []), mountpoint])
    problems = []
    for command in attempts:
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode == 0:
            return
        problems.append(f"{command[0]}: {result.stderr.strip() or f'exit status {result.returncode}'}")
    raise errors.RafsError(f"cannot unmount {mountpoint}: " + ("; ".join(problems) or
                                                                "neither fusermount3 nor umount found"))


def clear_stale_mount(mountpoint) -> bool:
    """Lazily unmount what a crashed daemon left at ``mountpoint``; True when there was something."""
    if not is_stale(mountpoint):
        return False
    log.warning("%s: transport endpoint is not connected (a daemon died); unmounting it", mountpoint)
    unmount(mountpoint, lazy=True)
    return True


def mount_options(*, allow_other: bool | None = None, auto_unmount: bool = True, fsname: str = "rafs",
                  extra=()) -> set[str]:
    """The libfuse options of a read-only image mount."""
    options = set(pyfuse3.default_options) | {"ro", f"fsname={fsname}", "subtype=rafs"}
    if allow_other if allow_other is not None else os.geteuid() == 0:
        options.add("allow_other")
    if auto_unmount and shutil.which("fusermount3"):
        options.add("auto_unmount")           # fusermount3 unmounts even if this process is killed
    options.update(extra)
    return options


def mount(image: Image, mountpoint, *, threads: int = DEFAULT_THREADS, enable_xattr: bool = False,
          allow_other: bool | None = None, auto_unmount: bool = True, options=(),
          ready: Callable[[], None] | None = None, handle_signals: bool = True) -> None:
    """Serve ``image`` at ``mountpoint`` until it is unmounted; returns after a clean unmount.

    ``threads``: worker threads per lane (data on local disk or in the cache; data from a remote
    backend). ``enable_xattr``: expose extended attributes (nydusd's ``enable_xattr``). ``ready`` is
    called once the mountpoint answers. With ``handle_signals`` (main thread only) SIGINT, SIGTERM
    and SIGHUP unmount and return; a second signal stops at once. ``umount``/``fusermount3 -u`` from
    outside also ends it. A stale mount left by a crashed daemon at ``mountpoint`` is cleared first.
    """
    mountpoint = os.path.abspath(os.fspath(mountpoint))
    clear_stale_mount(mountpoint)
    if not os.path.isdir(mountpoint):
        raise errors.InvalidArgumentError(f"mountpoint {mountpoint} is not a directory")
    if handle_signals and threading.current_thread() is not threading.main_thread():
        raise errors.InvalidArgumentError("handle_signals=True needs the main thread")
    if not _session_lock.acquire(blocking=False):
        raise errors.InvalidArgumentError("this process already serves a FUSE mount (pyfuse3 keeps one)")
    try:
        operations = RafsOperations(image, threads=threads, enable_xattr=enable_xattr)
        try:
            pyfuse3.init(operations, mountpoint,
                         mount_options(allow_other=allow_other, auto_unmount=auto_unmount, extra=options))
        except RuntimeError as exc:
            raise errors.RafsError(f"cannot mount {mountpoint}: {exc} (is /dev/fuse there and "
                                   f"fuse3 installed?)") from None
        try:
            trio.run(_serve, operations, mountpoint, ready, handle_signals)
        finally:
            pyfuse3.close(unmount=True)
    finally:
        _session_lock.release()


async def _serve(operations: RafsOperations, mountpoint: str, ready, handle_signals: bool) -> None:
    operations.start()
    async with trio.open_nursery() as nursery:
        if handle_signals:
            nursery.start_soon(_stop_on_signals, nursery.cancel_scope)
        if ready is not None:
            nursery.start_soon(_announce_when_ready, mountpoint, ready)
        await pyfuse3.main(min_tasks=2, max_tasks=max(16, 4 * operations.threads))
        nursery.cancel_scope.cancel()


async def _announce_when_ready(mountpoint: str, ready) -> None:
    # the stat is answered only once the kernel's INIT went through the loop
    await trio.to_thread.run_sync(os.stat, mountpoint, abandon_on_cancel=True)
    ready()


async def _stop_on_signals(cancel_scope: trio.CancelScope) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
        count = 0
        async for signum in signals:
            count += 1
            if count == 1:
                log.info("%s: unmounting", signal.Signals(signum).name)
                pyfuse3.terminate()
            else:
                log.warning("%s again: stopping without waiting for requests in flight",
                            signal.Signals(signum).name)
                cancel_scope.cancel()
