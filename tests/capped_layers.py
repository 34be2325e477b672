"""Build tar layers with ``rafs create -t tar-rafs`` in a child process capped in address space and in
time per layer, and say what each gave: ``ok``, ``RafsError``, the name of the exception that escaped,
or ``slow``. A child, so that a header bomb's allocation meets the cap and not the test machine."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys

_RUNNER = r"""
import json, pickle, resource, signal, sys
resource.setrlimit(resource.RLIMIT_AS, (int(sys.argv[2]), int(sys.argv[2])))
import rafs
class Slow(Exception):
    pass
def alarm(*_):
    raise Slow()
signal.signal(signal.SIGALRM, alarm)
workdir, seconds = sys.argv[1], float(sys.argv[3])
with open(workdir + "/layers.pickle", "rb") as f:
    layers = pickle.load(f)
results = {}
for description, layer in layers:
    path = workdir + "/layer.tar"
    with open(path, "wb") as f:
        f.write(layer)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        rafs.Builder(path, source_type="tar-rafs", compressor="none").write(blob_dir=workdir)
        results[description] = "ok"
    except rafs.RafsError:
        results[description] = "RafsError"
    except Slow:
        results[description] = "slow"
    except BaseException as exc:
        results[description] = type(exc).__name__
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
print(json.dumps(results))
"""


def build_layers(workdir, layers, *, address_space: int = 1 << 30, seconds: float = 1.0) -> dict[str, str]:
    """``{description: outcome}`` for each ``(description, layer bytes)`` of ``layers``."""
    workdir = os.fspath(workdir)
    with open(os.path.join(workdir, "layers.pickle"), "wb") as f:
        pickle.dump(list(layers), f)
    proc = subprocess.run([sys.executable, "-c", _RUNNER, workdir, str(address_space), str(seconds)],
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.splitlines()[-1])


def escaped(results: dict[str, str]) -> dict[str, str]:
    """The layers that gave neither a build nor a RafsError."""
    return {d: r for d, r in results.items() if r not in ("ok", "RafsError")}
