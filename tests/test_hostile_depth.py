"""Deep directory chains (issue 12): walks keep memory linear in depth, and refuse nesting deeper than
``rafs.model.MAX_DEPTH`` with a clean error.

Each check runs in a subprocess under an address-space limit (``RLIMIT_AS``), so memory quadratic in
depth shows as a MemoryError there, not as a machine out of memory.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from rafs.model import MAX_DEPTH
from rafs.testing.hostile_images import directory_chain
from rafs.testing.images import build_node

from conftest import ROOT

# The child process limits its address space to what it has now plus HEADROOM (argv[2])...
_LIMIT = """
import resource, sys
import rafs
from rafs.cli.main import main
from rafs.image.unpack import write_tar
vm = int([line for line in open("/proc/self/status") if line.startswith("VmSize")][0].split()[1]) * 1024
limit = vm + int(sys.argv[2])
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
"""
# ...then runs the CLI with argv[3:]...
_CLI = _LIMIT + "raise SystemExit(main(sys.argv[3:]))"
# ...or each step named, printing "<step> ok <result>" or "<step> <error class> <message>".
_STEPS = _LIMIT + """

class Sink:
    def write(self, data):
        return len(data)


image = rafs.open(sys.argv[1])
steps = {
    "walk": lambda: sum(1 for _ in image.walk()),
    "walk-bottom-up": lambda: sum(1 for _ in image.walk(topdown=False)),
    "iter_stats": lambda: sum(1 for _ in image.iter_stats()),
    "iter_entries": lambda: sum(1 for _ in image.iter_entries()),
    "tree": lambda: len(image.tree().children),
    "check": lambda: len(list(image.check())),
    "unpack": lambda: write_tar(image, Sink()),
}
for name in sys.argv[3:]:
    try:
        print(name, "ok", steps[name]())
    except (rafs.RafsError, MemoryError) as exc:
        print(name, type(exc).__name__, str(exc)[:200])
"""
HEADROOM = 300 << 20


def _chain(workdir, depth: int, name: bytes, version: int) -> str:
    return build_node(directory_chain(depth, name), workdir, fs_version=version, compressor="none").source


def _run(bootstrap: str, steps: list[str]) -> dict[str, str]:
    done = subprocess.run([sys.executable, "-c", _STEPS, bootstrap, str(HEADROOM), *steps], capture_output=True,
                          text=True, timeout=300, env={"PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr[-3000:]
    return dict(line.split(" ", 1) for line in done.stdout.splitlines())


@pytest.fixture(scope="module")
def chain_100k(tmp_path_factory):
    """A v5 chain of 100,000 directories (a 14 MB bootstrap)."""
    return _chain(tmp_path_factory.mktemp("deep"), 100_000, b"d", 5)


def test_a_100k_deep_chain_is_refused_cleanly(chain_100k):
    got = _run(chain_100k, ["walk", "walk-bottom-up", "iter_stats", "iter_entries", "tree", "unpack"])
    for step, outcome in got.items():
        assert outcome.startswith("InvalidImageError"), (step, outcome)
        assert f"nested deeper than {MAX_DEPTH} levels" in outcome, (step, outcome)


@pytest.mark.parametrize("command", [["check"], ["unpack", "--output", "/dev/null"]])
def test_cli_refuses_the_100k_chain_in_one_line(chain_100k, command):
    """``rafs check`` reports the depth as its fault (after checking every inode's structure)."""
    done = subprocess.run([sys.executable, "-c", _CLI, "", str(HEADROOM), command[0], chain_100k, *command[1:]],
                          capture_output=True, text=True, timeout=300, env={"PYTHONPATH": str(ROOT)})
    assert done.returncode == 1, done.stderr[-3000:]
    assert f"nested deeper than {MAX_DEPTH} levels" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("version", [5, 6])
def test_walks_at_max_depth_take_memory_linear_in_depth(tmp_path, version):
    """MAX_DEPTH levels of 255-byte names: the deepest path is 512 KiB, and keeping one path per level
    (quadratic) would need over 500 MiB, beyond the limit the walks run under."""
    bootstrap = _chain(tmp_path, MAX_DEPTH, b"n" * 255, version)
    got = _run(bootstrap, ["walk", "walk-bottom-up", "iter_stats", "iter_entries", "tree", "check"])
    assert got == {"walk": f"ok {MAX_DEPTH + 1}", "walk-bottom-up": f"ok {MAX_DEPTH + 1}",
                   "iter_stats": f"ok {MAX_DEPTH + 1}", "iter_entries": f"ok {MAX_DEPTH + 1}",
                   "tree": "ok 1", "check": "ok 0"}
