"""Walking an image's directory tree: the listings and walks behind :class:`~rafs.image.Image`'s verbs,
and :class:`DirEntry`, what ``Image.scandir`` yields.

Every walk here is iterative, with memory linear in the depth of the tree (only the path of the
directory being listed is kept, each child's path made once), and refuses what a corrupt image could
plant: a directory reached twice (a loop), nesting past :data:`~rafs.model.MAX_DEPTH` below the top,
and names no file system could hold (:mod:`rafs.image.paths`). The functions take the reader, an inode
number and its path, so they know nothing of how a path was resolved.
"""

from __future__ import annotations

import itertools
import stat as _stat
from typing import Callable, Iterator

from .. import errors
from ..errors import InvalidImageError
from ..model import ImageReader, Inode, Node
from .paths import check_depth, check_name, check_name_list, check_names, visit_once
from .stat import Stat


class DirEntry:
    """An entry of ``Image.scandir``, as :class:`os.DirEntry`: ``name`` and ``path`` (bytes when the
    directory was named in bytes), its inode number, type and stat without another path lookup."""

    __slots__ = ("name", "path", "_ino", "_image")

    def __init__(self, image, name, path, ino: int):
        self.name = name
        self.path = path
        self._ino = ino
        self._image = image

    def inode(self) -> int:
        """The entry's inode number."""
        return self._ino

    def stat(self, *, follow_symlinks: bool = True) -> Stat:
        """The entry's :class:`Stat` (of a symlink's target unless ``follow_symlinks`` is false)."""
        inode = self._image.get_inode(self._ino)
        if follow_symlinks and inode.is_symlink:
            return self._image.stat(self.path)
        return Stat.from_inode(inode)

    def _is(self, kind: int, follow_symlinks: bool) -> bool:
        try:
            return _stat.S_IFMT(self.stat(follow_symlinks=follow_symlinks).st_mode) == kind
        except (errors.FileNotFoundError, errors.NotADirectoryError):
            return False                  # a dangling symlink, as os.DirEntry answers

    def is_dir(self, *, follow_symlinks: bool = True) -> bool:
        """Whether the entry is a directory (or a symlink to one, unless ``follow_symlinks`` is false)."""
        return self._is(_stat.S_IFDIR, follow_symlinks)

    def is_file(self, *, follow_symlinks: bool = True) -> bool:
        """Whether the entry is a regular file (or a symlink to one, unless ``follow_symlinks`` is false)."""
        return self._is(_stat.S_IFREG, follow_symlinks)

    def is_symlink(self) -> bool:
        """Whether the entry itself is a symlink."""
        return self._is(_stat.S_IFLNK, False)

    def __fspath__(self):
        return self.path

    def __repr__(self) -> str:
        return f"<rafs.DirEntry {self.name!r}>"


def iter_entries(reader: ImageReader, ino: int, top_path: bytes) -> Iterator[tuple[bytes, Inode]]:
    """Every (absolute path bytes, inode) under ``top_path`` (inode ``ino``) in pre-order, children by name."""
    inode_of, entries_of = reader.inode_uncached, reader.entries
    inode = inode_of(ino)
    yield top_path, inode
    if inode.mode & 0o170000 != _stat.S_IFDIR:
        return
    seen_dirs = set()
    visit_once(seen_dirs, ino, top_path)
    children = list(entries_of(ino))
    check_names(children, top_path)
    # frames[i]: the children of the directory at depth i still to visit; prefix: the path of the
    # innermost one, with its closing "/"; cuts: where to cut prefix back to on leaving each
    frames, cuts = [iter(children)], []
    prefix = top_path if top_path == b"/" else top_path + b"/"
    while frames:
        for name, child in frames[-1]:
            path = prefix + name
            inode = inode_of(child)
            yield path, inode
            if inode.mode & 0o170000 == _stat.S_IFDIR:
                visit_once(seen_dirs, child, path)
                children = list(entries_of(child))
                if children:
                    check_depth(len(frames), name, child)
                    check_names(children, path)
                    cuts.append(len(prefix))
                    prefix = path + b"/"
                    frames.append(iter(children))
                    break
        else:
            frames.pop()
            if cuts:
                prefix = prefix[:cuts.pop()]


def iter_stats(reader: ImageReader, ino: int, top_path: bytes) -> Iterator[tuple[bytes, Stat]]:
    """Every (absolute path bytes, :class:`Stat`) under ``top_path`` (inode ``ino``) in pre-order,
    children by name, each directory's children decoded together by the reader (``stat_list``)."""
    stat_list, listing_of = reader.stat_list, reader.listing
    make, stats = tuple.__new__, itertools.repeat(Stat)
    seen_dirs = set()

    def children(path: bytes, ino: int, depth: int):
        """(name, Stat) of the entries of a directory ``depth`` levels below the top, their inodes
        decoded together."""
        visit_once(seen_dirs, ino, path)
        names, inos = listing_of(ino)
        if not names:
            return iter(())
        if depth:
            check_depth(depth, path.rsplit(b"/", 1)[-1], ino)
        check_name_list(names, path)
        return zip(names, map(make, stats, stat_list(inos)))

    (stat,) = map(make, stats, stat_list((ino,)))
    yield top_path, stat
    if stat[0] & 0o170000 != _stat.S_IFDIR:
        return
    stack, cuts = [children(top_path, ino, 0)], []
    prefix = top_path if top_path == b"/" else top_path + b"/"
    while stack:
        for name, stat in stack[-1]:
            path = prefix + name
            yield path, stat
            if stat[0] & 0o170000 == _stat.S_IFDIR:
                stack.append(children(path, stat[1], len(stack)))
                cuts.append(len(prefix))
                prefix = path + b"/"
                break
        else:
            stack.pop()
            if cuts:
                prefix = prefix[:cuts.pop()]


def walk(reader: ImageReader, ino: int, top_path: bytes, *, topdown: bool, conv: Callable) -> Iterator[tuple]:
    """:func:`os.walk`'s (dirpath, dirnames, filenames) for every directory under ``top_path`` (inode
    ``ino``), names and paths made by ``conv`` from bytes; a topdown caller may prune ``dirnames``."""
    seen = set()

    def listing(path: bytes, ino: int, depth: int):
        visit_once(seen, ino, path)
        dirs, files = [], []
        entries = list(reader.entries(ino))
        if entries and depth:
            check_depth(depth, path.rsplit(b"/", 1)[-1], ino)
        for name, child in entries:
            check_name(name, path)
            (dirs if reader.inode(child).is_dir else files).append((name, child))
        return [conv(n) for n, _ in dirs], [conv(n) for n, _ in files], dirs

    if not reader.inode(ino).is_dir:
        return
    dirnames, filenames, dirs = listing(top_path, ino, 0)
    if topdown:
        yield conv(top_path), dirnames, filenames
    # per open directory: its dirnames (the caller may prune them), filenames (for bottom-up) and
    # subdirectories still to visit; only the innermost path is kept, cut back on the way up
    stack, cuts, path = [(dirnames, filenames, iter(dirs))], [], top_path
    while stack:
        dirnames, filenames, children = stack[-1]
        for name, child in children:
            if topdown and conv(name) not in dirnames:
                continue               # pruned by the caller, as os.walk allows
            cuts.append(len(path))
            path = (path if path == b"/" else path + b"/") + name
            child_dirnames, child_filenames, child_dirs = listing(path, child, len(stack))
            if topdown:
                yield conv(path), child_dirnames, child_filenames
            stack.append((child_dirnames, child_filenames, iter(child_dirs)))
            break
        else:
            stack.pop()
            if not topdown:
                yield conv(path), dirnames, filenames
            if cuts:
                path = path[:cuts.pop()] or b"/"


def tree(reader: ImageReader, ino: int) -> Node:
    """The subtree at inode ``ino`` as a :class:`rafs.model.Node` tree (chunks included)."""
    root = Node(name=b"/", inode=reader.inode(ino))
    # iterative; a directory reached twice (a loop) or nested past MAX_DEPTH is an invalid image
    seen_dirs, stack = set(), [(root, ino, 0)]
    while stack:
        node, ino, depth = stack.pop()
        if node.inode.is_reg:
            node.chunks = reader.chunks(ino)
            node.hardlink_key = ino if node.inode.nlink > 1 else None
        elif node.inode.is_dir:
            if ino in seen_dirs:
                raise InvalidImageError(f"directory inode {ino} is reachable twice", structure="directory tree")
            seen_dirs.add(ino)
            entries = list(reader.entries(ino))
            if entries:
                check_depth(depth, node.name, ino)
            for name, child in entries:
                node.children.append(Node(name=name, inode=reader.inode(child)))
                stack.append((node.children[-1], child, depth + 1))
    return root
