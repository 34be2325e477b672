"""Remote reads (issue 14): prefetch and extraction over S3 (moto behind the counting proxy of
``tests/s3server.py``) issue ranged requests in parallel, never more at once than their workers, each
merging adjacent chunks up to the batch size; afterwards reads cost no request.
"""

from __future__ import annotations

import json
import math
import os
import random

import pytest

import rafs
from s3server import moto_server, s3, s3_proxy  # noqa: F401
from test_fuse_support import diff_r

BATCH = 0x40000
CHUNK = 0x10000


@pytest.fixture
def s3_tree(s3, tmp_path):  # noqa: F811
    """(source, bootstrap, blob id, blob size, nydusd config path) of a tree whose blob is on S3."""
    rng = random.Random(5)
    source = tmp_path / "src"
    for i in range(40):
        path = source / f"d{i % 4}" / f"f{i}"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(rng.randbytes(90_000 + i))
    blobs = tmp_path / "blobs"
    blobs.mkdir()
    result = rafs.Builder(str(source), fs_version=6, compressor="zstd", chunk_size=CHUNK).write(
        bootstrap=str(tmp_path / "image.meta"), blob_dir=str(blobs))
    (blob_id,) = result.blob_ids
    data = (blobs / blob_id).read_bytes()
    s3.put(f"nydus-demo/blob/{blob_id}", data)
    config = tmp_path / "nydusd-config.s3.json"
    config.write_text(json.dumps(s3.nydusd_config(tmp_path / "cache")))
    return source, tmp_path / "image.meta", blob_id, len(data), config


def _blob_gets(s3, blob_id):  # noqa: F811
    return [r for r in s3.proxy.requests_for("nydus-demo/blob/" + blob_id) if r.method == "GET"]


def _range_size(header: str) -> int:
    start, end = header.split("=", 1)[1].split("-")
    return int(end) - int(start) + 1


@pytest.mark.parametrize("threads", [1, 3])
def test_prefetch_requests_are_parallel_bounded_and_merged(s3, s3_tree, threads):  # noqa: F811
    source, bootstrap, blob_id, blob_size, config = s3_tree
    with rafs.open(bootstrap, config=str(config)) as image:
        s3.proxy.reset()
        s3.proxy.delay = 0.1                 # each answer held, so parallel requests overlap
        handle = image.prefetch(all=True, threads=threads, batch_size=BATCH)
        assert not handle.errors
        gets = _blob_gets(s3, blob_id)
        assert 1 <= s3.proxy.max_active <= threads, s3.proxy.max_active
        if threads > 1:
            assert s3.proxy.max_active >= 2          # they did run side by side
        # adjacent chunks merged: about one request per batch (whole chunks: a batch may end up to a
        # chunk short), none larger than a batch, against 80 chunks
        assert all(r.range and _range_size(r.range) <= BATCH for r in gets), [r.range for r in gets]
        assert len(gets) <= math.ceil(blob_size / (BATCH - CHUNK - 0x1000)) + 2, len(gets)
        s3.proxy.reset()
        for i in range(40):
            rel = f"d{i % 4}/f{i}"
            assert image.read("/" + rel) == (source / rel).read_bytes()
        assert _blob_gets(s3, blob_id) == []          # everything came from the cache


def test_extraction_from_s3_is_parallel_and_bounded(s3, s3_tree, tmp_path):  # noqa: F811
    source, bootstrap, blob_id, _, config = s3_tree
    with rafs.open(bootstrap, config=str(config)) as image:
        s3.proxy.reset()
        s3.proxy.delay = 0.05
        image.extractall(tmp_path / "out", threads=2)
    assert 2 <= s3.proxy.max_active <= 2, s3.proxy.max_active
    assert diff_r(source, tmp_path / "out") == []
    assert len(_blob_gets(s3, blob_id)) < 40          # small files share ranged requests
    assert os.listdir(tmp_path / "cache")


def test_whole_image_prefetch_comes_in_large_ranges(s3, s3_tree):  # noqa: F811
    """Without an explicit batch size, a prefetch of everything grows its ranges past the configured
    1 MiB merging size, so that each worker fetches one large range (at most 8 MiB)."""
    from rafs.io.prefetch import LARGE_RANGE
    _, bootstrap, blob_id, blob_size, config = s3_tree
    with rafs.open(bootstrap, config=str(config)) as image:
        s3.proxy.reset()
        handle = image.prefetch(all=True, threads=2)
        assert not handle.errors and handle.fetched
    sizes = [_range_size(r.range) for r in _blob_gets(s3, blob_id)]
    data = [size for size in sizes if size > CHUNK]        # not the blob's small metadata reads
    assert len(data) <= 3, sizes
    assert max(data) > 0x100000 and max(data) <= LARGE_RANGE, sizes
    assert sum(sizes) >= blob_size - 0x10000


def test_a_reader_does_not_wait_for_a_prefetch_range(v5_fixture, tmp_path):
    """A chunk that a prefetch is fetching inside a slow, large range is fetched by the reader itself
    (one small request) instead of waiting for that whole range."""
    import threading
    import time
    from test_io_fetch import GROUP, open_counted
    image, counter = open_counted(v5_fixture, cache_dir=tmp_path)
    with image:
        (chunk,) = image.chunks(GROUP)
        counter.delay = 2.0                             # every request takes 2 s
        started = threading.Event()
        real = counter.read_range

        def read_range(offset, size):
            started.set()
            return real(offset, size)
        counter.read_range = read_range
        handle = image.prefetch(all=True, threads=1, wait=False)
        assert started.wait(10)
        counter.delay = 0.0                             # the reader's own request is quick
        began = time.monotonic()
        data = image.read(GROUP)
        waited = time.monotonic() - began
        assert handle.wait(30)
    assert data and waited < 1.5, waited
