"""``rafs mount --apisock`` and ``--access-pattern-file`` on real FUSE mounts: every endpoint answers with
the JSON fields nydusd documents, the metrics count the reads the test makes, ``PUT /api/v1/daemon/exit``
unmounts cleanly, and a traced workload gives a pattern file that rebuilds the image with the workload's
order in its prefetch table; over S3 (moto behind the counting proxy) that rebuilt image's start takes
fewer backend requests than the original's.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import threading
import time

import pytest

import rafs
from conftest import ROOT
from rafs.serve import api, trace
from s3server import ACCESS_KEY_SECRET, moto_server, s3, s3_proxy  # noqa: F401  (pytest fixtures)
from test_fuse_support import Mount, guide_config, need_fuse

pytestmark = pytest.mark.privileged

# fields of nydusd's answers: api/openapi/nydus-api-v1.yaml and the serialised structs they come from
# (service/src/daemon.rs DaemonInfo, utils/src/metrics.rs FsIoStats, BackendMetrics, BlobcacheMetrics,
# AccessPattern)
DAEMON_FIELDS = {"version", "id", "supervisor", "state", "backend_collection"}
VERSION_FIELDS = {"package_ver", "git_commit", "build_time", "profile", "rustc"}
BACKEND_DESCRIPTOR_FIELDS = {"backend_type", "mountpoint", "mounted_time", "config"}
FS_FIELDS = {"files_account_enabled", "access_pattern_enabled", "record_latest_read_files_enabled",
             "measure_latency", "id", "nr_opens", "data_read", "block_count_read", "fop_hits", "fop_errors",
             "fop_cumulative_latency_total", "read_latency_dist"}
BACKEND_FIELDS = {"backend_type", "read_count", "read_errors", "read_amount_total",
                  "read_cumulative_latency_millis_total", "read_cumulative_latency_millis_dist",
                  "read_count_block_size_dist", "read_latency_sizes_dist"}
BLOBCACHE_FIELDS = {"underlying_files", "store_path", "partial_hits", "whole_hits", "total", "entries_count",
                    "prefetch_data_amount", "prefetch_requests_count", "prefetch_workers",
                    "prefetch_unmerged_chunks", "prefetch_cumulative_time_millis", "prefetch_begin_time_secs",
                    "prefetch_begin_time_millis", "prefetch_end_time_secs", "prefetch_end_time_millis",
                    "buffered_backend_size", "data_all_ready"}
PATTERN_FIELDS = {"ino", "nr_read", "first_access_time_secs", "first_access_time_nanos"}
INFLIGHT_FIELDS = {"inode", "opcode", "unique", "timestamp_secs"}
FOP_READ = 4                                     # StatsFop::Read


def make_tree(top, rng) -> dict[str, bytes]:
    """Small files the workload reads, scattered between big ones it does not."""
    files = {}
    for d in range(4):
        for i in range(6):
            files[f"d{d}/small{i}"] = rng.randbytes(6000 + 100 * i)
            files[f"d{d}/filler{i}"] = rng.randbytes(150_000)
    for rel, data in files.items():
        os.makedirs(os.path.join(top, os.path.dirname(rel)), exist_ok=True)
        with open(os.path.join(top, rel), "wb") as f:
            f.write(data)
    return files


WORKLOAD = ["d3/small5", "d0/small2", "d2/small0", "d1/small4", "d0/small0", "d3/small1", "d2/small3", "d1/small1"]


@pytest.fixture
def tree(tmp_path):
    need_fuse()
    source = tmp_path / "src"
    files = make_tree(source, random.Random(18))
    blobs = tmp_path / "blobs"
    blobs.mkdir()
    rafs.Builder(str(source), fs_version=6, compressor="zstd").write(bootstrap=str(tmp_path / "boot"),
                                                                      blob_dir=str(blobs))
    return source, files, blobs


def test_api_endpoints_and_metrics(tmp_path, tree):
    source, files, blobs = tree
    config = tmp_path / "config.json"
    config.write_text(json.dumps(guide_config(blobs, tmp_path / "cache")))
    sock = tmp_path / "api.sock"
    mount = Mount(["--config", str(config), "--bootstrap", str(tmp_path / "boot"), "--apisock", str(sock)],
                  tmp_path / "mnt", tmp_path / "mount.log")
    try:
        deadline = time.monotonic() + 10
        while True:                 # RUNNING once the mount answered (as nydus-snapshotter waits for it)
            status, info = api.request(sock, "GET", "/api/v1/daemon")
            assert status == 200 and set(info) == DAEMON_FIELDS and set(info["version"]) == VERSION_FIELDS
            if info["state"] == "RUNNING":
                break
            assert info["state"] == "INIT" and time.monotonic() < deadline, info["state"]
            time.sleep(0.02)
        (descriptor,) = info["backend_collection"].values()
        assert set(descriptor) == BACKEND_DESCRIPTOR_FIELDS and descriptor["backend_type"] == "Rafs"
        assert descriptor["config"]["backend"]["type"] == "localfs"
        status, v2 = api.request(sock, "GET", "/api/v2/daemon")
        assert status == 200 and v2["backend_collection"] is None and v2["state"] == "RUNNING"

        before = api.request(sock, "GET", "/api/v1/metrics")[1]
        read = 0
        for rel in WORKLOAD:
            fd = os.open(mount.path / rel, os.O_RDONLY | os.O_DIRECT)     # each read reaches the daemon
            try:
                data = b""
                while block := os.pread(fd, 4096, len(data)):
                    data += block
                    read += 1
            finally:
                os.close(fd)
            assert data == files[rel]
        status, metrics = api.request(sock, "GET", "/api/v1/metrics")
        assert status == 200 and set(metrics) == FS_FIELDS
        assert metrics["data_read"] - before["data_read"] == sum(len(files[rel]) for rel in WORKLOAD)
        assert metrics["fop_hits"][FOP_READ] - before["fop_hits"][FOP_READ] == read
        assert sum(metrics["block_count_read"]) == metrics["fop_hits"][FOP_READ]

        status, backend = api.request(sock, "GET", "/api/v1/metrics/backend")
        assert status == 200 and set(backend) == BACKEND_FIELDS
        assert backend["backend_type"] == "localfs" and backend["read_count"] >= 1
        status, cache = api.request(sock, "GET", "/api/v1/metrics/blobcache")
        assert status == 200 and set(cache) == BLOBCACHE_FIELDS
        assert cache["store_path"] == str(tmp_path / "cache")
        assert any(name.endswith(".blob.data") for name in cache["underlying_files"])
        assert api.request(sock, "GET", "/api/v1/metrics/inflight") == (204, None)   # nothing waits
        # the pattern is served without --access-pattern-file only when the config asks (access_pattern)
        assert api.request(sock, "GET", "/api/v1/metrics/pattern") == (200, [])
        assert api.request(sock, "GET", "/api/v1/metrics/files") == (200, {})

        status, body = api.request(sock, "PUT", "/api/v1/daemon/exit")
        assert (status, body) == (204, None)
        assert mount.process.wait(30) == 0, mount.log_text()
        assert not os.path.ismount(mount.path)
        assert not sock.exists(), "the API socket outlived the daemon"
        assert "Traceback" not in mount.log_text()
    finally:
        mount.close()


def _traced_workload(tmp_path, name, files, args, trace_file) -> list[dict]:
    """Mount with a trace, read WORKLOAD (its first file twice), unmount; the records the API served."""
    sock = tmp_path / f"{name}.sock"
    mount = Mount([*args, "--apisock", str(sock), "--access-pattern-file", str(trace_file)], tmp_path / name,
                  tmp_path / f"{name}.log")
    try:
        for rel in WORKLOAD + WORKLOAD[:1]:
            assert (mount.path / rel).read_bytes() == files[rel]
        status, records = api.request(sock, "GET", "/api/v1/metrics/pattern")
        assert status == 200
    finally:
        mount.close()
    assert mount.process.returncode == 0, mount.log_text()
    return records


def test_trace_orders_the_rebuilt_prefetch_table(tmp_path, tree):
    source, files, blobs = tree
    trace_file = tmp_path / "trace.txt"
    records = _traced_workload(tmp_path, "mnt", files, ["--bootstrap", str(tmp_path / "boot"),
                                                        "--localfs-dir", str(blobs)], trace_file)
    assert [r["path"] for r in records] == ["/" + rel for rel in WORKLOAD], records
    assert all(set(r) >= PATTERN_FIELDS for r in records)
    assert all(r["nr_read"] >= 1 for r in records)
    stamps = [(r["first_access_time_secs"], r["first_access_time_nanos"]) for r in records]
    assert stamps == sorted(stamps) and abs(stamps[0][0] - time.time()) < 120
    assert trace_file.read_text().splitlines() == ["/" + rel for rel in WORKLOAD]

    rebuilt = tmp_path / "rebuilt.boot"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    result = subprocess.run([sys.executable, "-m", "rafs", "create", "--prefetch-patterns", str(trace_file),
                             "-B", str(rebuilt), "-D", str(blobs), str(source)], capture_output=True, text=True,
                            env=env)
    assert result.returncode == 0, result.stderr
    with rafs.open(str(rebuilt), blob_dir=str(blobs)) as image:
        table = image.reader.prefetch_inodes()
        paths = trace.paths_of(image, table)
        assert [paths[ino] for ino in table] == ["/" + rel for rel in WORKLOAD]


def _blob_gets(s3, blob_id) -> int:
    return len(s3.proxy.requests_for(f"nydus-demo/blob/{blob_id}"))


def _s3_start(s3, tmp_path, name, bootstrap, blob_id, files, *, prefetches: bool) -> int:
    """Backend requests for the blob from a cold mount's start to the end of WORKLOAD, the mount
    prefetching what its bootstrap's prefetch table names (when it ``prefetches``: waited for through
    the API)."""
    config = s3.nydusd_config(tmp_path / f"{name}-cache")
    config["fs_prefetch"] = {"enable": True, "prefetch_all": False, "threads_count": 2}
    config_path = tmp_path / f"{name}.json"
    config_path.write_text(json.dumps(config))
    sock = tmp_path / f"{name}.sock"
    s3.proxy.reset()
    mount = Mount(["--config", str(config_path), "--bootstrap", str(bootstrap), "--apisock", str(sock)],
                  tmp_path / name, tmp_path / f"{name}.log")
    try:
        deadline = time.monotonic() + 30
        while prefetches:                                # the prefetch runs in the background
            status, cache = api.request(sock, "GET", "/api/v1/metrics/blobcache")
            assert status == 200
            if cache["prefetch_begin_time_secs"] and cache["prefetch_end_time_secs"]:
                assert cache["prefetch_requests_count"] >= 1
                break
            assert time.monotonic() < deadline, "the prefetch did not end"
            time.sleep(0.05)
        if not prefetches:
            time.sleep(0.5)                              # time enough for a prefetch that should not be
        for rel in WORKLOAD:
            assert (mount.path / rel).read_bytes() == files[rel]
        return _blob_gets(s3, blob_id)
    finally:
        mount.close()


def test_prefetch_from_trace_takes_fewer_backend_requests(s3, tmp_path, tree):
    source, files, blobs = tree
    trace_file = tmp_path / "trace.txt"
    _traced_workload(tmp_path, "trace", files, ["--bootstrap", str(tmp_path / "boot"), "--localfs-dir",
                                                str(blobs)], trace_file)
    rebuilt_blobs = tmp_path / "rebuilt-blobs"
    rebuilt_blobs.mkdir()
    result = rafs.Builder(str(source), fs_version=6, compressor="zstd",
                          prefetch_patterns=trace.read_pattern_file(trace_file)).write(
        bootstrap=str(tmp_path / "rebuilt.boot"), blob_dir=str(rebuilt_blobs))
    (rebuilt_id,) = result.blob_ids
    (original_id,) = os.listdir(blobs)
    s3.put(f"nydus-demo/blob/{original_id}", (blobs / original_id).read_bytes())
    s3.put(f"nydus-demo/blob/{rebuilt_id}", (rebuilt_blobs / rebuilt_id).read_bytes())

    without = _s3_start(s3, tmp_path, "original", tmp_path / "boot", original_id, files, prefetches=False)
    with_table = _s3_start(s3, tmp_path, "rebuilt", tmp_path / "rebuilt.boot", rebuilt_id, files,
                           prefetches=True)
    # the original: the blob meta, then one request per file read (they lie between big files); the
    # rebuilt image: the blob meta, then one merged prefetch request for the whole workload
    assert without >= len(WORKLOAD), f"the original image's workload took only {without} requests"
    assert with_table <= 2 < without, (with_table, without)


def test_inflight_lists_reads_waiting_on_the_backend(s3, tmp_path, tree):
    source, files, blobs = tree
    (blob_id,) = os.listdir(blobs)
    s3.put(f"nydus-demo/blob/{blob_id}", (blobs / blob_id).read_bytes())
    config = tmp_path / "s3.json"
    config.write_text(json.dumps(s3.nydusd_config(tmp_path / "cache")))
    sock = tmp_path / "api.sock"
    mount = Mount(["--config", str(config), "--bootstrap", str(tmp_path / "boot"), "--apisock", str(sock)],
                  tmp_path / "mnt", tmp_path / "mount.log")
    try:
        assert (mount.path / WORKLOAD[0]).read_bytes() == files[WORKLOAD[0]]     # blob meta fetched now
        info = api.request(sock, "GET", "/api/v1/daemon")[1]
        assert info["backend_collection"]["/"]["config"]["backend"]["type"] == "s3"
        assert ACCESS_KEY_SECRET not in json.dumps(info)                          # the config is redacted
        s3.proxy.delay = 2.0
        result = {}
        reader = threading.Thread(target=lambda: result.update(data=(mount.path / WORKLOAD[1]).read_bytes()))
        reader.start()
        deadline = time.monotonic() + 10
        while True:
            status, waiting = api.request(sock, "GET", "/api/v1/metrics/inflight")
            if status == 200:
                break
            assert status == 204 and time.monotonic() < deadline, "the slow read never showed as in flight"
            time.sleep(0.05)
        reader.join(30)
        assert result["data"] == files[WORKLOAD[1]]
        (entry,) = waiting
        assert set(entry) == INFLIGHT_FIELDS and entry["opcode"] == 15          # FUSE_READ
        assert entry["inode"] == os.stat(mount.path / WORKLOAD[1]).st_ino
        assert abs(entry["timestamp_secs"] - time.time()) < 60
        assert api.request(sock, "GET", "/api/v1/metrics/inflight") == (204, None)
        backend = api.request(sock, "GET", "/api/v1/metrics/backend")[1]
        # chunk data fetched through the blob cache counts; the blob meta read at open does not (yet)
        fetched = s3.proxy.requests_for(blob_id)
        assert backend["backend_type"] == "s3" and 2 <= backend["read_count"] <= len(fetched)
        assert 0 < backend["read_amount_total"] <= sum(r.sent for r in fetched)
    finally:
        s3.proxy.delay = 0.0
        mount.close()


def test_more_images_mounted_through_the_api(tmp_path, tree):
    source, files, blobs = tree
    other_src = tmp_path / "other-src"
    other_src.mkdir()
    (other_src / "hello").write_bytes(b"second image\n")
    rafs.Builder(str(other_src), fs_version=5).write(bootstrap=str(tmp_path / "other.boot"), blob_dir=str(blobs))
    sock = tmp_path / "api.sock"
    mount = Mount(["--bootstrap", str(tmp_path / "boot"), "--localfs-dir", str(blobs), "--apisock", str(sock)],
                  tmp_path / "mnt", tmp_path / "mount.log")
    second = tmp_path / "second"
    second.mkdir()
    config = {"device": {"backend": {"type": "localfs", "config": {"dir": str(blobs)}}}, "mode": "direct",
              "access_pattern": True}
    try:
        status, body = api.request(sock, "POST", f"/api/v1/mount?mountpoint={second}",
                                   {"source": str(tmp_path / "other.boot"), "fs_type": "rafs",
                                    "config": json.dumps(config)})
        assert (status, body) == (204, None), body
        assert os.path.ismount(second) and (second / "hello").read_bytes() == b"second image\n"
        assert (mount.path / WORKLOAD[0]).read_bytes() == files[WORKLOAD[0]]
        info = api.request(sock, "GET", "/api/v1/daemon")[1]
        assert sorted(info["backend_collection"]) == sorted(["/", str(second)])
        # two mounts: the metrics need an id, as nydusd's do
        assert api.request(sock, "GET", "/api/v1/metrics")[0] == 404
        mine = api.request(sock, "GET", f"/api/v1/metrics?id={second}")[1]
        assert mine["data_read"] == len(b"second image\n") and mine["id"] == str(second)
        assert api.request(sock, "GET", "/api/v1/metrics?id=/")[1]["data_read"] == len(files[WORKLOAD[0]])
        assert [r["path"] for r in api.request(sock, "GET", f"/api/v1/metrics/pattern?id={second}")[1]] == ["/hello"]
        # the same mountpoint twice, a bootstrap that is not there: refused, nothing left mounted
        assert api.request(sock, "POST", f"/api/v1/mount?mountpoint={second}",
                           {"source": str(tmp_path / "other.boot"), "fs_type": "rafs",
                            "config": json.dumps(config)})[0] == 500
        third = tmp_path / "third"
        third.mkdir()
        status, body = api.request(sock, "POST", f"/api/v1/mount?mountpoint={third}",
                                   {"source": str(tmp_path / "missing.boot"), "fs_type": "rafs",
                                    "config": json.dumps(config)})
        assert status == 500 and "missing.boot" in body["message"] and not os.path.ismount(third)

        assert api.request(sock, "DELETE", f"/api/v1/mount?mountpoint={second}") == (204, None)
        assert not os.path.ismount(second)
        assert (mount.path / WORKLOAD[1]).read_bytes() == files[WORKLOAD[1]]     # the first one still serves
        assert api.request(sock, "DELETE", f"/api/v1/mount?mountpoint={second}")[0] == 500
        # exit with a second image mounted: both go
        assert api.request(sock, "POST", f"/api/v1/mount?mountpoint={second}",
                           {"source": str(tmp_path / "other.boot"), "fs_type": "rafs",
                            "config": json.dumps(config)})[0] == 204
        assert api.request(sock, "PUT", "/api/v1/daemon/exit") == (204, None)
        assert mount.process.wait(30) == 0, mount.log_text()
        assert not os.path.ismount(second) and not os.path.ismount(mount.path)
    finally:
        for path in (second, tmp_path / "third"):
            if os.path.ismount(path):
                subprocess.run(["umount", "-l", str(path)], capture_output=True)
        mount.close()
