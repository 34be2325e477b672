"""Laying one build tree over another with whiteouts applied (``Tree::merge_overaly`` and
``merge_children`` in builder/src/core/tree.rs, builder/src/core/overlay.rs; spec §C).

Which entries are whiteouts is decided by :func:`rafs.builder.tree.whiteout_type` under a
``--whiteout-spec``:

* ``oci``: an entry ``.wh.<name>`` removes the lower ``<name>``; an entry ``.wh..wh..opq`` removes
  every lower child of its directory. The whiteout entries themselves never reach the merged tree.
* ``overlayfs``: a character device 0/0 removes the lower entry of the same name; a directory whose
  xattr ``trusted.overlay.opaque`` is ``y`` hides the lower directory's children (the xattr is
  dropped and the directory merged as a modification).
* ``none``: no processing; whiteout files are ordinary entries.

Merging works per directory, upper over lower: first the removals and opaque markers among the
upper children are applied to the lower children, then every other upper child replaces the lower
one of the same name or is added; an upper directory over a lower directory is merged recursively,
an upper non-directory drops the lower subtree (the reference keeps that subtree attached to the
replacing node, which only its numbering pass then tolerates). The upper root replaces the lower
root. Children stay sorted by raw name bytes.
"""

from __future__ import annotations

from ..model import Node
from .tree import (OCI_WHITEOUT_PREFIX, OVERLAYFS_OPAQUE_XATTR, WhiteoutType, check_whiteout_spec,
                   iter_nodes, whiteout_type)


def origin_name(node: Node, kind: WhiteoutType) -> bytes | None:
    """The name a removal whiteout removes (``.wh.foo`` -> ``foo``; overlayfs: its own name)."""
    if kind is WhiteoutType.OCI_REMOVAL:
        return node.name[len(OCI_WHITEOUT_PREFIX):]
    if kind is WhiteoutType.OVERLAYFS_REMOVAL:
        return node.name
    return None


def merge_overlay(lower: Node, upper: Node, whiteout_spec: str = "oci") -> Node:
    """Lay the tree ``upper`` over the tree ``lower``; returns the merged root (``upper``'s root).

    Both trees are consumed: their nodes are reused in the result, which then owns them.
    """
    check_whiteout_spec(whiteout_spec)
    # iterative, so that a tree thousands of levels deep cannot exhaust the Python stack
    todo = [(upper, lower.children, upper.children)]
    while todo:
        directory, lower_children, upper_children = todo.pop()
        merged = {child.name: child for child in lower_children}
        modified = []
        for child in upper_children:
            kind = whiteout_type(child, whiteout_spec)
            if kind is None:
                modified.append(child)
            elif kind is WhiteoutType.OCI_OPAQUE:
                merged.clear()
            elif kind is WhiteoutType.OVERLAYFS_OPAQUE:
                hidden = merged.get(child.name)
                if hidden is not None:
                    hidden.children = []
                child.inode.xattrs = {k: v for k, v in child.inode.xattrs.items() if k != OVERLAYFS_OPAQUE_XATTR}
                modified.append(child)
            else:
                merged.pop(origin_name(child, kind), None)
        for child in modified:
            if child.inode.is_dir:
                below = merged.get(child.name)
                below_children = below.children if below is not None and below.inode.is_dir else []
                todo.append((child, below_children, child.children))
            merged[child.name] = child
        directory.children = [merged[name] for name in sorted(merged)]
    return upper


def tag_layer(root: Node, layer: int) -> Node:
    """Mark every node of a layer's tree with ``layer`` and make its hardlink keys layer-local, so
    that equal inode numbers of different layers never join one hardlink group (the reference keys
    hardlinks by layer index, source inode and device)."""
    for node in iter_nodes(root):
        node.layer = layer
        if node.hardlink_key is not None:
            node.hardlink_key = (layer, node.hardlink_key)
    return root
