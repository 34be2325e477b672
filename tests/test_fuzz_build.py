"""Build-then-read properties over generated trees, for RAFS v5 and v6.

* a directory built with any options reads back as the same tree (``as_built``: root mtime 0,
  uid/gid 0 with ``repeatable``);
* rebuilding the tree read from an image gives the same bytes (``repeatable=True``);
* the kernel's EROFS mount of a v6 build shows the same tree (privileged);
* every read path works on what was built (walk, tree, check, unpack), at any directory depth.
"""

from __future__ import annotations

import contextlib
import os
import subprocess

import pytest
from hypothesis import given, settings, strategies as st

from rafs.testing import (as_built, assert_same_tree, blob_devices, build_node, build_options, build_tree,
                          directory, exercise, file, trees, tree_from_directory, tree_from_image)
from rafs.testing.tree_strategies import default_kinds
from rafs.testing.trees import Extent, FileData

from conftest import need

#: costly per example (a build, a read, sometimes a mount): a quarter of the profile's examples
FEW = max(5, settings.default.max_examples // 4)


def _small_trees(**kwargs):
    kwargs.setdefault("max_entries", 12)
    kwargs.setdefault("max_file_size", 3 * 0x1000 + 1)
    kwargs.setdefault("max_total_size", 1 << 17)
    return trees(**kwargs)


def _build(tmp_path_factory, tree, options):
    return build_tree(tree, tmp_path_factory.mktemp("build"), **options)


@pytest.mark.parametrize("version", [5, 6])
@settings(max_examples=FEW)
@given(data=st.data())
def test_build_then_read_returns_the_tree(tmp_path_factory, version, data):
    options = data.draw(build_options(versions=(version,)), label="options")
    tree = data.draw(_small_trees(chunk_size=options["chunk_size"]), label="tree")
    built = _build(tmp_path_factory, tree, options)
    with built.open(validate=True) as image:
        assert_same_tree(as_built(tree), tree_from_image(image))
        assert list(image.check(verify_data=True)) == []
    outcome = exercise(built.source, **built.open_kwargs)       # and every other read path works
    assert outcome.verdict == "ok", outcome.steps


@pytest.mark.parametrize("version", [5, 6])
@settings(max_examples=FEW)
@given(data=st.data())
def test_rebuild_of_a_read_image_is_byte_identical(tmp_path_factory, version, data):
    options = data.draw(build_options(versions=(version,), inline_meta=False), label="options")
    tree = data.draw(_small_trees(chunk_size=options["chunk_size"]), label="tree")
    first = _build(tmp_path_factory, tree, options)
    with first.open() as image:
        root = image.tree()
        for _, node in root.walk():
            if node.inode.is_reg:
                node.data = (lambda ino: lambda: image.open_inode(ino))(node.inode.ino)
        second = build_node(root, tmp_path_factory.mktemp("rebuild"), **options)
    assert _read(second.source) == _read(first.source), "bootstraps differ"
    assert first.result.blob_ids == second.result.blob_ids
    for blob_id in first.result.blob_ids:
        assert _read(os.path.join(second.blob_dir, blob_id)) == _read(os.path.join(first.blob_dir, blob_id))


def _read(path) -> bytes:
    with open(path, "rb") as f:
        return f.read()


@contextlib.contextmanager
def kernel_mounted(image, devices, where):
    """A read-only kernel EROFS mount of ``image`` with ``devices`` as blob devices, undone on exit
    (each example mounts and unmounts: loop devices must not pile up over hundreds of examples)."""
    loops = []
    mountpoint = os.path.join(where, "mnt")
    os.makedirs(mountpoint, exist_ok=True)
    try:
        for dev in devices:
            loops.append(subprocess.run(["losetup", "-r", "-f", "--show", str(dev)], check=True,
                                        capture_output=True, text=True).stdout.strip())
        options = ",".join(["ro", "loop"] + [f"device={loop}" for loop in loops])
        result = subprocess.run(["mount", "-t", "erofs", "-o", options, str(image), mountpoint],
                                capture_output=True, text=True)
        assert result.returncode == 0, f"kernel refused to mount {image}: {result.stderr.strip()}"
        try:
            yield mountpoint
        finally:
            subprocess.run(["umount", mountpoint], check=False)
    finally:
        for loop in loops:
            subprocess.run(["losetup", "-d", loop], check=False)


@pytest.mark.privileged
def test_kernel_mount_of_v6_builds_agrees_with_the_source(tmp_path_factory):
    need(os.geteuid() == 0, "kernel mounts need root")
    need("erofs" in open("/proc/filesystems").read(), "kernel has no EROFS support")

    @settings(max_examples=FEW)
    @given(data=st.data())
    def mounts_agree(data):
        options = data.draw(build_options(versions=(6,), inline_meta=False), label="options")
        tree = data.draw(_small_trees(chunk_size=options["chunk_size"], kinds=default_kinds()), label="tree")
        built = _build(tmp_path_factory, tree, options)
        work = tmp_path_factory.mktemp("mount")
        with built.open() as image:
            devices = blob_devices(image, work)
        with kernel_mounted(built.source, devices, work) as mountpoint:
            assert_same_tree(as_built(tree), tree_from_directory(mountpoint))

    mounts_agree()


@pytest.mark.parametrize("version", [5, 6])
def test_deep_and_wide_trees_read_back(tmp_path, version):
    """1200 nested directories (deeper than Python's recursion limit) and one of 3000 entries (many
    v6 directory blocks): every read path works and the tree reads back."""
    tree = {b"/": directory()}
    path = b""
    for _ in range(1200):
        path += b"/d"
        tree[path] = directory()
    tree[path + b"/leaf"] = file(b"bottom")
    for i in range(3000):
        tree[b"/wide%05d" % i] = file(b"")
    try:
        built = build_tree(tree, tmp_path, fs_version=version, compressor="none", repeatable=True)
        outcome = exercise(built.source, **built.open_kwargs)
        assert outcome.summary == "ok", outcome.steps
        with built.open() as image:
            assert_same_tree(as_built(tree), tree_from_image(image), ignore={"mtime"})
    finally:
        # shutil.rmtree (pytest's clean-up) recurses once per level: remove the deep source here
        subprocess.run(["rm", "-rf", str(tmp_path / "src")], check=False)


@pytest.mark.parametrize("version", [5, 6])
def test_inline_meta_without_file_data(tmp_path, version):
    """Found by the build property: a v6 inline-meta blob without chunks once got a device slot of 0
    blocks, which the reader (like the reference's RafsV6Device::validate) refuses."""
    built = build_tree({b"/": directory(), b"/empty": file(b"")}, tmp_path, fs_version=version,
                       compressor="zstd", blob_inline_meta=True)
    assert exercise(built.source).summary == "ok"


def test_sparse_and_boundary_files_round_trip(tmp_path):
    chunk = 0x1000
    tree = {b"/": directory()}
    for size in (0, 1, chunk - 1, chunk, chunk + 1, 3 * chunk):
        tree[b"/s%d" % size] = file(FileData(size, (Extent(max(0, size - 3), 3, 7),) if size > 3 else ()))
    tree[b"/holes"] = file(FileData(16 * chunk, (Extent(chunk - 2, 4, b"ab"), Extent(9 * chunk, chunk, 5))))
    for version in (5, 6):
        built = build_tree(tree, tmp_path / f"v{version}", fs_version=version, compressor="zstd",
                           chunk_size=chunk, repeatable=True)
        with built.open(validate=True) as image:
            assert_same_tree(as_built(tree), tree_from_image(image))
