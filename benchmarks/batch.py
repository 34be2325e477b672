"""Read throughput of batch-chunk images (``--batch-size``) against plain ones.

Builds one deterministic tree of many small files (and a few large ones) as RAFS v6 with each
compressor, without batches and with batch sizes 4 KiB, 64 KiB and 1 MiB, then reads every file
through ``rafs.open`` (a fresh image each round, so no chunk is cached between rounds) and reports
the best and median time, MB/s of file data, the number of stored chunks and the blob size.

    python benchmarks/batch.py [--files 3000] [--repeat 3] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import rafs  # noqa: E402
from rafs.blob.meta import load_blob_meta  # noqa: E402


def generate_tree(top: str, files: int, seed: int = 11) -> int:
    """Small files of 100 B..30 KB (half text, half random) plus four 2 MB files; total bytes."""
    rng = random.Random(seed)
    total = 0
    for i in range(files):
        directory = os.path.join(top, f"d{i % 50:02}")
        os.makedirs(directory, exist_ok=True)
        size = int(rng.lognormvariate(8, 1.2)) % 30000 + 100
        data = (b"small file %d " % i * (size // 12 + 1))[:size] if i % 2 else rng.randbytes(size)
        with open(os.path.join(directory, f"f{i}"), "wb") as f:
            f.write(data)
        total += size
    for i in range(4):
        with open(os.path.join(top, f"large{i}"), "wb") as f:
            f.write(rng.randbytes(2 << 20))
        total += 2 << 20
    return total


def read_all(bootstrap: str, blob_dir: str) -> int:
    total = 0
    with rafs.open(bootstrap, blob_dir=blob_dir) as image:
        for path, inode in image.iter_entries():
            if inode.is_reg:
                total += len(image.read(path))
    return total


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=3000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workdir")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.workdir) as work:
        source = os.path.join(work, "src")
        total = generate_tree(source, args.files)
        print(f"{args.files} small files + 4 x 2 MB, {total / 1e6:.1f} MB")
        print(f"{'compressor':>10} {'batch':>8} {'chunks':>7} {'batches':>7} {'blob MB':>8} {'best s':>7} "
              f"{'median s':>8} {'MB/s':>7}")
        for compressor in ("zstd", "lz4_block", "none"):
            for batch_size in (0, 0x1000, 0x10000, 0x100000):
                out = os.path.join(work, f"{compressor}-{batch_size:x}")
                os.makedirs(out)
                result = rafs.Builder(source, fs_version=6, compressor=compressor, batch_size=batch_size).write(
                    bootstrap=os.path.join(out, "boot"), blob_dir=out)
                blob = result.blobs[0]
                with open(os.path.join(out, blob.blob_id), "rb") as f:
                    meta = load_blob_meta(blob, f)
                times = []
                for _ in range(args.repeat):
                    started = time.perf_counter()
                    assert read_all(result.bootstrap, out) == total
                    times.append(time.perf_counter() - started)
                best = min(times)
                print(f"{compressor:>10} {batch_size:>8x} {blob.chunk_count:>7} {len(meta.batch_contexts):>7} "
                      f"{result.blob_size / 1e6:>8.1f} {best:>7.2f} {statistics.median(times):>8.2f} "
                      f"{total / 1e6 / best:>7.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
