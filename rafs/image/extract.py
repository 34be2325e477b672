"""Writing an image's tree to a directory, with :mod:`tarfile`'s extraction filters (PEP 706).

``filter`` is ``"fully_trusted"``, ``"tar"`` or ``"data"`` (the default), with the meaning tarfile gives
them:

* ``tar``: no entry lands outside the target; setuid, setgid and sticky bits and group/other write
  permission are cleared (``mode & 0o755``).
* ``data``: as ``tar``, and also symlinks with absolute targets or targets resolving outside the target
  are refused, device files and FIFOs are refused, ownership is ignored, regular files get owner
  read/write (and lose group/other execute when the owner has none), directory modes are left as
  created.
* ``fully_trusted``: modes and ownership (as root) as the image says.

A callable ``filter(path, inode)`` decides per entry (true: extract as ``fully_trusted``).

Whatever the filter, rafs never writes through a symlink or outside the target: names carrying ``/``,
NUL, ``.`` or ``..`` are refused (by the tree walk), nothing is created under a parent that resolves
outside the target, an existing symlink in the way is replaced rather than followed, symlinks are
created last (so none can redirect a later write) and, with ``data``, every symlink is checked once
more after all exist (so a chain of links cannot leave the target either). Hardlinks are made to the
first extracted link only while it is still the regular file written; sockets are skipped (tar cannot
carry them either). Regular files are written sparse: only their chunks, then truncated to size.
Directory attributes are set after their contents. Names over 255 bytes (which v5 can store) are
refused too: no Linux file system can create them. Refusals raise
:class:`~rafs.errors.UnsafePathError`; a symlink target with NUL or no bytes is an
:class:`~rafs.errors.InvalidImageError`.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat as _stat

from .. import errors
from ..errors import InvalidArgumentError, InvalidImageError
from ..limits import MAX_LINUX_SYMLINK_SIZE, MAX_NAME_SIZE
from ..readahead import DEFAULT_THREADS, DataOnce, read_ahead
from ..text import printable
from .file import COPY_PIECE
from .paths import resolve

FILTERS = ("fully_trusted", "tar", "data")


def _inside(root: str, path: str) -> bool:
    """Whether normalised absolute ``path`` is ``root`` or under it (both without a trailing slash,
    except ``/`` itself)."""
    return path == root or path.startswith(root if root.endswith("/") else root + "/")


def extract_all(image, dest, *, filter="data", members=None, threads: int | None = None) -> None:  # noqa: A002
    """Write ``image``'s tree under ``dest``; file data is read and decompressed ahead, in walk (blob)
    order, by ``threads`` workers (:mod:`rafs.readahead`) while this thread writes it."""
    if filter not in FILTERS and not callable(filter):
        raise InvalidArgumentError(f"unknown extraction filter {filter!r} (expected one of {FILTERS})")
    root = _target_root(dest)
    is_root = hasattr(os, "geteuid") and os.geteuid() == 0
    links: dict[int, str] = {}
    made: set[str] = set()          # directories known to be real directories inside the target
    dir_attrs: list[tuple[str, object, object]] = []
    symlinks: list[tuple[str, str, object, object]] = []
    wanted = None if members is None else {resolve(image.reader, m, follow_symlinks=False)[1] for m in members}

    decisions: dict[bytes, bool] = {}        # a callable filter's answers, asked once, ahead of writing
    data_once = DataOnce()

    def wants(raw_path: bytes, inode) -> bool:
        """Whether the data of this entry is needed (read ahead): a regular file extracted, and for a
        hardlinked one only its first path (the others are links to it)."""
        if wanted is not None and raw_path not in wanted and raw_path != b"/":
            return False
        if callable(filter):
            decisions[raw_path] = keep = bool(filter("/" + os.fsdecode(raw_path.lstrip(b"/")), inode))
            if not keep:
                return False
        return data_once(raw_path, inode)

    for raw_path, inode, pieces in read_ahead(image, image.iter_entries("/"), wants,
                                              threads=threads or DEFAULT_THREADS):
        if wanted is not None and raw_path not in wanted and raw_path != b"/":
            continue
        decision = decisions.pop(raw_path, None)
        with _os_errors(os.fsdecode(raw_path)):
            _extract_entry(image, root, raw_path, inode, filter, is_root, links, dir_attrs, symlinks,
                           pieces=pieces, decision=decision, made=made)
    for target, link, inode, how in symlinks:
        display = "/" + os.path.relpath(target, root)
        with _os_errors(display):
            _clear_way(target, display)
            os.symlink(link, target)
            _set_attrs(target, inode, how, is_root, None)
    # Every link was checked when made; a chain of links (each one inside) may still leave the target
    # once all exist, so the 'data' filter checks them again, fully resolved, and removes offenders.
    escaping = [t for t, _, _, how in symlinks if how == "data" and not _inside(root, os.path.realpath(t))]
    for target in escaping:
        with _os_errors("/" + os.path.relpath(target, root)):
            os.unlink(target)
    for target, inode, how in reversed(dir_attrs):
        if os.path.islink(target) or not os.path.isdir(target):
            continue
        with _os_errors("/" + os.path.relpath(target, root)):
            _set_attrs(target, inode, how, is_root, _file_mode(inode.mode, how))
    if escaping:
        shown = ", ".join("/" + os.path.relpath(t, root) for t in escaping[:5])
        raise errors.UnsafePathError(shown, "symlinks resolving outside the target were removed")


@contextlib.contextmanager
def _os_errors(display: str):
    """What the operating system refuses while writing ``display`` as an ExtractError naming it."""
    try:
        yield
    except errors.RafsError:
        raise
    except OSError as exc:
        raise errors.ExtractError(display, exc) from None


def _target_root(dest) -> str:
    """The real path of the extraction target, made if missing; a target that cannot be a directory
    (a regular file, a NUL in its name, a place such as /proc) is the caller's error."""
    try:
        root = os.path.realpath(os.fspath(dest))
        os.makedirs(root, exist_ok=True)
    except (OSError, ValueError, TypeError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise InvalidArgumentError(f"extraction target {dest!r}: {reason}") from None
    return root


def _extract_entry(image, root: str, raw_path: bytes, inode, filter, is_root: bool,  # noqa: A002
                   links: dict, dir_attrs: list, symlinks: list, *, pieces=None, decision=None,
                   made: set | None = None) -> None:
    """Create one entry under ``root`` (directory attributes and symlinks are queued, for later).

    ``made`` holds the directories this extraction made or checked: their real path was inside the
    target, and nothing it does later turns them into a link (symlinks are made last, and a file
    never replaces a directory), so their entries skip the parent's check.
    """
    made = set() if made is None else made
    rel = os.fsdecode(raw_path.lstrip(b"/"))
    target = os.path.join(root, rel) if rel else root
    display = "/" + rel
    if not _inside(root, os.path.normpath(target)):
        raise errors.UnsafePathError(display)
    if len(raw_path.rsplit(b"/", 1)[-1]) > MAX_NAME_SIZE:
        raise errors.UnsafePathError(display, f"a name longer than {MAX_NAME_SIZE} bytes cannot be created")
    how = filter
    if callable(filter):
        if not (filter(display, inode) if decision is None else decision):
            return
        how = "fully_trusted"
    kind = _stat.S_IFMT(inode.mode)
    if kind == _stat.S_IFSOCK:
        return                         # sockets cannot be recreated meaningfully (tar cannot carry them)
    if how == "data" and kind not in (_stat.S_IFDIR, _stat.S_IFREG, _stat.S_IFLNK):
        raise errors.UnsafePathError(display, "the 'data' filter refuses device files and fifos")
    parent = os.path.dirname(target)
    if target != root and parent not in made:
        if not _inside(root, os.path.realpath(parent)):
            raise errors.UnsafePathError(display, "parent directory resolves outside the target")
        os.makedirs(parent, exist_ok=True)       # members= may skip a parent
        made.add(parent)
    if kind == _stat.S_IFDIR:
        if target != root:
            try:
                os.mkdir(target)
            except FileExistsError:
                if os.path.islink(target) or not os.path.isdir(target):
                    os.unlink(target)             # never follow a link in the way
                    os.mkdir(target)
        made.add(target)
        dir_attrs.append((target, inode, how))
        return
    if kind == _stat.S_IFLNK:
        link = _symlink_target(inode, display)
        if how == "data":
            _check_link(root, parent, link, display)
        symlinks.append((target, link, inode, how))
        return
    mode = _file_mode(inode.mode, how)
    if kind == _stat.S_IFREG:
        first = links.get(inode.ino) if inode.nlink > 1 else None
        if first is not None and _is_regular(first):
            _clear_way(target, display)
            os.link(first, target, follow_symlinks=False)
            return
        fd = _create(target, display)
        try:
            _write_file(image, inode, fd, pieces)
            _set_attrs(fd, inode, how, is_root, mode)
        finally:
            os.close(fd)
        if inode.nlink > 1:
            links[inode.ino] = target
        return
    _clear_way(target, display)
    if kind in (_stat.S_IFCHR, _stat.S_IFBLK) and not is_root:
        raise errors.UnsafePathError(display, "creating a device node needs root")
    os.mknod(target, kind | 0o600, inode.rdev)
    _set_attrs(target, inode, how, is_root, mode)


def _symlink_target(inode, display: str) -> str:
    raw = inode.symlink or b""
    if not raw or b"\0" in raw:
        raise InvalidImageError(f"{printable(display)}: symlink target {raw!r} is empty or holds NUL",
                                structure="symlink")
    if len(raw) > MAX_LINUX_SYMLINK_SIZE:
        raise errors.UnsafePathError(display, f"a symlink target of {len(raw)} bytes cannot be created "
                                     f"(Linux allows {MAX_LINUX_SYMLINK_SIZE})")
    return os.fsdecode(raw)


def _check_link(root: str, parent: str, link: str, display: str) -> None:
    if os.path.isabs(link):
        raise errors.UnsafePathError(display, f"absolute symlink target {link!r}")
    if not _inside(root, os.path.realpath(os.path.join(parent, link))):
        raise errors.UnsafePathError(display, f"symlink target {link!r} leaves the target")


def _clear_way(target: str, display: str) -> None:
    """Remove what an earlier entry of the same name left (a file or a link, never a directory)."""
    if os.path.lexists(target):
        if os.path.isdir(target) and not os.path.islink(target):
            raise errors.UnsafePathError(display, "a directory of the same name exists")
        os.unlink(target)


def _is_regular(path: str) -> bool:
    try:
        return _stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


def _create(target: str, display: str) -> int:
    """A new regular file at ``target``, open for writing; what an earlier entry left there (a file or
    a link, never a directory) is removed first, and a link is never followed."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    try:
        return os.open(target, flags, 0o600)
    except FileExistsError:
        _clear_way(target, display)
        return os.open(target, flags, 0o600)


def _write_file(image, inode, fd: int, pieces=None) -> None:
    """Only the chunks are written, then the file is truncated to its size: holes stay holes and a
    huge sparse file costs nothing. ``pieces``: the file's (chunk, data) as read ahead; without them
    (a hardlink whose first path was replaced) the chunks are read here."""
    if pieces is not None:
        for chunk, data in pieces:
            room = inode.size - chunk.file_offset         # a last chunk may run past the size
            if room > 0:
                os.pwrite(fd, data if len(data) <= room else memoryview(data)[:room], chunk.file_offset)
    else:
        with image.open_inode(inode.ino) as src:
            for offset, length in src.data_regions():
                for at in range(offset, offset + length, COPY_PIECE):
                    os.pwrite(fd, src.pread(min(COPY_PIECE, offset + length - at), at), at)
    try:
        os.ftruncate(fd, inode.size)
    except OverflowError:                    # past what off_t holds: the file system's EFBIG
        raise OSError(errno.EFBIG, os.strerror(errno.EFBIG)) from None



def _file_mode(st_mode: int, filter) -> int | None:  # noqa: A002
    """The permission bits to set, or None to leave what creation gave (tarfile's filters)."""
    perms = st_mode & 0o7777
    if filter == "fully_trusted":
        return perms
    perms &= 0o755                      # no setuid/setgid/sticky, no group/other write
    if filter == "data":
        if _stat.S_ISDIR(st_mode) or _stat.S_ISLNK(st_mode):
            return None
        if _stat.S_ISREG(st_mode):
            if not perms & _stat.S_IXUSR:
                perms &= ~0o111
            perms |= _stat.S_IRUSR | _stat.S_IWUSR
    return perms


def _set_attrs(target, inode, filter, is_root: bool, mode: int | None) -> None:  # noqa: A002
    """Owner (as root, not with 'data'), then mode (chown clears set-id bits), then times; a symlink
    itself is changed, never what it points to. ``target`` is a path or a descriptor open on it."""
    nofollow = {} if isinstance(target, int) else {"follow_symlinks": False}
    if is_root and filter != "data":
        try:
            os.chown(target, inode.uid, inode.gid, **nofollow)
        except OSError:
            pass
    if mode is not None:
        os.chmod(target, mode)
    try:
        os.utime(target, ns=(inode.mtime_ns, inode.mtime_ns), **nofollow)
    except (OverflowError, OSError):
        pass                             # a time the target file system cannot hold is left unset
