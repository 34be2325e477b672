"""Walk benchmark: open a RAFS v6 bootstrap and stat every entry, against ``fsck.erofs`` on the same tree.

Generates a deterministic tree of 100,000+ entries (small files, directories, a few symlinks), builds
a v6 bootstrap with rafs (compressor none) and an EROFS image of the same tree with ``mkfs.erofs``
(chunk-based, data on a ``--blobdev`` like the RAFS blob, so both images hold metadata only), then
times, best of ``--repeat`` rounds:

* ``rafs.open(bootstrap)`` and ``Image.iter_stats()``: a :class:`rafs.Stat` (what ``lstat`` says) of
  every entry, read straight from the inode records; this is the walk the target (within 3x of
  fsck.erofs) is about;
* ``rafs.open(bootstrap)`` and ``Image.iter_entries()``, whose model inodes carry every ``lstat`` field
  and the xattrs, symlink targets and chunk counts too;
* the same, with a :class:`rafs.Stat` made from every inode;
* ``rafs.open(bootstrap)`` and ``Image.walk()`` with ``Image.lstat()`` of every path it names (path
  lookups included, as ``os.walk`` + ``os.lstat`` would do);
* ``fsck.erofs --device=BLOB IMAGE``: without ``--extract`` it reads the superblock, then every inode
  from the root down (directories checked entry by entry, xattrs, every regular file's block map),
  but reads no file data;

and prints their wall times and the ratios to fsck.erofs. With ``--profile`` the iter_stats walk is
run once more under cProfile and the top functions printed.

    python benchmarks/walk.py [--entries 100000] [--repeat 5] [--workdir DIR] [--keep] [--profile]

Needs erofs-utils (mkfs.erofs, fsck.erofs).
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import random
import shutil
import subprocess
import sys
import tempfile
import time

import rafs


def generate_tree(top: str, entries: int, seed: int = 11) -> dict[str, int]:
    """Counts of what a fresh tree of ``entries`` entries under ``top`` holds: about 8% directories,
    1% symlinks, the rest regular files of 0..3 KiB (a tenth of them empty)."""
    rng = random.Random(seed)
    os.makedirs(top)
    dirs = [top]
    counts = {"dirs": 1, "files": 0, "symlinks": 0}
    payload = rng.randbytes(4096)
    for i in range(entries - 1):
        roll = rng.random()
        parent = dirs[rng.randrange(len(dirs))] if len(dirs) < 64 or roll < 0.5 else dirs[-rng.randrange(1, 64)]
        if roll < 0.08:
            path = os.path.join(parent, f"d{i:06d}")
            os.mkdir(path)
            dirs.append(path)
            counts["dirs"] += 1
        elif roll < 0.09:
            os.symlink(f"../target-{i % 97}", os.path.join(parent, f"l{i:06d}"))
            counts["symlinks"] += 1
        else:
            size = 0 if roll > 0.991 else rng.randrange(1, 3072)
            fd = os.open(os.path.join(parent, f"f{i:06d}"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            os.write(fd, payload[:size])
            os.close(fd)
            counts["files"] += 1
    return counts


def walk_entries(bootstrap: str) -> int:
    """rafs.open + iter_entries (each inode is the entry's lstat); returns the number of entries."""
    with rafs.open(bootstrap) as image:
        return sum(1 for _ in image.iter_entries())


def walk_iter_stats(bootstrap: str) -> int:
    """rafs.open + iter_stats: (path, Stat) of every entry."""
    with rafs.open(bootstrap) as image:
        return sum(1 for _ in image.iter_stats())


def walk_stats(bootstrap: str) -> int:
    """rafs.open + iter_entries, a Stat for every entry."""
    count = 0
    with rafs.open(bootstrap) as image:
        for _, inode in image.iter_entries():
            rafs.Stat.from_inode(inode)
            count += 1
    return count


def walk_paths(bootstrap: str) -> int:
    """rafs.open + Image.walk, lstat of every path it names (as os.walk + os.lstat)."""
    count = 1
    with rafs.open(bootstrap) as image:
        image.lstat(b"/")
        for dirpath, dirnames, filenames in image.walk(b"/"):
            prefix = dirpath.rstrip(b"/") + b"/"
            for name in dirnames + filenames:
                image.lstat(prefix + name)
            count += len(dirnames) + len(filenames)
    return count


def timed(function, *args) -> tuple[float, object]:
    start = time.perf_counter()
    result = function(*args)
    return time.perf_counter() - start, result


def run_fsck(image: str, blob: str) -> None:
    subprocess.run(["fsck.erofs", f"--device={blob}", image], check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.PIPE)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=7, help="rounds; the best is reported")
    parser.add_argument("--workdir", help="where to put the tree and images (default: a temporary dir)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--profile", action="store_true", help="profile one iter_stats walk")
    args = parser.parse_args(argv)
    for tool in ("mkfs.erofs", "fsck.erofs"):
        if shutil.which(tool) is None:
            print(f"{tool} is not installed (Debian package erofs-utils)", file=sys.stderr)
            return 2

    work = args.workdir or tempfile.mkdtemp(prefix="rafs-walk-")
    src = os.path.join(work, "src")
    if not os.path.isdir(src):
        start = time.perf_counter()
        counts = generate_tree(src, args.entries)
        print(f"generated {counts} in {time.perf_counter() - start:.1f} s")
    out = os.path.join(work, "out")
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    bootstrap = os.path.join(out, "bootstrap")
    build_s, result = timed(lambda: rafs.Builder(src, fs_version=6, compressor="none").write(
        bootstrap=bootstrap, blob_dir=out))
    erofs_image, erofs_blob = os.path.join(out, "image.erofs"), os.path.join(out, "image.blob")
    mkfs_s, _ = timed(lambda: subprocess.run(["mkfs.erofs", "--quiet", "--chunksize=1048576",
                                              f"--blobdev={erofs_blob}", erofs_image, src], check=True))
    print(f"rafs build {build_s:.2f} s (bootstrap {result.bootstrap_size / 1e6:.1f} MB); "
          f"mkfs.erofs {mkfs_s:.2f} s (image {os.path.getsize(erofs_image) / 1e6:.1f} MB)")

    walks = {"rafs open + iter_stats": walk_iter_stats, "rafs open + iter_entries": walk_entries,
             "rafs open + iter_entries + Stat": walk_stats,
             "rafs open + walk + lstat(path)": walk_paths}
    fsck_name = "fsck.erofs --device (no --extract)"
    rows: dict[str, list[float]] = {name: [] for name in [*walks, fsck_name]}
    counts = set()
    # rounds interleave the walks, so a burst of load from elsewhere hits them all alike
    for _ in range(args.repeat):
        for name, walk in walks.items():
            seconds, entries = timed(walk, bootstrap)
            rows[name].append(seconds)
            counts.add(entries)
        seconds, _ = timed(run_fsck, erofs_image, erofs_blob)
        rows[fsck_name].append(seconds)
    if len(counts) != 1:
        raise SystemExit(f"the walks disagree on the number of entries: {sorted(counts)}")
    (entries,) = counts
    fsck = min(rows[fsck_name])
    print(f"\n{entries} entries; best of {args.repeat}; load average {os.getloadavg()[0]:.2f}")
    print(f"{'walk':<40} {'best s':>8} {'median s':>9} {'vs fsck.erofs':>14} {'µs/entry':>9}")
    for name, times in rows.items():
        best = min(times)
        median = sorted(times)[len(times) // 2]
        print(f"{name:<40} {best:>8.3f} {median:>9.3f} {best / fsck:>13.2f}x {best / entries * 1e6:>9.2f}")

    if args.profile:
        profile = cProfile.Profile()
        profile.runcall(walk_iter_stats, bootstrap)
        pstats.Stats(profile).sort_stats("tottime").print_stats(15)
    if not args.keep and not args.workdir:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
