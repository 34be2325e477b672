"""Numbering a build tree and handling whiteouts, as the reference builder does.

:func:`number_tree` gives every node its inode number in the reference's index order
(:func:`rafs.model.index_order`, builder/src/core/bootstrap.rs ``build_rafs``): hardlinked regular
files share the first link's number and :class:`~rafs.model.Inode`, directories get
``nlink = 2 + subdirectories``. :func:`whiteout_type` and :func:`remove_whiteouts` follow
builder/src/core/overlay.rs for single-layer directory builds, which drop whiteout entries (keeping
overlayfs opaque directories, xattr included) because there is no lower layer to apply them to.
"""

from __future__ import annotations

import enum
import stat as _stat

from ..errors import InvalidArgumentError
from ..model import Node, TreeIndex, index_order
from ..options import WHITEOUT_SPECS

OCI_WHITEOUT_PREFIX = b".wh."
OCI_WHITEOUT_OPAQUE = b".wh..wh..opq"
OVERLAYFS_OPAQUE_XATTR = b"trusted.overlay.opaque"
_S_IFMT, _S_IFDIR, _S_IFREG = 0o170000, _stat.S_IFDIR, _stat.S_IFREG


class WhiteoutType(enum.Enum):
    """``WhiteoutType`` (builder/src/core/overlay.rs)."""

    OCI_OPAQUE = "oci-opaque"
    OCI_REMOVAL = "oci-removal"
    OVERLAYFS_OPAQUE = "overlayfs-opaque"
    OVERLAYFS_REMOVAL = "overlayfs-removal"


def check_whiteout_spec(spec: str) -> str:
    if spec not in WHITEOUT_SPECS:
        raise InvalidArgumentError(f"unknown whiteout spec {spec!r} (expected one of {', '.join(WHITEOUT_SPECS)})")
    return spec


def whiteout_type(node: Node, spec: str) -> WhiteoutType | None:
    """What ``node`` removes from a lower layer under ``spec``, or None for an ordinary entry.

    OCI names are only recognised when they are valid UTF-8 (the reference tests ``to_str()``); an
    overlayfs whiteout is a character device 0:0, an opaque directory carries
    ``trusted.overlay.opaque = "y"``.
    """
    if spec == "oci":
        try:
            node.name.decode("utf-8")
        except UnicodeDecodeError:
            return None
        if node.name == OCI_WHITEOUT_OPAQUE:
            return WhiteoutType.OCI_OPAQUE
        if node.name.startswith(OCI_WHITEOUT_PREFIX):
            return WhiteoutType.OCI_REMOVAL
    elif spec == "overlayfs":
        mode = node.inode.mode
        if _stat.S_ISCHR(mode) and node.inode.rdev == 0:
            return WhiteoutType.OVERLAYFS_REMOVAL
        if _stat.S_ISDIR(mode) and node.inode.xattrs.get(OVERLAYFS_OPAQUE_XATTR) == b"y":
            return WhiteoutType.OVERLAYFS_OPAQUE
    return None


def is_dropped_whiteout(node: Node, spec: str) -> bool:
    """Whether a single-layer directory build leaves ``node`` out (builder/src/directory.rs)."""
    kind = whiteout_type(node, spec)
    return kind is not None and kind is not WhiteoutType.OVERLAYFS_OPAQUE


def remove_whiteouts(root: Node, spec: str) -> None:
    """Drop whiteout entries (and what is under them) from a single-layer tree, in place."""
    check_whiteout_spec(spec)
    if spec == "none":
        return
    stack = [root]
    while stack:
        directory = stack.pop()
        directory.children = [c for c in directory.children if not is_dropped_whiteout(c, spec)]
        stack.extend(c for c in directory.children if c.inode.is_dir)


def number_tree(root: Node) -> TreeIndex:
    """Give every node its index as inode number and set ``nlink``; return the index order.

    Regular files with the same ``hardlink_key`` become one inode: the later links take the first
    link's :class:`~rafs.model.Inode` object (so ``ino`` is the first link's index) and every link
    gets ``nlink`` = number of links in the tree. Other nodes get their own index and ``nlink`` 1,
    directories ``2 + subdirectories``. Non-regular nodes are never coalesced (reference commit
    34e6071e: hard-linked symlinks stay distinct inodes).
    """
    order = index_order(root)
    nodes, parents = order.nodes, order.parents
    groups: dict[object, list[Node]] = {}
    for index, node in enumerate(nodes, start=1):
        inode = node.inode
        kind = inode.mode & _S_IFMT
        if kind == _S_IFREG and node.hardlink_key is not None:
            group = groups.get(node.hardlink_key)
            if group is not None:
                node.inode = group[0].inode
                group.append(node)
                node.inode.nlink = len(group)
                continue
            groups[node.hardlink_key] = [node]
        inode.ino = index
        if kind == _S_IFDIR:
            # a directory starts at 2 and each subdirectory adds one as it is numbered (parents come
            # first in index order), which spares a second pass over every directory's children
            inode.nlink = 2
            if index > 1:
                nodes[parents[index - 1] - 1].inode.nlink += 1
        else:
            inode.nlink = 1
    return order


def iter_nodes(root: Node):
    """Every node of the tree in pre-order without recursion (trees may be deeper than Python's stack)."""
    stack = [root]
    while stack:
        node = stack.pop()
        yield node
        if node.children:
            stack.extend(reversed(node.children))
