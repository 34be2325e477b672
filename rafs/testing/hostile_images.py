"""Images that lie about their shape: deep directory chains and files declaring sizes their chunks do
not cover (issue 12). Each maker is cheap, so a test can afford the extreme case.

* :func:`directory_chain`: a :class:`~rafs.model.Node` tree nesting ``depth`` directories, to build with
  :func:`rafs.testing.images.build_node` (100,000 levels build in a few seconds).
* :func:`declare_size`: rewrite a built bootstrap so that one regular file declares ``size`` bytes,
  whatever its chunks hold (v5: ``i_size``; v6: the file also becomes flat with a null start block,
  so all of it is holes).
* :func:`declared_sizes`: a Hypothesis strategy of sizes at and past a file's chunk coverage, up to
  the largest a v5 inode can declare.
"""

from __future__ import annotations

import stat as _stat
import struct

from hypothesis import strategies as st

from ..model import Inode, Node

MAX_DECLARED_SIZE = (1 << 64) - 1                 # a v5 i_size / v6 extended i_size is a u64


def directory_chain(depth: int, name: bytes = b"d") -> Node:
    """A root with one directory ``name`` in it, with one in it, ``depth`` levels down."""
    root = node = Node(name=b"/", inode=Inode(ino=0, mode=_stat.S_IFDIR | 0o755, nlink=2))
    for _ in range(depth):
        node.children.append(Node(name=name, inode=Inode(ino=0, mode=_stat.S_IFDIR | 0o755, nlink=2)))
        node = node.children[-1]
    return root


def declare_size(bootstrap, path: str, size: int) -> None:
    """Make the regular file at ``path`` in ``bootstrap`` (a file rafs built) declare ``size`` bytes.

    v5 keeps the file's chunks, so the bytes past them are holes; v6 (RAFS or EROFS) makes the file
    flat with a null start block (``EROFS_NULL_ADDR``): all holes. The inode digest (v5) is left as
    it was: rafs does not check it against the size.
    """
    import rafs
    from ..v6 import layout as v6layout
    with rafs.open(bootstrap) as image:
        inode = image.inode(path)
        if not inode.is_reg:
            raise ValueError(f"{path} is not a regular file")
        reader = image.reader
        if image.version == 5:
            patches = [(reader.record_offset(inode.ino) + 64, "<Q", size)]          # RafsV5Inode.i_size
        else:
            at = reader.inode_offset(inode.ino)
            fmt = struct.unpack_from("<H", reader.data, at)[0]
            if not fmt & 1:
                raise ValueError(f"{path} has a compact v6 inode, which holds no 64-bit size")
            flat = (fmt & ~(7 << 1)) | (v6layout.EROFS_INODE_FLAT_PLAIN << 1)
            patches = [(at, "<H", flat), (at + 8, "<Q", size), (at + 16, "<I", v6layout.EROFS_NULL_ADDR)]
    with open(bootstrap, "r+b") as f:
        for offset, fmt, value in patches:
            f.seek(offset)
            f.write(struct.pack(fmt, value))


def declared_sizes(coverage: int = 0) -> st.SearchStrategy[int]:
    """Sizes a file whose chunks cover ``coverage`` bytes may declare: exactly that, just past it, a
    terabyte, the u64 limit, and anything between."""
    return st.one_of(st.sampled_from([coverage, coverage + 1, 1 << 40, MAX_DECLARED_SIZE]),
                     st.integers(min_value=coverage, max_value=MAX_DECLARED_SIZE))
