"""Index numbering, hardlink grouping and prefetch patterns of the build tree (spec §C)."""

from __future__ import annotations

import os
import stat

from rafs.builder.prefetch import normalise_prefetch_patterns
from rafs.builder.directory import load_directory
from rafs.builder.tree import number_tree
from rafs.model import Inode, Node, index_order


def _dir(name, *children):
    return Node(name, Inode(ino=0, mode=stat.S_IFDIR | 0o755), children=list(children))


def _file(name, key=None):
    return Node(name, Inode(ino=0, mode=stat.S_IFREG | 0o644), hardlink_key=key)


def test_children_numbered_together_then_subdirectories_depth_first():
    root = _dir(b"/", _dir(b"a", _dir(b"a1", _file(b"x")), _file(b"a2")), _file(b"b"), _dir(b"c", _file(b"c1")))
    order = index_order(root)
    names = [n.name for n in order.nodes]
    assert names == [b"/", b"a", b"b", b"c", b"a1", b"a2", b"x", b"c1"]
    assert order.parents == [0, 1, 1, 1, 2, 2, 5, 4]
    # first child index; an empty directory points at the next free index
    assert order.child_index[:5] == [2, 5, 0, 8, 7]


def test_hardlinks_share_the_first_links_inode():
    root = _dir(b"/", _dir(b"d", _file(b"h2", "k")), _file(b"h1", "k"), _file(b"other"))
    order = number_tree(root)
    d, h1, other, h2 = order.nodes[1:]
    assert h2.inode is h1.inode and h1.inode.ino == 3 and h1.inode.nlink == 2
    assert other.inode.ino == 4 and other.inode.nlink == 1
    assert (root.inode.nlink, d.inode.nlink) == (3, 2)


def test_hardlinked_symlinks_stay_distinct(tmp_path):
    os.symlink("target", tmp_path / "s1")
    os.link(tmp_path / "s1", tmp_path / "s2", follow_symlinks=False)
    (tmp_path / "f").write_bytes(b"data")
    os.link(tmp_path / "f", tmp_path / "g")
    root = load_directory(tmp_path)
    number_tree(root)
    f, g, s1, s2 = root.children
    assert f.inode is g.inode and f.inode.nlink == 2
    assert s1.inode is not s2.inode and s1.inode.nlink == s2.inode.nlink == 1
    assert root.inode.mtime == root.inode.mtime_nsec == 0      # the root's mtime is not kept


def test_prefetch_patterns_are_normalised_and_deduplicated():
    assert normalise_prefetch_patterns(["/a/b", "/a/b/c", "a/rel", "  /f//g/./  ", "/a/b/", "/h", "/h/i"]) == \
        [b"/a/b", b"/f/g", b"/h"]
    assert normalise_prefetch_patterns(["/", "/x"]) == [b"/"]
