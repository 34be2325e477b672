"""Property tests of batch and encrypted builds through rafs.testing's strategies: whatever tree and
options are drawn (batch size, encryption, compressor, chunk size, inline meta, blob ToC), the image
reads back as the tree, ``check -D`` passes, every read path works, and the kernel agrees."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings, strategies as st

from rafs.testing import (as_built, assert_same_tree, blob_devices, build_options, build_tree, exercise, trees,
                          tree_from_directory, tree_from_image)
from rafs.testing.images import BATCH_SIZES
from rafs.testing.tree_strategies import default_kinds

from conftest import need
from test_fuzz_build import kernel_mounted

FEW = max(5, settings.default.max_examples // 4)


def _options():
    return build_options(versions=(6,), batch_sizes=BATCH_SIZES, encrypt=None)


def _small_trees(chunk_size: int, **kwargs):
    # mostly files below half of the batch sizes drawn, some of several chunks
    return trees(max_entries=14, max_file_size=3 * 0x1000 + 1, max_total_size=1 << 17, chunk_size=chunk_size,
                 **kwargs)


@settings(max_examples=FEW)
@given(data=st.data())
def test_batch_and_encrypted_builds_read_back(tmp_path_factory, data):
    options = data.draw(_options(), label="options")
    tree = data.draw(_small_trees(options["chunk_size"]), label="tree")
    built = build_tree(tree, tmp_path_factory.mktemp("build"), **options)
    with built.open(validate=True) as image:
        assert_same_tree(as_built(tree), tree_from_image(image))
        assert list(image.check(verify_data=True)) == []
    outcome = exercise(built.source, **built.open_kwargs)
    assert outcome.verdict == "ok", outcome.steps


def test_the_strategy_draws_batches_and_encryption():
    seen = set()

    @settings(max_examples=60, database=None)
    @given(options=_options())
    def draw(options):
        assert options.get("batch_size", 0) <= options["chunk_size"]
        seen.add((options.get("batch_size", 0) > 0, options.get("encrypt", False)))

    draw()
    assert seen == {(False, False), (False, True), (True, False), (True, True)}


@pytest.mark.privileged
def test_kernel_mounts_batch_and_encrypted_builds(tmp_path_factory):
    need(os.geteuid() == 0, "kernel mounts need root")
    need("erofs" in open("/proc/filesystems").read(), "kernel has no EROFS support")

    @settings(max_examples=FEW)
    @given(data=st.data())
    def mounts_agree(data):
        options = data.draw(build_options(versions=(6,), inline_meta=False, batch_sizes=BATCH_SIZES,
                                          encrypt=None), label="options")
        tree = data.draw(_small_trees(options["chunk_size"], kinds=default_kinds()), label="tree")
        built = build_tree(tree, tmp_path_factory.mktemp("build"), **options)
        work = tmp_path_factory.mktemp("mount")
        with built.open() as image:
            devices = blob_devices(image, work)
        with kernel_mounted(built.source, devices, work) as mountpoint:
            assert_same_tree(as_built(tree), tree_from_directory(mountpoint))

    mounts_agree()
