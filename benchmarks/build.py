"""Build benchmark: ``rafs create`` against ``tar | zstd -3``, ``mkfs.erofs`` and ``mksquashfs`` on one tree.

Generates a deterministic tree (a few thousand files, about 60 MB, half compressible text, half
random bytes), warms the page cache, then runs every tool as a child process, in interleaved rounds,
and reports its best and median wall time, output size, ratio to the input and peak memory
(``ru_maxrss`` of that child, from ``wait4``). The rafs build is also timed in-process through
``rafs.Builder`` (no interpreter start-up and imports), and the start-up alone as
``rafs create --help`` (interpreter, imports, argument parsing).

    python benchmarks/build.py [--files 3000] [--size-mb 60] [--repeat 3] [--workdir DIR] [--keep]
                               [--skip-slow]

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


GNU_TIME = shutil.which("time") if os.path.exists("/usr/bin/time") else None


def run_child(argv, *, shell: bool = False) -> tuple[float, float, int]:
    """(wall seconds, CPU seconds, peak RSS in KiB) of one child process and the children it waited for.

    The peak comes from GNU time (``%M``) when installed: a child forked from this (large) process
    would report this process's size as its own until it execs. Without it, ``wait4``'s figure is
    used and is an upper bound.
    """
    if shell:
        argv = ["sh", "-c", argv]
    with tempfile.NamedTemporaryFile("r") as report:
        if GNU_TIME:
            argv = [GNU_TIME, "-f", "%M", "-o", report.name] + argv
        start = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        err = proc.stderr.read().decode(errors="replace")
        proc.stderr.close()
        if proc.returncode:
            raise RuntimeError(f"{argv} failed ({proc.returncode}): {err.strip()[-500:]}")
        peak = int(report.read().split()[-1]) if GNU_TIME else usage.ru_maxrss
    return wall, usage.ru_utime + usage.ru_stime, peak


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
    parser.add_argument("--repeat", type=int, default=3, help="rounds; best and median are reported")
    parser.add_argument("--workdir", help="where to put the tree and outputs (default: a temporary dir)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--skip-slow", action="store_true", help="leave out mksquashfs at its default zstd "
                        "level (15), which takes ten times longer than the rest together")
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
        "rafs start-up (rafs create --help)": (lambda: [python, "-m", "rafs", "create", "--help"],
                                                fresh(os.path.join(work, "nothing"))),
        "tar -c | zstd -3": (lambda: f"tar -C '{src}' -cf - . | zstd -3 -q -f -o '{fresh(out)}/layer.tar.zst'",
                             out),
        "mkfs.erofs --chunksize=1048576 --blobdev": (
            lambda: ["mkfs.erofs", "--quiet", "--chunksize=1048576", f"--blobdev={fresh(out)}/blob",
                     f"{out}/image.erofs", src], out),
        "mksquashfs -comp zstd": (lambda: ["mksquashfs", src, f"{fresh(out)}/image.sqfs", "-comp", "zstd",
                                           "-noappend", "-quiet", "-no-progress"], out),
        # mksquashfs' zstd default is level 15; level 3 is what nydus-image and tar|zstd -3 use
        "mksquashfs -comp zstd -Xcompression-level 3": (
            lambda: ["mksquashfs", src, f"{fresh(out)}/image.sqfs", "-comp", "zstd", "-Xcompression-level", "3",
                     "-noappend", "-quiet", "-no-progress"], out),
    }
    needed = {"tar -c | zstd -3": "zstd", "mkfs.erofs --chunksize=1048576 --blobdev": "mkfs.erofs",
              "mksquashfs -comp zstd": "mksquashfs", "mksquashfs -comp zstd -Xcompression-level 3": "mksquashfs"}
    if args.skip_slow:
        del tools["mksquashfs -comp zstd"]
    available = {}
    for name, spec in tools.items():
        if name in needed and shutil.which(needed[name]) is None:
            print(f"{name}: {needed[name]} is not installed, skipped")
            continue
        available[name] = spec
    import rafs
    # the CLI's start-up is measured as installed: with bytecode caches, even where the environment
    # says not to write them (PYTHONDONTWRITEBYTECODE would make every run recompile every module)
    subprocess.run([python, "-m", "compileall", "-q", os.path.dirname(rafs.__file__)], check=True)
    times: dict[str, list[float]] = {name: [] for name in available}
    cpu: dict[str, list[float]] = {name: [] for name in available}
    peaks: dict[str, int] = {name: 0 for name in available}
    sizes: dict[str, int] = {}
    in_process: list[float] = []
    in_process_cpu: list[float] = []
    # rounds interleave the tools, so a burst of load from elsewhere hits them all alike
    for _ in range(args.repeat):
        for name, (make_argv, output) in available.items():
            cmd = make_argv()
            wall, used, peak = run_child(cmd, shell=isinstance(cmd, str))
            times[name].append(wall)
            cpu[name].append(used)
            peaks[name] = max(peaks[name], peak)
            sizes[name] = dir_size(output)
        # in-process: the builder itself, without interpreter start-up and imports
        before = resource.getrusage(resource.RUSAGE_SELF)
        result = rafs.Builder(src, fs_version=6, compressor="zstd").write(blob_dir=fresh(out))
        after = resource.getrusage(resource.RUSAGE_SELF)
        in_process.append(result.output["trace"]["consumed_time"]["total_build"])
        in_process_cpu.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    rows = [(name, min(times[name]), statistics.median(times[name]), statistics.median(cpu[name]), sizes[name],
             peaks[name]) for name in available]

    baseline = next((r[1] for r in rows if r[0] == "tar -c | zstd -3"), None)
    print(f"\n{'tool':<46} {'best s':>7} {'median s':>8} {'vs tar|zstd':>11} {'CPU s':>6} {'output MB':>10} "
          f"{'ratio':>6} {'peak RSS MB':>11}")
    for name, best, median, used, size, peak in rows:
        relative = f"{best / baseline:.2f}x" if baseline else "-"
        print(f"{name:<46} {best:>7.3f} {median:>8.3f} {relative:>11} {used:>6.2f} {size / 1e6:>10.2f} "
              f"{size / total:>6.3f} {peak / 1024:>11.1f}")
    best = min(in_process)
    relative = f"{best / baseline:.2f}x" if baseline else "-"
    print(f"{'rafs.Builder v6 zstd (in-process build)':<46} {best:>7.3f} {statistics.median(in_process):>8.3f} "
          f"{relative:>11} {statistics.median(in_process_cpu):>6.2f}")
    print(f"\nload average during the run: {os.getloadavg()[0]:.2f} (1 min)")
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(f"\npeak RSS of this process (generation + in-process builds): {own / 1024:.1f} MB")
    if not args.keep and not args.workdir:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
