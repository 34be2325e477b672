"""A real S3 endpoint on loopback for tests: moto in server mode, plus a counting, fault-injecting proxy.

``MotoServer`` runs ``python -m moto.server`` as a subprocess on a free 127.0.0.1 port. ``S3Proxy`` is a
small HTTP/1.1 forwarder in front of it that records every request (method, path, ``Range``, status,
body bytes) and can fail a share of them with 503, drop the connection before answering, or cut a body
short, so tests count what a client really asked for and check how it survives faults. Clients talk
to the proxy through s3fs like to any S3 endpoint; nothing is mocked inside the client.

Use the fixtures by importing them into a test module::

    from s3server import moto_server, s3  # noqa: F401  (pytest fixtures)
"""

from __future__ import annotations

import http.client
import itertools
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

ACCESS_KEY_ID = "AKIARAFSTESTKEY0001"
ACCESS_KEY_SECRET = "rafs-test-secret-Zq9vXw2Lk7"     # must never show up in logs, errors or reprs
REGION = "us-east-1"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class MotoServer:
    """``moto.server`` on 127.0.0.1:<free port>, stopped by ``stop()``; its log goes to ``log_path``."""

    def __init__(self, log_path: str):
        self.port = free_port()
        self.log_path = log_path
        self._log = open(log_path, "wb")
        env = dict(os.environ, AWS_ACCESS_KEY_ID=ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY=ACCESS_KEY_SECRET,
                   AWS_DEFAULT_REGION=REGION)
        self.process = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p",
                                         str(self.port)], stdout=self._log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 30
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"moto server exited with {self.process.returncode}: "
                                   f"{open(log_path, 'rb').read()[-2000:]!r}")
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                conn.request("GET", "/moto-api/")
                conn.getresponse().read()
                conn.close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError("moto server did not start within 30 s")
                time.sleep(0.1)

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


@dataclass
class Request:
    method: str
    path: str
    range: str | None
    status: int          # 0 when the connection was dropped before an answer
    sent: int            # body bytes sent back

    @property
    def key(self) -> str:
        """The object key of a path-style request, without the bucket and query."""
        return self.path.split("?", 1)[0].lstrip("/").split("/", 1)[-1]


@dataclass
class Faults:
    """Which requests to spoil: ``mode`` '503', 'drop' (close before answering) or 'cut' (half a body),
    for every ``every``-th matching request (1 = all), at most ``limit`` times (None = unlimited).
    Only requests whose method is in ``methods`` and whose path contains ``match`` count.
    """

    mode: str = "503"
    every: int = 2
    limit: int | None = None
    methods: tuple = ("GET",)
    match: str = ""
    injected: int = 0
    _seen: itertools.count = field(default_factory=itertools.count, repr=False)

    def hit(self, method: str, path: str) -> bool:
        if method not in self.methods or self.match not in path:
            return False
        if self.limit is not None and self.injected >= self.limit:
            return False
        if next(self._seen) % self.every == 0:
            self.injected += 1
            return True
        return False


class S3Proxy:
    """A logging, fault-injecting HTTP/1.1 forwarder to ``upstream`` (host:port) on 127.0.0.1."""

    HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade",
                   "proxy-authorization", "proxy-authenticate"}

    def __init__(self, upstream: str):
        self.upstream_host, port = upstream.rsplit(":", 1)
        self.upstream_port = int(port)
        self.requests: list[Request] = []
        self.faults: Faults | None = None
        self.delay = 0.0                       # seconds to hold each GET answer (to kill readers mid-way)
        # moto reads a whole object for every ranged GET (~17 ms per 30 MB here), which no real S3 does:
        # with serve_ranges, the proxy fetches each object once and answers ranges itself (benchmarks)
        self.serve_ranges = False
        self._objects: dict[str, tuple] = {}
        self.active = 0                        # GETs being answered now, and the most at once since reset()
        self.max_active = 0
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):      # keep pytest output clean
                pass

            def setup(self):
                super().setup()
                # headers and body leave in separate writes: without NODELAY, Nagle holds the body
                # until the client's delayed ACK (40 ms a request on Linux), a latency no real S3 has
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                self.upstream = None

            def finish(self):
                super().finish()
                if self.upstream is not None:
                    self.upstream.close()

            def _upstream_exchange(self, body, headers):
                """(status, headers, payload) from moto, over one keep-alive connection per client
                connection (a fresh one when moto had closed it)."""
                for attempt in (0, 1):
                    if self.upstream is None:
                        self.upstream = http.client.HTTPConnection(proxy.upstream_host, proxy.upstream_port,
                                                                   timeout=60)
                    try:
                        self.upstream.request(self.command, self.path, body=body or None, headers=headers)
                        response = self.upstream.getresponse()
                        payload = response.read()
                    except (ConnectionError, http.client.HTTPException):
                        self.upstream.close()
                        self.upstream = None
                        if attempt:
                            raise
                        continue
                    if response.will_close:
                        self.upstream.close()
                        self.upstream = None
                    return response.status, response.getheaders(), payload

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    parts = []
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass
                            return b"".join(parts)
                        parts.append(self.rfile.read(size))
                        self.rfile.readline()
                length = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(length) if length else b""

            def _handle(self):
                with proxy._lock:
                    proxy.active += 1
                    proxy.max_active = max(proxy.max_active, proxy.active)
                try:
                    self._forward()
                finally:
                    with proxy._lock:
                        proxy.active -= 1

            def _forward(self):
                body = self._body()
                with proxy._lock:
                    fault = proxy.faults.mode if proxy.faults and proxy.faults.hit(self.command, self.path) else None
                rng = self.headers.get("Range")
                if fault == "drop":
                    proxy._record(self.command, self.path, rng, 0, 0)
                    self.close_connection = True
                    try:
                        self.connection.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
                    return
                if fault == "503":
                    payload = (b"<?xml version='1.0' encoding='UTF-8'?><Error><Code>ServiceUnavailable</Code>"
                               b"<Message>injected fault</Message></Error>")
                    # recorded before answering, so a client that saw the answer finds it in the log
                    proxy._record(self.command, self.path, rng, 503, len(payload))
                    self.send_response(503)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                headers = {k: v for k, v in self.headers.items() if k.lower() not in proxy.HOP_HEADERS}
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    headers["Content-Length"] = str(len(body))
                if self.command != "GET":
                    with proxy._lock:
                        proxy._objects.pop(self.path, None)
                if proxy.serve_ranges and self.command == "GET" and rng and not fault:
                    status, reply_headers, payload = self._from_object(headers, rng)
                else:
                    status, reply_headers, payload = self._upstream_exchange(body, headers)
                if proxy.delay and self.command == "GET":
                    time.sleep(proxy.delay)
                self.send_response(status)
                for name, value in reply_headers:
                    # a HEAD answer keeps the object's Content-Length; other answers get their body's
                    if name.lower() not in proxy.HOP_HEADERS and (name.lower() != "content-length"
                                                                   or self.command == "HEAD"):
                        self.send_header(name, value)
                if fault == "cut" and len(payload) > 1:
                    proxy._record(self.command, self.path, rng, status, len(payload) // 2)
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload[:len(payload) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                proxy._record(self.command, self.path, rng, status, 0 if self.command == "HEAD" else len(payload))
                if self.command != "HEAD":
                    self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(payload)

            def _from_object(self, headers, rng):
                """A ranged GET answered from the whole object, fetched from moto once with the
                client's own signed headers (S3 signs no Range header)."""
                with proxy._lock:
                    whole = proxy._objects.get(self.path)
                if whole is None:
                    plain = {k: v for k, v in headers.items() if k.lower() != "range"}
                    status, reply_headers, payload = self._upstream_exchange(b"", plain)
                    if status != 200:
                        return self._upstream_exchange(b"", headers)
                    whole = ([(k, v) for k, v in reply_headers if k.lower() in ("etag", "last-modified",
                                                                               "content-type")], payload)
                    with proxy._lock:
                        proxy._objects[self.path] = whole
                kept, payload = whole
                first, _, last = rng.removeprefix("bytes=").partition("-")
                if not first.isdigit() or int(first) >= len(payload):
                    return self._upstream_exchange(b"", headers)
                end = min(int(last) + 1 if last.isdigit() else len(payload), len(payload))
                content_range = ("Content-Range", f"bytes {first}-{end - 1}/{len(payload)}")
                return 206, [*kept, content_range], payload[int(first):end]

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, name="s3-proxy", daemon=True)
        self._thread.start()

    def _record(self, method, path, rng, status, sent) -> None:
        with self._lock:
            self.requests.append(Request(method, path, rng, status, sent))

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def reset(self) -> None:
        with self._lock:
            self.requests.clear()
            self.faults = None
            self.max_active = self.active

    def requests_for(self, key_part: str, method: str = "GET") -> list[Request]:
        with self._lock:
            return [r for r in self.requests if r.method == method and key_part in r.path]

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class S3:
    """One test's view of the endpoint: a fresh bucket, the proxy in front, and config helpers."""

    def __init__(self, server: MotoServer, proxy: S3Proxy):
        self.server = server
        self.proxy = proxy
        self.bucket = "rafs-" + uuid.uuid4().hex[:12]
        self.fs = self.filesystem()
        self.fs.call_s3("create_bucket", Bucket=self.bucket)

    def filesystem(self, endpoint: str | None = None):
        import s3fs
        return s3fs.S3FileSystem(key=ACCESS_KEY_ID, secret=ACCESS_KEY_SECRET, skip_instance_cache=True,
                                 endpoint_url=f"http://{endpoint or self.server.endpoint}",
                                 client_kwargs={"region_name": REGION},
                                 config_kwargs={"s3": {"addressing_style": "path"}})

    def backend_config(self, *, via_proxy: bool = True, **extra) -> dict:
        """nydusify's backend config (the guide's backend-config.s3.json) for this bucket."""
        config = {"endpoint": self.proxy.endpoint if via_proxy else self.server.endpoint, "scheme": "http",
                  "access_key_id": ACCESS_KEY_ID, "access_key_secret": ACCESS_KEY_SECRET,
                  "bucket_name": self.bucket, "meta_prefix": "nydus-demo/meta/",
                  "blob_prefix": "nydus-demo/blob/", "region": REGION}
        config.update(extra)
        return config

    def nydusd_config(self, work_dir, *, validate: bool = False, **backend) -> dict:
        """The guide's nydusd-config.s3.json (v1) with the blobcache in ``work_dir``."""
        return {"device": {"backend": {"type": "s3", "config": self.backend_config(**backend)},
                           "cache": {"type": "blobcache", "config": {"work_dir": str(work_dir)}}},
                "mode": "direct", "digest_validate": validate, "iostats_files": False, "enable_xattr": True}

    def put(self, key: str, data: bytes) -> None:
        self.fs.pipe_file(f"{self.bucket}/{key}", data)


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory):
    server = MotoServer(str(tmp_path_factory.mktemp("moto") / "moto.log"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def s3_proxy(moto_server):
    proxy = S3Proxy(moto_server.endpoint)
    yield proxy
    proxy.stop()


@pytest.fixture
def s3(moto_server, s3_proxy):
    """A fresh bucket on the moto server, the proxy's log and faults reset."""
    s3_proxy.reset()
    yield S3(moto_server, s3_proxy)
    s3_proxy.reset()
    s3_proxy.delay = 0.0
