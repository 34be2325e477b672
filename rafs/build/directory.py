"""Turn a directory on disk into a build tree (builder/src/directory.rs, builder/src/core/node.rs).

Every entry is ``lstat``-ed (symlinks are stored, never followed); names stay bytes and children are
sorted by their raw bytes; xattrs come from ``os.listxattr``/``os.getxattr`` and are kept sorted by
name (the reference iterates a HashMap, so its order is not reproducible). Regular files keep their
path as ``data`` and ``(layer, st_dev, st_ino)`` as ``hardlink_key`` when linked more than once. As in
the reference, the root's mtime is forced to 0 (the root directory is usually made by the build tool),
whiteout entries are left out of a single-layer build, and entries are read without recursion so any
depth works.
"""

from __future__ import annotations

import errno
import os
import stat as _stat

from ..errors import BuildError, InvalidArgumentError
from ..model import Inode, MAX_XATTR_VALUE_SIZE, Node, XATTR_PREFIXES
from . import tree

MAX_NAME_SIZE = 0xFFFF           # the reference's u16 i_name_size limit (Linux stops at 255 anyway)
MAX_SYMLINK_SIZE = 0xFFFF
MAX_XATTR_NAME_SIZE = 255


def load_directory(source, *, whiteout_spec: str = "oci", layer: int = 0) -> Node:
    """The tree under directory ``source`` (str, bytes or PathLike).

    Whiteouts are dropped when ``layer`` is 0 (no lower layer exists to apply them to). Directories are
    read in the order the reference numbers them (:func:`rafs.model.index_order`: each directory's
    children in name order, subdirectories depth first).
    """
    tree.check_whiteout_spec(whiteout_spec)
    top = os.fsencode(os.fspath(source))
    try:
        st = os.lstat(top)
    except OSError as exc:
        raise InvalidArgumentError(f"failed to access path {os.fsdecode(top)!r}: {exc.strerror}") from None
    if not _stat.S_ISDIR(st.st_mode):
        raise InvalidArgumentError(f"specified path must be a directory: {os.fsdecode(top)!r}")
    root = _node(b"/", top, st, layer)
    root.inode.mtime = root.inode.mtime_nsec = 0
    drop = whiteout_spec != "none" and layer == 0
    oci_only = whiteout_spec == "oci"
    stack = [(root, top)]
    while stack:
        directory, path = stack.pop()
        try:
            names = os.listdir(path)            # bytes in, bytes out; cheaper than scandir's DirEntry objects
        except OSError as exc:
            raise BuildError(f"failed to read dir {os.fsdecode(path)!r}: {exc.strerror}") from None
        names.sort()
        prefix = path + b"/"                    # joined once per directory, not per entry
        children, subdirs = [], []
        for name in names:
            child_path = prefix + name
            try:
                child_st = os.lstat(child_path)
            except OSError as exc:
                raise BuildError(f"failed to stat {os.fsdecode(child_path)!r}: {exc.strerror}") from None
            child = _node(name, child_path, child_st, layer)
            # only ".wh." names are OCI whiteouts: the others need no closer look
            if drop and (not oci_only or name.startswith(tree.OCI_WHITEOUT_PREFIX)) \
                    and tree.is_dropped_whiteout(child, whiteout_spec):
                continue
            children.append(child)
            if _stat.S_ISDIR(child_st.st_mode):
                subdirs.append((child, child_path))
        directory.children = children
        stack.extend(reversed(subdirs))
    return root


def _node(name: bytes, path: bytes, st: os.stat_result, layer: int) -> Node:
    if len(name) > MAX_NAME_SIZE:
        raise BuildError(f"file name length {len(name):#x} is too big: {os.fsdecode(path)!r}")
    mode = st.st_mode
    seconds, nanoseconds = divmod(st.st_mtime_ns, 1_000_000_000)
    try:
        xattr_names = os.listxattr(path, follow_symlinks=False)
    except OSError as exc:
        xattr_names = _listxattr_failed(path, exc)
    # positional, in rafs.model.Inode's field order: ino, mode, uid, gid, size, mtime, mtime_nsec, nlink,
    # rdev, blocks, flags, symlink, xattrs; and Node's: name, inode, children, data, chunks, hardlink_key,
    # layer (keywords cost a microsecond an entry; most entries have no xattrs, so no call for them)
    inode = Inode(0, mode, st.st_uid, st.st_gid, 0, seconds, nanoseconds, 1, st.st_rdev, 0, 0, None,
                  _xattrs(path, xattr_names) if xattr_names else {})
    node = Node(name, inode, [], None, [], None, layer)
    if _stat.S_ISREG(mode):
        inode.size = st.st_size
        node.data = path
        if st.st_nlink > 1:
            node.hardlink_key = (layer, st.st_dev, st.st_ino)
    elif _stat.S_ISLNK(mode):
        try:
            target = os.readlink(path)
        except OSError as exc:
            raise BuildError(f"failed to read symlink target for {os.fsdecode(path)!r}: {exc.strerror}") from None
        if len(target) > MAX_SYMLINK_SIZE:
            raise BuildError(f"symlink content size {len(target):#x} is too big: {os.fsdecode(path)!r}")
        inode.symlink = target
        inode.size = len(target)
    elif not _stat.S_ISDIR(mode):
        inode.size = st.st_size
    return node


def _listxattr_failed(path: bytes, exc: OSError) -> list:
    """No xattr names where the filesystem has no xattrs at all; any other failure is a BuildError."""
    if exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
        return []
    raise BuildError(f"failed to list xattr of {os.fsdecode(path)!r}: {exc.strerror}") from None


def _xattrs(path: bytes, names: list) -> dict[bytes, bytes]:
    """The xattrs ``names`` (as ``os.listxattr`` gave them) of ``path``, sorted by name."""
    xattrs = {}
    for name in sorted(os.fsencode(n) for n in names):
        check_xattr_name(name, os.fsdecode(path))
        try:
            value = os.getxattr(path, name, follow_symlinks=False)
        except OSError as exc:
            if exc.errno == errno.ENODATA:          # removed between list and get
                continue
            raise BuildError(f"failed to get xattr {os.fsdecode(name)!r} of {os.fsdecode(path)!r}: "
                             f"{exc.strerror}") from None
        if len(value) > MAX_XATTR_VALUE_SIZE:
            raise BuildError(f"xattr {os.fsdecode(name)!r} of {os.fsdecode(path)!r}: value of {len(value)} "
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
