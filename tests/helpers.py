"""Helpers shared by tests: compare what an opened image reports with the directory it was built from.

``verify_tree(image, source_dir)`` walks the source with ``lstat`` and checks, for every entry, that
the image has the same names, type and permission bits, uid/gid (0 when built ``repeatable``), mtime
(the root's is 0 in directory builds), rdev of devices, nlink of non-directories (counted inside the
tree), symlink targets, xattrs and file contents, and that hardlinked paths share one inode. Entries the
build leaves out (whiteouts) are named with ``skip``.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
import subprocess
import sys
import time

import rafs

_BLOCK = 1 << 20


def source_entries(top) -> dict[bytes, os.stat_result]:
    """Relative path (b"" for the root) -> lstat, without following symlinks or recursing."""
    top = os.fsencode(os.fspath(top))
    entries = {b"": os.lstat(top)}
    stack = [b""]
    while stack:
        rel = stack.pop()
        for name in os.listdir(top + b"/" + rel if rel else top):
            child = rel + b"/" + name if rel else name
            st = os.lstat(top + b"/" + child)
            entries[child] = st
            if stat.S_ISDIR(st.st_mode):
                stack.append(child)
    return entries


def _xattrs(path: bytes) -> dict[bytes, bytes]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return {}
    return {os.fsencode(n): os.getxattr(path, n, follow_symlinks=False) for n in names}


def _file_digest(read) -> str:
    hasher = hashlib.sha256()
    while True:
        block = read(_BLOCK)
        if not block:
            return hasher.hexdigest()
        hasher.update(block)


def verify_tree(image, source_dir, *, repeatable: bool = False, skip=(), check_xattrs: bool = True) -> int:
    """Assert the image holds exactly the tree under ``source_dir``; returns the number of entries."""
    top = os.fsencode(os.fspath(source_dir))
    expected = {rel: st for rel, st in source_entries(top).items()
                if not any(rel == s or rel.startswith(s + b"/") for s in skip)}
    walked = list(image.iter_entries("/"))
    actual = {path.lstrip(b"/"): inode for path, inode in walked}
    # the bulk stat walk reports what the model inodes say, in the same order
    assert list(image.iter_stats("/")) == [(path, rafs.Stat.from_inode(inode)) for path, inode in walked]
    missing, extra = sorted(set(expected) - set(actual)), sorted(set(actual) - set(expected))
    assert not missing and not extra, f"missing from image: {missing[:10]}, unexpected: {extra[:10]}"

    links: dict[tuple[int, int], list[bytes]] = {}
    for rel, st in expected.items():
        if stat.S_ISREG(st.st_mode):
            links.setdefault((st.st_dev, st.st_ino), []).append(rel)
    ino_of_group: dict[tuple[int, int], int] = {}
    for rel, st in expected.items():
        inode = actual[rel]
        where = os.fsdecode(b"/" + rel)
        path = top + b"/" + rel if rel else top
        assert inode.mode == st.st_mode, f"{where}: mode {inode.mode:o} != {st.st_mode:o}"
        uid, gid = (0, 0) if repeatable else (st.st_uid, st.st_gid)
        assert (inode.uid, inode.gid) == (uid, gid), f"{where}: uid/gid {inode.uid}/{inode.gid} != {uid}/{gid}"
        mtime_ns = 0 if rel == b"" else st.st_mtime_ns
        assert inode.mtime_ns == mtime_ns, f"{where}: mtime {inode.mtime_ns} != {mtime_ns}"
        if check_xattrs:
            assert dict(inode.xattrs) == _xattrs(path), f"{where}: xattrs {inode.xattrs} != {_xattrs(path)}"
        kind = stat.S_IFMT(st.st_mode)
        if kind == stat.S_IFDIR:
            continue
        if kind == stat.S_IFREG:
            group = links[(st.st_dev, st.st_ino)]
            assert inode.nlink == len(group), f"{where}: nlink {inode.nlink} != {len(group)}"
            first = ino_of_group.setdefault((st.st_dev, st.st_ino), inode.ino)
            assert inode.ino == first, f"{where}: hardlink has ino {inode.ino}, its group {first}"
            assert inode.size == st.st_size, f"{where}: size {inode.size} != {st.st_size}"
            with image.open_inode(inode.ino) as got, open(path, "rb") as want:
                assert _file_digest(got.read) == _file_digest(want.read), f"{where}: content differs"
            continue
        assert inode.nlink == 1, f"{where}: nlink {inode.nlink} for a non-regular file"
        if kind == stat.S_IFLNK:
            assert inode.symlink == os.readlink(path), f"{where}: target {inode.symlink!r}"
        elif kind in (stat.S_IFCHR, stat.S_IFBLK):
            assert inode.rdev == st.st_rdev, f"{where}: rdev {inode.rdev:#x} != {st.st_rdev:#x}"
    return len(expected)


def make_source_tree(top) -> str:
    """A directory holding every entry type a directory build meets; returns its path.

    Regular (small, empty, multi-chunk at 1 MiB, exactly one 4 KiB chunk, one byte over), sparse,
    duplicated contents, a three-way hardlink, symlinks (relative, absolute, dangling, long), a
    directory with 300 entries, character and block devices (as root), a fifo and a socket, xattrs
    (user.*; trusted.* on dirs and symlinks as root), a 255-byte name and non-UTF-8 names, 300
    levels of nesting, odd modes, uids/gids (as root) and mtimes with nanoseconds.
    """
    import random
    root_user = hasattr(os, "geteuid") and os.geteuid() == 0
    top = os.fsencode(os.fspath(top))
    rng = random.Random(20240601)

    def put(rel: bytes, data: bytes, mode: int = 0o644) -> bytes:
        path = top + b"/" + rel
        with open(path, "wb") as f:
            f.write(data)
        os.chmod(path, mode)
        return path

    for rel in (b"sub", b"sub/deep", b"many", b"odd"):
        os.makedirs(top + b"/" + rel, exist_ok=True)
    put(b"small.txt", b"hello, rafs\n" * 10)
    put(b"empty", b"")
    put(b"exact-4096", rng.randbytes(4096))
    put(b"chunk-plus-1", b"A" * 4097)
    # 2.5 MiB alternating compressible text and random blocks: several chunks at any chunk size
    parts = []
    for i in range(40):
        parts.append(b"compressible line %06d\n" % i * 1500 if i % 2 else rng.randbytes(32 * 1024))
    put(b"multi", b"".join(parts)[:5 << 19])
    sparse = top + b"/sparse"
    with open(sparse, "wb") as f:
        f.truncate(3 << 20)
        f.seek(3 << 19)
        f.write(b"middle" * 20)
        f.seek((3 << 20) - 4)
        f.write(b"tail")
    shared = rng.randbytes(300 * 1024)
    put(b"dup1", shared)
    put(b"sub/dup2", shared)
    put(b"hl1", rng.randbytes(70 * 1024) + b"linked", 0o640)
    os.link(top + b"/hl1", top + b"/sub/hl2")
    os.link(top + b"/hl1", top + b"/sub/deep/hl3")
    os.symlink(b"small.txt", top + b"/link-rel")
    os.symlink(b"/etc/passwd", top + b"/link-abs")
    os.symlink(b"nowhere/at/all", top + b"/link-dangling")
    os.symlink(b"x" * 300, top + b"/link-long")
    for i in range(300):
        put(b"many/f%03d" % i, b"entry %d\n" % (i % 7))
    os.mkfifo(top + b"/fifo")
    os.mknod(top + b"/sock", 0o755 | stat.S_IFSOCK)
    if root_user:
        os.mknod(top + b"/chr", 0o620 | stat.S_IFCHR, os.makedev(1, 3))
        os.mknod(top + b"/blk", 0o660 | stat.S_IFBLK, os.makedev(7, 200))
    put(b"n" * 255, b"long name\n")
    put(b"\xff\xfe-not-utf8-\xe9", b"latin-1 name\n")
    os.mkdir(top + b"/dir-\xc3\x28")
    deep = top + b"/deep"
    for _ in range(300):
        deep += b"/d"
    os.makedirs(deep)
    put(deep[len(top) + 1:] + b"/bottom", b"at the bottom\n")
    put(b"odd/setuid", b"#!/bin/sh\n", 0o4755)
    put(b"odd/setgid", b"g", 0o2711)
    put(b"odd/none", b"n", 0o000)
    put(b"odd/all", b"a", 0o7777)
    os.mkdir(top + b"/odd/sticky")
    os.chmod(top + b"/odd/sticky", 0o1777)
    os.setxattr(top + b"/small.txt", b"user.mime", b"text/plain")
    os.setxattr(top + b"/small.txt", b"user.empty", b"")
    os.setxattr(top + b"/small.txt", b"user.b", b"\0\1\2binary")
    os.setxattr(top + b"/sub", b"user.dir", b"yes")
    if root_user:
        os.setxattr(top + b"/sub/deep", b"trusted.overlay.whatever", b"y")
        os.setxattr(top + b"/link-rel", b"trusted.link", b"on a symlink", follow_symlinks=False)
        os.lchown(top + b"/small.txt", 1234, 5678)
        os.lchown(top + b"/link-abs", 4321, 8765)
        os.lchown(top + b"/sub", 42, 43)
    # mtimes last, deepest first, so creating children does not change them again
    for i, (rel, st) in enumerate(sorted(source_entries(top).items(), key=lambda e: -e[0].count(b"/"))):
        path = top + b"/" + rel if rel else top
        ns = 1_600_000_000_000_000_000 + i * 1_000_000_007 + (i % 1000) * 1001
        os.utime(path, ns=(ns, ns), follow_symlinks=False)
    return os.fsdecode(top)


@contextlib.contextmanager
def rafs_mount(args: list[str], mountpoint, *, env: dict | None = None, timeout: float = 30):
    """``rafs mount ARGS -M MOUNTPOINT`` in a subprocess, waited for until it is mounted; yields the
    process and unmounts (``rafs umount``, else a lazy ``fusermount3 -u``) when the block ends."""
    server = subprocess.Popen([sys.executable, "-m", "rafs", "mount", *args, "-M", str(mountpoint)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              env={**os.environ, **env} if env else None)
    try:
        deadline = time.monotonic() + timeout
        while not os.path.ismount(mountpoint):
            assert server.poll() is None, server.communicate()[1].decode()
            assert time.monotonic() < deadline, "rafs mount did not come up"
            time.sleep(0.1)
        yield server
    finally:
        subprocess.run([sys.executable, "-m", "rafs", "umount", str(mountpoint)], capture_output=True)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            subprocess.run(["fusermount3", "-u", "-z", str(mountpoint)], capture_output=True)


@contextlib.contextmanager
def ranged_blob_server(blob_dir):
    """A loopback HTTP server answering ``GET /<blob id>`` with a ``Range`` header from the files of
    ``blob_dir``, as nydusd's http-proxy backend asks; yields its ``http://127.0.0.1:PORT`` address."""
    import http.server
    import pathlib
    import threading

    class Ranged(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            data = (pathlib.Path(blob_dir) / self.path.strip("/")).read_bytes()
            start, _, end = self.headers["Range"].removeprefix("bytes=").partition("-")
            part = data[int(start):int(end) + 1]
            self.send_response(206)
            self.send_header("Content-Length", str(len(part)))
            self.send_header("Content-Range", f"bytes {start}-{int(start) + len(part) - 1}/{len(data)}")
            self.end_headers()
            self.wfile.write(part)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Ranged)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
