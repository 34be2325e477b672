"""Hostile HTTP storage and secrets in URLs (issue 12).

Real servers on 127.0.0.1 (http.server in a thread), each path choosing a behaviour: ``good`` (Range
honoured), ``norange`` (200 with a 1 GiB body whatever the Range), ``drip`` (a body byte a second),
``driphead`` (the status line a byte a second), ``endless`` (the asked bytes, then zeros without end and
without a Content-Length), ``huge`` (a declared Content-Length of 1 TiB) and ``overlong`` (a correct
Content-Length, then junk past it). Reads go through ``rafs.open(URL)`` for bootstraps and through an
http-proxy configuration for blobs; each must end in a clean rafs error (or the right bytes) within a
few seconds, with the memory used and the bytes the server could push bounded.

Then passwords written in URLs (an http-proxy ``addr``, an S3 ``endpoint``) and the S3 access key id must
show in no repr, ``describe()``, error, or CLI error line.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
import tracemalloc
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

import rafs
from rafs.errors import BackendError, RafsError
from rafs.io import source as source_module
from rafs.io.config import locator_from_config, parse_config
from rafs.io.redact import redact_url, redact_urls

from s3server import free_port
from test_io_fetch import GROUP, LAYER_TAR

PIECE = b"\0" * 0x10000
# What the loopback socket buffers of both ends can hold before a writer blocks: the most a client that
# stops reading lets a server push.
SOCKET_SLACK = 16 << 20


class HostileServer:
    """``/<mode>/<name>`` serves ``files[name]`` the way ``mode`` says; counts requests and body bytes."""

    def __init__(self, files: dict[str, bytes]):
        self.files = files
        self.stop = threading.Event()
        self.sent = 0
        self.requests: list[tuple[str, str, str | None]] = []
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_HEAD(self):
                server.handle(self, head=True)

            def do_GET(self):
                server.handle(self, head=False)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, mode: str, name: str = "") -> str:
        return f"http://127.0.0.1:{self.port}/{mode}/{name}"

    def count(self, mode: str, name: str, method: str = "GET") -> int:
        return sum(1 for m, p, _ in self.requests if m == method and p == f"/{mode}/{name}")

    def close(self):
        self.stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()

    def _send(self, h, data: bytes) -> None:
        h.wfile.write(data)
        h.wfile.flush()
        with self._lock:
            self.sent += len(data)

    def _pour(self, h, first: bytes) -> None:
        """``first``, then zeros until the client goes away (or the test ends)."""
        try:
            self._send(h, first)
            while not self.stop.is_set():
                self._send(h, PIECE)
        except OSError:
            pass
        h.close_connection = True

    def _drip(self, h, data: bytes) -> None:
        try:
            for i in range(len(data)):
                if self.stop.wait(1.0 if i else 0):
                    break
                self._send(h, data[i:i + 1])
        except OSError:
            pass
        h.close_connection = True

    def handle(self, h, *, head: bool) -> None:
        _, mode, name = h.path.split("/", 2)
        rng = h.headers.get("Range")
        with self._lock:
            self.requests.append((h.command, h.path, rng))
        data = self.files.get(name)
        if data is None:
            h.send_response(404)
            h.send_header("Content-Length", "0")
            h.end_headers()
            return
        if mode == "driphead" and not head:
            h.close_connection = True
            self._drip(h, b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx")
            return
        status, part, first, total = 200, data, 0, len(data)
        if rng and mode != "norange" and not head:
            first, last = (int(x) for x in rng.split("=", 1)[1].split("-"))
            status, part = 206, data[first:last + 1]
        h.send_response(status)
        if status == 206:
            h.send_header("Content-Range", f"bytes {first}-{first + len(part) - 1}/{total}")
        if head:
            h.send_header("Content-Length", str(len(data)))
            h.end_headers()
            return
        if mode == "norange":
            h.send_header("Content-Length", str(1 << 30))
            h.end_headers()
            self._pour(h, data)
        elif mode == "huge":
            h.send_header("Content-Length", str(1 << 40))
            h.end_headers()
            self._pour(h, part)
        elif mode == "endless":
            h.send_header("Connection", "close")
            h.end_headers()
            self._pour(h, part)
        elif mode == "overlong":
            h.send_header("Content-Length", str(len(part)))
            h.end_headers()
            self._send(h, part + b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nbad" + b"junk" * 1000)
        elif mode == "drip":
            h.send_header("Content-Length", str(len(part)))
            h.end_headers()
            self._drip(h, part)
        else:
            h.send_header("Content-Length", str(len(part)))
            h.end_headers()
            self._send(h, part)


@pytest.fixture
def server(v5_fixture):
    bootstrap, blob_dir, _ = v5_fixture
    (blob,) = blob_dir.iterdir()
    srv = HostileServer({"boot": bootstrap.read_bytes(), blob.name: blob.read_bytes()})
    srv.blob_id = blob.name
    srv.reference = rafs.open(bootstrap, blob_dir=blob_dir)
    yield srv
    srv.close()


def proxy_config(srv, mode: str, **backend) -> dict:
    """An http-proxy configuration whose blobs are served by ``srv`` in ``mode``."""
    return {"version": 2, "backend": {"type": "http-proxy", "http-proxy": {
        "addr": f"http://127.0.0.1:{srv.port}", "path": f"/{mode}", "timeout": 1, "retry_limit": 0, **backend}}}


class Bounded:
    """Times a block and traces its peak Python memory."""

    def __enter__(self):
        tracemalloc.start()
        self.start = time.monotonic()
        return self

    def __exit__(self, *exc):
        self.seconds = time.monotonic() - self.start
        self.peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        return False


# --- a server that ignores Range -------------------------------------------------------------------------

def test_range_ignored_is_refused_without_buffering(server):
    for open_image in (lambda: rafs.open(server.url("good", "boot"), blobs={server.blob_id: server.url(
                           "norange", server.blob_id)}),
                       lambda: rafs.open(server.url("good", "boot"), config=proxy_config(server, "norange"))):
        with open_image() as image, Bounded() as bounded:
            with pytest.raises(BackendError, match="ignored the Range header") as info:
                image.read(LAYER_TAR)
        assert f"127.0.0.1:{server.port}/norange/{server.blob_id}" in str(info.value)
        assert bounded.seconds < 3 and bounded.peak < SOCKET_SLACK
    # no retry of a server that will never do better, and not the 1 GiB it offered
    assert server.count("norange", server.blob_id) == 2
    assert server.sent < 2 * SOCKET_SLACK + 4 * len(server.files[server.blob_id])


def test_good_server_still_serves_ranges(server):
    with rafs.open(server.url("good", "boot"), config=proxy_config(server, "good")) as image:
        assert image.read(GROUP) == server.reference.read(GROUP)
        assert image.read(LAYER_TAR) == server.reference.read(LAYER_TAR)
    assert all(r for m, p, r in server.requests if m == "GET" and server.blob_id in p)


# --- a server that drips ------------------------------------------------------------------------------

def test_dripping_bootstrap_hits_the_request_deadline(server):
    # through the http-proxy backend's own timeout (1 s for the whole request), retried once
    with Bounded() as bounded:
        with pytest.raises(BackendError, match=r"failed after 2 attempts.*within 1 s"):
            rafs.open(server.url("drip", "boot"), config=proxy_config(server, "good", retry_limit=1,
                                                                       addr=server.url("drip")))
    assert 2 <= bounded.seconds < 4
    assert server.count("drip", "boot") == 2
    # a plain URL takes its deadline from storage_options; the default retry policy (3) applies
    with Bounded() as bounded:
        with pytest.raises(BackendError, match="failed after 4 attempts"):
            rafs.open(server.url("drip", "boot"), storage_options={"timeout": 0.5})
    assert bounded.seconds < 4.5


@pytest.mark.parametrize("mode", ["drip", "driphead"])
def test_dripping_blob_hits_the_request_deadline(server, mode):
    with rafs.open(server.url("good", "boot"), config=proxy_config(server, mode)) as image:
        with Bounded() as bounded:
            with pytest.raises(BackendError, match="within 1 s"):
                image.read(GROUP)
    assert bounded.seconds < 2.5
    assert server.count(mode, server.blob_id) == 1                 # retry_limit 0: no second attempt


def test_request_timeout_is_per_request_not_per_read(server):
    """A body arriving a byte a second never idles past a 2 s socket timeout, yet the read ends."""
    reader = source_module.open_http(server.url("drip", server.blob_id), {"timeout": 2})
    reader.retry.limit = 0
    start = time.monotonic()
    with pytest.raises(BackendError, match="within 2 s"):
        reader.read_range(0, 100)
    assert time.monotonic() - start < 3.5


# --- bodies without end ---------------------------------------------------------------------------------

def test_endless_bootstrap_is_cut_off_at_the_limit(server, monkeypatch):
    monkeypatch.setattr(source_module, "MAX_BOOTSTRAP_SIZE", 4 << 20)
    with Bounded() as bounded:
        with pytest.raises(BackendError, match=r"runs past the limit of 4194304 bytes"):
            rafs.open(server.url("endless", "boot"))
    assert bounded.seconds < 3 and bounded.peak < 3 * (4 << 20)
    assert server.count("endless", "boot") == 1
    assert server.sent < (4 << 20) + 2 * SOCKET_SLACK


def test_declared_huge_bootstrap_is_refused_before_reading(server):
    with Bounded() as bounded:
        with pytest.raises(BackendError, match=r"declares 1099511627776 bytes, more than the limit"):
            rafs.open(server.url("huge", "boot"))
    assert bounded.seconds < 3 and bounded.peak < SOCKET_SLACK
    assert server.sent < 2 * SOCKET_SLACK


def test_blob_bodies_past_the_range_are_cut_off(server):
    ref = server.reference
    # a 206 with the right Content-Range, then zeros without end: the asked bytes are kept, no more
    with rafs.open(server.url("good", "boot"), config=proxy_config(server, "endless")) as image, \
            Bounded() as bounded:
        assert image.read(GROUP) == ref.read(GROUP)
        assert image.read(LAYER_TAR) == ref.read(LAYER_TAR)
    assert bounded.seconds < 3 and bounded.peak < 2 * SOCKET_SLACK
    # a 206 declaring 1 TiB for a small range is refused
    with rafs.open(server.url("good", "boot"), config=proxy_config(server, "huge")) as image:
        with pytest.raises(BackendError, match="for a range of"):
            image.read(GROUP)
    # a body with junk after its Content-Length: the connection is never reused for the next read
    with rafs.open(server.url("overlong", "boot"), config=proxy_config(server, "overlong")) as image:
        assert image.read(GROUP) == ref.read(GROUP)
        assert image.read(LAYER_TAR) == ref.read(LAYER_TAR)
    assert server.sent < 6 * SOCKET_SLACK


def test_missing_and_refused_objects(server):
    with pytest.raises(FileNotFoundError):
        rafs.open(server.url("good", "nothing"))
    port = free_port()
    with pytest.raises(BackendError, match="ConnectionRefused"):
        rafs.open(f"http://127.0.0.1:{port}/boot", config={"version": 2, "backend": {"type": "http-proxy",
                  "http-proxy": {"addr": f"http://127.0.0.1:{port}", "retry_limit": 0}}})
    with pytest.raises(rafs.errors.InvalidArgumentError, match="'client_kwargs' not understood"):
        rafs.open(server.url("good", "boot"), storage_options={"client_kwargs": {}})


# --- secrets in URLs ---------------------------------------------------------------------------------------

HTTP_PASSWORD = "Pa55-http-proxy-w0rd"
S3_PASSWORD = "S3-endpoint-pa55w0rd"
S3_KEY_ID = "AKIARAFSHIDDENKEYID9"
S3_SECRET = "s3-secret-access-key-Zq9"
SECRETS = (HTTP_PASSWORD, S3_PASSWORD, S3_KEY_ID, S3_SECRET, "alice", "bob")


def assert_clean(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text, f"{secret!r} shown in {text!r}"


def secret_configs(port: int) -> dict:
    return {
        "http-proxy": {"version": 2, "backend": {"type": "http-proxy", "http-proxy": {
            "addr": f"http://alice:{HTTP_PASSWORD}@127.0.0.1:{port}", "path": "/blobs", "retry_limit": 0,
            "timeout": 1}}},
        "s3": {"version": 2, "backend": {"type": "s3", "s3": {
            "endpoint": f"http://bob:{S3_PASSWORD}@127.0.0.1:{port}", "bucket_name": "b", "region": "us-east-1",
            "access_key_id": S3_KEY_ID, "access_key_secret": S3_SECRET, "retry_limit": 0, "timeout": 1,
            "connect_timeout": 1}}},
    }


def test_redact_helpers():
    assert redact_url("http://u:p@h:1/x?q#f") == "http://***@h:1/x?q#f"
    assert redact_url("https://u:p@ss@h/x") == "https://***@h/x"
    assert redact_url("u:p@h:9000/bucket") == "***@h:9000/bucket"
    assert redact_url("http://h/a@b") == "http://h/a@b"
    assert redact_url("/a@b/c") == "/a@b/c"
    assert redact_urls("get s3://k:s@b/o and http://x@y/ failed") == "get s3://***@b/o and http://***@y/ failed"


@pytest.mark.parametrize("backend", ["http-proxy", "s3"])
def test_passwords_absent_from_reprs_describe_and_errors(backend):
    port = free_port()
    config = secret_configs(port)[backend]
    locator = locator_from_config(config)
    shown = [repr(locator), locator.describe(), repr(locator.backend), repr(parse_config(config)),
             json.dumps(parse_config(config).redacted())]
    for text in shown:
        assert_clean(text)
    assert "127.0.0.1" in locator.describe()
    boot = f"s3://b/boot" if backend == "s3" else f"http://alice:{HTTP_PASSWORD}@127.0.0.1:{port}/boot"
    with pytest.raises(RafsError) as info:
        rafs.open(boot, config=config)
    assert_clean(str(info.value))
    assert_clean(repr(info.value))
    if backend == "http-proxy":
        # a blob read: the bootstrap is local, the blob is behind the closed port
        reader = locator.backend.open("0" * 64)
        assert_clean(repr(reader))
        with pytest.raises(BackendError) as info:
            reader.read_range(0, 10)
        assert_clean(str(info.value))
        assert "127.0.0.1" in str(info.value)


def test_passwords_absent_from_a_plain_url_image_and_its_errors(server):
    url = server.url("good", "boot").replace("http://", f"http://alice:{HTTP_PASSWORD}@")
    with rafs.open(url, blobs={server.blob_id: server.url("good", server.blob_id)}) as image:
        assert_clean(repr(image) + image.name)
        assert image.read(GROUP) == server.reference.read(GROUP)
    with pytest.raises(RafsError) as info:
        rafs.open(url.replace("/good/", "/huge/"))
    assert_clean(str(info.value))


def run_cli(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rafs", *args], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("backend", ["http-proxy", "s3"])
def test_passwords_absent_from_cli_errors(tmp_path, backend):
    port = free_port()
    config = tmp_path / "config.json"
    config.write_text(json.dumps(secret_configs(port)[backend]))
    boot = f"s3://b/boot" if backend == "s3" else f"http://alice:{HTTP_PASSWORD}@127.0.0.1:{port}/boot"
    (tmp_path / "mnt").mkdir()
    runs = [run_cli(["mount", "-B", boot, "-C", str(config), "-M", str(tmp_path / "mnt")])]
    if backend == "http-proxy":
        runs.append(run_cli(["--debug", "inspect", boot]))
    for run in runs:
        assert run.returncode != 0
        assert re.search(r"rafs (mount|inspect): \w+", run.stderr), run.stderr
        assert "127.0.0.1" in run.stderr and "Traceback" not in run.stderr
        assert_clean(run.stderr + run.stdout)
