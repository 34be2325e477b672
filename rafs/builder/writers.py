"""The one place that picks the v5 or the v6 bootstrap writer, for builds, merges and layered images.

Contract with both writers: every node's ``inode.ino`` holds its index (hardlinks share the first
link's :class:`~rafs.model.Inode`, :func:`rafs.builder.tree.number_tree`), ``nlink`` is set, regular
files' chunks are filled (4K-aligned uncompressed offsets, index = position in the blob's CI array),
and each :class:`~rafs.model.Blob` carries its final fields (placeholder id ``"x"*64`` for an inline
bootstrap).
"""

from __future__ import annotations

from ..errors import UnsupportedError
from ..model import Blob, Node, SuperFlags, TreeIndex

from ..options import FS_VERSIONS  # noqa: E402,F401 - re-exported


def write_bootstrap(root: Node, blobs: list[Blob], *, fs_version: int, chunk_size: int, flags: SuperFlags,
                    prefetch: list[Node] | None = None, order: TreeIndex | None = None, compat: bool = False,
                    tar_layer: int | None = None) -> bytes:
    """The bootstrap bytes of ``root`` in RAFS ``fs_version``. v5 only: ``order`` is the tree's index
    order when the caller has it, ``compat`` writes as nydus-image 2.2 did (records in index order, no
    blob features, the root left out of the inode count), ``tar_layer`` marks the nodes of that layer as
    read from a tarball (see :func:`rafs.v5.writer.write_bootstrap`)."""
    if fs_version == 5:
        from ..v5.writer import write_bootstrap as write_v5
        return write_v5(root, blobs, chunk_size=chunk_size, flags=flags, prefetch=prefetch,
                        record_order="index" if compat else "dfs", ext_blob_features=not compat,
                        order=order, tar_layer=tar_layer, count_root=not compat)
    try:
        from ..v6.writer import write_bootstrap as write_v6
    except ImportError:
        raise UnsupportedError("writing RAFS v6 bootstraps is not available in this installation") from None
    return write_v6(root, blobs, chunk_size=chunk_size, flags=flags, prefetch=prefetch)
