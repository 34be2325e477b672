"""The tree helpers of rafs.testing are themselves right: a generated tree materialises to a directory
that reads back as the same tree, survives the model round trip, and the comparison sees differences.
(A wrong test helper would make every property above it pass for the wrong reason.)"""

from __future__ import annotations

import os
import stat

from hypothesis import given, settings, strategies as st

from rafs.testing import (Entry, Extent, FileData, diff_trees, directory, file, hardlink, materialise, symlink,
                          to_node, tree_from_directory, trees)
from rafs.testing.tree_io import from_node
from rafs.testing.trees import canonical, with_parents

FEW = max(5, settings.default.max_examples // 2)


@settings(max_examples=FEW)
@given(tree=trees(max_entries=12, max_file_size=1 << 13))
def test_materialised_tree_reads_back(tmp_path_factory, tree):
    top = materialise(tree, tmp_path_factory.mktemp("tree") / "root")
    assert diff_trees(tree, tree_from_directory(top)) == []


@settings(max_examples=FEW)
@given(tree=trees(max_entries=12, max_file_size=1 << 13))
def test_model_round_trip(tree):
    assert diff_trees(tree, from_node(to_node(tree))) == []


def test_to_node_shares_hardlinked_inodes_and_sorts_children():
    tree = {b"/": directory(), b"/b": file(b"x"), b"/a": hardlink(b"/b"), b"/c": directory()}
    root = to_node(tree)
    assert [c.name for c in root.children] == [b"a", b"b", b"c"]
    a, b = root.children[0], root.children[1]
    assert a.inode is b.inode and a.inode.nlink == 2 and a.hardlink_key == b.hardlink_key
    assert root.inode.nlink == 3 and stat.S_ISDIR(root.inode.mode)


@given(size=st.integers(0, 20000), offset=st.integers(0, 20000), length=st.integers(0, 9000))
def test_file_data_reads_like_the_bytes_it_describes(size, offset, length):
    data = FileData(size, (Extent(3, 100, b"ab"), Extent(4090, 20, 7), Extent(12000, 5000, b"\1")))
    whole = data.read()
    assert len(whole) == size
    assert data.pread(length, offset) == whole[offset:offset + length]
    stream = data.open()
    stream.seek(offset)
    assert stream.read(length) == whole[offset:offset + length]


def test_diff_trees_sees_each_attribute():
    base = {b"/": directory(), b"/f": file(b"abc", mode=0o644, mtime=5, xattrs={b"user.a": b"1"}),
            b"/l": symlink(b"f"), b"/h": hardlink(b"/f"), b"/d": Entry("char", rdev=os.makedev(1, 3))}
    changes = {
        "mode": {b"/f": file(b"abc", mode=0o600, mtime=5, xattrs={b"user.a": b"1"})},
        "content": {b"/f": file(b"abd", mode=0o644, mtime=5, xattrs={b"user.a": b"1"})},
        "size": {b"/f": file(b"abcd", mode=0o644, mtime=5, xattrs={b"user.a": b"1"})},
        "mtime": {b"/f": file(b"abc", mode=0o644, mtime=6, xattrs={b"user.a": b"1"})},
        "xattrs": {b"/f": file(b"abc", mode=0o644, mtime=5)},
        "target": {b"/l": symlink(b"g")},
        "kind": {b"/l": file(b"f")},
        "rdev": {b"/d": Entry("char", rdev=os.makedev(1, 5))},
        "hardlink": {b"/h": file(b"abc", mode=0o644, mtime=5, xattrs={b"user.a": b"1"})},
        "missing": {b"/f2": file(b"")},
    }
    assert diff_trees(base, base) == []
    for what, change in changes.items():
        assert diff_trees(base, {**base, **change}), what
    assert diff_trees(base, {**base, **changes["hardlink"]}, ignore={"hardlinks"}) == []
    assert diff_trees(base, {**base, **changes["mode"]}, mode_mask=0o700) == []


def test_hardlink_groups_compare_as_groups():
    # readers report a group led by its first path in pre-order, whichever link a tree names first
    tree = {b"/": directory(), b"/z": file(b"x"), b"/a": hardlink(b"/z")}
    assert canonical(tree)[b"/a"].kind == "file" and canonical(tree)[b"/z"] == hardlink(b"/a")
    assert diff_trees(tree, canonical(with_parents(tree))) == []
