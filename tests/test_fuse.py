"""``rafs mount``: real FUSE mounts served by ``python -m rafs mount`` (a subprocess), checked like a user
would: ``diff -r`` and ``lstat`` against the source tree, reads at random offsets, concurrent readers,
errno of every refused operation, and the daemon's life cycle (signals, umount, stale mounts).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import ctypes
import errno
import hashlib
import json
import os
import random
import signal
import socket
import subprocess
import sys

import pytest

import rafs
from test_fuse_support import Mount, diff_r, guide_config, is_stale, metadata_differences, need_fuse

pytestmark = pytest.mark.privileged

LARGE_SIZE = 3 * 1024 * 1024 + 4097           # spans four 1 MiB chunks, ends mid-page
BIG_DIR_ENTRIES = 3000


def make_tree(top) -> None:
    """Every entry type: empty, small, large and sparse files, hardlinks, symlinks (relative, absolute,
    dangling), FIFO, socket, character and block devices, odd modes and owners, xattrs, nanosecond
    mtimes, and a directory of 3000 entries."""
    rng = random.Random(42)
    os.makedirs(f"{top}/dir/sub/deeper")
    open(f"{top}/empty", "wb").close()
    with open(f"{top}/small", "wb") as f:
        f.write(b"hello, rafs\n")
    with open(f"{top}/dir/large", "wb") as f:
        f.write(rng.randbytes(LARGE_SIZE))
    with open(f"{top}/dir/text", "wb") as f:
        f.write(b"".join(b"line %d of a compressible file\n" % i for i in range(60000)))
    with open(f"{top}/sparse", "wb") as f:              # holes before, between and after data
        f.seek(1024 * 1024 + 7)
        f.write(b"middle")
        f.seek(5 * 1024 * 1024)
        f.write(b"tail")
        f.truncate(7 * 1024 * 1024)
    os.link(f"{top}/small", f"{top}/dir/hardlink")
    os.link(f"{top}/dir/large", f"{top}/dir/sub/large-again")
    os.symlink("small", f"{top}/link")
    os.symlink("../small", f"{top}/dir/uplink")
    os.symlink("/absolute/nowhere", f"{top}/dangling")
    os.symlink("x" * 200, f"{top}/longlink")
    os.mkfifo(f"{top}/fifo")
    os.mknod(f"{top}/chardev", 0o620 | 0o020000, os.makedev(1, 3))
    os.mknod(f"{top}/blockdev", 0o660 | 0o060000, os.makedev(7, 0))
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(f"{top}/socket")
    os.setxattr(f"{top}/small", "user.greeting", b"hello")
    os.setxattr(f"{top}/dir", "trusted.binary", b"\x00\x01\xff")
    os.setxattr(f"{top}/dir/large", "user.empty", b"")
    os.chown(f"{top}/dir/sub", 1000, 2000)
    os.chmod(f"{top}/dir/sub", 0o1777)
    os.chmod(f"{top}/empty", 0o4755)
    os.chmod(f"{top}/dir/text", 0o600)
    os.utime(f"{top}/small", ns=(1, 1_600_000_000_123_456_789))
    os.makedirs(f"{top}/bigdir")
    for i in range(BIG_DIR_ENTRIES):
        open(f"{top}/bigdir/entry-{i:05d}-{'n' * (i % 40)}", "wb").close()
    os.utime(f"{top}/bigdir", ns=(1, 1_500_000_000_000_000_001))


@pytest.fixture(scope="module")
def source_tree(tmp_path_factory):
    need_fuse()
    top = tmp_path_factory.mktemp("fuse-src") / "tree"
    make_tree(str(top))
    return top


def _build(source, directory, fs_version):
    blob_dir = directory / "blobs"
    blob_dir.mkdir(parents=True)
    bootstrap = directory / "image.boot"
    rafs.Builder(str(source), fs_version=fs_version, compressor="zstd").write(bootstrap=str(bootstrap),
                                                                            blob_dir=str(blob_dir))
    return bootstrap, blob_dir


@pytest.fixture(scope="module", params=[5, 6], ids=["v5", "v6"])
def built_mount(request, source_tree, tmp_path_factory):
    """(source, Mount, work dir) of the tree built as RAFS v5/v6, mounted with the guide's config."""
    work = tmp_path_factory.mktemp(f"fuse-v{request.param}")
    bootstrap, blob_dir = _build(source_tree, work, request.param)
    config = work / "nydusd-config.localfs.json"
    config.write_text(json.dumps(guide_config(blob_dir, work / "cache")))
    mount = Mount(["--config", str(config), "--bootstrap", str(bootstrap)], work / "mnt", work / "rafs.log")
    yield source_tree, mount, work
    mount.close()


# -- the built tree --------------------------------------------------------------------------------

def test_tree_is_the_source(built_mount):
    source, mount, work = built_mount
    assert diff_r(source, mount.path) == []
    assert metadata_differences(str(source), str(mount.path)) == []
    assert os.stat(mount.path / "dir/sub/large-again").st_ino == os.stat(mount.path / "dir/large").st_ino
    assert os.stat(mount.path / "dir/hardlink").st_ino != os.stat(mount.path / "dir/large").st_ino
    # the guide's blobcache fills as files are read
    names = os.listdir(work / "cache")
    assert any(n.endswith(".blob.data") for n in names) and any(n.endswith(".chunk_map") for n in names), names


def test_random_reads_equal_the_source(built_mount):
    source, mount, _ = built_mount
    rng = random.Random(7)
    for rel in ("dir/large", "sparse", "dir/text"):
        want = (source / rel).read_bytes()
        fd = os.open(mount.path / rel, os.O_RDONLY)
        try:
            for _ in range(150):
                offset = rng.randrange(0, len(want) + 10)
                size = rng.choice([1, 7, 4096, 65536, 1 << 20, 3 << 20])
                assert os.pread(fd, size, offset) == want[offset:offset + size], (rel, offset, size)
        finally:
            os.close(fd)


def test_eight_threads_read_concurrently(built_mount):
    source, mount, _ = built_mount
    files = ["dir/large", "dir/text", "sparse", "small", "dir/sub/large-again", "empty"]
    expected = {rel: hashlib.sha256((source / rel).read_bytes()).hexdigest() for rel in files}

    def read(worker: int):
        rng = random.Random(worker)
        out = {}
        for rel in rng.sample(files, len(files)):
            with open(mount.path / rel, "rb", buffering=0) as f:
                hasher = hashlib.sha256()
                while block := f.read(rng.choice([4096, 100_000, 1 << 20])):
                    hasher.update(block)
            out[rel] = hasher.hexdigest()
        return out

    # drop the kernel's copy so the daemon serves the readers, not the page cache
    subprocess.run(["sh", "-c", "sync; echo 3 > /proc/sys/vm/drop_caches"], check=True)
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        for result in pool.map(read, range(8)):
            assert result == expected


def test_large_directory_readdir_offsets(built_mount):
    _, mount, _ = built_mount
    names = os.listdir(mount.path / "bigdir")
    assert len(names) == len(set(names)) == BIG_DIR_ENTRIES
    # telldir/seekdir: resume a listing from an offset the filesystem handed out
    libc = ctypes.CDLL(None, use_errno=True)
    libc.opendir.restype = ctypes.c_void_p
    libc.opendir.argtypes = [ctypes.c_char_p]
    libc.readdir.restype = ctypes.c_void_p
    libc.readdir.argtypes = [ctypes.c_void_p]
    libc.telldir.restype = ctypes.c_long
    libc.telldir.argtypes = [ctypes.c_void_p]
    libc.seekdir.argtypes = [ctypes.c_void_p, ctypes.c_long]
    libc.closedir.argtypes = [ctypes.c_void_p]
    name_offset = 19                                     # struct dirent64: ino, off, reclen, type, name

    def rest(handle) -> list[bytes]:
        out = []
        while entry := libc.readdir(handle):
            out.append(ctypes.string_at(entry + name_offset))
        return out

    handle = libc.opendir(os.fsencode(mount.path / "bigdir"))
    assert handle
    try:
        for _ in range(1234):
            assert libc.readdir(handle)
        position = libc.telldir(handle)
        first = rest(handle)
        libc.seekdir(handle, position)
        again = rest(handle)
    finally:
        libc.closedir(handle)
    assert first == again and len(first) == BIG_DIR_ENTRIES + 2 - 1234


def test_statfs(built_mount):
    _, mount, _ = built_mount
    st = os.statvfs(mount.path)
    assert st.f_namemax == 255 and st.f_bsize == 4096
    assert st.f_bfree == st.f_bavail == 0 and st.f_blocks > 0


def _read_one_byte(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.read(fd, 1)
    finally:
        os.close(fd)


@pytest.mark.parametrize("operation, expected", [
    (lambda m: os.open(m / "new", os.O_WRONLY | os.O_CREAT), errno.EROFS),
    (lambda m: os.open(m / "small", os.O_WRONLY), errno.EROFS),
    (lambda m: os.open(m / "small", os.O_RDWR), errno.EROFS),
    (lambda m: os.truncate(m / "small", 0), errno.EROFS),
    (lambda m: os.mkdir(m / "newdir"), errno.EROFS),
    (lambda m: os.unlink(m / "small"), errno.EROFS),
    (lambda m: os.rmdir(m / "dir/sub/deeper"), errno.EROFS),
    (lambda m: os.rename(m / "small", m / "renamed"), errno.EROFS),
    (lambda m: os.symlink("x", m / "newlink"), errno.EROFS),
    (lambda m: os.link(m / "small", m / "newhard"), errno.EROFS),
    (lambda m: os.chmod(m / "small", 0o777), errno.EROFS),
    (lambda m: os.chown(m / "small", 1, 1), errno.EROFS),
    (lambda m: os.utime(m / "small", (1, 1)), errno.EROFS),
    (lambda m: os.setxattr(m / "small", "user.x", b"1"), errno.EROFS),
    (lambda m: os.removexattr(m / "small", "user.greeting"), errno.EROFS),
    (lambda m: os.mknod(m / "node", 0o600 | 0o010000), errno.EROFS),
    (lambda m: os.stat(m / "missing"), errno.ENOENT),
    (lambda m: os.stat(m / "small/below"), errno.ENOTDIR),
    (lambda m: os.listdir(m / "small"), errno.ENOTDIR),
    (lambda m: _read_one_byte(m / "dir"), errno.EISDIR),
    (lambda m: os.readlink(m / "small"), errno.EINVAL),
    (lambda m: os.getxattr(m / "small", "user.missing"), errno.ENODATA),
    (lambda m: os.stat(m / "dangling"), errno.ENOENT),
], ids=["create", "open-wronly", "open-rdwr", "truncate", "mkdir", "unlink", "rmdir", "rename", "symlink",
        "link", "chmod", "chown", "utime", "setxattr", "removexattr", "mknod", "missing", "through-file",
        "listdir-file", "read-dir", "readlink-file", "missing-xattr", "dangling-link"])
def test_errno(built_mount, operation, expected):
    _, mount, _ = built_mount
    with pytest.raises(OSError) as info:
        operation(mount.path)
    assert info.value.errno == expected


def test_xattrs_off_without_enable_xattr(source_tree, tmp_path):
    bootstrap, blob_dir = _build(source_tree, tmp_path, 6)
    mount = Mount(["--bootstrap", str(bootstrap), "--localfs-dir", str(blob_dir)], tmp_path / "mnt",
                  tmp_path / "rafs.log")
    try:
        assert (mount.path / "small").read_bytes() == b"hello, rafs\n"
        with pytest.raises(OSError) as info:
            os.getxattr(mount.path / "small", "user.greeting")
        assert info.value.errno == errno.EOPNOTSUPP
    finally:
        mount.close()


# -- the reference fixtures, with the guide's configuration ------------------------------------------

def _chsum(text: str) -> dict[str, str]:
    return {name: digest for digest, name in (line.split() for line in text.splitlines() if line.strip())}


def test_v5_fixture_guide_config(v5_fixture, tmp_path):
    need_fuse()
    bootstrap, blob_dir, _ = v5_fixture
    config = tmp_path / "nydusd-config.localfs.json"
    config.write_text(json.dumps(guide_config(blob_dir, "cache")))   # relative work_dir, as in the guide
    mount = Mount(["--config", str(config), "--bootstrap", str(bootstrap), "--log-level", "info"],
                  tmp_path / "mnt", tmp_path / "rafs.log")
    try:
        holes = mount.path / "normal-file-test" / "holefiles"
        expected = _chsum((holes / "chsum").read_text())
        assert len(expected) == 9
        for name, digest in expected.items():
            assert hashlib.md5((holes / name).read_bytes()).hexdigest() == digest, name
        with rafs.open(bootstrap, blob_dir=blob_dir) as image:
            for path, inode in image.iter_entries("/"):
                st = os.lstat(mount.path / os.fsdecode(path.lstrip(b"/")) if path != b"/" else mount.path)
                assert (st.st_mode, st.st_uid, st.st_gid, st.st_nlink) == \
                    (inode.mode, inode.uid, inode.gid, inode.nlink), path
                if inode.is_reg:
                    assert st.st_size == inode.size
                    assert st.st_mtime_ns == inode.mtime_ns
        links = [os.stat(mount.path / "hardlink-test" / n) for n in os.listdir(mount.path / "hardlink-test")
                 if os.stat(mount.path / "hardlink-test" / n).st_nlink > 1]
        assert len(links) >= 2 and len({st.st_ino for st in links}) == 1
        cache = sorted(os.listdir(tmp_path / "cache"))
        blob_id = os.listdir(blob_dir)[0]
        assert f"{blob_id}.blob.data" in cache and f"{blob_id}.blob.data.chunk_map" in cache, cache
    finally:
        mount.close()


@pytest.mark.parametrize("validate", [False, True], ids=["plain", "digest_validate"])
def test_v6_fixture_guide_config(v6_fixture, tmp_path, validate):
    need_fuse()
    bootstrap, blob_dir = v6_fixture
    config = tmp_path / "config.json"
    config.write_text(json.dumps(guide_config(blob_dir, tmp_path / "cache", validate=validate)))
    mount = Mount(["--config", str(config), "--bootstrap", str(bootstrap)], tmp_path / "mnt",
                  tmp_path / "rafs.log")
    try:
        assert sorted(os.listdir(mount.path)) == ["lib.rs", "sync_io.rs"]
        assert os.path.getsize(mount.path / "lib.rs") == 16931
        assert os.path.getsize(mount.path / "sync_io.rs") == 13400
        with rafs.open(bootstrap, blob_dir=blob_dir, validate=True) as image:
            for name in ("lib.rs", "sync_io.rs"):
                assert (mount.path / name).read_bytes() == image.read(name)
        assert any(n.endswith(".blob.data") for n in os.listdir(tmp_path / "cache"))
    finally:
        mount.close()


# -- life cycle --------------------------------------------------------------------------------------

@pytest.fixture
def v5_mount_args(v5_fixture):
    need_fuse()
    bootstrap, blob_dir, _ = v5_fixture
    return ["-B", str(bootstrap), "-D", str(blob_dir)]


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_unmounts_cleanly(v5_mount_args, tmp_path, signum):
    mount = Mount(v5_mount_args, tmp_path / "mnt", tmp_path / "rafs.log")
    try:
        assert mount.signal(signum) == 0, mount.log_text()
        assert not os.path.ismount(mount.path) and not is_stale(mount.path)
    finally:
        mount.close()


def test_sigterm_with_a_file_held_open(v5_mount_args, tmp_path):
    """A busy mount cannot be unmounted at once: the daemon detaches it, ends the connection and
    exits anyway; the holder then gets an error instead of hanging."""
    mount = Mount(v5_mount_args, tmp_path / "mnt", tmp_path / "rafs.log")
    held = open(mount.path / "hardlink-test" / "foo", "rb")
    try:
        assert held.read(4)
        assert mount.signal(signal.SIGTERM, timeout=40) == 0, mount.log_text()
        assert not os.path.ismount(mount.path)
        os.posix_fadvise(held.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
        with pytest.raises(OSError) as info:
            os.pread(held.fileno(), 10, 0)                  # the daemon is gone: an error, no hang
        assert info.value.errno in (errno.ENOTCONN, errno.ECONNABORTED)
    finally:
        with contextlib.suppress(OSError):
            held.close()                                    # the flush of a dead connection fails
        mount.close()


@pytest.mark.parametrize("how", ["fusermount3", "umount", "rafs-umount"])
def test_external_unmount_ends_the_daemon(v5_mount_args, tmp_path, how):
    mount = Mount(v5_mount_args, tmp_path / "mnt", tmp_path / "rafs.log")
    try:
        command = {"fusermount3": ["fusermount3", "-u", str(mount.path)],
                   "umount": ["umount", str(mount.path)],
                   "rafs-umount": [sys.executable, "-m", "rafs", "umount", str(mount.path)]}[how]
        subprocess.run(command, check=True, capture_output=True)
        assert mount.process.wait(30) == 0, mount.log_text()
        assert not os.path.ismount(mount.path)
    finally:
        mount.close()


def test_nydusd_flag_names(v5_fixture, tmp_path):
    need_fuse()
    bootstrap, blob_dir, _ = v5_fixture
    mount = Mount(["--bootstrap", str(bootstrap), "--localfs-dir", str(blob_dir), "--fuse-threads", "2",
                   "-l", "debug", "--log-file", str(tmp_path / "daemon.log")],
                  tmp_path / "mnt", tmp_path / "rafs.log")
    try:
        assert sorted(os.listdir(mount.path)) == ["hardlink-test", "normal-file-test", "symlink-test"]
    finally:
        mount.close()
    assert "ready" in (tmp_path / "daemon.log").read_text()


def test_killed_daemon_leaves_nothing_stuck(v5_mount_args, tmp_path):
    """With auto_unmount (the default) a SIGKILLed daemon's mount goes away; without it the mount is
    left stale ("Transport endpoint is not connected") and the next rafs mount clears it."""
    mount = Mount(v5_mount_args, tmp_path / "mnt", tmp_path / "rafs.log")
    mount.process.kill()
    mount.process.wait()
    for _ in range(200):
        if not os.path.ismount(mount.path):
            break
        subprocess.run(["sleep", "0.05"])
    assert not os.path.ismount(mount.path) and not is_stale(mount.path)
    mount.close()

    bootstrap, blob_dir = v5_mount_args[1], v5_mount_args[3]
    stale_server = ("import rafs, rafs.fuse, sys; "
                    "rafs.fuse.mount(rafs.open(sys.argv[1], blob_dir=sys.argv[2]), sys.argv[3], auto_unmount=False)")
    target = tmp_path / "mnt2"
    crashed = Mount([], target, tmp_path / "stale.log",
                    command=[sys.executable, "-c", stale_server, bootstrap, blob_dir, str(target)])
    crashed.process.kill()
    crashed.process.wait()
    assert is_stale(target)
    try:
        again = Mount(v5_mount_args, target, tmp_path / "again.log")
        try:
            assert sorted(os.listdir(target)) == ["hardlink-test", "normal-file-test", "symlink-test"]
            assert "not connected" in again.log_text()
        finally:
            again.close()
    finally:
        crashed.close()
    assert not is_stale(target) and not os.path.ismount(target)


def test_guide_basic_flow(tmp_path):
    """The guide's 01-basic section: build origin-root-dir (v6, zstd), mount it with
    nydusd-config.localfs.json (relative dirs), read the files, and see the cache fill."""
    need_fuse()
    root = tmp_path / "origin-root-dir"
    for d in ("dir_1/subdir_a", "dir_1/subdir_b", "dir_2"):
        os.makedirs(root / d)
    (root / "dir_1/subdir_a/file_a").write_text("file_a\n")
    (root / "dir_2/file_b").write_text("file_b\n")
    (root / "file_c").write_text("file_c\n")
    os.symlink("file_c", root / "file_c_ln")
    (tmp_path / "image-store").mkdir()
    result = rafs.Builder(str(root), fs_version=6, compressor="zstd").write(
        bootstrap=str(tmp_path / "image-store/image-basic-01.meta"), blob_dir=str(tmp_path / "image-store"))
    (blob_id,) = result.blob_ids
    (tmp_path / "nydusd-config.localfs.json").write_text(json.dumps(guide_config("image-store", "cache")))
    mount = Mount(["--config", "nydusd-config.localfs.json", "--bootstrap", "image-store/image-basic-01.meta",
                   "--log-level", "info"], tmp_path / "mnt-local", tmp_path / "nydusd.log")
    try:
        assert sorted(os.listdir(mount.path)) == ["dir_1", "dir_2", "file_c", "file_c_ln"]
        assert sorted(os.listdir(mount.path / "dir_1")) == ["subdir_a", "subdir_b"]
        assert os.listdir(mount.path / "dir_1/subdir_b") == []
        assert os.readlink(mount.path / "file_c_ln") == "file_c"
        for rel, text in (("dir_1/subdir_a/file_a", "file_a\n"), ("dir_2/file_b", "file_b\n"),
                          ("file_c", "file_c\n"), ("file_c_ln", "file_c\n")):
            assert (mount.path / rel).read_text() == text
        cache = sorted(os.listdir(tmp_path / "cache"))
        assert cache == sorted(f"{blob_id}{suffix}" for suffix in (".blob.data", ".blob.data.chunk_map",
                                                                     ".blob.meta")), cache
        assert os.path.getsize(tmp_path / "cache" / f"{blob_id}.blob.data") > 0
    finally:
        mount.close()
