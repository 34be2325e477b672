"""The user's guide's performance evaluation, reproduced: six ways to serve an image, plus references.

The guide (``性能测评``) compares FUSE over a local blob, FUSE over S3 cold and with a warm cache, the
kernel's EROFS over local files, and EROFS on demand (fscache) cold and cached. Here the same rows run
with rafs, on-demand EROFS through fanotify instead of fscache, next to two references:
``squashfuse_ll`` (mksquashfs ``-comp zstd``, defaults) and the kernel reading the source tree itself.

Rows (each measured on a fresh mount after ``echo 3 > /proc/sys/vm/drop_caches``):

* ``FUSE + local``: ``rafs mount`` with the guide's nydusd-config.localfs.json (localfs + blobcache;
  the cache emptied before each cold measurement);
* ``FUSE + S3, cold`` / ``cached``: the guide's nydusd-config.s3.json against moto on loopback, the
  cache empty / filled by an earlier full read;
* ``EROFS + local``: the kernel mounting the bootstrap with an uncompressed ``--blob-layout mapped``
  blob as its device (no daemon);
* ``EROFS on demand, cold`` / ``cached``: ``rafs mount --fs-driver erofs`` with the localfs + blobcache
  config, the cache empty / complete;
* ``FUSE + S3, cold, prefetch``: the same with ``fs_prefetch`` (prefetch_all, 4 threads), against
  ``S3 download + extract`` (the blob in one GET, then ``Image.extractall``), the issue's anchor;
* ``squashfuse_ll`` and ``kernel, local files`` as references.

The CPU seconds each daemon spent serving the cold full read are reported under each table.
``--rows`` / ``--columns`` / ``--bench-files`` measure a subset quickly (e.g. ``--rows "fuse + local,squash"
--columns read``); figures print as they come, with the load average.

Columns: seconds until the mount answers; a cold metadata walk (``lstat`` of every entry); a cold full
read; the first byte of the largest file; a start-up-like read of a fixed list of 100 files.

Trees: ``bench`` (benchmarks/mount.py's tree: 3,000 files, 60 MB) and ``distro`` (a root-filesystem
shape: tens of thousands of small files in deep directories). S3 answers through the counting proxy of
``tests/s3server.py``; ``--s3-latency-ms`` holds each GET that long, as a real region would. Writes
``docs/evaluation.md`` (machine facts, load, the table, ratios) and ``docs/evaluation.png``. Run as root::

    python benchmarks/evaluate.py [--trees bench,distro] [--repeat 2] [--s3-latency-ms 0]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(ROOT, "tests"))

import rafs  # noqa: E402
from rafs.serve.ondemand import mount_file_backed  # noqa: E402
from mount import cpu_seconds, drop_caches, generate_tree, read_all, stat_all, wait_mounted  # noqa: E402

COLUMNS = ["mount", "walk", "read", "first_byte", "startup"]
COLUMN_TITLES = {"mount": "mount", "walk": "cold metadata walk", "read": "cold full read",
                 "first_byte": "first byte (largest file)", "startup": "start-up read (100 files)"}
STARTUP_FILES = 100


# -- trees -------------------------------------------------------------------------------------------

def distro_tree(top: str, files: int, seed: int = 11) -> tuple[int, int]:
    """A root filesystem's shape: many small files (median ~2 KiB, some up to a few MiB) in directories
    up to eight levels deep, symlinks among them; (entries, bytes)."""
    rng = random.Random(seed)
    dirs, entries, written = [top], 1, 0
    for i in range(max(1, files // 12)):
        parent = rng.choice(dirs[-200:] if rng.random() < 0.7 else dirs)
        if parent.count(os.sep) - top.count(os.sep) >= 8:
            parent = top
        path = os.path.join(parent, f"d{i}")
        os.mkdir(path)
        dirs.append(path)
        entries += 1
    words = [b"lib", b"usr", b"share", b"locale", b"config", b"python", b"module", b"return", b"static"]
    for i in range(files):
        size = min(int(rng.lognormvariate(7.5, 1.6)), 4 << 20)
        if i % 3:
            data = b" ".join(rng.choice(words) for _ in range(size // 5 + 1))[:size]
        else:
            data = rng.randbytes(size)
        path = os.path.join(rng.choice(dirs), f"f{i}")
        with open(path, "wb") as f:
            f.write(data)
        written += size
        entries += 1
        if i % 50 == 0:
            os.symlink(os.path.basename(path), path + ".so")
            entries += 1
    return entries, written


def files_of(top: str) -> list[str]:
    """Relative paths of the regular files under ``top``, sorted."""
    out = []
    for dirpath, _, filenames in os.walk(top):
        for name in filenames:
            path = os.path.join(dirpath, name)
            if os.path.isfile(path) and not os.path.islink(path):
                out.append(os.path.relpath(path, top))
    return sorted(out)


# -- the ways to serve an image --------------------------------------------------------------------

class Row:
    """One way to serve the tree at ``mountpoint``: ``mount()`` returns seconds until it answers."""

    name = ""
    warm = False            # a row whose cache stays filled between measurements
    columns = tuple(c for c in COLUMNS if c != "mount")     # the work columns this row is measured in

    def __init__(self, mountpoint: str):
        self.mountpoint = mountpoint
        self.process: subprocess.Popen | None = None

    def reset(self) -> None:
        """Make the next measurement cold (empty the row's cache), unless the row is a warm one."""

    def prepare(self) -> None:
        """Once before measuring: warm rows fill their cache here."""

    def command(self) -> list[str] | None:
        return None

    def mount(self) -> float:
        start = time.perf_counter()
        self.process = subprocess.Popen(self.command(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_mounted(self.mountpoint, self.process, timeout=120)
        os.stat(self.mountpoint)
        return time.perf_counter() - start

    def umount(self) -> None:
        subprocess.run(["umount", self.mountpoint], check=True)
        if self.process is not None:
            self.process.wait(60)
            self.process = None


class RafsRow(Row):
    """``rafs mount`` with a nydusd config (FUSE or on-demand EROFS), its blob cache in ``work_dir``."""

    def __init__(self, name, mountpoint, bootstrap, config: dict, work_dir, *, driver="fuse", warm=False):
        super().__init__(mountpoint)
        self.name, self.bootstrap, self.work_dir, self.driver, self.warm = name, bootstrap, work_dir, driver, warm
        self.config_path = os.path.join(os.path.dirname(work_dir), f"{name.replace(' ', '_')}.json")
        with open(self.config_path, "w") as f:
            json.dump(config, f)

    def command(self):
        return [sys.executable, "-m", "rafs", "mount", "--fs-driver", self.driver, "--config", self.config_path,
                "--bootstrap", self.bootstrap, "--mountpoint", self.mountpoint]

    def reset(self):
        if not self.warm:
            shutil.rmtree(self.work_dir, ignore_errors=True)
            os.makedirs(self.work_dir)

    def prepare(self):
        shutil.rmtree(self.work_dir, ignore_errors=True)
        os.makedirs(self.work_dir)
        if self.warm:
            self.mount()
            try:
                read_all(self.mountpoint)
            finally:
                self.umount()


class SquashfuseRow(Row):
    name = "squashfuse_ll"

    def __init__(self, mountpoint, image):
        super().__init__(mountpoint)
        self.image = image

    def command(self):
        return ["squashfuse_ll", "-f", self.image, self.mountpoint]


class KernelErofsRow(Row):
    """The kernel mounting a bootstrap file-backed, with ``devices`` as its blob devices."""

    def __init__(self, name, mountpoint, bootstrap, devices):
        super().__init__(mountpoint)
        self.name, self.bootstrap, self.devices = name, bootstrap, devices

    def mount(self):
        start = time.perf_counter()
        mount_file_backed(self.bootstrap, self.mountpoint, self.devices)
        return time.perf_counter() - start


class DownloadRow(Row):
    """The anchor of the S3 rows: the whole blob in one GET, written to a file, then the tree extracted
    from it (``Image.extractall``), as a user without lazy loading would do."""

    name = "S3 download + extract"
    columns = ("read",)

    def __init__(self, mountpoint, bootstrap, backend_config: dict, blob_id: str, work: str):
        super().__init__(mountpoint)
        self.bootstrap, self.backend_config, self.blob_id, self.work = bootstrap, backend_config, blob_id, work

    def mount(self):
        return 0.0

    def umount(self):
        pass

    def download_and_extract(self, _mountpoint) -> None:
        from rafs.io.backends import S3Backend
        blobs, out = os.path.join(self.work, "downloaded"), os.path.join(self.work, "extracted")
        for path in (blobs, out):
            shutil.rmtree(path, ignore_errors=True)
        os.makedirs(blobs)
        reader = S3Backend(self.backend_config).open(self.blob_id)
        size = reader.stat_size()
        with open(os.path.join(blobs, self.blob_id), "wb") as f:
            f.write(reader.read_range(0, size))
        with rafs.open(self.bootstrap, blob_dir=blobs) as image:
            image.extractall(out)


class LocalFilesRow(Row):
    """The source tree itself, read through the kernel's own filesystem (no mount to make)."""

    name = "kernel, local files"

    def __init__(self, source):
        super().__init__(source)

    def mount(self):
        return 0.0

    def umount(self):
        pass


# -- measurements ----------------------------------------------------------------------------------

def first_byte(top: str, largest: str) -> int:
    with open(os.path.join(top, largest), "rb") as f:
        return len(f.read(1))


def startup_read(top: str, names: list[str]) -> int:
    total = 0
    for name in names:
        with open(os.path.join(top, name), "rb") as f:
            total += len(f.read())
    return total


def measure(row: Row, work) -> tuple[float, float, float | None]:
    """(seconds of ``work`` on a fresh, cold mount, seconds until that mount answered, CPU seconds the
    row's daemon spent meanwhile: None without a daemon)."""
    row.reset()
    drop_caches()
    mount_seconds = row.mount()
    try:
        pid = row.process.pid if row.process is not None else None
        cpu = cpu_seconds(pid) if pid else None
        start = time.perf_counter()
        work(row.mountpoint)
        seconds = time.perf_counter() - start
        return seconds, mount_seconds, (cpu_seconds(pid) - cpu if pid else None)
    finally:
        row.umount()


def run_tree(label: str, work: str, source: str, args, s3) -> dict:
    print(f"[{label}] building images", flush=True)
    blobs, boot = os.path.join(work, "blobs"), os.path.join(work, "image.boot")
    os.makedirs(blobs, exist_ok=True)
    result = rafs.Builder(source, fs_version=6, compressor="zstd").write(bootstrap=boot, blob_dir=blobs)
    mapped_dir = os.path.join(work, "mapped")
    os.makedirs(mapped_dir, exist_ok=True)
    mapped = rafs.Builder(source, fs_version=6, compressor="none", blob_layout="mapped").write(
        bootstrap=os.path.join(mapped_dir, "image.boot"), blob_dir=mapped_dir)
    squash = os.path.join(work, "image.sqfs")
    subprocess.run(["mksquashfs", source, squash, "-comp", "zstd", "-noappend", "-quiet"], check=True,
                   stdout=subprocess.DEVNULL)
    blob_id = result.blob_id
    # S3: the bootstrap and blob where the guide's nydusify build pushes them
    s3.put(f"nydus-demo/meta/{label}", open(boot, "rb").read())
    s3.put(f"nydus-demo/blob/{blob_id}", open(os.path.join(blobs, blob_id), "rb").read())
    s3_boot = os.path.join(work, "s3.boot")
    shutil.copy(boot, s3_boot)

    mnt = os.path.join(work, "mnt")
    os.makedirs(mnt, exist_ok=True)

    def localfs(work_dir):
        return {"device": {"backend": {"type": "localfs", "config": {"dir": blobs}},
                           "cache": {"type": "blobcache", "config": {"work_dir": work_dir}}},
                "mode": "direct", "digest_validate": False, "iostats_files": False, "enable_xattr": True}

    def s3_prefetching(work_dir):
        config = s3.nydusd_config(work_dir)
        config["fs_prefetch"] = {"enable": True, "threads_count": 4, "prefetch_all": True}
        return config

    rows = [
        RafsRow("FUSE + local", mnt, boot, localfs(os.path.join(work, "c-fuse-local")),
                os.path.join(work, "c-fuse-local")),
        RafsRow("FUSE + S3, cold", mnt, s3_boot, s3.nydusd_config(os.path.join(work, "c-s3")),
                os.path.join(work, "c-s3")),
        RafsRow("FUSE + S3, cold, prefetch", mnt, s3_boot, s3_prefetching(os.path.join(work, "c-s3-pf")),
                os.path.join(work, "c-s3-pf")),
        RafsRow("FUSE + S3, cached", mnt, s3_boot, s3.nydusd_config(os.path.join(work, "c-s3-warm")),
                os.path.join(work, "c-s3-warm"), warm=True),
        KernelErofsRow("EROFS + local", mnt, os.path.join(mapped_dir, "image.boot"),
                       [mapped.blob]),
        RafsRow("EROFS on demand, cold", mnt, boot, localfs(os.path.join(work, "c-od")),
                os.path.join(work, "c-od"), driver="erofs"),
        RafsRow("EROFS on demand, cached", mnt, boot, localfs(os.path.join(work, "c-od-warm")),
                os.path.join(work, "c-od-warm"), driver="erofs", warm=True),
        SquashfuseRow(mnt, squash),
        LocalFilesRow(source),
        DownloadRow(mnt, boot, s3.backend_config(), blob_id, work),
    ]
    if args.rows:
        wanted = [w.strip().lower() for w in args.rows.split(",")]
        rows = [row for row in rows if any(w in row.name.lower() for w in wanted)]
    names = files_of(source)
    largest = max(names, key=lambda n: os.path.getsize(os.path.join(source, n)))
    startup = sorted(random.Random(3).sample(names, min(STARTUP_FILES, len(names))))
    want_bytes = sum(os.path.getsize(os.path.join(source, n)) for n in names)
    works = {"walk": stat_all, "read": read_all, "first_byte": lambda top: first_byte(top, largest),
             "startup": lambda top: startup_read(top, startup)}
    columns = [c for c in works if not args.columns or c in args.columns.split(",")]
    times = {row.name: {c: [] for c in COLUMNS} for row in rows}
    for row in rows:
        row.prepare()
    for round_number in range(args.repeat):
        for row in rows:
            print(f"[{label}] round {round_number + 1}: {row.name}", flush=True)
            for column in (c for c in columns if c in row.columns):
                work_fn = row.download_and_extract if isinstance(row, DownloadRow) else works[column]
                seconds, mount_seconds, cpu = measure(row, work_fn)
                times[row.name][column].append(seconds)
                if column == "read" and cpu is not None:
                    times[row.name].setdefault("read_cpu", []).append(cpu)
                if not isinstance(row, DownloadRow):
                    times[row.name]["mount"].append(mount_seconds)
                print(f"  {column}: {seconds:.3f} s (load {open('/proc/loadavg').read().split()[0]})", flush=True)
    for row in rows:                            # every row served every byte
        if isinstance(row, DownloadRow):
            continue
        row.reset()
        row.mount()
        try:
            if read_all(row.mountpoint) != want_bytes:
                raise SystemExit(f"[{label}] {row.name} did not serve all {want_bytes} bytes")
        finally:
            row.umount()
    return {"times": times, "files": len(names), "bytes": want_bytes}


def machine_facts() -> dict:
    with open("/proc/cpuinfo") as f:
        model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "?")
    return {"kernel": platform.release(), "cpus": os.cpu_count(), "cpu": model, "python": platform.python_version(),
            "load": open("/proc/loadavg").read().split()[:3]}


def write_report(results: dict, facts: dict, args, path_md: str, path_png: str) -> None:
    lines = ["# The user's guide's evaluation, reproduced", "",
             "Written by `benchmarks/evaluate.py`: every figure is the best of "
             f"{args.repeat} cold measurements (page cache dropped, a fresh mount each), in seconds.", "",
             f"Machine: {facts['cpus']} CPUs ({facts['cpu']}), Linux {facts['kernel']}, Python {facts['python']}; "
             f"load average before {' '.join(facts['load'])}, after {' '.join(facts['load_after'])}. "
             f"S3 is moto on loopback behind a counting proxy, {args.s3_latency_ms} ms added to each GET; "
             "the proxy answers ranged GETs from each object fetched once (moto reads the whole object for "
             "every ranged GET, which no real S3 does), about 2-3 ms a request here. "
             "`S3 download + extract`: the blob in one GET, then `Image.extractall`.", ""]
    for label, result in results.items():
        lines += [f"## Tree `{label}`: {result['files']} files, {result['bytes'] / 1e6:.1f} MB", "",
                  "| row | " + " | ".join(COLUMN_TITLES[c] for c in COLUMNS) + " |",
                  "| --- |" + " ---: |" * len(COLUMNS)]
        best = {name: {c: min(row[c]) if row[c] else None for c in COLUMNS} for name, row in result["times"].items()}
        for name, row in best.items():
            lines.append(f"| {name} | " + " | ".join("-" if row[c] is None else f"{row[c]:.3f}" for c in COLUMNS)
                         + " |")
        daemons = [(name, min(row["read_cpu"])) for name, row in result["times"].items() if row.get("read_cpu")]
        if daemons:
            lines += ["", "CPU seconds of the serving daemon during the cold full read (best): " +
                      ", ".join(f"{name} {cpu:.2f}" for name, cpu in daemons) + "."]
        lines += ["", "Ratios (below 1.0: faster than the anchor):", ""]
        for name, anchor_name, column in [("FUSE + local", "squashfuse_ll", "read"),
                                          ("FUSE + local", "squashfuse_ll", "walk"),
                                          ("EROFS on demand, cold", "EROFS + local", "read"),
                                          ("EROFS on demand, cached", "EROFS + local", "read"),
                                          ("EROFS on demand, cached", "EROFS + local", "walk"),
                                          ("FUSE + S3, cold, prefetch", "S3 download + extract", "read")]:
            ours, anchor = best.get(name, {}).get(column), best.get(anchor_name, {}).get(column)
            if ours is not None and anchor:
                lines.append(f"- {name} / {anchor_name}, {COLUMN_TITLES[column]}: {ours / anchor:.2f}x")
        lines.append("")
    with open(path_md, "w") as f:
        f.write("\n".join(lines))
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no chart", file=sys.stderr)
        return
    figure, axes = plt.subplots(len(results), 1, figsize=(11, 4.5 * len(results)), squeeze=False)
    for axis, (label, result) in zip(axes[:, 0], results.items()):
        names = list(result["times"])
        width = 0.8 / len(names)
        for i, name in enumerate(names):
            values = [min(result["times"][name][c], default=0) for c in COLUMNS]
            axis.bar([x + i * width for x in range(len(COLUMNS))], values, width, label=name)
        axis.set_xticks([x + 0.4 - width / 2 for x in range(len(COLUMNS))], [COLUMN_TITLES[c] for c in COLUMNS])
        axis.set_yscale("log")
        axis.set_ylabel("seconds (log)")
        axis.set_title(f"tree {label}: {result['files']} files, {result['bytes'] / 1e6:.0f} MB")
        axis.legend(fontsize=7, ncol=4)
    figure.tight_layout()
    figure.savefig(path_png, dpi=110)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trees", default="bench,distro", help="comma-separated: bench, distro")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--distro-files", type=int, default=30000)
    parser.add_argument("--s3-latency-ms", type=float, default=0.0, help="added to each S3 GET")
    parser.add_argument("--markdown", default=os.path.join(ROOT, "docs", "evaluation.md"))
    parser.add_argument("--chart", default=os.path.join(ROOT, "docs", "evaluation.png"))
    parser.add_argument("--workdir", help="where trees and images go (default: a temporary directory)")
    parser.add_argument("--rows", help="comma-separated parts of row names to measure (default: all), "
                        "e.g. 'fuse + local,squashfuse'")
    parser.add_argument("--columns", help="comma-separated: walk, read, first_byte, startup (default: all)")
    parser.add_argument("--bench-files", type=int, default=3000, help="files of the bench tree")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        parser.error("needs root (drop_caches, kernel mounts)")
    for tool in ("mksquashfs", "squashfuse_ll", "fusermount3"):
        if shutil.which(tool) is None:
            parser.error(f"{tool} is not installed")
    from s3server import S3, MotoServer, S3Proxy
    work = args.workdir or tempfile.mkdtemp(prefix="rafs-evaluate-")
    os.makedirs(work, exist_ok=True)
    facts = machine_facts()
    server = MotoServer(os.path.join(work, "moto.log"))
    proxy = S3Proxy(server.endpoint)
    proxy.delay = args.s3_latency_ms / 1000
    proxy.serve_ranges = True
    results = {}
    try:
        s3 = S3(server, proxy)
        for label in args.trees.split(","):
            tree_work = os.path.join(work, label)
            source = os.path.join(tree_work, "tree")
            os.makedirs(source)
            if label == "bench":
                generate_tree(source, args.bench_files, max(1, args.bench_files // 50))
            elif label == "distro":
                distro_tree(source, args.distro_files)
            else:
                parser.error(f"unknown tree {label!r}")
            results[label] = run_tree(label, tree_work, source, args, s3)
            facts["load_after"] = open("/proc/loadavg").read().split()[:3]
            write_report(results, facts, args, args.markdown, args.chart)     # each tree's figures kept
    finally:
        proxy.stop()
        server.stop()
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    facts["load_after"] = open("/proc/loadavg").read().split()[:3]
    write_report(results, facts, args, args.markdown, args.chart)
    print(open(args.markdown).read())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
