"""Read throughput of ZRAN (``targz-ref``), ``tar-ref`` and tarfs images against plain ones.

Builds the tree of benchmarks/batch.py (many small files and four 2 MB ones) into a tar and a tar.gz
(gzip level 6, as ``tar czf``), then from the same layer: native RAFS v6 blobs (``targz-rafs`` with
zstd, lz4_block and none), a ZRAN image (``targz-ref``: the data stays in the .tar.gz), a ``tar-ref``
image and a tarfs image (the data stays in the .tar). Every file is read through ``rafs.open``, in
tree order and in a shuffled order (a fresh image each round, so nothing is cached between rounds);
the best and median times and MB/s of file data are reported, with the build time and the bytes the
build wrote. In a shuffled order a ZRAN read inflates its context from the restart point (up to ~1
MiB of output) where a native chunk inflates only itself.

    python benchmarks/zran.py [--files 3000] [--repeat 3] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import shutil
import statistics
import sys
import tarfile
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

import rafs  # noqa: E402
from batch import generate_tree  # noqa: E402


def make_layers(source: str, work: str) -> tuple[str, str]:
    tar_path, gz_path = os.path.join(work, "layer.tar"), os.path.join(work, "layer.tar.gz")
    with tarfile.open(tar_path, "w", format=tarfile.PAX_FORMAT) as tar:
        tar.add(source, arcname=".")
    with tarfile.open(gz_path, "w:gz", compresslevel=6, format=tarfile.PAX_FORMAT) as tar:
        tar.add(source, arcname=".")
    return tar_path, gz_path


def read_all(bootstrap: str, blob_dir: str, order_seed: int | None) -> int:
    total = 0
    with rafs.open(bootstrap, blob_dir=blob_dir) as image:
        paths = [path for path, inode in image.iter_entries() if inode.is_reg]
        if order_seed is not None:
            random.Random(order_seed).shuffle(paths)
        for path in paths:
            total += len(image.read(path))
    return total


def build(kind: str, layer: str, out: str) -> tuple[float, int]:
    """Build ``layer`` as ``kind`` into ``out``; the layer itself is put there as the blob when the
    image references it. Returns (build seconds, bytes the build wrote)."""
    source_type, compressor = kind.split(":") if ":" in kind else (kind, "zstd")
    started = time.perf_counter()
    rafs.Builder(layer, source_type=source_type, compressor=compressor).write(
        bootstrap=os.path.join(out, "boot"), blob_dir=out)
    seconds = time.perf_counter() - started
    written = sum(os.path.getsize(os.path.join(out, name)) for name in os.listdir(out))
    if source_type in ("targz-ref", "tar-ref", "tar-tarfs"):
        with open(layer, "rb") as f:
            shutil.copyfile(layer, os.path.join(out, hashlib.sha256(f.read()).hexdigest()))
    return seconds, written


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=3000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workdir")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.workdir) as work:
        source = os.path.join(work, "src")
        total = generate_tree(source, args.files)
        tar_path, gz_path = make_layers(source, work)
        print(f"{args.files} small files + 4 x 2 MB, {total / 1e6:.1f} MB; tar {os.path.getsize(tar_path) / 1e6:.1f} "
              f"MB, tar.gz {os.path.getsize(gz_path) / 1e6:.1f} MB")
        print(f"{'image':>18} {'build s':>8} {'written MB':>10} {'order':>8} {'best s':>7} {'median s':>8} "
              f"{'MB/s':>7}")
        kinds = [("targz-rafs:zstd", gz_path), ("targz-rafs:lz4_block", gz_path), ("targz-rafs:none", gz_path),
                 ("targz-ref", gz_path), ("tar-ref", tar_path), ("tar-tarfs", tar_path)]
        for kind, layer in kinds:
            out = os.path.join(work, kind.replace(":", "-"))
            os.makedirs(out)
            seconds, written = build(kind, layer, out)
            for order, seed in (("tree", None), ("shuffled", 7)):
                times = []
                for _ in range(args.repeat):
                    started = time.perf_counter()
                    assert read_all(os.path.join(out, "boot"), out, seed) == total
                    times.append(time.perf_counter() - started)
                best = min(times)
                print(f"{kind:>18} {seconds:>8.2f} {written / 1e6:>10.2f} {order:>8} {best:>7.2f} "
                      f"{statistics.median(times):>8.2f} {total / 1e6 / best:>7.1f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
