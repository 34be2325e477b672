"""How fast is ``rafs mount``? Cold full read and metadata walk against squashfuse_ll and kernel EROFS.

Generates a tree of a few thousand files (about 60 MB, half compressible), builds it three ways (a
RAFS image with ``rafs.Builder``, ``mksquashfs -comp zstd``, ``mkfs.erofs``) and, for each, measures
in fresh mounts after ``echo 3 > /proc/sys/vm/drop_caches`` (rafs twice: ``--localfs-dir`` without a
cache, and the user's guide's localfs + blobcache configuration with an empty cache each time):

* cold read: every regular file read to the end, one after another;
* metadata walk: ``lstat`` of every entry, directories listed with ``os.scandir``.

Needs root, /dev/fuse, squashfs-tools, squashfuse, erofs-utils and the kernel's EROFS. Run::

    python benchmarks/mount.py [--files 3000] [--megabytes 60] [--repeat 3] [--fs-version 6]

The three take turns in each of ``--repeat`` rounds; prints the best and median times, the CPU
seconds each FUSE daemon spent serving the cold read (steadier than wall time on a busy machine), and
the ratios of the best, rafs / squashfuse_ll and rafs / EROFS (below 1.0: rafs is faster).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import rafs  # noqa: E402

WORDS = [b"layer", b"chunk", b"blob", b"inode", b"nydus", b"erofs", b"rafs", b"cache", b"mount", b"image",
         b"prefetch", b"digest", b"bootstrap", b"superblock", b"container", b"registry"]


def generate_tree(top: str, files: int, megabytes: int, seed: int = 7) -> tuple[int, int]:
    """``files`` files in nested directories: most small, a few large; (entries, bytes) written."""
    rng = random.Random(seed)
    budget = megabytes * 1024 * 1024
    large = max(1, files // 75)
    small = files - large
    small_total = budget * 2 // 5
    sizes = [max(1, int(rng.lognormvariate(0, 1.2) * small_total / small / 2.05)) for _ in range(small)]
    large_total = budget - sum(sizes)
    sizes += [max(1, int(large_total / large * rng.uniform(0.5, 1.5))) for _ in range(large)]
    rng.shuffle(sizes)
    dirs = [top]
    entries = 1
    for i in range(max(1, files // 20)):
        parent = rng.choice(dirs)
        path = os.path.join(parent, f"d{i:04d}")
        os.mkdir(path)
        dirs.append(path)
        entries += 1
    written = 0
    for i, size in enumerate(sizes):
        path = os.path.join(rng.choice(dirs), f"f{i:05d}.dat")
        if i % 2:
            data = rng.randbytes(size)                                   # incompressible
        else:
            text = b" ".join(rng.choice(WORDS) for _ in range(size // 6 + 1))
            data = text[:size]                                           # compressible
        with open(path, "wb") as f:
            f.write(data)
        written += size
        entries += 1
        if i % 97 == 0:
            os.symlink(os.path.basename(path), path + ".link")
            entries += 1
    return entries, written


def drop_caches() -> None:
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def wait_mounted(mountpoint: str, process: subprocess.Popen | None = None, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not os.path.ismount(mountpoint):
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"mount process exited with {process.returncode}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{mountpoint} not mounted after {timeout} s")
        time.sleep(0.01)


class Mounter:
    """Mounts one image at ``mountpoint``; ``mount()`` returns the seconds until it answered."""

    name = ""

    def __init__(self, mountpoint: str):
        self.mountpoint = mountpoint
        self.process: subprocess.Popen | None = None

    def command(self) -> list[str]:
        raise NotImplementedError

    def mount(self) -> float:
        start = time.perf_counter()
        self.process = subprocess.Popen(self.command(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_mounted(self.mountpoint, self.process)
        os.stat(self.mountpoint)
        return time.perf_counter() - start

    def umount(self) -> None:
        subprocess.run(["umount", self.mountpoint], check=True)
        if self.process is not None:
            self.process.wait(30)
            self.process = None


class RafsMounter(Mounter):
    name = "rafs mount"

    def __init__(self, mountpoint, bootstrap, blob_dir, threads):
        super().__init__(mountpoint)
        self.bootstrap, self.blob_dir, self.threads = bootstrap, blob_dir, threads

    def command(self):
        return [sys.executable, "-m", "rafs", "mount", "--bootstrap", self.bootstrap, "--localfs-dir",
                self.blob_dir, "--mountpoint", self.mountpoint, "--threads", str(self.threads)]


class RafsCacheMounter(RafsMounter):
    """``rafs mount`` with the user's guide's localfs + blobcache configuration, the cache emptied
    before each mount so that every read fills it (a cold cache)."""

    name = "rafs blobcache"

    def __init__(self, mountpoint, bootstrap, blob_dir, threads, work_dir):
        super().__init__(mountpoint, bootstrap, blob_dir, threads)
        self.work_dir = work_dir
        self.config = work_dir + ".json"
        with open(self.config, "w") as f:
            json.dump({"device": {"backend": {"type": "localfs", "config": {"dir": blob_dir}},
                                  "cache": {"type": "blobcache", "config": {"work_dir": work_dir}}},
                       "mode": "direct", "digest_validate": False, "iostats_files": False,
                       "enable_xattr": True}, f)

    def command(self):
        return [sys.executable, "-m", "rafs", "mount", "--bootstrap", self.bootstrap, "--config", self.config,
                "--mountpoint", self.mountpoint, "--threads", str(self.threads)]

    def mount(self) -> float:
        shutil.rmtree(self.work_dir, ignore_errors=True)
        return super().mount()


class SquashfuseMounter(Mounter):
    name = "squashfuse_ll"

    def __init__(self, mountpoint, image):
        super().__init__(mountpoint)
        self.image = image

    def command(self):
        return ["squashfuse_ll", "-f", self.image, self.mountpoint]


class ErofsMounter(Mounter):
    name = "kernel EROFS"

    def __init__(self, mountpoint, image):
        super().__init__(mountpoint)
        self.image = image

    def mount(self) -> float:
        start = time.perf_counter()
        subprocess.run(["mount", "-t", "erofs", "-o", "ro,loop", self.image, self.mountpoint], check=True)
        return time.perf_counter() - start


def read_all(top: str) -> int:
    """Read every regular file under ``top`` to the end; returns the bytes read."""
    total = 0
    stack = [top]
    while stack:
        with os.scandir(stack.pop()) as it:
            for entry in it:
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
                elif entry.is_file(follow_symlinks=False):
                    fd = os.open(entry.path, os.O_RDONLY)
                    try:
                        while True:
                            block = os.read(fd, 1 << 20)
                            if not block:
                                break
                            total += len(block)
                    finally:
                        os.close(fd)
    return total


def stat_all(top: str) -> int:
    """``lstat`` every entry under ``top``; returns the number of entries."""
    count = 1
    os.lstat(top)
    stack = [top]
    while stack:
        with os.scandir(stack.pop()) as it:
            for entry in it:
                os.lstat(entry.path)
                count += 1
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
    return count


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of process ``pid`` so far (all its threads)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure_once(mounter: Mounter, work) -> tuple[float, float, object, float | None]:
    """(seconds of ``work``, seconds until the mount answered, work's result, CPU seconds the FUSE
    daemon spent on it: None for a kernel mount) on a cold mount. The daemon's CPU time is the
    steadier figure on a busy machine."""
    drop_caches()
    mount_time = mounter.mount()
    try:
        pid = mounter.process.pid if mounter.process is not None else None
        cpu = cpu_seconds(pid) if pid else None
        start = time.perf_counter()
        result = work(mounter.mountpoint)
        seconds = time.perf_counter() - start
        if pid:
            cpu = cpu_seconds(pid) - cpu
        return seconds, mount_time, result, cpu
    finally:
        mounter.umount()


def measure_all(mounters: list[Mounter], repeat: int) -> dict[str, dict[str, list]]:
    """Every mounter's read and walk times over ``repeat`` rounds, the mounters taking turns within
    each round so that a busy spell of the machine does not land on one of them only."""
    times = {m.name: {"read": [], "walk": [], "mount": [], "read_cpu": [], "bytes": None, "entries": None}
             for m in mounters}
    for _ in range(repeat):
        for mounter in mounters:
            row = times[mounter.name]
            seconds, mount_time, row["bytes"], cpu = measure_once(mounter, read_all)
            row["read"].append(seconds)
            row["mount"].append(mount_time)
            if cpu is not None:
                row["read_cpu"].append(cpu)
            seconds, _, row["entries"], _ = measure_once(mounter, stat_all)
            row["walk"].append(seconds)
    return times


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=3000)
    parser.add_argument("--megabytes", type=int, default=60)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--fs-version", type=int, default=6, choices=(5, 6))
    parser.add_argument("--compressor", default="zstd", choices=("none", "lz4_block", "zstd"))
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--no-blobcache", action="store_true",
                        help="leave out the row of rafs mount with the guide's localfs + blobcache config")
    parser.add_argument("--workdir", help="where to put the tree and images (default: a temporary directory)")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        parser.error("needs root (drop_caches, kernel mounts)")
    for tool in ("mksquashfs", "squashfuse_ll", "mkfs.erofs", "fusermount3"):
        if shutil.which(tool) is None:
            parser.error(f"{tool} is not installed")

    work = args.workdir or tempfile.mkdtemp(prefix="rafs-bench-")
    os.makedirs(work, exist_ok=True)
    source, blob_dir, mountpoint = (os.path.join(work, n) for n in ("tree", "blobs", "mnt"))
    for path in (source, blob_dir, mountpoint):
        shutil.rmtree(path, ignore_errors=True) if path != mountpoint else None
        os.makedirs(path, exist_ok=True)
    try:
        entries, size = generate_tree(source, args.files, args.megabytes)
        print(f"tree: {entries} entries, {size / 1e6:.1f} MB in {source}")
        bootstrap = os.path.join(work, "image.boot")
        start = time.perf_counter()
        rafs.Builder(source, fs_version=args.fs_version, compressor=args.compressor).write(
            bootstrap=bootstrap, blob_dir=blob_dir)
        build_rafs = time.perf_counter() - start
        squash = os.path.join(work, "image.sqfs")
        start = time.perf_counter()
        subprocess.run(["mksquashfs", source, squash, "-comp", "zstd", "-noappend", "-quiet"], check=True,
                       stdout=subprocess.DEVNULL)
        build_squash = time.perf_counter() - start
        erofs = os.path.join(work, "image.erofs")
        start = time.perf_counter()
        subprocess.run(["mkfs.erofs", "--quiet", erofs, source], check=True, stdout=subprocess.DEVNULL)
        build_erofs = time.perf_counter() - start
        blob_size = sum(os.path.getsize(os.path.join(blob_dir, n)) for n in os.listdir(blob_dir))
        print(f"images: rafs v{args.fs_version} {args.compressor} {blob_size / 1e6:.1f} MB blob "
              f"({build_rafs:.1f} s), squashfs zstd {os.path.getsize(squash) / 1e6:.1f} MB ({build_squash:.1f} s), "
              f"erofs {os.path.getsize(erofs) / 1e6:.1f} MB ({build_erofs:.1f} s)")

        mounters = [RafsMounter(mountpoint, bootstrap, blob_dir, args.threads)]
        if not args.no_blobcache:
            mounters.append(RafsCacheMounter(mountpoint, bootstrap, blob_dir, args.threads,
                                             os.path.join(work, "cache")))
        mounters += [SquashfuseMounter(mountpoint, squash), ErofsMounter(mountpoint, erofs)]
        times = measure_all(mounters, args.repeat)
        for name, row in times.items():
            if row["bytes"] != size or row["entries"] != entries:
                raise SystemExit(f"{name}: read {row['bytes']} of {size} bytes, walked {row['entries']} of "
                                 f"{entries} entries")

        print(f"\n{args.repeat} cold runs each (page cache dropped, fresh mount), best and median:")
        print(f"{'':16} {'cold read':>17} {'MB/s':>7} {'metadata walk':>17} {'mount':>7} {'daemon CPU (read)':>19}")
        best = {}
        for name, row in times.items():
            read, walk = min(row["read"]), min(row["walk"])
            best[name] = (read, walk)
            cpu = (f"{min(row['read_cpu']):7.2f}s {statistics.median(row['read_cpu']):7.2f}s" if row["read_cpu"]
                   else f"{'-':>8} {'-':>8}")
            print(f"{name:16} {read:7.3f}s {statistics.median(row['read']):7.3f}s {size / 1e6 / read:7.1f} "
                  f"{walk:7.3f}s {statistics.median(row['walk']):7.3f}s {min(row['mount']):6.3f}s  {cpu}")
        for ours_name in (m.name for m in mounters if isinstance(m, RafsMounter)):
            ours = best[ours_name]
            for other in ("squashfuse_ll", "kernel EROFS"):
                theirs = best[other]
                cpus = [times[name]["read_cpu"] for name in (ours_name, other)]
                cpu = f", daemon CPU {min(cpus[0]) / min(cpus[1]):.2f}x" if all(cpus) and min(cpus[1]) > 0 else ""
                print(f"{ours_name} / {other} (best): cold read {ours[0] / theirs[0]:.2f}x, metadata walk "
                      f"{ours[1] / theirs[1]:.2f}x{cpu}")
    finally:
        if os.path.ismount(mountpoint):
            subprocess.run(["umount", "-l", mountpoint], check=False)
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
