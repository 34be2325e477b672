"""FUSE mount management: mounting an image, running libfuse's request loop, unmounting, signals.

:func:`mount` serves until the mount goes away (``umount``/``fusermount3 -u`` from outside) or, with
``handle_signals``, SIGINT, SIGTERM or SIGHUP ask; a stale mount left by a crashed daemon is cleared
first. The requests themselves are :class:`rafs.fuse.operations.RafsOperations`'s.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import shutil
import signal
import subprocess
import threading
from typing import Callable

from .. import _libfuse as ll
from .. import errors
from ..image import Image
from .operations import DEFAULT_THREADS, RafsOperations

log = logging.getLogger(__name__)

# The mount's read-ahead, KiB. The kernel offers FUSE 128 KiB and lets the daemon only lower it at INIT;
# raised through the mount's backing device info, large files come in 1 MiB requests (libfuse's
# largest, 256 pages) instead of 128 KiB ones: a request costs the daemon far more than its bytes do.
READ_AHEAD_KB = 1024


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
        # a mountpoint that is not UTF-8 comes back in the tool's message: never a decoding error here
        result = subprocess.run(command, capture_output=True, encoding="utf-8", errors="backslashreplace")
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
    options = {"ro", "default_permissions", f"fsname={fsname}", "subtype=rafs"}
    if allow_other if allow_other is not None else os.geteuid() == 0:
        options.add("allow_other")
    if auto_unmount and shutil.which("fusermount3"):
        options.add("auto_unmount")           # fusermount3 unmounts even if this process is killed
    options.update(extra)
    return options


def mount(image: Image, mountpoint, *, threads: int = DEFAULT_THREADS, enable_xattr: bool = False,
          allow_other: bool | None = None, auto_unmount: bool = True, options=(),
          ready: Callable[[], None] | None = None, handle_signals: bool = True, observer=None) -> None:
    """Serve ``image`` at ``mountpoint`` until it is unmounted; returns after a clean unmount.

    ``threads``: workers for data that waits on a remote backend. ``enable_xattr``: expose extended
    attributes (nydusd's ``enable_xattr``). ``ready`` is called once the mountpoint answers. With
    ``handle_signals`` (main thread only) SIGINT, SIGTERM and SIGHUP unmount and return;
    ``umount``/``fusermount3 -u`` from outside also ends it. A stale mount left by a crashed daemon at
    ``mountpoint`` is cleared first. ``observer`` (a :class:`rafs.serve.trace.MountObserver`) counts
    the reads answered and traces the files read.
    """
    mountpoint = os.path.abspath(os.fspath(mountpoint))
    clear_stale_mount(mountpoint)
    if not os.path.isdir(mountpoint):
        raise errors.InvalidArgumentError(f"mountpoint {mountpoint} is not a directory")
    if handle_signals and threading.current_thread() is not threading.main_thread():
        raise errors.InvalidArgumentError("handle_signals=True needs the main thread")
    lib = ll.load()
    operations = RafsOperations(image, lib, threads=threads, enable_xattr=enable_xattr, observer=observer)
    fuse_args, keep = ll.make_args("rafs", mount_options(allow_other=allow_other, auto_unmount=auto_unmount,
                                                         extra=options))
    session = lib.fuse_session_new(ctypes.byref(fuse_args), ctypes.byref(operations.table),
                                   ctypes.sizeof(operations.table), None)
    if not session:
        raise errors.InvalidArgumentError(f"libfuse refused the mount options {sorted(options)}")
    if observer is None:          # a traced mount must see every read
        from .push import SiblingPusher
        operations.pusher = SiblingPusher(image, lib, session, operations.numbers.to_fuse, operations._pool)
    idle = True
    try:
        if lib.fuse_session_mount(session, os.fsencode(mountpoint)) != 0:
            raise errors.RafsError(f"cannot mount {mountpoint} (is /dev/fuse there, fuse3 installed, "
                                   f"are you root?)")
        try:
            idle = _serve(lib, session, mountpoint, ready, handle_signals)
        finally:
            if idle:
                lib.fuse_session_unmount(session)
            idle = operations.close() and idle
    finally:
        # a loop or a worker still running would touch freed memory: leave the session to the exit
        if idle:
            lib.fuse_session_destroy(session)
        del keep


def _serve(lib, session, mountpoint: str, ready, handle_signals: bool) -> bool:
    """Run the request loop until the mount goes away or a signal asks; True once the loop ended."""
    finished = threading.Event()
    signals: list[int] = []

    def loop():
        try:
            status = lib.fuse_session_loop(session)
            if status not in (0, -errno.ENODEV):
                log.warning("FUSE session ended with %s", os.strerror(-status) if status < 0 else status)
        finally:
            finished.set()

    def on_signal(signum, frame):
        signals.append(signum)
        finished.set()

    previous = {}
    if handle_signals:
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            previous[signum] = signal.signal(signum, on_signal)
    thread = threading.Thread(target=loop, name="rafs-fuse", daemon=True)
    thread.start()
    try:
        connection = None
        try:
            connection = os.stat(mountpoint).st_dev    # answered once the kernel's INIT went through
            os.statvfs(mountpoint)
        except OSError as exc:
            log.warning("%s does not answer: %s", mountpoint, exc)
        else:
            _raise_read_ahead(connection)
            if ready is not None:
                ready()
        while not finished.wait(3600):
            pass
        if signals and thread.is_alive():
            log.info("%s: unmounting", signal.Signals(signals[0]).name)
            lib.fuse_session_exit(session)
            try:
                unmount(mountpoint, lazy=True)
            except errors.RafsError as exc:
                log.warning("%s", exc)
            thread.join(2)
            if thread.is_alive() and connection is not None:
                _abort_connection(connection)     # files still open: end the connection itself
                thread.join(5)
        return not thread.is_alive()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _raise_read_ahead(dev: int) -> None:
    """Set the read-ahead of the mount on device ``dev`` to :data:`READ_AHEAD_KB` (root only: as
    another user the kernel's 128 KiB stays)."""
    path = f"/sys/class/bdi/{os.major(dev)}:{os.minor(dev)}/read_ahead_kb"
    try:
        with open(path, "w") as f:
            f.write(str(READ_AHEAD_KB))
    except OSError as exc:
        log.debug("read-ahead left at the kernel's default (%s: %s)", path, exc.strerror)


def _abort_connection(dev: int) -> None:
    path = f"/sys/fs/fuse/connections/{os.minor(dev)}/abort"
    if not os.path.exists(path) and os.geteuid() == 0:
        # the fusectl filesystem is what systemd usually mounts there
        subprocess.run(["mount", "-t", "fusectl", "fusectl", "/sys/fs/fuse/connections"], capture_output=True)
    try:
        with open(path, "w") as f:
            f.write("1")
    except OSError as exc:
        log.warning("cannot abort the FUSE connection (%s): %s", path, exc)
