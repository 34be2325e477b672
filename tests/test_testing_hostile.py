"""rafs.testing.hostile: the generators behind issue 12's attacks, and rafs run against them.

The generator checks always hold. The checks of rafs against each family fail on the code before
issue 12's other lanes were merged, and pass since. An endless bootstrap body is tested in
``tests/test_hostile_http.py`` (bounded by ``MAX_BOOTSTRAP_SIZE`` when the server declares no length).
"""

from __future__ import annotations

import os
import tarfile
import time

import pytest

import rafs
from rafs.errors import RafsError
from rafs.testing import build_node, build_tree, file, memory_limit
from rafs.testing import hostile

from capped_layers import build_layers, escaped


@pytest.mark.parametrize("size", [0, 5, 0o77777777777, 1 << 40, (1 << 63) - 1])
def test_tar_header_size_fields_read_back(size):
    """Python's tarfile reads the declared size back (octal, or GNU base-256 past 8 GiB)."""
    header = hostile.tar_header(b"f", size=size)
    assert tarfile.TarInfo.frombuf(header, "utf-8", "surrogateescape").size == size


def test_tar_header_bombs_are_small():
    bombs = list(hostile.tar_header_bombs())
    assert len(bombs) == 6 * len(hostile.HOSTILE_TAR_SIZES)
    for description, layer in bombs:
        assert len(layer) < 16 << 10, description
        assert len(layer) % 512 == 0, description


def test_declared_size_mutants_set_every_regular_file(tmp_path):
    for version in (5, 6):
        built = build_tree({b"/a": file(b"x" * 5000), b"/b": file(b"y" * 10)}, tmp_path / f"v{version}",
                           fs_version=version, compressor="none")
        data = open(built.source, "rb").read()
        mutants = list(hostile.declared_size_mutants(data))
        assert len(mutants) == 2 * len(hostile.HOSTILE_FILE_SIZES), [d for d, _ in mutants]


def test_deep_chain_builds_at_any_depth(tmp_path):
    built = build_node(hostile.deep_chain(3000), tmp_path, fs_version=6)
    with built.open() as image:
        assert image.read("/" + "/".join(["d"] * 3000) + "/leaf") == b""


@pytest.mark.parametrize("behaviour", hostile.HTTP_BEHAVIOURS)
def test_hostile_http_server_behaves_as_documented(behaviour):
    import urllib.request
    body = bytes(range(256)) * 4
    with hostile.HostileHTTPServer({"/b": body}, behaviour, padding=1 << 16, interval=0.001,
                                   limit=1 << 16) as server:
        request = urllib.request.Request(server.url + "/b", headers={"Range": "bytes=10-19"})
        with urllib.request.urlopen(request, timeout=10) as response:
            got = response.read()
    expected = {"honest": body[10:20], "drip": body[10:20], "long-body": body[10:20],
                "ignore-range": body + bytes(1 << 16), "endless": body + bytes(1 << 16)}[behaviour]
    assert got == expected


# -- rafs against them -------------------------------------------------------------------------------

def test_tar_header_bombs_are_refused_in_bounded_memory_and_time(tmp_path):
    honest = hostile.tar_header(b"ok", size=5) + b"hello".ljust(512, b"\0") + b"\0" * 1024
    # 10 s: a sparse member may hold up to 4 GiB of holes (rafs.builder.tarstream.MAX_SPARSE_HOLE_BYTES), read as
    # zeros, so the 1.5 GiB one is built (in about a second); the larger ones are refused at once
    results = build_layers(tmp_path, [("honest", honest)] + list(hostile.tar_header_bombs()), seconds=10.0)
    assert results.pop("honest") == "ok"
    assert not escaped(results)


@pytest.mark.parametrize("version", [5, 6])
def test_declared_sizes_past_the_chunks_read_in_bounded_memory(tmp_path, version):
    built = build_tree({b"/a": file(b"x" * 5000)}, tmp_path, fs_version=version, compressor="none")
    data = open(built.source, "rb").read()
    for description, mutant in hostile.declared_size_mutants(data):
        with open(built.source, "wb") as f:
            f.write(mutant)
        try:
            with memory_limit(64 << 20, description), rafs.open(built.source, blob_dir=built.blob_dir) as image:
                with image.open("/a") as f:
                    f.read(1 << 20)
                image.read("/a")
        except RafsError:
            pass


def _http_image(tmp_path):
    built = build_tree({b"/f": file(os.urandom(300_000))}, tmp_path, fs_version=6, compressor="none")
    blob_id = built.result.blob_id
    blob = open(os.path.join(built.blob_dir, blob_id), "rb").read()
    return built, blob_id, blob


def _http_config(url: str, tmp_path) -> dict:
    return {"version": 2, "backend": {"type": "http-proxy", "http-proxy": {"addr": url, "timeout": 1,
                                                                           "connect_timeout": 1, "retry_limit": 0}},
            "cache": {"type": "blobcache", "filecache": {"work_dir": str(tmp_path / "cache")}}}


def test_http_server_ignoring_range_is_not_buffered(tmp_path):
    built, blob_id, blob = _http_image(tmp_path)
    with hostile.HostileHTTPServer({f"/{blob_id}": blob}, "ignore-range", padding=64 << 20) as server:
        try:
            with rafs.open(built.source, config=_http_config(server.url, tmp_path)) as image:
                image.read("/f")
        except RafsError:
            pass
        assert server.sent < 16 << 20, f"the client read {server.sent} bytes of a response ignoring Range"


def test_http_server_dripping_is_cut_at_the_deadline(tmp_path):
    built, blob_id, blob = _http_image(tmp_path)
    # 25 bytes in 2.5 s, then the server hangs up: a client bounded by its 1 s timeout stops before
    with hostile.HostileHTTPServer({f"/{blob_id}": blob}, "drip", interval=0.1, limit=25) as server:
        started = time.monotonic()
        with pytest.raises(RafsError):
            with rafs.open(built.source, config=_http_config(server.url, tmp_path)) as image:
                with image.open("/f") as f:
                    f.read(64)
        assert time.monotonic() - started < 2.5
