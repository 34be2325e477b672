"""Hostile RAFS v5 bootstraps: every mutant opens and reads cleanly or raises a rafs error."""

from __future__ import annotations

import collections

import pytest

import rafs
from hostile import bit_flips, check_mutant, truncations


@pytest.fixture(scope="module")
def v5_bytes(v5_fixture):
    return v5_fixture[0].read_bytes()


def test_truncated_bootstraps_are_invalid(v5_bytes, v5_fixture):
    for description, mutant in truncations(v5_bytes, 60):
        outcome = check_mutant(description, mutant, blob_dir=v5_fixture[1])
        assert outcome == "InvalidImageError", (description, outcome)


def test_zeroed_bootstrap_is_invalid(v5_bytes):
    with pytest.raises(rafs.InvalidImageError):
        rafs.open(bytes(len(v5_bytes)))


def test_bit_flipped_bootstraps_never_escape(v5_bytes, v5_fixture):
    outcomes = collections.Counter()
    # flips over the whole file, plus a denser pass over the header and tables
    mutants = list(bit_flips(v5_bytes, 250)) + list(bit_flips(v5_bytes, 150, seed=7, span=(0, 8192 + 512)))
    for description, mutant in mutants:
        outcomes[check_mutant(description, mutant, blob_dir=v5_fixture[1])] += 1
    # most flips land in reserved bytes or data and are harmless; many must still be caught
    assert outcomes["InvalidImageError"] >= 25, outcomes


def test_zeroed_regions(v5_bytes, v5_fixture):
    for start in range(8192, len(v5_bytes), 512):
        mutant = bytearray(v5_bytes)
        mutant[start:start + 256] = bytes(256)
        check_mutant(f"zeroed [{start:#x}, +256)", bytes(mutant), blob_dir=v5_fixture[1])


def test_self_referencing_directory_is_refused(v5_bytes):
    from rafs.v5.reader import V5Reader, INODE
    reader = V5Reader(v5_bytes)
    mutant = bytearray(v5_bytes)
    offset = reader.record_offset(2)           # /hardlink-test, a directory
    raw = INODE.unpack_from(v5_bytes, offset)
    mutant[offset:offset + 128] = INODE.pack(*raw._replace(i_child_index=1))
    with pytest.raises(rafs.InvalidImageError, match="children"):
        with rafs.open(bytes(mutant)) as image:
            list(image.iter_entries())
