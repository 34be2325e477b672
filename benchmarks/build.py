"""Build benchmark: ``rafs create`` against ``tar | zstd -3``, ``mkfs.erofs`` and ``mksquashfs`` on one tree.

Generates a deterministic tree (a few thousand files, about 60 MB, half compressible text, half
random bytes), warms the page cache, then runs every tool as a child process and reports its wall
time, output size, ratio to the input and peak memory (``ru_maxrss`` of that child, from ``wait4``).
The rafs build is also timed in-process through ``rafs.Builder`` (no interpreter start-up).

    python benchmarks/build.py [--files 3000] [--size-mb 60] [--repeat 3] [--workdir DIR] [--keep]

Needs the Debian packages zstd, erofs-utils and squashfs-tools (a missing tool is reported and
skipped).
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

WORDS = ("lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor incididunt ut "
         "labore et dolore magna aliqua container image layer chunk blob bootstrap inode directory "
         "symlink hardlink registry manifest digest compress").split()


def generate_tree(top: str, files: int, size_mb: int, seed: int = 7) -> tuple[int, int]:
    """(number of files, total bytes) of a fresh tree under ``top``."""
    rng = random.Random(seed)
    text = " ".join(rng.choice(WORDS) for _ in range(400_000)).encode()   # ~2.5 MB of compressible text
    dirs = [""]
    for i in range(max(1, files // 30)):
        parent = rng.choice(dirs)
        dirs.append(os.path.join(parent, f"dir{i:04d}"))
    for d in dirs:
        os.makedirs(os.path.join(top, d), exist_ok=True)
    budget = size_mb << 20
    # sizes: mostly small files, some medium, a few large; scaled to the byte budget
    raw = []
    for _ in range(files):
        roll = rng.random()
        raw.append(rng.randint(200, 16 << 10) if roll < 0.85 else
                   rng.randint(64 << 10, 1 << 20) if roll < 0.98 else rng.randint(2 << 20, 6 << 20))
    scale = budget / sum(raw)
    total = 0
    for i, size in enumerate(raw):
        size = max(1, int(size * scale))
        if rng.random() < 0.5:
            start = rng.randrange(0, len(text) - 1)
            data = (text[start:] + text)[:size]
            while len(data) < size:
                data += text[:size - len(data)]
        else:
            data = rng.randbytes(size)
        path = os.path.join(top, rng.choice(dirs), f"file{i:05d}.{'txt' if data[:1].isalpha() else 'bin'}")
        with open(path, "wb") as f:
            f.write(data)
        total += size
    return files, total


def run_child(argv, *, shell: bool = False) -> tuple[float, int]:
    """(wall seconds, peak RSS in KiB) of one child process (and the children it waited for)."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, shell=shell, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode(errors="replace")
    proc.stderr.close()
    if proc.returncode:
        raise RuntimeError(f"{argv} failed ({proc.returncode}): {err.strip()[-500:]}")
    return wall, usage.ru_maxrss


def dir_size(path: str) -> int:
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def fresh(path: str) -> str:
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(path)
    return path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=3000)
    parser.add_argument("--size-mb", type=int, default=60)
    parser.add_argument("--repeat", type=int, default=3, help="runs per tool; the median is reported")
    parser.add_argument("--workdir", help="where to put the tree and outputs (default: a temporary dir)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args(argv)

    work = args.workdir or tempfile.mkdtemp(prefix="rafs-bench-")
    src = fresh(os.path.join(work, "src"))
    files, total = generate_tree(src, args.files, args.size_mb)
    subprocess.run(["tar", "-C", src, "-cf", "/dev/null", "."], check=True)        # warm the page cache
    print(f"tree: {files} files, {total / 1e6:.1f} MB in {src}; {os.cpu_count()} CPUs")

    out = os.path.join(work, "out")
    python = sys.executable
    tools = {
        "rafs create (v6, zstd)": (lambda: [python, "-m", "rafs", "create", src, "-D", fresh(out)], out),
        "rafs create (v5, zstd)": (lambda: [python, "-m", "rafs", "create", src, "-D", fresh(out), "-v", "5"], out),
        "tar -c | zstd -3": (lambda: f"tar -C '{src}' -cf - . | zstd -3 -q -f -o '{fresh(out)}/layer.tar.zst'",
                             out),
        "mkfs.erofs --chunksize=1048576 --blobdev": (
            lambda: ["mkfs.erofs", "--quiet", "--chunksize=1048576", f"--blobdev={fresh(out)}/blob",
                     f"{out}/image.erofs", src], out),
        "mksquashfs -comp zstd": (lambda: ["mksquashfs", src, f"{fresh(out)}/image.sqfs", "-comp", "zstd",
                                           "-noappend", "-quiet", "-no-progress"], out),
    }
    needed = {"tar -c | zstd -3": "zstd", "mkfs.erofs --chunksize=1048576 --blobdev": "mkfs.erofs",
              "mksquashfs -comp zstd": "mksquashfs"}
    rows = []
    for name, (make_argv, output) in tools.items():
        if name in needed and shutil.which(needed[name]) is None:
            print(f"{name}: {needed[name]} is not installed, skipped")
            continue
        times, peaks = [], []
        for _ in range(args.repeat):
            cmd = make_argv()
            wall, peak = run_child(cmd, shell=isinstance(cmd, str))
            times.append(wall)
            peaks.append(peak)
        rows.append((name, statistics.median(times), dir_size(output), max(peaks)))

    # in-process: the builder itself, without interpreter start-up and imports
    import rafs
    builder_times = []
    for _ in range(args.repeat):
        result = rafs.Builder(src, fs_version=6, compressor="zstd").write(blob_dir=fresh(out))
        builder_times.append(result.output["trace"]["consumed_time"]["total_build"])
    in_process = statistics.median(builder_times)

    baseline = next((r[1] for r in rows if r[0] == "tar -c | zstd -3"), None)
    print(f"\n{'tool':<44} {'wall s':>8} {'vs tar|zstd':>11} {'output MB':>10} {'ratio':>7} {'peak RSS MB':>12}")
    for name, wall, size, peak in rows:
        relative = f"{wall / baseline:.2f}x" if baseline else "-"
        print(f"{name:<44} {wall:>8.3f} {relative:>11} {size / 1e6:>10.2f} {size / total:>7.3f} {peak / 1024:>12.1f}")
    relative = f"{in_process / baseline:.2f}x" if baseline else "-"
    print(f"{'rafs.Builder v6 zstd (in-process build)':<44} {in_process:>8.3f} {relative:>11}")
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(f"\npeak RSS of this process (generation + in-process builds): {own / 1024:.1f} MB")
    if not args.keep and not args.workdir:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
