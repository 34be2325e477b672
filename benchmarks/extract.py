"""How fast is extraction? ``Image.extractall`` and ``rafs unpack`` against ``zstd -dc | tar -x``.

Two trees: the benchmark tree of ``benchmarks/mount.py`` (``generate_tree``: a few thousand files, about
60 MB, half compressible) and a tree of many small files (default 20,000 files of a few hundred bytes
in deep directories). Each is built as a RAFS image (``rafs.Builder``, zstd) and as an OCI layer
(``tar -c | zstd``, the same tree). In each of ``--repeat`` rounds the contenders take turns on the same
tree:

* ``zstd -dc layer.tar.zst | tar -x``: the reference;
* ``Image.extractall`` (filter ``fully_trusted``, as tar -x runs as root);
* ``rafs unpack`` then ``tar -x`` of its output is not timed: ``rafs unpack`` writes a tar, so it is
  timed alone against ``zstd -dc > layer.tar``.

Prints the best and median of each, the ratios of the best (below 1.0: rafs is faster) and
/proc/loadavg before and after (the machine may be shared). Run::

    python benchmarks/extract.py [--files 3000] [--megabytes 60] [--small-files 20000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
sys.path.insert(0, HERE)

import rafs  # noqa: E402
from mount import generate_tree  # noqa: E402


def small_tree(top: str, files: int, seed: int = 11) -> None:
    """``files`` files of 0-2 KiB, 25 to a directory, directories up to 8 deep."""
    rng = random.Random(seed)
    dirs = [top]
    for i in range(max(1, files // 25)):
        parent = rng.choice(dirs[-50:]) if rng.random() < 0.7 else rng.choice(dirs)
        if parent.count(os.sep) - top.count(os.sep) >= 8:
            parent = top
        path = os.path.join(parent, f"d{i}")
        os.mkdir(path)
        dirs.append(path)
    for i in range(files):
        size = int(rng.expovariate(1 / 400)) % 2048
        with open(os.path.join(rng.choice(dirs), f"f{i}.txt"), "wb") as f:
            f.write((b"config %d value %d\n" % (i, rng.randrange(1000))) * (size // 20 + 1))


def _cpu() -> float:
    """CPU seconds of this process and its finished children (steadier than wall time when shared)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _timed(fn) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of ``fn()``."""
    started, cpu = time.perf_counter(), _cpu()
    fn()
    return time.perf_counter() - started, _cpu() - cpu


def _fresh(path: str) -> str:
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(path)
    return path


def run_tree(name: str, source: str, work: str, repeat: int, threads: int) -> dict[str, list[tuple]]:
    blob_dir = os.path.join(work, "blobs")
    os.makedirs(blob_dir)
    bootstrap = os.path.join(work, "image.boot")
    rafs.Builder(source, fs_version=6, compressor="zstd").write(bootstrap=bootstrap, blob_dir=blob_dir)
    layer = os.path.join(work, "layer.tar.zst")
    subprocess.run(f"tar -C {source} -cf - . | zstd -q -3 -T1 -o {layer}", shell=True, check=True)
    out = os.path.join(work, "out")
    tar_out = os.path.join(work, "out.tar")
    times: dict[str, list[tuple]] = {"zstd -dc | tar -x": [], "Image.extractall": [],
                                     "zstd -dc > layer.tar": [], "rafs unpack": []}
    for _ in range(repeat):
        _fresh(out)
        times["zstd -dc | tar -x"].append(_timed(lambda: subprocess.run(
            f"zstd -dc {layer} | tar -C {out} -xf -", shell=True, check=True)))
        _fresh(out)

        def extract():
            with rafs.open(bootstrap, blob_dir=blob_dir) as image:
                image.extractall(out, filter="fully_trusted", threads=threads)
        times["Image.extractall"].append(_timed(extract))
        times["zstd -dc > layer.tar"].append(_timed(lambda: subprocess.run(
            f"zstd -qdcf {layer} > {tar_out}", shell=True, check=True)))
        times["rafs unpack"].append(_timed(lambda: subprocess.run(
            [sys.executable, "-m", "rafs", "unpack", "--bootstrap", bootstrap, "--blob-dir", blob_dir,
             "--output", tar_out], check=True, env={**os.environ, "PYTHONPATH": os.path.join(HERE, "..")})))
    diff = subprocess.run(["diff", "-r", "-q", "--no-dereference", source, out], capture_output=True, text=True)
    if diff.returncode:
        raise SystemExit(f"{name}: the extracted tree differs from the source:\n{diff.stdout[:2000]}")
    return times


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=3000)
    parser.add_argument("--megabytes", type=int, default=60)
    parser.add_argument("--small-files", type=int, default=20000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2, help="extractall's read-ahead workers")
    args = parser.parse_args(argv)
    for tool in ("zstd", "tar", "diff"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not installed")
    print(f"load before: {open('/proc/loadavg').read().strip()}  cpus: {os.cpu_count()}")
    with tempfile.TemporaryDirectory(prefix="rafs-bench-extract-") as top:
        trees = []
        source = os.path.join(top, "bench-src")
        os.makedirs(source)
        generate_tree(source, args.files, args.megabytes)
        trees.append((f"benchmark tree ({args.files} files, {args.megabytes} MB)", source))
        if args.small_files:
            source = os.path.join(top, "small-src")
            os.makedirs(source)
            small_tree(source, args.small_files)
            trees.append((f"small files ({args.small_files})", source))
        for i, (name, source) in enumerate(trees):
            work = os.path.join(top, f"work{i}")
            os.makedirs(work)
            times = run_tree(name, source, work, args.repeat, args.threads)
            print(f"\n{name}, of {args.repeat} rounds: wall best / median, CPU best (all processes)")
            best = {}
            for what, values in times.items():
                walls, cpus = [w for w, _ in values], [c for _, c in values]
                best[what] = (min(walls), min(cpus))
                print(f"  {what:24s} {min(walls):7.3f} s  {statistics.median(walls):7.3f} s   CPU {min(cpus):7.3f} s")
            for mine, theirs in (("Image.extractall", "zstd -dc | tar -x"), ("rafs unpack", "zstd -dc > layer.tar")):
                print(f"  {mine} / {theirs}: wall {best[mine][0] / best[theirs][0]:.2f}, "
                      f"CPU {best[mine][1] / max(best[theirs][1], 1e-3):.2f}")
            shutil.rmtree(work)
    print(f"\nload after: {open('/proc/loadavg').read().strip()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
