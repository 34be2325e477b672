"""Support for the FUSE tests (no tests here): run ``python -m rafs mount`` as a subprocess (a crash cannot
take pytest down), ready when the mountpoint answers, always unmounted afterwards; compare a mounted tree
with its source.
"""

from __future__ import annotations

import ctypes.util
import errno
import os
import pathlib
import shutil
import signal
import stat
import subprocess
import sys
import time

from conftest import ROOT, need

READY_TIMEOUT = 60


def need_fuse() -> None:
    need(hasattr(os, "geteuid") and os.geteuid() == 0, "FUSE mounts need root")
    need(os.path.exists("/dev/fuse"), "/dev/fuse is missing")
    need(shutil.which("fusermount3") is not None, "fusermount3 (Debian package fuse3) is not installed")
    need(ctypes.util.find_library("fuse3") is not None, "libfuse3 (Debian package fuse3) is not installed")


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


class Mount:
    """One ``rafs mount`` process serving ``path``; ``log`` holds its stderr."""

    def __init__(self, args: list[str], path: pathlib.Path, log: pathlib.Path, *, command=None):
        self.path = path
        self.log = log
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:           # a stale mount is there: rafs mount is expected to clear it
            if exc.errno != errno.ENOTCONN:
                raise
        self._log_file = open(log, "wb")
        argv = command or [sys.executable, "-m", "rafs", "mount", "--mountpoint", str(path), *args]
        self.process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self._log_file,
                                        stderr=subprocess.STDOUT, env=_env(), cwd=log.parent)
        self.wait_ready()

    def log_text(self) -> str:
        self._log_file.flush()
        return self.log.read_text(errors="replace")

    def wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            if self.process.poll() is not None:
                raise AssertionError(f"rafs mount exited with {self.process.returncode}:\n{self.log_text()}")
            if os.path.ismount(self.path) and not is_stale(self.path):
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.path} not mounted after {READY_TIMEOUT} s:\n{self.log_text()}")
            time.sleep(0.02)

    def signal(self, signum=signal.SIGTERM, timeout: float = 30) -> int:
        self.process.send_signal(signum)
        return self.process.wait(timeout)

    def close(self) -> None:
        """Unmount if still mounted, wait for the process, kill it as a last resort."""
        if self.process.poll() is None and os.path.ismount(self.path):
            subprocess.run(["fusermount3", "-u", str(self.path)], capture_output=True)
        if os.path.ismount(self.path) or is_stale(self.path):
            subprocess.run(["umount", "-l", str(self.path)], capture_output=True)
        if self.process.poll() is None:
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log_file.close()


def is_stale(path) -> bool:
    try:
        os.statvfs(path)              # always asks the daemon; stat may come from the kernel's cache
    except OSError as exc:
        return exc.errno == errno.ENOTCONN
    return False


def guide_config(blob_dir, work_dir, *, enable_xattr: bool = True, validate: bool = False) -> dict:
    """The user's guide's nydusd-config.localfs.json (localfs backend + blobcache)."""
    return {"device": {"backend": {"type": "localfs", "config": {"dir": str(blob_dir)}},
                       "cache": {"type": "blobcache", "config": {"work_dir": str(work_dir)}}},
            "mode": "direct", "digest_validate": validate, "iostats_files": False, "enable_xattr": enable_xattr}


# -- comparing a mounted tree with its source --------------------------------------------------------

def lstat_tree(top) -> dict[str, os.stat_result]:
    """Relative path ("." for the root) -> lstat of every entry under ``top``."""
    top = os.fspath(top)
    out = {".": os.lstat(top)}
    for dirpath, dirnames, filenames in os.walk(top):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            out[os.path.relpath(path, top)] = os.lstat(path)
    return out


def xattrs(path) -> dict[str, bytes]:
    return {n: os.getxattr(path, n, follow_symlinks=False) for n in os.listxattr(path, follow_symlinks=False)}


def metadata_differences(source, mounted, *, with_xattrs: bool = True) -> list[str]:
    """Every difference in names, mode, uid/gid, size, mtime, nlink, rdev, link target and xattrs,
    and hardlinked source paths that do not share one st_ino in the mount.

    Directory sizes are left out (each filesystem sizes directories its own way), and so is the
    root's mtime (directory builds store 0 there, as nydus-image does).
    """
    want, got = lstat_tree(source), lstat_tree(mounted)
    problems = [f"only in source: {p}" for p in sorted(set(want) - set(got))]
    problems += [f"only in mount: {p}" for p in sorted(set(got) - set(want))]
    groups: dict[tuple, set] = {}
    for rel in sorted(set(want) & set(got)):
        a, b = want[rel], got[rel]
        fields = ["st_mode", "st_uid", "st_gid", "st_nlink", "st_rdev", "st_mtime_ns", "st_size"]
        if stat.S_ISDIR(a.st_mode):
            fields.remove("st_size")
        if rel == ".":
            fields.remove("st_mtime_ns")
        for field in fields:
            if getattr(a, field) != getattr(b, field):
                problems.append(f"{rel}: {field} {getattr(a, field)} != {getattr(b, field)}")
        src, dst = os.path.join(source, rel), os.path.join(mounted, rel)
        if stat.S_ISLNK(a.st_mode) and os.readlink(src) != os.readlink(dst):
            problems.append(f"{rel}: link target {os.readlink(src)!r} != {os.readlink(dst)!r}")
        if with_xattrs and xattrs(src) != xattrs(dst):
            problems.append(f"{rel}: xattrs {xattrs(src)} != {xattrs(dst)}")
        if not stat.S_ISDIR(a.st_mode):
            groups.setdefault((a.st_dev, a.st_ino), set()).add(b.st_ino)
    problems += [f"hardlinked paths got {len(inos)} inode numbers" for inos in groups.values() if len(inos) != 1]
    return problems


def diff_r(source, mounted) -> list[str]:
    """``diff -r --no-dereference`` output, less its notes that two FIFOs or sockets are such."""
    result = subprocess.run(["diff", "-r", "--no-dereference", str(source), str(mounted)],
                            capture_output=True, text=True)
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line]
    real = []
    for line in lines:
        # "File A is a fifo while file B is a fifo": diff cannot compare them, the types agree
        if line.startswith("File ") and " while file " in line:
            first, second = line.split(" while file ", 1)
            if first.rsplit(" is a ", 1)[-1] == second.rsplit(" is a ", 1)[-1]:
                continue
        real.append(line)
    if result.returncode not in (0, 1):
        real.append(f"diff exited with {result.returncode}")
    return real
