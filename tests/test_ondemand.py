"""On-demand EROFS (issue 14): the kernel mounts the bootstrap, rafs fills blob cache files through
fanotify pre-content events. Checked through real kernel mounts: content and metadata against the
source, nydusd's cache layout, warm mounts that never ask the backend, corrupt chunks, a daemon killed
in the middle of a read, and the CLI with prefetch.
"""

from __future__ import annotations

import errno
import hashlib
import http.server
import json
import os
import shutil
import subprocess
import sys
import threading
import time

import pytest

import rafs
from rafs.io.layout import CHUNK_MAP_ALL_READY, CHUNK_MAP_HEADER, CHUNK_MAP_MAGIC2
from conftest import ROOT, need
from oci_layers import apply_layers, directory_view, make_layers
from test_fuse_support import diff_r, metadata_differences
from test_merge import build_layers

pytestmark = pytest.mark.privileged


def need_ondemand() -> None:
    need(os.geteuid() == 0, "on-demand EROFS needs root")
    with open("/proc/filesystems") as f:
        need("erofs" in f.read(), "the kernel has no EROFS")
    from rafs import _fanotify
    try:
        os.close(_fanotify.init_precontent())
        supported = True
    except OSError:
        supported = False
    need(supported, "the kernel has no fanotify pre-content events (Linux 6.14+)")


def make_tree(top: str) -> str:
    """Small, empty, multi-chunk, sparse and duplicated files, hardlinks, symlinks, a FIFO, odd modes."""
    import random
    rng = random.Random(7)
    os.makedirs(f"{top}/dir/sub")
    open(f"{top}/empty", "wb").close()
    with open(f"{top}/small", "wb") as f:
        f.write(b"hello, on-demand\n")
    with open(f"{top}/dir/large", "wb") as f:
        f.write(rng.randbytes(2 * 1024 * 1024 + 4097))
    with open(f"{top}/dir/text", "wb") as f:
        f.write(b"".join(b"line %d of a compressible file\n" % i for i in range(40000)))
    with open(f"{top}/sparse", "wb") as f:
        f.seek(1024 * 1024 + 7)
        f.write(b"middle")
        f.truncate(3 * 1024 * 1024)
    shutil.copy(f"{top}/dir/text", f"{top}/dir/sub/text-again")
    os.link(f"{top}/small", f"{top}/dir/hardlink")
    os.symlink("../small", f"{top}/dir/uplink")
    os.mkfifo(f"{top}/fifo")
    for i in range(50):
        with open(f"{top}/dir/sub/f{i:02d}", "wb") as f:
            f.write(rng.randbytes(rng.randrange(1, 20000)))
    os.chmod(f"{top}/dir/sub/f00", 0o4750)
    return top


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> str:
    return make_tree(str(tmp_path_factory.mktemp("ondemand") / "src"))


def build(source: str, out, compressor: str) -> tuple[str, str]:
    blobs = out / "blobs"
    blobs.mkdir(parents=True, exist_ok=True)
    result = rafs.Builder(source, fs_version=6, compressor=compressor).write(bootstrap=out / "image.boot",
                                                                              blob_dir=blobs)
    return str(result.bootstrap), str(blobs)


def mount(image, mnt, work, **options):
    from rafs.serve.ondemand import OnDemandMount
    os.makedirs(mnt, exist_ok=True)
    return OnDemandMount(image, mnt, work_dir=work, **options)


def read_all(top) -> dict[str, str]:
    out = {}
    for dirpath, _, filenames in os.walk(top):
        for name in filenames:
            path = os.path.join(dirpath, name)
            if os.path.isfile(path) and not os.path.islink(path):
                with open(path, "rb") as f:
                    out[os.path.relpath(path, top)] = hashlib.sha256(f.read()).hexdigest()
    return out


@pytest.mark.parametrize("compressor", ["none", "lz4_block", "zstd"])
def test_ondemand_mount_serves_the_source_and_a_warm_cache_never_asks(tree, tmp_path, compressor):
    need_ondemand()
    bootstrap, blobs = build(tree, tmp_path, compressor)
    work, mnt = tmp_path / "cache", tmp_path / "mnt"
    with rafs.open(bootstrap, blob_dir=blobs, validate=True) as image:
        blob = image.blobs[0]
        with mount(image, mnt, work) as served:
            assert served.group >= 0, "a cold cache is watched"
            assert metadata_differences(tree, mnt, with_xattrs=False) == []
            assert diff_r(tree, mnt) == []
            assert served.fetched_chunks == blob.chunk_count
        # nydusd's layout: the sparse data file sized to the blob's data, a chunk map all ready
        data = work / f"{blob.blob_id}.blob.data"
        chunk_map = work / f"{blob.blob_id}.blob.data.chunk_map"
        assert data.stat().st_size == blob.uncompressed_size
        raw = chunk_map.read_bytes()
        assert len(raw) == 4096 + (blob.chunk_count + 7) // 8
        header = CHUNK_MAP_HEADER.parse(raw)
        assert header.magic2 == CHUNK_MAP_MAGIC2 and header.all_ready == CHUNK_MAP_ALL_READY
        # a second mount over the warm cache: no mark, no event, no backend read
        shutil.rmtree(blobs)
        with mount(image, mnt, work) as served:
            assert served.group == -1
            assert diff_r(tree, mnt) == []
            assert served.events == 0 and served.fetched_chunks == 0


def test_ondemand_reference_fixture(v6_fixture, tmp_path):
    need_ondemand()
    bootstrap, blobs = v6_fixture
    with rafs.open(bootstrap, blob_dir=blobs, validate=True) as image:
        want = {name: hashlib.sha256(image.read(f"/{name}")).hexdigest() for name in image.listdir("/")}
        with mount(image, tmp_path / "mnt", tmp_path / "cache") as served:
            assert read_all(tmp_path / "mnt") == want
            assert served.fetched_chunks == image.blobs[0].chunk_count


def test_ondemand_merged_three_layers(tmp_path):
    need_ondemand()
    tars = make_layers(str(tmp_path / "layers"))
    expected = apply_layers(tars, str(tmp_path / "expected"))
    built = build_layers(tars, str(tmp_path / "built"), 6)
    digests = [hashlib.sha256(open(blob, "rb").read()).hexdigest() for _, blob in built]
    from rafs.builder.merge import Merger
    boot = tmp_path / "merged.boot"
    Merger([b for b, _ in built], blob_digests=digests).write(bootstrap=boot)
    with rafs.open(boot, blob_dir=tmp_path / "built" / "blobs") as image:
        assert len(image.blobs) == 3
        with mount(image, tmp_path / "mnt", tmp_path / "cache"):
            got, want = directory_view(str(tmp_path / "mnt")), directory_view(expected)
            assert sorted(got) == sorted(want)
            for path in want:
                assert got[path] == want[path], path


def test_ondemand_corrupt_chunk_fails_the_read_and_caches_nothing(tree, tmp_path):
    need_ondemand()
    bootstrap, blobs = build(tree, tmp_path, "none")
    with rafs.open(bootstrap, blob_dir=blobs) as image:
        chunk = image.chunks("/small")[0]
        blob_id = image.blobs[0].blob_id
    with open(os.path.join(blobs, blob_id), "r+b") as f:      # flip a byte of /small's stored data
        f.seek(chunk.compressed_offset)
        byte = f.read(1)
        f.seek(chunk.compressed_offset)
        f.write(bytes([byte[0] ^ 0xFF]))
    work = tmp_path / "cache"
    with rafs.open(bootstrap, blob_dir=blobs, validate=True) as image:
        with mount(image, tmp_path / "mnt", work) as served:
            with pytest.raises(OSError) as failure:
                with open(tmp_path / "mnt" / "small", "rb") as f:
                    f.read()
            assert failure.value.errno == errno.EIO
            assert not served.fillers[0].chunk_map.is_ready(chunk)
            assert (tmp_path / "mnt" / "dir" / "text").read_bytes() == open(f"{tree}/dir/text", "rb").read()


def test_ondemand_refuses_rafs_v5(tree, tmp_path):
    blobs = tmp_path / "blobs"
    blobs.mkdir()
    result = rafs.Builder(tree, fs_version=5).write(bootstrap=tmp_path / "v5.boot", blob_dir=blobs)
    with rafs.open(result.bootstrap, blob_dir=blobs) as image:
        with pytest.raises(rafs.UnsupportedError, match="RAFS v6"):
            mount(image, tmp_path / "mnt", tmp_path / "cache").start()


class _SlowBlobs(http.server.BaseHTTPRequestHandler):
    """Serves blob files with Range, holding each answer until ``release`` is set."""

    directory = ""
    requested = threading.Event()
    release = threading.Event()

    def do_GET(self):  # noqa: N802 - http.server's name
        type(self).requested.set()
        type(self).release.wait(30)
        path = os.path.join(self.directory, os.path.basename(self.path))
        try:
            data = open(path, "rb").read()
        except OSError:
            self.send_error(404)
            return
        start, end = 0, len(data) - 1
        spec = self.headers.get("Range")
        if spec and spec.startswith("bytes="):
            first, _, last = spec[6:].partition("-")
            start, end = int(first), min(int(last) if last else len(data) - 1, len(data) - 1)
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(end - start + 1))
        self.end_headers()
        try:
            self.wfile.write(data[start:end + 1])
        except OSError:
            pass

    do_HEAD = do_GET

    def log_message(self, *args):
        pass


def _daemon(args, log_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.Popen([sys.executable, "-m", "rafs", "mount", "--fs-driver", "erofs", *args],
                            stdout=open(log_path, "ab"), stderr=subprocess.STDOUT, env=env)


def _wait_mounted(path, process, timeout=30.0) -> None:
    deadline = time.monotonic() + timeout
    while not os.path.ismount(path):
        assert process.poll() is None, "the daemon exited before mounting"
        assert time.monotonic() < deadline, "no mount"
        time.sleep(0.05)


def test_ondemand_daemon_killed_mid_read_fails_readers_then_remounts_cleanly(tree, tmp_path):
    need_ondemand()
    bootstrap, blobs = build(tree, tmp_path, "zstd")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _SlowBlobs)
    _SlowBlobs.directory = blobs
    _SlowBlobs.requested.clear()
    _SlowBlobs.release.clear()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    work, mnt = tmp_path / "cache", tmp_path / "mnt"
    mnt.mkdir()
    config = tmp_path / "http.json"
    config.write_text(json.dumps({"version": 2, "backend": {"type": "http-proxy", "http-proxy": {
        "addr": f"http://127.0.0.1:{server.server_address[1]}", "path": "/"}},
        "cache": {"type": "blobcache", "filecache": {"work_dir": str(work)}}}))
    daemon = _daemon(["--config", str(config), "--bootstrap", bootstrap, "--mountpoint", str(mnt)],
                     tmp_path / "daemon.log")
    reader = None
    try:
        _wait_mounted(str(mnt), daemon)
        reader = subprocess.Popen(["cat", str(mnt / "dir" / "large")], stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE)
        assert _SlowBlobs.requested.wait(20), "the read reached no backend"
        daemon.kill()
        daemon.wait(10)
        started = time.monotonic()
        _, stderr = reader.communicate(timeout=15)
        assert reader.returncode != 0 and b"Input/output error" in stderr
        assert time.monotonic() - started < 10
    finally:
        _SlowBlobs.release.set()
        if reader is not None and reader.poll() is None:
            reader.kill()
        if daemon.poll() is None:
            daemon.kill()
        subprocess.run(["umount", str(mnt)], capture_output=True)
        server.shutdown()
    # the guardian leaves with the mount; a new mount (a local backend now) serves every file
    time.sleep(1.5)
    with rafs.open(bootstrap, blob_dir=blobs, validate=True) as image:
        with mount(image, mnt, work):
            assert diff_r(tree, mnt) == []


def test_ondemand_cli_with_prefetch_fills_the_cache_without_reads(tree, tmp_path):
    need_ondemand()
    bootstrap, blobs = build(tree, tmp_path, "lz4_block")
    work, mnt = tmp_path / "cache", tmp_path / "mnt"
    mnt.mkdir()
    config = tmp_path / "localfs.json"
    config.write_text(json.dumps({"device": {"backend": {"type": "localfs", "config": {"dir": blobs}},
                                             "cache": {"type": "blobcache", "config": {"work_dir": str(work)}}},
                                  "mode": "direct", "digest_validate": True,
                                  "fs_prefetch": {"enable": True, "threads_count": 2}}))
    daemon = _daemon(["--config", str(config), "--bootstrap", bootstrap, "--mountpoint", str(mnt)],
                     tmp_path / "daemon.log")
    try:
        _wait_mounted(str(mnt), daemon)
        with rafs.open(bootstrap) as image:
            blob = image.blobs[0]
        chunk_map = work / f"{blob.blob_id}.blob.data.chunk_map"
        deadline = time.monotonic() + 30
        while True:                      # every bit set by prefetch alone (nothing read the mount)
            bits = chunk_map.read_bytes()[4096:] if chunk_map.exists() else b""
            if sum(b.bit_count() for b in bits) >= blob.chunk_count:
                break
            assert time.monotonic() < deadline, "prefetch did not fill the cache"
            time.sleep(0.1)
        assert diff_r(tree, mnt) == []
    finally:
        subprocess.run([sys.executable, "-m", "rafs", "umount", str(mnt)], capture_output=True)
        daemon.wait(20)
    assert daemon.returncode == 0, (tmp_path / "daemon.log").read_text()
