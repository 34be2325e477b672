"""nydusd's per-file counters (``/api/v1/metrics/files`` with ``--iostats-files``) and latency distributions
(``/api/v1/metrics``, ``/api/v1/metrics/backend``): the buckets are nydusd's, and on a real FUSE mount the
counters count exactly the reads this test makes, file by file, and the backend requests they cause."""

from __future__ import annotations

import json
import os
import random
import time

import pytest

import rafs
from rafs.errors import BackendError
from rafs.io.fetch import ChunkFetcher
from rafs.io.latency import BackendLatency, micros_bucket, millis_bucket, size_bucket, sum_fields
from rafs.serve import api, trace
from test_fuse_support import Mount, guide_config
from test_mount_trace import FOP_READ, WORKLOAD, tree  # noqa: F401  (a pytest fixture)


def test_latency_buckets_match_nydusd():
    # utils/src/metrics.rs latency_millis_range_index and latency_micros_range_index (bounds inclusive)
    millis = {0: 0, 1: 0, 2: 1, 20: 1, 21: 2, 50: 2, 51: 3, 100: 3, 101: 4, 500: 4, 501: 5, 1000: 5, 1001: 6,
              2000: 6, 2001: 7, 10**9: 7}
    assert {ms: millis_bucket(ms) for ms in millis} == millis
    micros = {0: 0, 200: 0, 201: 1, 1000: 1, 1001: 2, 20000: 2, 20001: 3, 50000: 3, 50001: 4, 500000: 4,
              500001: 5, 10**6: 5, 10**6 + 1: 6, 2 * 10**6: 6, 2 * 10**6 + 1: 7}
    assert {us: micros_bucket(us) for us in micros} == micros


def test_backend_latency_counts_by_size_and_time():
    latency = BackendLatency()
    latency.record(4096, 0.0004)                 # 0 ms, 4K~
    latency.record(1 << 20, 0.030)               # 30 ms, 1M~
    latency.record(0, 3.5, error=True)           # a failure after 3.5 s
    fields = latency.fields()
    assert fields["read_count"] == 3 and fields["read_errors"] == 1
    assert fields["read_amount_total"] == 4096 + (1 << 20)
    assert fields["read_cumulative_latency_millis_total"] == 30 + 3500
    assert fields["read_count_block_size_dist"] == [1, 0, 1, 0, 0, 0, 0, 1]
    assert fields["read_cumulative_latency_millis_dist"] == [3500, 0, 0, 0, 0, 0, 0, 30]
    sizes = fields["read_latency_sizes_dist"]
    assert sizes[2][0] == 1 and sizes[7][2] == 1 and sizes[0][7] == 1 and sum(map(sum, sizes)) == 3
    twice = sum_fields([fields, fields])
    assert twice["read_count"] == 6 and twice["read_latency_sizes_dist"][7][2] == 2


def test_fetcher_counts_backend_requests_and_failures(tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    (source / "f").write_bytes(random.Random(5).randbytes(5 * 0x10000))
    blobs = tmp_path / "blobs"
    blobs.mkdir()
    rafs.Builder(str(source), fs_version=6, compressor="none", chunk_size=0x10000).write(
        bootstrap=tmp_path / "boot", blob_dir=blobs)
    with rafs.open(tmp_path / "boot", blob_dir=blobs) as image:
        chunks = image.chunks("/f")
        blob = image.blobs[0]

    class Source:
        def __init__(self, data):
            self.data, self.size, self.fail = data, len(data), False

        def read_range(self, offset, size):
            if self.fail:
                raise BackendError("the backend is down")
            return self.data[offset:offset + size]

    src = Source((blobs / blob.blob_id).read_bytes())
    fetcher = ChunkFetcher(blob, src)
    fetcher.read_many([chunks[0], chunks[2]])             # apart: two requests
    fetcher.read_many(chunks[3:5])                        # adjacent: one merged request
    src.fail = True
    with pytest.raises(BackendError):
        fetcher.read(chunks[1])
    fields = fetcher.stats.latency.fields()
    assert fields["read_count"] == 4 and fields["read_errors"] == 1
    assert fields["read_amount_total"] == sum(c.compressed_size for c in (chunks[0], chunks[2], chunks[3], chunks[4]))
    assert fields["read_count_block_size_dist"][size_bucket(0x10000)] == 2
    assert fields["read_count_block_size_dist"][size_bucket(0x20000)] == 1


def test_observer_keeps_per_file_counters_and_read_latency():
    observer = trace.MountObserver(trace=False, files=True)
    started = time.monotonic_ns()
    observer.read(7, 4096, started=started)
    observer.read(7, 100, remote=True, started=started - 5_000_000)     # 5 ms ago
    observer.read(9, 1 << 20)
    counters = observer.file_counters()
    assert counters[7] == (2, 4196, [1, 0, 1, 0, 0, 0, 0, 0]) and counters[9][:2] == (1, 1 << 20)
    totals = observer.totals()
    assert sum(totals["latency_dist"]) == 2 and totals["latency_dist"][2] == 1     # 1-20 ms: the remote one
    assert totals["latency_us"] >= 5000
    state = api.MountState(None, observer, to_fuse=lambda ino: ino + 100)
    assert set(state.files_metrics()) == {"107", "109"}
    record = state.files_metrics()["107"]
    assert record == {"total_fops": 2, "data_read": 4196, "block_count_read": [1, 0, 1, 0, 0, 0, 0, 0],
                      "fop_hits": [0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], "fop_errors": [0] * 15}
    assert api.MountState(None, trace.MountObserver(trace=False)).files_metrics() == {}


@pytest.mark.privileged
def test_metrics_count_the_reads_of_a_mount(tmp_path, tree):
    _, files, blobs = tree
    config = tmp_path / "config.json"
    config.write_text(json.dumps(guide_config(blobs, tmp_path / "cache")))
    sock = tmp_path / "api.sock"
    mount = Mount(["--config", str(config), "--bootstrap", str(tmp_path / "boot"), "--apisock", str(sock),
                   "--iostats-files"], tmp_path / "mnt", tmp_path / "mount.log")
    try:
        reads: dict[str, list[int]] = {}
        for rel in WORKLOAD:
            fd = os.open(mount.path / rel, os.O_RDONLY | os.O_DIRECT)     # each read reaches the daemon
            try:
                data = b""
                while block := os.pread(fd, 4096, len(data)):
                    data += block
                    reads.setdefault(rel, []).append(len(block))
            finally:
                os.close(fd)
            assert data == files[rel]
        status, per_file = api.request(sock, "GET", "/api/v1/metrics/files")
        assert status == 200
        assert set(per_file) == {str(os.stat(mount.path / rel).st_ino) for rel in WORKLOAD}
        for rel, sizes in reads.items():
            record = per_file[str(os.stat(mount.path / rel).st_ino)]
            buckets = [0] * 8
            for size in sizes:
                buckets[size_bucket(size)] += 1
            assert record == {"total_fops": len(sizes), "data_read": len(files[rel]), "block_count_read": buckets,
                              "fop_hits": [len(sizes) if i == FOP_READ else 0 for i in range(15)],
                              "fop_errors": [0] * 15}, rel

        status, metrics = api.request(sock, "GET", "/api/v1/metrics")
        total_reads = sum(len(sizes) for sizes in reads.values())
        assert status == 200 and metrics["files_account_enabled"] is True and metrics["measure_latency"] is True
        assert metrics["fop_hits"][FOP_READ] == total_reads
        assert sum(metrics["read_latency_dist"]) == total_reads
        assert metrics["fop_cumulative_latency_total"][FOP_READ] > 0

        # each small file lies in a chunk of its own between big files: one backend request per file (the
        # blob cache serves its second read), for exactly its chunk's stored bytes
        with rafs.open(tmp_path / "boot", blob_dir=blobs) as image:
            stored = [image.chunks("/" + rel) for rel in WORKLOAD]
        assert all(len(chunks) == 1 for chunks in stored)
        status, backend = api.request(sock, "GET", "/api/v1/metrics/backend")
        assert status == 200 and backend["read_count"] == len(WORKLOAD) and backend["read_errors"] == 0
        assert backend["read_amount_total"] == sum(chunks[0].compressed_size for chunks in stored)
        expected = [0] * 8
        for chunks in stored:
            expected[size_bucket(chunks[0].compressed_size)] += 1
        assert backend["read_count_block_size_dist"] == expected
        assert [sum(row) for row in backend["read_latency_sizes_dist"]] == expected
        assert backend["read_cumulative_latency_millis_total"] == sum(backend["read_cumulative_latency_millis_dist"])
    finally:
        mount.close()
