"""Paths in an image: ``str``/``bytes`` conversion, resolving a path to an inode as the kernel would, and
the checks every name and directory of a walk passes.

Names are bytes on disk; as ``str`` they are UTF-8 with undecodable bytes kept as surrogates (as
:mod:`os` does), so none is lost. A name from an image is untrusted: one that is empty, ``.``, ``..``
or holds ``/`` or NUL is an :class:`~rafs.errors.InvalidImageError` wherever a walk meets it, as is a
directory reached twice (a loop) or nested past :data:`~rafs.model.MAX_DEPTH`.
"""

from __future__ import annotations

import os

from .. import errors
from ..errors import InvalidArgumentError, InvalidImageError
from ..model import MAX_DEPTH, ImageReader
from ..text import printable

MAX_SYMLINK_FOLLOWS = 40      # like Linux's MAXSYMLINKS, then ELOOP

_BAD_NAMES = frozenset((b"", b".", b".."))


def fsencode(path) -> bytes:
    """``path`` (str, bytes or path-like) as the bytes an image stores names in (UTF-8, surrogateescape)."""
    if isinstance(path, bytes):
        return path
    if isinstance(path, os.PathLike):
        path = os.fspath(path)
        if isinstance(path, bytes):
            return path
    if not isinstance(path, str):
        raise InvalidArgumentError(f"path must be str or bytes, not {type(path).__name__}")
    return path.encode("utf-8", "surrogateescape")


def fsdecode(name: bytes) -> str:
    """An image's name bytes as str (UTF-8; undecodable bytes kept as surrogates)."""
    return name.decode("utf-8", "surrogateescape")


def resolve(reader: ImageReader, path, *, follow_symlinks: bool = True) -> tuple[int, bytes]:
    """(ino, normalised absolute path) of ``path`` in ``reader``'s tree, following symlinks like the
    kernel would (a final one only with ``follow_symlinks``; ELOOP after :data:`MAX_SYMLINK_FOLLOWS`)."""
    raw = fsencode(path)
    parts = [p for p in raw.split(b"/") if p and p != b"."]
    ino, stack, follows = reader.root_ino, [], 0
    dirs = [reader.root_ino]
    todo = list(reversed(parts))
    while todo:
        part = todo.pop()
        if part == b"..":
            if stack:
                stack.pop()
                dirs.pop()
            ino = dirs[-1]
            continue
        inode = reader.inode(ino)
        if not inode.is_dir:
            raise errors.NotADirectoryError(fsdecode(b"/" + b"/".join(stack)))
        child = reader.lookup(ino, part)
        if child is None:
            raise errors.FileNotFoundError(fsdecode(b"/" + b"/".join(stack + [part])))
        child_inode = reader.inode(child)
        if child_inode.is_symlink and (todo or follow_symlinks):
            follows += 1
            if follows > MAX_SYMLINK_FOLLOWS:
                raise errors.PathError(path, "Too many levels of symbolic links")
            target = child_inode.symlink or b""
            if target.startswith(b"/"):
                stack, dirs, ino = [], [reader.root_ino], reader.root_ino
            todo.extend(reversed([p for p in target.split(b"/") if p and p != b"."]))
            continue
        stack.append(part)
        dirs.append(child)
        ino = child
    return ino, b"/" + b"/".join(stack)


def visit_once(seen: set, ino: int, path: bytes) -> None:
    """Note directory ``ino`` as walked; one reached twice (a loop in a corrupt image) is refused."""
    if ino in seen:
        raise InvalidImageError(f"directory inode {ino} is reachable twice ({printable(path)})",
                                structure="directory tree")
    seen.add(ino)


def check_depth(depth: int, name: bytes, ino: int) -> None:
    """Refuse the entries of directory ``name`` (inode ``ino``), ``depth`` levels below the walk's top,
    when they would lie more than MAX_DEPTH levels down."""
    if depth >= MAX_DEPTH:
        raise InvalidImageError(f"directory {printable(name)} (inode {ino}) is nested deeper than {MAX_DEPTH} "
                                "levels", structure="directory tree")


def check_names(children: list[tuple[bytes, int]], parent: bytes) -> None:
    """:func:`check_name` over a whole listing of (name, ino) pairs, in bulk."""
    check_name_list([name for name, _ in children], parent)


def check_name_list(names: list[bytes], parent: bytes) -> None:
    """:func:`check_name` over a list of names, in bulk: the common (sound) case costs no Python step per name."""
    joined = b"/".join(names)
    if joined.count(b"/") != len(names) - 1 or b"\0" in joined or not _BAD_NAMES.isdisjoint(names):
        for name in names:
            check_name(name, parent)


def check_name(name: bytes, parent: bytes) -> None:
    """Refuse an entry ``name`` of directory ``parent`` that no file system could hold."""
    if not name or b"/" in name or b"\0" in name or name in (b".", b".."):
        raise InvalidImageError(f"entry name {name!r} in {printable(parent)} is not a valid file name",
                                structure="directory entry")
