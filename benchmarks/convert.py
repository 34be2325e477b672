"""Convert benchmark: ``rafs convert`` of a multi-layer OCI image against extracting the same layers
with ``zstd -d | tar -x``.

Generates a deterministic three-layer image (about ``--size-mb`` MB uncompressed: a base layer of
small and large files, half compressible text, half random bytes; a second layer rewriting and
deleting some of them; a third adding files and hardlinks), stores its layers as ``tar+zstd`` in an
OCI image layout, warms the page cache, then in interleaved rounds runs, as child processes:

* ``zstd -dc layer | tar -xf -`` for every layer in order (what applying the layers costs),
* ``rafs convert`` with one worker process per CPU and with a single worker,

and reports best and median wall time, throughput over the uncompressed layers, output size and
peak memory (GNU time's ``%M`` when installed, else ``wait4``: the largest of the process and the
workers it waited for; with N workers the total is up to N times the worker peak). ``--check`` also
times ``rafs check`` of the converted image (every chunk read and verified).

    python benchmarks/convert.py [--size-mb 400] [--repeat 2] [--workdir DIR] [--keep] [--check]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from build import WORDS, dir_size, fresh, run_child  # noqa: E402  (the build benchmark's helpers)

from rafs.oci import spec  # noqa: E402
from rafs.oci.layout import LayoutWriter, descriptor  # noqa: E402


def _content(rng: random.Random, text: bytes, size: int) -> bytes:
    if rng.random() < 0.5:
        start = rng.randrange(0, len(text) - 1)
        data = text[start:start + size]
        while len(data) < size:
            data += text[:size - len(data)]
        return data
    return rng.randbytes(size)


def generate_layers(top: str, size_mb: int, seed: int = 11) -> list[str]:
    """Three layer directories under ``top`` totalling about ``size_mb`` MB; returns their paths."""
    rng = random.Random(seed)
    text = " ".join(rng.choice(WORDS) for _ in range(400_000)).encode()
    budget = size_mb << 20
    layers = [os.path.join(top, f"l{i}") for i in (1, 2, 3)]
    base_files = []
    # layer 1: 60% of the bytes; many small files, some medium, a few large
    used, i = 0, 0
    while used < budget * 0.6:
        roll = rng.random()
        size = rng.randint(200, 16 << 10) if roll < 0.85 else \
            rng.randint(64 << 10, 1 << 20) if roll < 0.98 else rng.randint(4 << 20, 24 << 20)
        rel = f"usr/lib/d{i % 97:02d}/file{i:06d}"
        path = os.path.join(layers[0], rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(_content(rng, text, size))
        base_files.append(rel)
        used += size
        i += 1
    # layer 2: 25%: rewrites of base files, whiteouts, new files
    os.makedirs(layers[1])
    used = 0
    for rel in rng.sample(base_files, len(base_files) // 20):
        directory, name = os.path.split(rel)
        os.makedirs(os.path.join(layers[1], directory), exist_ok=True)
        open(os.path.join(layers[1], directory, ".wh." + name), "wb").close()
    while used < budget * 0.25:
        rel = rng.choice(base_files) if rng.random() < 0.3 else f"opt/app/mod{used % 13}/n{rng.randrange(1 << 30)}"
        size = rng.randint(1 << 10, 2 << 20)
        path = os.path.join(layers[1], rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(_content(rng, text, size))
        used += size
    # layer 3: 15%: new files, some hardlinked
    os.makedirs(layers[2])
    used, n = 0, 0
    while used < budget * 0.15:
        size = rng.randint(1 << 10, 4 << 20)
        path = os.path.join(layers[2], f"srv/data{n % 7}/f{n:05d}")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(_content(rng, text, size))
        if n % 10 == 0:
            os.link(path, path + ".link")
        used += size
        n += 1
    return layers


def make_image(layers: list[str], layout: str, work: str) -> tuple[list[str], int, int]:
    """An OCI layout of ``layers`` as tar+zstd; (layer files, compressed bytes, uncompressed bytes)."""
    writer = LayoutWriter(layout)
    descs, diff_ids, files = [], [], []
    compressed = uncompressed = 0
    for index, layer in enumerate(layers):
        tar = os.path.join(work, f"layer{index}.tar")
        subprocess.run(["tar", "--sort=name", "--numeric-owner", "-C", layer, "-cf", tar, "."], check=True)
        uncompressed += os.path.getsize(tar)
        diff_ids.append("sha256:" + _sha256(tar))
        zst = tar + ".zst"
        subprocess.run(["zstd", "-3", "-T0", "-q", "-f", tar, "-o", zst], check=True)
        os.unlink(tar)
        digest = "sha256:" + _sha256(zst)
        size = os.path.getsize(zst)
        compressed += size
        shutil.copyfile(zst, writer.blob_path(digest))
        files.append(zst)
        descs.append(descriptor(spec.OCI_LAYER_ZSTD, digest, size))
    config = {"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": diff_ids},
              "history": [{"created_by": f"layer {i}"} for i in range(len(layers))]}
    config_digest, config_size = writer.add_json(config)
    manifest = {"schemaVersion": 2, "mediaType": spec.OCI_MANIFEST,
                "config": descriptor(spec.OCI_CONFIG, config_digest, config_size), "layers": descs}
    digest, size = writer.add_json(manifest)
    writer.commit({"schemaVersion": 2, "manifests": [descriptor(spec.OCI_MANIFEST, digest, size,
                                                                 platform={"architecture": "amd64", "os": "linux"})]})
    return files, compressed, uncompressed


def _sha256(path: str) -> str:
    hasher = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            hasher.update(block)
    return hasher.hexdigest()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=400, help="uncompressed size of the image")
    parser.add_argument("--repeat", type=int, default=2, help="rounds; best and median are reported")
    parser.add_argument("--workdir", help="where to put the image and outputs (default: a temporary dir)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--check", action="store_true", help="also time rafs check of the result")
    args = parser.parse_args(argv)
    for tool in ("tar", "zstd"):
        if shutil.which(tool) is None:
            print(f"{tool} is not installed", file=sys.stderr)
            return 1

    work = args.workdir or tempfile.mkdtemp(prefix="rafs-bench-convert-")
    layers = generate_layers(fresh(os.path.join(work, "trees")), args.size_mb)
    layout = os.path.join(work, "oci")
    shutil.rmtree(layout, ignore_errors=True)
    files, compressed, uncompressed = make_image(layers, layout, work)
    shutil.rmtree(os.path.join(work, "trees"))
    for path in files:                                     # warm the page cache
        subprocess.run(["cat", path], stdout=subprocess.DEVNULL, check=True)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    print(f"image: {len(files)} layers, {uncompressed / 1e6:.1f} MB uncompressed, {compressed / 1e6:.1f} MB as "
          f"tar+zstd; {cpus} CPUs")

    out = os.path.join(work, "out")
    python = sys.executable
    extract = " && ".join(f"zstd -dc '{f}' | tar -xf - -C '{out}'" for f in files)
    tools = {
        "zstd -d | tar -x (every layer, in order)":
            lambda: ["sh", "-c", f"rm -rf '{out}' && mkdir '{out}' && {extract}"],
        f"rafs convert ({cpus} workers)": lambda: [python, "-m", "rafs", "convert", "--source", layout,
                                                   "--target", fresh(out), "--work-dir", work],
        "rafs convert (1 worker)": lambda: [python, "-m", "rafs", "convert", "--source", layout,
                                            "--target", fresh(out), "--work-dir", work, "--workers", "1"],
    }
    times = {name: [] for name in tools}
    cpu = {name: [] for name in tools}
    peaks = {name: 0 for name in tools}
    sizes = {}
    for _ in range(args.repeat):
        for name, make_argv in tools.items():
            wall, cpu_seconds, peak = run_child(make_argv())
            times[name].append(wall)
            cpu[name].append(cpu_seconds)
            peaks[name] = max(peaks[name], peak)
            sizes[name] = dir_size(out)
    rows = [(name, times[name], min(cpu[name]), sizes[name], peaks[name]) for name in tools]
    if args.check:
        wall, cpu_seconds, peak = run_child([python, "-m", "rafs", "check", out])
        rows.append(("rafs check of the result (every chunk)", [wall], cpu_seconds, None, peak))

    baseline = min(times["zstd -d | tar -x (every layer, in order)"])
    print(f"\n{'run':<44} {'best s':>7} {'median s':>8} {'CPU s':>6} {'MB/s':>7} {'vs tar':>7} {'output MB':>10} "
          f"{'peak RSS MB':>11}")
    for name, walls, cpu_seconds, size, peak in rows:
        best = min(walls)
        output = f"{size / 1e6:>10.1f}" if size is not None else f"{'':>10}"
        print(f"{name:<44} {best:>7.2f} {statistics.median(walls):>8.2f} {cpu_seconds:>6.1f} "
              f"{uncompressed / 1e6 / best:>7.1f} {best / baseline:>6.2f}x {output} {peak / 1024:>11.1f}")
    if not args.keep and not args.workdir:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
