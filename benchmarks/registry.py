"""Registry benchmarks (issue 15): ``rafs convert`` from registry to registry against the same
conversion between local layouts, and, through a lazy ``rafs mount docker://...``, the first byte of
one file and a cold full read.

A real ``docker-registry`` (htpasswd over TLS, tests/registry_server.py) on loopback; the source image
is three gzip layers of ``--megabytes`` of mixed files, built with GNU tar and pushed with skopeo.
Run as root (the mount needs FUSE)::

    python benchmarks/registry.py [--megabytes 96]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))

from oci_layers import gnu_tar, oci_image, oci_layout  # noqa: E402
from registry_server import PASSWORD, USER, Registry  # noqa: E402


def make_tree(top: str, megabytes: int, seed: int) -> None:
    rng = random.Random(seed)
    left = megabytes << 20
    n = 0
    while left > 0:
        size = min(left, rng.choice((4096, 65536, 1 << 20, 4 << 20)))
        directory = os.path.join(top, f"layer{seed}", f"d{n % 37}")
        os.makedirs(directory, exist_ok=True)
        with open(os.path.join(directory, f"f{n}"), "wb") as f:
            # half random, half repetitive: compresses like real files do
            f.write(rng.randbytes(size // 2) + bytes(size - size // 2))
        left -= size
        n += 1


def cli(*args, env=None) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "rafs", *args], check=True, env={**os.environ, **(env or {})},
                   capture_output=True)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megabytes", type=int, default=96)
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="rafs-registry-bench-")
    registry = None
    try:
        tars = []
        for i in range(3):
            top = os.path.join(work, f"l{i}")
            make_tree(top, args.megabytes // 3, i)
            tars.append(gnu_tar(top, os.path.join(work, f"l{i}.tar.gz"), compress="gzip"))
        source = os.path.join(work, "src")
        oci_layout(source, [oci_image(source, tars)])
        registry = Registry(os.path.join(work, "registry"), "basic")
        registry.push(source, "bench/src:v1")
        docker = os.path.join(work, "docker")
        os.makedirs(docker)
        import base64
        with open(os.path.join(docker, "config.json"), "w") as f:
            json.dump({"auths": {registry.host: {"auth": base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()}}}, f)
        env = {"DOCKER_CONFIG": docker}
        ref = f"docker://{registry.host}/bench/dst:v1"
        rows = {
            "convert layout -> layout": cli("convert", "--source", source, "--target", os.path.join(work, "out")),
            "convert registry -> registry": cli("convert", "--source", f"docker://{registry.host}/bench/src:v1",
                                                "--target", ref, "--source-insecure", "--target-insecure", env=env),
        }
        mnt = os.path.join(work, "mnt")
        os.makedirs(mnt)
        start = time.perf_counter()
        server = subprocess.Popen([sys.executable, "-m", "rafs", "mount", "-B", ref, "-M", mnt, "--insecure"],
                                  env={**os.environ, **env}, stderr=subprocess.DEVNULL)
        try:
            while not os.path.ismount(mnt):
                time.sleep(0.01)
            rows["mount ready"] = time.perf_counter() - start
            files = sorted(os.path.join(d, n) for d, _, names in os.walk(mnt) for n in names)
            start = time.perf_counter()
            with open(files[len(files) // 2], "rb") as f:
                f.read(1)
            rows["first byte of one file (cold)"] = time.perf_counter() - start
            start = time.perf_counter()
            total = 0
            for path in files:
                with open(path, "rb") as f:
                    while chunk := f.read(1 << 20):
                        total += len(chunk)
            seconds = time.perf_counter() - start
            rows[f"cold full read ({total >> 20} MiB)"] = seconds
        finally:
            subprocess.run([sys.executable, "-m", "rafs", "umount", mnt], capture_output=True)
            server.wait(30)
        for name, seconds in rows.items():
            print(f"{name:40} {seconds:8.3f} s")
    finally:
        if registry is not None:
            registry.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
