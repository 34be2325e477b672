"""Writing an image's tree to a directory, with :mod:`tarfile`'s extraction filters.

``filter`` is ``"fully_trusted"``, ``"tar"`` or ``"data"`` (the default), with the meaning tarfile gives
them (PEP 706): ``tar`` refuses entries that would land outside the target and strips setuid/setgid
and group/other write from files; ``data`` also refuses absolute symlinks and links leaving the target,
refuses device files and fifos, and ignores ownership. Names carrying ``/``, NUL, ``.`` or ``..`` are
refused whatever the filter. Directory attributes are set after their contents.
"""

from __future__ import annotations

import os
import stat as _stat

from . import errors
from .errors import InvalidArgumentError

FILTERS = ("fully_trusted", "tar", "data")
_COPY_BLOCK = 1 << 20


def _inside(root: str, path: str) -> bool:
    return os.path.commonpath([root, path]) == root


def extract_all(image, dest, *, filter="data", members=None) -> None:  # noqa: A002
    if filter not in FILTERS and not callable(filter):
        raise InvalidArgumentError(f"unknown extraction filter {filter!r} (expected one of {FILTERS})")
    root = os.path.realpath(os.fspath(dest))
    os.makedirs(root, exist_ok=True)
    is_root = hasattr(os, "geteuid") and os.geteuid() == 0
    links: dict[int, str] = {}
    dir_attrs: list[tuple[str, object]] = []
    wanted = None if members is None else {image._resolve(m, follow_symlinks=False)[1] for m in members}

    for raw_path, inode in image.iter_entries("/"):
        if wanted is not None and raw_path not in wanted and raw_path != b"/":
            continue
        rel = os.fsdecode(raw_path.lstrip(b"/"))
        target = os.path.join(root, rel) if rel else root
        display = "/" + rel
        if not _inside(root, os.path.normpath(target)):
            raise errors.UnsafePathError(display)
        if callable(filter) and not filter(display, inode):
            continue
        parent = os.path.dirname(target)
        if target != root and not _inside(root, os.path.realpath(parent)):
            raise errors.UnsafePathError(display, "parent directory resolves outside the target")
        mode = _file_mode(inode.mode, filter)
        kind = _stat.S_IFMT(inode.mode)
        if kind == _stat.S_IFDIR:
            if target != root:
                if os.path.lexists(target) and not os.path.isdir(target):
                    os.unlink(target)
                os.makedirs(target, exist_ok=True)
            dir_attrs.append((target, inode))
            continue
        if os.path.lexists(target):
            if os.path.isdir(target) and not os.path.islink(target):
                raise errors.UnsafePathError(display, "a directory of the same name exists")
            os.unlink(target)
        if kind == _stat.S_IFREG:
            first = links.get(inode.ino) if inode.nlink > 1 else None
            if first is not None:
                os.link(first, target)
                continue
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "wb") as out, image.open_inode(inode.ino) as src:
                while True:
                    block = src.read(_COPY_BLOCK)
                    if not block:
                        break
                    out.write(block)
            if inode.nlink > 1:
                links[inode.ino] = target
        elif kind == _stat.S_IFLNK:
            link = os.fsdecode(inode.symlink or b"")
            if filter == "data":
                if os.path.isabs(link):
                    raise errors.UnsafePathError(display, f"absolute symlink target {link!r}")
                resolved = os.path.normpath(os.path.join(parent, link))
                if not _inside(root, resolved):
                    raise errors.UnsafePathError(display, f"symlink target {link!r} leaves the target")
            os.symlink(link, target)
            _set_attrs(target, inode, filter, is_root, follow=False)
            continue
        else:
            if filter == "data":
                raise errors.UnsafePathError(display, "the 'data' filter refuses device files and fifos")
            if kind in (_stat.S_IFCHR, _stat.S_IFBLK) and not is_root:
                raise errors.UnsafePathError(display, "creating a device node needs root")
            if kind == _stat.S_IFSOCK:
                continue               # sockets cannot be recreated meaningfully (tarfile skips them)
            os.mknod(target, kind | (mode & 0o7777), inode.rdev)
        os.chmod(target, mode & 0o7777)
        _set_attrs(target, inode, filter, is_root, follow=True)

    for target, inode in reversed(dir_attrs):
        os.chmod(target, _file_mode(inode.mode, filter) & 0o7777)
        _set_attrs(target, inode, filter, is_root, follow=True)


def _file_mode(mode: int, filter) -> int:  # noqa: A002
    if filter in ("tar", "data"):
        mode &= ~(_stat.S_ISUID | _stat.S_ISGID)
        if filter == "data":
            # as tarfile's data filter: no group/other write, and the owner can always read and write
            mode &= ~(_stat.S_IWGRP | _stat.S_IWOTH)
            mode |= _stat.S_IRUSR | _stat.S_IWUSR
    return mode


def _set_attrs(target: str, inode, filter, is_root: bool, *, follow: bool) -> None:  # noqa: A002
    if is_root and filter != "data":
        try:
            os.chown(target, inode.uid, inode.gid, follow_symlinks=follow)
        except OSError:
            pass
    if follow or os.utime in os.supports_follow_symlinks:
        os.utime(target, ns=(inode.mtime_ns, inode.mtime_ns), follow_symlinks=follow)
