"""Shared test fixtures: where ../shared lives, and the privileged-test rule.

Tests that need root, loop devices, the kernel's EROFS or FUSE are marked ``privileged``. They skip
with a reason when the machine cannot run them, except when ``RAFS_REQUIRE_PRIVILEGED=1`` (set by
``.ci/run``): then a missing capability is a failure, so such a test can never pass by not running.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess

import pytest
from hypothesis import HealthCheck, settings

# Hypothesis profiles: "ci" (the default) keeps the suite fast; HYPOTHESIS_PROFILE=deep runs far more
# examples (docs/fuzzing.md). Tests that are costly per example scale down from max_examples.
_QUIET = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much]
settings.register_profile("ci", max_examples=20, deadline=None, suppress_health_check=_QUIET)
settings.register_profile("deep", max_examples=2000, deadline=None, suppress_health_check=_QUIET)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

ROOT = pathlib.Path(__file__).resolve().parent.parent
SHARED = pathlib.Path(os.environ.get("RAFS_SHARED", ROOT.parent / "shared"))
FIXTURES = SHARED / "fixtures" / "nydus"
REQUIRE_PRIVILEGED = os.environ.get("RAFS_REQUIRE_PRIVILEGED") == "1"


def need(condition: bool, reason: str) -> None:
    """Skip (or fail under RAFS_REQUIRE_PRIVILEGED=1) when a privileged capability is missing."""
    if condition:
        return
    if REQUIRE_PRIVILEGED:
        pytest.fail(f"required capability missing: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def fixtures() -> pathlib.Path:
    if not FIXTURES.is_dir():
        pytest.skip(f"shared fixtures not found at {FIXTURES}")
    return FIXTURES


@pytest.fixture(scope="session")
def v5_fixture(fixtures):
    """(bootstrap, blob dir, .result listing) of the reference's repeatable v5 fixture."""
    base = fixtures / "repeatable"
    return base / "sha256-nocompress-repeatable", base / "blobs", base / "sha256-nocompress-repeatable.result"


@pytest.fixture(scope="session")
def v6_fixture(fixtures):
    """(bootstrap, blob dir) of the reference's RAFS v6 2.2 fixture."""
    return fixtures / "bootstrap" / "rafs-v6-2.2.boot", fixtures / "blobs"


def _is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


@pytest.fixture
def kernel_mount(tmp_path):
    """mount(image, *devices) -> mountpoint: a read-only kernel EROFS mount, undone after the test."""
    need(_is_root(), "kernel mounts need root")
    need("erofs" in pathlib.Path("/proc/filesystems").read_text(), "kernel has no EROFS support")
    mounted, loops = [], []

    def mount(image, *devices) -> pathlib.Path:
        target = tmp_path / f"mnt{len(mounted)}"
        target.mkdir()
        opts = ["ro", "loop"]
        for dev in devices:
            loop = subprocess.run(["losetup", "-r", "-f", "--show", str(dev)], check=True,
                                  capture_output=True, text=True).stdout.strip()
            loops.append(loop)
            opts.append(f"device={loop}")
        result = subprocess.run(["mount", "-t", "erofs", "-o", ",".join(opts), str(image), str(target)],
                                capture_output=True, text=True)
        if result.returncode:
            raise AssertionError(f"kernel refused to mount {image}: {result.stderr.strip()}")
        mounted.append(target)
        return target

    yield mount
    for target in reversed(mounted):
        subprocess.run(["umount", str(target)], check=False)
    for loop in loops:
        subprocess.run(["losetup", "-d", loop], check=False)


@pytest.fixture(scope="session")
def tool():
    """tool(name) -> path of an external tool, failing/skipping by the privileged rule if absent."""
    def find(name: str) -> str:
        path = shutil.which(name)
        need(path is not None, f"{name} is not installed")
        return path
    return find


@pytest.fixture(scope="session")
def source_tree(tmp_path_factory) -> str:
    """A directory with every entry type a build meets (tests/helpers.py ``make_source_tree``)."""
    from helpers import make_source_tree
    return make_source_tree(tmp_path_factory.mktemp("source") / "tree")
