"""Opening the files of a blob cache directory (``work_dir``) without trusting what is in it.

The directory is the user's choice; its contents are not. Files are opened relative to a descriptor of
``work_dir`` with ``O_NOFOLLOW`` and must be regular files of one link (checked on the open
descriptor), and a missing file is created with ``O_CREAT | O_EXCL`` at its name, so a symlink, FIFO,
device, directory or hard link planted under a cache file's name is never followed or written
through: :class:`CacheError` says which file is in the way. Used by the blob cache
(:mod:`rafs.io.cache`) and its chunk maps (:mod:`rafs.io.chunkmap`).
"""

from __future__ import annotations

import errno
import os
import stat as _stat

from .. import tempfiles
from ..errors import InvalidArgumentError, RafsError

O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


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
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | O_CLOEXEC)
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
    flags = (os.O_RDONLY if readonly else os.O_RDWR) | os.O_NOFOLLOW | os.O_NONBLOCK | O_CLOEXEC
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
