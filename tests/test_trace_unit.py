"""Access traces and nydusd's API without a mount: the counters, the pattern file formats, ``rafs create
--prefetch-patterns FILE`` (the rebuilt image's prefetch table follows the file), and the API server on a
unix socket answering from a real image with nydusd's status codes and error bodies.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import rafs
from conftest import ROOT
from rafs.errors import InvalidArgumentError
from rafs.serve import api, trace


def test_size_buckets_match_nydusd():
    # utils/src/metrics.rs test_request_size_index
    cases = {0: 0, 0x3ff: 0, 0x400: 1, 0xfff: 1, 0x1000: 2, 0x3fff: 2, 0x4000: 3, 0xffff: 3, 0x1_0000: 4,
             0x1_ffff: 4, 0x2_0000: 5, 0x7_ffff: 5, 0x8_0000: 6, 0xf_ffff: 6, 0x10_0000: 7, 1 << 40: 7}
    assert {size: trace.size_bucket(size) for size in cases} == cases


def test_observer_counts_first_reads_in_order():
    observer = trace.MountObserver()
    observer.read(7, 100)
    observer.read(3, 4096, remote=True)
    observer.read(7, 50)
    observer.read(9, 1 << 20)
    observer.failed()
    totals = observer.totals()
    assert totals["reads"] == 4 and totals["data_read"] == 100 + 4096 + 50 + (1 << 20) and totals["errors"] == 1
    assert totals["buckets"] == [2, 0, 1, 0, 0, 0, 0, 1]
    assert [(ino, reads) for ino, _, reads in observer.accesses()] == [(7, 2), (3, 1), (9, 1)]
    untraced = trace.MountObserver(trace=False)
    untraced.read(7, 10)
    assert untraced.accesses() == [] and untraced.totals()["reads"] == 1


def test_pattern_file_formats(tmp_path):
    records = [{"ino": 5, "nr_read": 2, "first_access_time_secs": 1, "first_access_time_nanos": 2, "path": "/b/x"},
               {"ino": 4, "nr_read": 1, "first_access_time_secs": 1, "first_access_time_nanos": 3, "path": "/a\nb"},
               {"ino": 3, "nr_read": 1, "first_access_time_secs": 1, "first_access_time_nanos": 4, "path": "/a/y"}]
    text = tmp_path / "trace.txt"
    trace.write_pattern_file(text, records)
    assert text.read_bytes() == b"/b/x\n/a/y\n"            # a line break cannot be a pattern line
    assert trace.read_pattern_file(text) == ["/b/x", "/a/y"]
    as_json = tmp_path / "trace.json"
    trace.write_pattern_file(as_json, records)
    assert json.loads(as_json.read_text()) == records
    assert trace.read_pattern_file(as_json) == ["/b/x", "/a\nb", "/a/y"]
    assert [n for n in os.listdir(tmp_path) if n.startswith(".rafs-tmp")] == []


@pytest.mark.parametrize("content, words", [
    (b"[{\"ino\": 3, \"nr_read\": 1}]", "needs a \"path\""),
    (b"[not json", "not valid JSON"),
    (b"[1, 2]", "a JSON list of access records"),
])
def test_bad_pattern_files(tmp_path, content, words):
    path = tmp_path / "bad.json"
    path.write_bytes(content)
    with pytest.raises(InvalidArgumentError, match=words):
        trace.read_pattern_file(path)
    with pytest.raises(InvalidArgumentError, match="--prefetch-patterns .*missing"):
        trace.read_pattern_file(tmp_path / "missing")


def _tree(top):
    for rel in ("etc/hosts", "usr/bin/app", "usr/lib/libc.so", "var/log/x", "z"):
        os.makedirs(os.path.dirname(os.path.join(top, rel)) or top, exist_ok=True)
        with open(os.path.join(top, rel), "wb") as f:
            f.write(rel.encode() * 100)


def _run(*args, **kwargs):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "rafs", *args], capture_output=True, text=True, env=env, **kwargs)


def _table_paths(bootstrap) -> list[str]:
    with rafs.open(bootstrap) as image:
        paths = trace.paths_of(image, image.reader.prefetch_inodes())
        return [paths[ino] for ino in image.reader.prefetch_inodes()]


def _data_order(bootstrap) -> list[str]:
    """Regular files by where their data starts in the blob."""
    with rafs.open(bootstrap) as image:
        inos = [ino for ino, _ in _files(image, image.root_ino)]
        paths = trace.paths_of(image, inos)
        starts = {paths[ino]: image.reader.chunks(ino)[0].compressed_offset for ino in inos}
    return sorted(starts, key=starts.get)


def _files(image, dir_ino):
    for name, child in image.dir_entries(dir_ino):
        inode = image.get_inode(child)
        if inode.is_dir:
            yield from _files(image, child)
        elif inode.is_reg:
            yield child, name


@pytest.mark.parametrize("version", ["5", "6"])
def test_create_prefetch_patterns_file(tmp_path, version):
    source = tmp_path / "src"
    _tree(source)
    order = ["/var/log/x", "/usr/bin/app", "/etc/hosts"]
    patterns = tmp_path / "trace.txt"
    trace.write_pattern_file(patterns, [{"path": p} for p in order])
    (tmp_path / "blobs").mkdir()
    result = _run("create", "-v", version, "--prefetch-patterns", str(patterns), "-B", str(tmp_path / "boot"),
                  "-D", str(tmp_path / "blobs"), str(source))
    assert result.returncode == 0, result.stderr
    # both versions keep the table in pattern order, as nydus-image does
    table = _table_paths(tmp_path / "boot")
    assert table == order
    assert _data_order(tmp_path / "boot")[:3] == order           # the workload's data first, in its order
    # the JSON records of the API or a .json trace give the same table
    records = tmp_path / "trace.json"
    trace.write_pattern_file(records, [{"ino": 1, "nr_read": 1, "path": p} for p in order])
    result = _run("create", "-v", version, "--prefetch-patterns", str(records), "-B", str(tmp_path / "boot2"),
                  "-D", str(tmp_path / "blobs"), str(source))
    assert result.returncode == 0, result.stderr
    assert _table_paths(tmp_path / "boot2") == table


def test_create_prefetch_patterns_missing_file(tmp_path):
    source = tmp_path / "src"
    _tree(source)
    result = _run("create", "--prefetch-patterns", str(tmp_path / "nope"), "-B", str(tmp_path / "boot"),
                  str(source))
    assert result.returncode != 0
    assert "--prefetch-patterns" in result.stderr and "Traceback" not in result.stderr


@pytest.fixture
def served(tmp_path):
    source = tmp_path / "src"
    _tree(source)
    rafs.Builder(str(source)).write(bootstrap=str(tmp_path / "boot"), blob_dir=str(tmp_path))
    image = rafs.open(str(tmp_path / "boot"), blob_dir=str(tmp_path))
    daemon = api.Daemon(exit_signal=0)
    state = daemon.add(api.MountState(image, trace.MountObserver()))
    server = api.ApiServer(tmp_path / "api.sock", daemon)
    yield state, tmp_path / "api.sock"
    server.close()
    image.close()


def test_api_errors_and_routes(served):
    state, sock = served
    assert api.request(sock, "GET", "/api/v1/nowhere") == (404, {"code": "UNDEFINED", "message": "NoRoute"})
    assert api.request(sock, "DELETE", "/api/v1/daemon")[0] == 400
    assert api.request(sock, "GET", "/api/v1/metrics?id=other")[0] == 404
    assert api.request(sock, "GET", "/api/v1/metrics?id=/")[0] == 200
    assert api.request(sock, "GET", "/api/v1/metrics/inflight") == (204, None)
    # no cache configured: nydusd has no blobcache counters to show
    assert api.request(sock, "GET", "/api/v1/metrics/blobcache")[0] == 404
    assert api.request(sock, "GET", "/api/v1/daemon")[1]["state"] == "INIT"
    # no mounter: nothing more can be mounted; bad requests are the caller's fault
    assert api.request(sock, "POST", "/api/v1/mount?mountpoint=/x", {"source": "/b", "fs_type": "rafs",
                                                                     "config": ""})[0] == 501
    assert api.request(sock, "POST", "/api/v1/mount", {"source": "/b"})[0] == 400
    assert api.request(sock, "POST", "/api/v1/mount?mountpoint=/x", {"source": 3})[0] == 400
    assert api.request(sock, "DELETE", "/api/v1/mount?mountpoint=/x")[0] == 500


def test_api_pattern_names_files(served):
    state, sock = served
    image = state.image
    app = image.lookup(image.lookup(image.lookup(image.root_ino, b"usr").ino, b"bin").ino, b"app").ino
    hosts = image.lookup(image.lookup(image.root_ino, b"etc").ino, b"hosts").ino
    state.observer.read(app, 10)
    state.observer.read(hosts, 10)
    state.observer.read(app, 10)
    status, records = api.request(sock, "GET", "/api/v1/metrics/pattern")
    assert status == 200
    assert [(r["path"], r["nr_read"]) for r in records] == [("/usr/bin/app", 2), ("/etc/hosts", 1)]
    assert set(records[0]) >= {"ino", "nr_read", "first_access_time_secs", "first_access_time_nanos"}


def test_apisock_refuses_a_non_socket(tmp_path, served):
    (tmp_path / "file").write_text("x")
    with pytest.raises(InvalidArgumentError, match="not a socket"):
        api.ApiServer(tmp_path / "file", api.Daemon())



def test_convert_prefetch_patterns_file(tmp_path):
    from oci_layers import make_layers, oci_image, oci_layout
    from rafs.cli.main import main as cli
    from test_oci import bootstrap_of, document
    (tmp_path / "layers").mkdir()
    tars = make_layers(str(tmp_path / "layers"), compress="gzip")
    layout = str(tmp_path / "src")
    oci_layout(layout, [oci_image(layout, tars)])
    patterns = tmp_path / "trace.txt"
    patterns.write_text("/etc/passwd\n/usr/bin\n")
    assert cli(["convert", "--source", layout, "--target", str(tmp_path / "dst"), "--prefetch-patterns",
                str(patterns)]) == 0
    index = json.load(open(tmp_path / "dst" / "index.json"))
    manifest = document(tmp_path / "dst", index["manifests"][0])
    with rafs.open(bootstrap_of(tmp_path / "dst", manifest, tmp_path / "boot")) as image:
        assert image.reader.prefetch_inodes() == [image.lstat(p).st_ino for p in ["/etc/passwd", "/usr/bin"]]


def test_api_refuses_bad_bodies(served):
    import socket
    _, sock = served
    assert api.request(sock, "POST", "/api/v1/mount?mountpoint=/x", "not an object")[0] == 400

    def raw(request: bytes) -> bytes:
        with socket.socket(socket.AF_UNIX) as client:
            client.settimeout(10)
            client.connect(str(sock))
            client.sendall(request)
            return client.recv(65536)

    assert raw(b"POST /api/v1/mount?mountpoint=/x HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n").startswith(
        b"HTTP/1.1 400")                                     # refused before reading a body that large
    assert raw(b"POST /api/v1/mount?mountpoint=/x HTTP/1.1\r\nContent-Length: 5\r\n\r\n{nope").startswith(
        b"HTTP/1.1 400")
