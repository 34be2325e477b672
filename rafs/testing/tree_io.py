"""Source trees (:mod:`rafs.testing.trees`) to and from the world: written to a real directory
(:func:`materialise`), turned into a :class:`rafs.model.Node` tree (:func:`to_node`) and back
(:func:`from_node`), read back from a directory (:func:`tree_from_directory`) or an opened image
(:func:`tree_from_image`).
"""

from __future__ import annotations

import os
import stat as _stat
from dataclasses import replace

from ..model import Inode, Node
from .trees import (KIND_OF_IFMT, ROOT, Entry, FileData, hardlink, hardlink_groups, is_root, join, order_key, split,
                    with_parents)

# -- materialising -----------------------------------------------------------------------------------

def materialise(tree: dict, dest, *, block: int = 1 << 20) -> str:
    """Create ``tree`` under the directory ``dest`` (created if missing) and return its path.

    Regular files are written sparse (only their extents), so holes stay holes. Ownership and
    devices need root; ``trusted.*`` xattrs too. Directory times and modes are applied last.
    """
    dest = os.fsencode(os.fspath(dest))
    os.makedirs(dest, exist_ok=True)
    tree = with_parents(tree)

    def real(path: bytes) -> bytes:
        return dest if path == ROOT else dest + path

    ordered = sorted(tree, key=order_key)
    for path in ordered:
        entry, target = tree[path], real(path)
        if path == ROOT:
            continue
        if entry.kind == "dir":
            os.mkdir(target, 0o700)
        elif entry.kind == "file":
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                for ext in entry.data.extents:
                    end = min(ext.offset + ext.length, entry.data.size)
                    for start in range(ext.offset, end, block):
                        os.pwrite(fd, ext.bytes_at(start - ext.offset, min(block, end - start)), start)
                os.ftruncate(fd, entry.data.size)
            finally:
                os.close(fd)
        elif entry.kind == "symlink":
            os.symlink(entry.target, target)
        elif entry.kind in ("fifo", "socket", "char", "block"):
            os.mknod(target, entry.st_mode & ~0o7777 | 0o600, entry.rdev)
    for path in ordered:                   # hardlinks once every file exists
        if tree[path].kind == "hardlink":
            os.link(real(tree[path].target), real(path), follow_symlinks=False)
    dirs = []
    for path in ordered:
        entry, target = tree[path], real(path)
        if entry.kind == "hardlink":
            continue
        if entry.kind == "dir":
            dirs.append((target, entry))
            continue
        _apply_attrs(target, entry)
    for target, entry in reversed(dirs):
        _apply_attrs(target, entry)
    return os.fsdecode(dest)


def _apply_attrs(target: bytes, entry: Entry) -> None:
    link = entry.kind == "symlink"
    for key, value in entry.xattrs.items():
        os.setxattr(target, key, value, follow_symlinks=not link)
    if is_root():                                  # ownership is only kept by root
        os.chown(target, entry.uid, entry.gid, follow_symlinks=not link)
    if not link:
        os.chmod(target, entry.mode & 0o7777)       # after chown, which clears set-id bits
    os.utime(target, ns=(entry.mtime * 10**9 + entry.mtime_nsec,) * 2, follow_symlinks=not link)


# -- the model ---------------------------------------------------------------------------------------

def to_node(tree: dict) -> Node:
    """The tree as a :class:`rafs.model.Node` tree: children in raw-name order, inode numbers in
    pre-order, hardlinks sharing one ``hardlink_key`` and inode, file data as ``FileData.open``."""
    tree = with_parents(tree)
    groups = {p: g for g in hardlink_groups(tree) for p in g}
    nodes: dict[bytes, Node] = {}
    inodes: dict[bytes, Inode] = {}
    for ino, path in enumerate(sorted(tree, key=order_key), start=1):
        entry = tree[path]
        group = groups.get(path)
        if entry.kind == "hardlink" or group:
            leader = next(p for p in group if tree[p].kind == "file")
            key = group[0]
            if key not in inodes:
                inodes[key] = _inode(tree[leader], ino, nlink=len(group))
            inode, data, hl = inodes[key], tree[leader].data, key
        else:
            inode, data, hl = _inode(entry, ino, nlink=1), entry.data, None
        node = Node(name=ROOT if path == ROOT else split(path)[1], inode=inode,
                    data=data.open if data is not None else None, hardlink_key=hl)
        nodes[path] = node
        if path != ROOT:
            nodes[split(path)[0]].children.append(node)
    for node in nodes.values():
        node.children.sort(key=lambda n: n.name)
    _set_dir_nlinks(nodes[ROOT])
    return nodes[ROOT]


def _inode(entry: Entry, ino: int, *, nlink: int) -> Inode:
    size = 0
    if entry.kind == "file":
        size = entry.data.size
    elif entry.kind == "symlink":
        size = len(entry.target)
    return Inode(ino=ino, mode=entry.st_mode, uid=entry.uid, gid=entry.gid, size=size, mtime=entry.mtime,
                 mtime_nsec=entry.mtime_nsec, nlink=nlink, rdev=entry.rdev,
                 symlink=entry.target if entry.kind == "symlink" else None, xattrs=dict(entry.xattrs))


def node(name: bytes, entry: Entry, children=(), *, hardlink_key=None) -> Node:
    """A model node for ``entry`` called ``name``, taken as is (no checks on the name or the
    children), for hand-made trees such as hostile images; see :func:`rafs.testing.build_node`."""
    data = entry.data if entry.data is not None else (FileData(0) if entry.kind == "file" else None)
    return Node(name=name, inode=_inode(replace(entry, data=data), 0, nlink=1),
                children=list(children), data=data.open if data is not None else None,
                hardlink_key=hardlink_key)


def _set_dir_nlinks(node: Node) -> None:
    stack = [node]
    while stack:
        current = stack.pop()
        if current.inode.is_dir:
            subdirs = [c for c in current.children if c.inode.is_dir]
            current.inode.nlink = 2 + len(subdirs)
            stack.extend(subdirs)


def from_node(root: Node) -> dict:
    """A :class:`rafs.model.Node` tree back as a tree description (data read through ``data``)."""
    tree, first = {}, {}
    for path, node in root.walk(ROOT):
        inode = node.inode
        key = node.hardlink_key
        if inode.is_reg and key is not None and key in first:
            tree[path] = hardlink(first[key])
            continue
        data = None
        if inode.is_reg:
            data = _read_stream(node.data() if callable(node.data) else open(node.data, "rb"))  # noqa: SIM115
            if key is not None:
                first[key] = path
        tree[path] = _entry_from_inode(inode, data)
    return tree


def _read_stream(stream) -> FileData:
    with stream:
        return FileData.literal(stream.read())


# -- reading back ------------------------------------------------------------------------------------

def _entry(mode: int, *, uid: int, gid: int, mtime: int, mtime_nsec: int, rdev: int,
           symlink: bytes | None, xattrs: dict, data: FileData | None) -> Entry:
    kind = KIND_OF_IFMT.get(_stat.S_IFMT(mode), "unknown")
    return Entry(kind, mode=_stat.S_IMODE(mode), uid=uid, gid=gid, mtime=mtime, mtime_nsec=mtime_nsec,
                 data=data, target=(symlink or b"") if kind == "symlink" else b"",
                 rdev=rdev if kind in ("char", "block") else 0, xattrs=dict(xattrs))


def _entry_from_inode(inode: Inode, data: FileData | None) -> Entry:
    return _entry(inode.mode, uid=inode.uid, gid=inode.gid, mtime=inode.mtime, mtime_nsec=inode.mtime_nsec,
                  rdev=inode.rdev, symlink=inode.symlink, xattrs=inode.xattrs, data=data)


def tree_from_image(image, top="/") -> dict:
    """The tree an opened :class:`rafs.Image` holds (file data read in full)."""
    tree, first = {}, {}
    for path, inode in image.iter_entries(top):
        if inode.is_reg and inode.nlink > 1:
            if inode.ino in first:
                tree[path] = hardlink(first[inode.ino])
                continue
            first[inode.ino] = path
        data = None
        if inode.is_reg:
            with image.open_inode(inode.ino) as f:
                data = FileData.literal(f.read())
        tree[path] = _entry_from_inode(inode, data)
    return tree


def tree_from_directory(top, *, xattrs: bool = True) -> dict:
    """The tree under a real directory (a mount, an extraction), hardlinks grouped by inode."""
    top = os.fsencode(os.fspath(top))
    tree, first = {}, {}
    stack = [(ROOT, top)]
    while stack:
        rel, real = stack.pop()
        st_ = os.lstat(real)
        data = None
        if _stat.S_ISREG(st_.st_mode):
            ident = (st_.st_dev, st_.st_ino)
            if st_.st_nlink > 1 and ident in first:
                tree[rel] = hardlink(first[ident])
                continue
            first[ident] = rel
            with open(real, "rb") as f:
                data = FileData.literal(f.read())
        found = {}
        if xattrs:
            for key in os.listxattr(real, follow_symlinks=False):
                found[os.fsencode(key)] = os.getxattr(real, key, follow_symlinks=False)
        mtime, mtime_nsec = divmod(st_.st_mtime_ns, 10**9)
        tree[rel] = _entry(st_.st_mode, uid=st_.st_uid, gid=st_.st_gid, mtime=mtime, mtime_nsec=mtime_nsec,
                           rdev=st_.st_rdev, symlink=os.readlink(real) if _stat.S_ISLNK(st_.st_mode) else None,
                           xattrs=found, data=data)
        if _stat.S_ISDIR(st_.st_mode):
            for name in sorted(os.listdir(real), reverse=True):     # pre-order, names ascending
                stack.append((join(rel, name), real.rstrip(b"/") + b"/" + name))
    return tree
