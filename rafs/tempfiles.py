"""Temporary files rafs writes before moving a result into place.

Every temporary file or directory rafs creates beside an output is named ``.rafs-tmp-<pid>-<random>``
(plus a suffix saying what it is), made with ``O_CREAT | O_EXCL | O_NOFOLLOW`` (``mkstemp``), so a
symlink planted at a name is never followed, two processes writing the same target never share one,
and the file can be told apart from user files. A build that ends normally, fails, or is stopped by
SIGTERM, SIGINT or SIGHUP removes its temporary files (the CLI turns those signals into an exception,
see :func:`raise_on_termination`). A process killed with SIGKILL cannot: what it leaves behind matches
``.rafs-tmp-<its pid>-*`` in the output's directory and may be deleted once that process is gone.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import tempfile
import threading

TEMP_PREFIX = ".rafs-tmp-"
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


def temp_prefix() -> str:
    """The name prefix of this process's temporary files: ``.rafs-tmp-<pid>-``."""
    return f"{TEMP_PREFIX}{os.getpid()}-"


# Directories this process made temporary files in: a signal can land between a file's creation and
# the moment its owner records it for cleanup, so :func:`sweep` looks there by name as well.
_directories: set[str] = set()
_directories_lock = threading.Lock()


def _used(directory: str) -> None:
    with _directories_lock:
        _directories.add(os.path.abspath(directory))


def mkstemp(directory, suffix: str = "") -> tuple[int, str]:
    """A new, empty, private (0600) file in ``directory``: ``(fd, path)``; never follows a link."""
    _used(os.fspath(directory))
    return tempfile.mkstemp(prefix=temp_prefix(), suffix=suffix, dir=os.fspath(directory))


def mkdtemp(directory, suffix: str = "") -> str:
    """A new, empty, private (0700) directory in ``directory``."""
    _used(os.fspath(directory))
    return tempfile.mkdtemp(prefix=temp_prefix(), suffix=suffix, dir=os.fspath(directory))


def sweep() -> None:
    """Remove every temporary file and directory of this process (``.rafs-tmp-<pid>-*``) left in the
    directories it used: the last step after a signal, whatever point the signal interrupted."""
    prefix = temp_prefix()
    with _directories_lock:
        directories = list(_directories)
    for directory in directories:
        try:
            names = [n for n in os.listdir(directory) if n.startswith(prefix)]
        except OSError:
            continue
        for name in names:
            path = os.path.join(directory, name)
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path, ignore_errors=True)
            else:
                remove(path)


def create_at(dir_fd: int, suffix: str = "", mode: int = 0o600) -> tuple[int, str]:
    """A new file in the directory open as ``dir_fd``: ``(fd, name)``, created exclusively (a name
    that exists, even as a dangling symlink, is skipped rather than followed)."""
    try:
        _used(os.readlink(f"/proc/self/fd/{dir_fd}"))
    except OSError:
        pass
    for _ in range(100):
        name = f"{temp_prefix()}{secrets.token_hex(6)}{suffix}"
        try:
            fd = os.open(name, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | _O_CLOEXEC, mode,
                         dir_fd=dir_fd)
        except FileExistsError:
            continue
        return fd, name
    raise FileExistsError(f"no unused temporary name left in the directory (prefix {temp_prefix()})")


def remove(path, *, dir_fd: int | None = None) -> None:
    """Remove a temporary file if it is still there (cleanup must not hide the original error)."""
    try:
        os.unlink(path, dir_fd=dir_fd)
    except OSError:
        pass


_SIGNALS = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)


def umask() -> int:
    """The process umask, read without changing it (os.umask would race with other threads)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o022


class Terminated(KeyboardInterrupt):
    """SIGTERM, SIGHUP or SIGINT arrived: unwinds like Ctrl-C, so every ``finally`` and cleanup runs."""

    def __init__(self, signum: int):
        self.signum = signum
        super().__init__(signal.Signals(signum).name)


def _raise_terminated(signum, frame):
    # a second signal must not interrupt the cleanup the first one started (SIGKILL still stops it)
    for other in _SIGNALS:
        signal.signal(other, signal.SIG_IGN)
    raise Terminated(signum)


def _terminated_in(exc: BaseException | None) -> "Terminated | None":
    """The :class:`Terminated` that ``exc`` is, or that caused it (a bounded walk of its chain)."""
    for _ in range(32):
        if exc is None:
            return None
        if isinstance(exc, Terminated):
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


@contextlib.contextmanager
def raise_on_termination():
    """While the block runs, SIGTERM, SIGHUP and SIGINT raise :class:`Terminated` in the main thread,
    so that the ``finally`` blocks and context managers of a build remove its temporary files. The
    previous handlers come back afterwards; outside the main thread (where Python cannot set
    handlers) nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.getsignal(signum) for signum in _SIGNALS}
    try:
        for signum, handler in previous.items():
            if handler is not signal.SIG_IGN:      # nohup, or a parent that wants us immune: keep it so
                signal.signal(signum, _raise_terminated)
        try:
            yield
        except BaseException as exc:
            # the signal can land inside code that wraps what it raises (class creation turns it into
            # "Error calling __set_name__"): the termination is found in the chain and raised itself
            terminated = _terminated_in(exc)
            if terminated is None:
                raise
            sweep()
            raise terminated from None
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
