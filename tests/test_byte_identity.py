"""Byte identity: the fast cases of ``scripts/byte_identity.py`` against the committed goldens.

The goldens (``tests/data/byte_identity.json``) are the sha256 of every file rafs wrote for each case
when they were computed; a refactoring must leave every one unchanged. The script runs all the cases
(the benchmark trees too) and rewrites the goldens with ``--update`` when a change is intended.
"""

from __future__ import annotations

import importlib.util
import os
import pathlib
import sys

import pytest

from conftest import ROOT, need

_spec = importlib.util.spec_from_file_location("byte_identity", ROOT / "scripts" / "byte_identity.py")
byte_identity = importlib.util.module_from_spec(_spec)
sys.modules["byte_identity"] = byte_identity         # dataclasses look their module up there
_spec.loader.exec_module(byte_identity)

FAST = [case for case in byte_identity.cases() if case.fast]


def test_every_case_has_goldens():
    goldens = byte_identity.load_goldens()
    assert [case.name for case in byte_identity.cases() if case.name not in goldens] == []
    assert all(goldens[case.name] for case in byte_identity.cases())       # each wrote something


def test_fast_subset_covers_both_versions_and_every_compressor():
    names = {case.name for case in FAST}
    for version in byte_identity.VERSIONS:
        for compressor in byte_identity.COMPRESSORS:
            assert f"source/v{version}/{compressor}" in names
        assert f"merge/v{version}" in names


@pytest.mark.privileged
def test_fast_cases_are_byte_identical(fixtures, tmp_path):
    # the source tree's devices, owners and trusted.* xattrs need root
    need(os.geteuid() == 0, "the source tree's devices, owners and trusted xattrs need root")
    old = os.umask(0o022)
    try:
        problems = byte_identity.check(FAST, pathlib.Path(tmp_path))
    finally:
        os.umask(old)
    assert problems == []
