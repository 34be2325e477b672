"""Helpers for hostile-input tests: mutate an image and exercise every read path on it.

They now live, public and documented, in :mod:`rafs.testing`; this module keeps the names the tests
import (``time_limit``, ``exercise``, ``bit_flips``, ``truncations``, ``check_mutant``).
"""

from __future__ import annotations

from rafs.testing.exercise import READ_BLOCK, check_mutant, time_limit
from rafs.testing.exercise import exercise as _exercise
from rafs.testing.mutate import bit_flips, truncations

__all__ = ["READ_BLOCK", "bit_flips", "check_mutant", "exercise", "time_limit", "truncations"]


def exercise(source, **open_kwargs) -> None:
    """open + walk + stat + readlink + xattrs + read every file + tree + check + unpack; raises the
    first rafs error a step raised (and AssertionError for anything that is not a rafs error)."""
    import rafs
    outcome = _exercise(source, **open_kwargs)
    if outcome.summary != "ok":
        error = getattr(rafs.errors, outcome.summary, rafs.RafsError)
        raise error(f"step failed with {outcome.summary}: {outcome.steps}")
