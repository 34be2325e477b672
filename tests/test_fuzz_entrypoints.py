"""The coverage-guided fuzz entry points (fuzz/*.py) accept their seeds and mutants, and run under
atheris (a short run, as a smoke test; docs/fuzzing.md says how to run them for hours)."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys

import pytest

from rafs.testing import bit_flips, truncations

from conftest import FIXTURES, ROOT

FUZZ = ROOT / "fuzz"
TARGETS = ["fuzz_bootstrap", "fuzz_blob_meta", "fuzz_toc"]


@pytest.fixture(scope="module", params=TARGETS)
def target(request):
    sys.path.insert(0, str(FUZZ))
    try:
        yield importlib.import_module(request.param)
    finally:
        sys.path.remove(str(FUZZ))


def test_targets_take_their_seeds_and_mutants(target):
    seeds = [FIXTURES / s for s in target.SEEDS]
    assert any(p.is_file() for p in seeds)
    for path in seeds:
        data = path.read_bytes()[:1 << 20]
        target.TestOneInput(data)
        for _, mutant in list(truncations(data, 5)) + list(bit_flips(data, 20)):
            target.TestOneInput(mutant)
    target.TestOneInput(b"")


def test_atheris_runs_a_target(tmp_path):
    """One short libFuzzer run (the harness is shared, and each start costs seconds)."""
    pytest.importorskip("atheris")
    result = subprocess.run([sys.executable, str(FUZZ / "fuzz_bootstrap.py"), str(tmp_path / "corpus"), "-runs=60"],
                            capture_output=True, text=True, timeout=300,
                            env={**os.environ, "RAFS_SHARED": str(FIXTURES.parent.parent)})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Done 60 runs" in result.stderr
    assert len(list((tmp_path / "corpus").iterdir())) >= 3          # seeded from the fixtures
