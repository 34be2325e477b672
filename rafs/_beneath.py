"""Open files of a source tree relative to its root's directory fd, never through a symlink.

A directory build walks a tree that someone else may change while it runs. Opening by full path
would follow a parent directory swapped for a symlink out of the tree, and block forever on a file
swapped for a FIFO. So the walk keeps one fd of the tree's root (:class:`TreeRoot`), and every
directory is opened beneath it: with ``openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`` (Linux 5.6+)
in one call, otherwise one ``openat(O_NOFOLLOW | O_DIRECTORY)`` per path component. Files
(:class:`TreeFile`) are opened relative to their directory's fd with ``O_NOFOLLOW | O_NONBLOCK`` (a
FIFO opens without a writer) and checked with ``fstat`` to be the regular file, by device and inode
number, that the walk saw.
"""

from __future__ import annotations

import ctypes
import errno
import operator
import os
import stat as _stat
import threading
import weakref

from .errors import BuildError

_SYS_OPENAT2 = 437                  # the same number on every architecture (include/uapi/asm-generic/unistd.h)
_RESOLVE_NO_MAGICLINKS = 0x02       # include/uapi/linux/openat2.h
_RESOLVE_NO_SYMLINKS = 0x04
_RESOLVE_BENEATH = 0x08
_RESOLVE = _RESOLVE_BENEATH | _RESOLVE_NO_SYMLINKS | _RESOLVE_NO_MAGICLINKS

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: a FIFO planted under a file's name opens at once (and is then refused) instead of
# waiting for a writer; O_NOCTTY: a terminal never becomes the controlling one.
FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


def _load_syscall():
    try:
        syscall = ctypes.CDLL(None, use_errno=True).syscall
    except (OSError, AttributeError):
        return None
    syscall.restype = ctypes.c_long
    syscall.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_char_p, ctypes.c_void_p, ctypes.c_size_t]
    return syscall


_syscall = _load_syscall()
_hows: dict[int, _OpenHow] = {}
# cleared when the kernel (or a seccomp filter) turns openat2 down; the component walk takes over
openat2_available = _syscall is not None


def _openat2(dir_fd: int, path: bytes, flags: int) -> int | None:
    """The fd, or None when openat2 is not available here."""
    global openat2_available
    how = _hows.get(flags)
    if how is None:
        how = _hows[flags] = _OpenHow(flags, 0, _RESOLVE)
    fd = _syscall(_SYS_OPENAT2, dir_fd, path, ctypes.addressof(how), ctypes.sizeof(how))
    if fd >= 0:
        return fd
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EPERM) or (err == errno.E2BIG):
        openat2_available = False
        return None
    if err == errno.EAGAIN:         # a concurrent rename somewhere in the file system: walk instead
        return None
    raise OSError(err, os.strerror(err), os.fsdecode(path))


def open_beneath(dir_fd: int, path: bytes, flags: int) -> int:
    """Open relative ``path`` (no ``..``, no empty components) beneath ``dir_fd`` without following
    any symlink on the way; OSError (ELOOP for a symlink, ENOTDIR, ...) otherwise."""
    if openat2_available:
        fd = _openat2(dir_fd, path, flags)
        if fd is not None:
            return fd
    *parents, last = path.split(b"/")
    current = dir_fd
    try:
        for name in parents:
            next_fd = os.open(name, DIR_FLAGS, dir_fd=current)
            if current != dir_fd:
                os.close(current)
            current = next_fd
        return os.open(last, flags, dir_fd=current)
    finally:
        if current != dir_fd:
            os.close(current)


def _kind(mode: int) -> str:
    for test, name in ((_stat.S_ISDIR, "a directory"), (_stat.S_ISLNK, "a symlink"), (_stat.S_ISFIFO, "a FIFO"),
                       (_stat.S_ISSOCK, "a socket"), (_stat.S_ISCHR, "a character device"),
                       (_stat.S_ISBLK, "a block device")):
        if test(mode):
            return name
    return "a regular file"


def changed_error(path: bytes, what: str) -> BuildError:
    return BuildError(f"{os.fsdecode(path)!r} changed while building: {what}")


def open_error(path: bytes, what: str, exc: OSError) -> BuildError:
    """The BuildError for failing to open ``path``: a symlink or a non-directory met on the way means
    the tree changed since the walk saw it."""
    if exc.errno in (errno.ELOOP, errno.EXDEV, errno.ENOTDIR):
        return changed_error(path, "a symlink or a non-directory now stands on its way, where the walk "
                                   "found a directory or the file itself")
    return BuildError(f"failed to open {what} {os.fsdecode(path)!r}: {exc.strerror}")


def check_same(fd: int, path: bytes, dev: int, ino: int, is_kind, kind: str) -> None:
    """Refuse the open ``fd`` unless it is what the walk saw at ``path``: of kind ``is_kind``, same inode."""
    st = os.fstat(fd)
    if not is_kind(st.st_mode):
        raise changed_error(path, f"it is now {_kind(st.st_mode)}, not the {kind} the walk found")
    if (st.st_dev, st.st_ino) != (dev, ino):
        raise changed_error(path, f"another {kind} now stands where the walk found one")


def open_regular_path(path: bytes) -> int:
    """Open a regular file by path (the last component not followed, no wait on a FIFO)."""
    try:
        fd = os.open(path, FILE_FLAGS)
    except OSError as exc:
        raise open_error(path, "node file", exc) from None
    try:
        mode = os.fstat(fd).st_mode
        if not _stat.S_ISREG(mode):
            raise BuildError(f"node file {os.fsdecode(path)!r} is {_kind(mode)}, not a regular file")
    except BaseException:
        os.close(fd)
        raise
    return fd


def join(parent: bytes, name: bytes) -> bytes:
    """The relative path of ``name`` in directory ``parent`` (b"" for the root)."""
    return parent + b"/" + name if parent else name


class TreeRoot:
    """The open root directory of a source tree. Its fd, and the directory fd each thread keeps for
    the files it opens (:meth:`dir_fd`), are closed with the last reference to the root."""

    __slots__ = ("path", "fd", "_dirs", "__weakref__")

    def __init__(self, path: bytes, fd: int):
        self.path = path
        self.fd = fd
        # thread id -> (relative path, fd) of the directory that thread opened files in last: files
        # are read in directory order, so one openat2 serves a directory's files (a thread's own
        # entry is only ever touched by that thread)
        self._dirs: dict[int, tuple[bytes, int]] = {}
        weakref.finalize(self, _close_all, fd, self._dirs)

    def full_path(self, relative: bytes | None) -> bytes:
        return self.path + b"/" + relative if relative else self.path

    def dir_fd(self, relative: bytes) -> int:
        """An fd of the directory at ``relative`` beneath the root, opened without following symlinks
        (OSError otherwise), kept for the calling thread until it asks for another directory."""
        if not relative:
            return self.fd
        thread = threading.get_ident()
        cached = self._dirs.get(thread)
        if cached is not None:
            if cached[0] is relative or cached[0] == relative:
                return cached[1]
            del self._dirs[thread]
            os.close(cached[1])
        fd = open_beneath(self.fd, relative, DIR_FLAGS)
        self._dirs[thread] = (relative, fd)
        return fd


def _close_all(fd: int, dirs: dict) -> None:
    for _, dir_fd in dirs.values():
        os.close(dir_fd)
    os.close(fd)


class TreeFile(tuple):
    """A regular file the walk found: ``(root, parent, name, dev, ino)``, the relative path of its
    directory beneath ``root`` (a :class:`TreeRoot`), its name there, and its device and inode numbers.

    It is what a directory build keeps as :attr:`rafs.model.Node.data`. :meth:`open` gives an fd
    that is certainly that file; calling the object gives a binary stream of it; as a PathLike it is
    the full path (for code that only wants to name the file). A tuple, because a directory build
    makes one per file and tuple's constructor runs no Python code.
    """

    __slots__ = ()
    root = property(operator.itemgetter(0))
    parent = property(operator.itemgetter(1))
    name = property(operator.itemgetter(2))
    dev = property(operator.itemgetter(3))
    ino = property(operator.itemgetter(4))

    def open(self) -> int:
        """The file, opened beneath its directory's fd (``O_NOFOLLOW | O_NONBLOCK``) and checked to be
        the regular file the walk saw; a BuildError naming it otherwise."""
        root, parent, name, dev, ino = self
        try:
            fd = os.open(name, FILE_FLAGS, dir_fd=root.dir_fd(parent))
        except OSError as exc:
            raise open_error(self.full_path(), "node file", exc) from None
        try:
            check_same(fd, self.full_path(), dev, ino, _stat.S_ISREG, "regular file")
        except BaseException:
            os.close(fd)
            raise
        return fd

    @property
    def relative(self) -> bytes:
        return join(self[1], self[2])

    def full_path(self) -> bytes:
        return self[0].full_path(self.relative)

    def __call__(self):
        return os.fdopen(self.open(), "rb")

    def __fspath__(self) -> bytes:
        return self.full_path()

    def __repr__(self) -> str:
        return f"TreeFile({os.fsdecode(self.full_path())!r})"
