"""Turn a directory on disk into a build tree (builder/src/directory.rs, builder/src/core/node.rs).

Every entry is ``lstat``-ed (symlinks are stored, never followed); names stay bytes and children are
sorted by their raw bytes; xattrs come from ``os.listxattr``/``os.getxattr`` and are kept sorted by
name (the reference iterates a HashMap, so its order is not reproducible). Regular files keep a
:class:`rafs._beneath.TreeFile` as ``data`` (their path beneath the tree's root and their device and
inode numbers) and ``(layer, st_dev, st_ino)`` as ``hardlink_key`` when linked more than once. As in
the reference, the root's mtime is forced to 0 (the root directory is usually made by the build tool),
whiteout entries are left out of a single-layer build, and entries are read without recursion so any
depth works.

The tree may change while it is read. So the walk holds an fd of the root, opens each directory
beneath it without following symlinks (:mod:`rafs._beneath`) and checks it is the directory its
parent listed, and looks entries up relative to their directory's fd: a directory swapped for a
symlink, or for another directory, is a BuildError naming it, never a way out of the tree.
"""

from __future__ import annotations

import errno
import os
import stat as _stat

from ..errors import BuildError, InvalidArgumentError
from ..limits import MAX_INODE_NAME_SIZE, MAX_SYMLINK_SIZE, MAX_XATTR_NAME_SIZE
from ..model import Inode, MAX_XATTR_VALUE_SIZE, Node, XATTR_PREFIXES
from .. import _beneath
from .._beneath import TreeFile
from . import tree



def load_directory(source, *, whiteout_spec: str = "oci", layer: int = 0) -> Node:
    """The tree under directory ``source`` (str, bytes or PathLike).

    Whiteouts are dropped when ``layer`` is 0 (no lower layer exists to apply them to). Directories are
    read in the order the reference numbers them (:func:`rafs.model.index_order`: each directory's
    children in name order, subdirectories depth first).
    """
    tree.check_whiteout_spec(whiteout_spec)
    top = os.fsencode(os.fspath(source))
    try:
        root_fd = os.open(top, _beneath.DIR_FLAGS)
    except OSError as exc:
        if exc.errno in (errno.ENOTDIR, errno.ELOOP):
            raise InvalidArgumentError(f"specified path must be a directory: {os.fsdecode(top)!r}") from None
        raise InvalidArgumentError(f"failed to access path {os.fsdecode(top)!r}: {exc.strerror}") from None
    # every later open is relative to this fd (closed when the last TreeFile of the tree goes)
    tree_root = _beneath.TreeRoot(top, root_fd)
    proc_fds = _proc_fd_dir()
    st = os.fstat(root_fd)
    root = _node(b"/", None, st, layer, tree_root, root_fd, root_fd)
    root.inode.mtime = root.inode.mtime_nsec = 0
    drop = whiteout_spec != "none" and layer == 0
    oci_only = whiteout_spec == "oci"
    stack = [(root, b"", st)]
    while stack:
        directory, relative, dir_st = stack.pop()
        fd = _open_dir(tree_root, relative, dir_st)
        try:
            names = _list(fd, proc_fds, tree_root.full_path(relative))
            names.sort()
            prefix = relative + b"/" if relative else b""     # joined once per directory, not per entry
            # xattrs of the entries named beneath this directory's fd (the full path only without /proc)
            xattr_prefix = proc_fds + b"%d/" % fd if proc_fds is not None else tree_root.path + b"/" + prefix
            children, subdirs = [], []
            for name in names:
                try:
                    child_st = os.lstat(name, dir_fd=fd)
                except OSError as exc:
                    raise BuildError(f"failed to stat {os.fsdecode(tree_root.full_path(prefix + name))!r}: "
                                     f"{exc.strerror}") from None
                child = _node(name, relative, child_st, layer, tree_root, fd, xattr_prefix + name)
                # only ".wh." names are OCI whiteouts: the others need no closer look
                if drop and (not oci_only or name.startswith(tree.OCI_WHITEOUT_PREFIX)) \
                        and tree.is_dropped_whiteout(child, whiteout_spec):
                    continue
                children.append(child)
                if _stat.S_ISDIR(child_st.st_mode):
                    subdirs.append((child, prefix + name, child_st))
        finally:
            if fd != root_fd:
                os.close(fd)
        directory.children = children
        stack.extend(reversed(subdirs))
    return root


def _proc_fd_dir() -> bytes | None:
    """``/proc/PID/fd/`` when mounted: ``/proc/PID/fd/N/name`` names an entry of directory fd ``N`` for
    the calls that take no ``dir_fd`` (listing as bytes, xattrs). ``PID`` rather than ``self``: one
    symlink fewer to resolve for every entry."""
    path = b"/proc/%d/fd/" % os.getpid()
    return path if os.path.isdir(path) else None


def _open_dir(tree_root: _beneath.TreeRoot, relative: bytes, st: os.stat_result) -> int:
    """An fd of the directory at ``relative``, checked to be the one the walk saw there (``st``)."""
    if not relative:
        return tree_root.fd
    path = tree_root.full_path(relative)
    try:
        fd = _beneath.open_beneath(tree_root.fd, relative, _beneath.DIR_FLAGS)
    except OSError as exc:
        raise _beneath.open_error(path, "dir", exc) from None
    try:
        _beneath.check_same(fd, path, st.st_dev, st.st_ino, _stat.S_ISDIR, "directory")
    except BaseException:
        os.close(fd)
        raise
    return fd


def _list(fd: int, proc_fds: bytes | None, path: bytes) -> list[bytes]:
    """The names in directory ``fd``, as bytes (``os.listdir`` of an fd gives str)."""
    try:
        if proc_fds is not None:
            return os.listdir(proc_fds + b"%d" % fd)    # bytes in, bytes out; cheaper than scandir's DirEntry
        return [os.fsencode(name) for name in os.listdir(fd)]
    except OSError as exc:
        raise BuildError(f"failed to read dir {os.fsdecode(path)!r}: {exc.strerror}") from None


def _node(name: bytes, parent: bytes | None, st: os.stat_result, layer: int, tree_root: _beneath.TreeRoot,
          dir_fd: int, xattr_path) -> Node:
    """The node of entry ``name`` of directory ``dir_fd``, at ``parent`` (its relative path) beneath
    the root, or the root itself when ``parent`` is None; ``xattr_path`` names the entry for the xattr
    calls (the root's fd for the root)."""
    if len(name) > MAX_INODE_NAME_SIZE:
        raise BuildError(f"file name length {len(name):#x} is too big: {_shown(tree_root, parent, name)!r}")
    mode = st.st_mode
    seconds, nanoseconds = divmod(st.st_mtime_ns, 1_000_000_000)
    follow = parent is None                 # an fd is the entry itself: there is no link to follow
    try:
        xattr_names = os.listxattr(xattr_path, follow_symlinks=follow)
    except OSError as exc:
        xattr_names = _listxattr_failed(_shown(tree_root, parent, name), exc)
    # positional, in rafs.model.Inode's field order: ino, mode, uid, gid, size, mtime, mtime_nsec, nlink,
    # rdev, blocks, flags, symlink, xattrs; and Node's: name, inode, children, data, chunks, hardlink_key,
    # layer (keywords cost a microsecond an entry; most entries have no xattrs, so no call for them)
    inode = Inode(0, mode, st.st_uid, st.st_gid, 0, seconds, nanoseconds, 1, st.st_rdev, 0, 0, None,
                  _xattrs(xattr_path, follow, _shown(tree_root, parent, name), xattr_names) if xattr_names else {})
    node = Node(name, inode, [], None, [], None, layer)
    if _stat.S_ISREG(mode):
        inode.size = st.st_size
        node.data = TreeFile((tree_root, parent, name, st.st_dev, st.st_ino))
        if st.st_nlink > 1:
            node.hardlink_key = (layer, st.st_dev, st.st_ino)
    elif _stat.S_ISLNK(mode):
        try:
            target = os.readlink(name, dir_fd=dir_fd)
        except OSError as exc:
            raise BuildError(f"failed to read symlink target for {_shown(tree_root, parent, name)!r}: "
                             f"{exc.strerror}") from None
        if len(target) > MAX_SYMLINK_SIZE:
            raise BuildError(f"symlink content size {len(target):#x} is too big: "
                             f"{_shown(tree_root, parent, name)!r}")
        inode.symlink = target
        inode.size = len(target)
    elif not _stat.S_ISDIR(mode):
        inode.size = st.st_size
    return node


def _shown(tree_root: _beneath.TreeRoot, parent: bytes | None, name: bytes) -> str:
    """The full path of entry ``name`` of ``parent`` (the root for None), for messages."""
    return os.fsdecode(tree_root.full_path(None if parent is None else _beneath.join(parent, name)))


def _listxattr_failed(path: str, exc: OSError) -> list:
    """No xattr names where the filesystem has no xattrs at all; any other failure is a BuildError."""
    if exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
        return []
    raise BuildError(f"failed to list xattr of {path!r}: {exc.strerror}") from None


def _xattrs(target, follow: bool, path: str, names: list) -> dict[bytes, bytes]:
    """The xattrs ``names`` (as ``os.listxattr`` gave them) of ``target`` (an fd or a path naming the
    entry at ``path`` without following a symlink), sorted by name."""
    xattrs = {}
    for name in sorted(os.fsencode(n) for n in names):
        check_xattr_name(name, path)
        try:
            value = os.getxattr(target, name, follow_symlinks=follow)
        except OSError as exc:
            if exc.errno == errno.ENODATA:          # removed between list and get
                continue
            raise BuildError(f"failed to get xattr {os.fsdecode(name)!r} of {path!r}: "
                             f"{exc.strerror}") from None
        if len(value) > MAX_XATTR_VALUE_SIZE:
            raise BuildError(f"xattr {os.fsdecode(name)!r} of {path!r}: value of {len(value)} "
                             f"bytes is too big (limit {MAX_XATTR_VALUE_SIZE})")
        xattrs[name] = value
    return xattrs


def check_xattr_name(name: bytes, where: str) -> None:
    """Refuse a name RAFS cannot store (rafs/src/metadata/layout/mod.rs ``RafsXAttrs::add``)."""
    if len(name) > MAX_XATTR_NAME_SIZE:
        raise BuildError(f"xattr name {os.fsdecode(name)!r} of {where!r} is longer than 255 bytes")
    if not name.startswith(XATTR_PREFIXES):
        raise BuildError(f"xattr {os.fsdecode(name)!r} of {where!r} has a prefix RAFS cannot store "
                         f"(accepted: {', '.join(p.decode() for p in XATTR_PREFIXES)})")
