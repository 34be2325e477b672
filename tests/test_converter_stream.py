"""nydus-snapshotter's streaming unpack, as it runs: the nydus layer stays in containerd's content store
and a Go HTTP server on a unix socket serves the blob in it (pkg/converter/cs_proxy_unix.go); nydus-image
unpack reads it through ``--backend-type http-proxy --backend-config '{"addr":"<socket path>"}'``
(pkg/converter/tool/builder.go Unpack, convert_unix.go). rafs reads over that socket with the deadlines
and bounds of its own HTTP client (rafs/io/http.py).

The server here answers as that Go handler does: ``HEAD`` with the blob's Content-Length; a ranged
``GET`` with status 200 and just the bytes asked for (the handler sets Content-Range after writing the
body, so Go drops it), with a Content-Length when the body fits Go's 2048-byte buffer and chunked
otherwise; any path (the reference asks for ``/``).
"""

from __future__ import annotations

import http.server
import json
import os
import socketserver
import threading
import time

import pytest

from rafs.errors import BackendError
from rafs.io.http import HttpClient
from rafs.io.unix_http import unix_url
from test_cli_dropin import (LOWER, PYTHON_RAFS, UPPER, Fifo, layer_tar, pack, release, run, shim,
                             tar_members, unpack_entry)

GO_BUFFER = 2048          # net/http's bufferBeforeChunkingSize: a longer body goes out chunked


class ContentStoreProxy(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    """The converter's content-store proxy on a unix socket, serving ``blob``; ``mode`` makes it
    misbehave: "drip" (a byte at a time), "overrun" (more than asked for), "redirect"."""

    daemon_threads = True

    def __init__(self, path, blob: bytes, mode: str = "go"):
        self.blob, self.mode, self.requests = blob, mode, []
        super().__init__(str(path), _Handler)
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.shutdown()
        self.server_close()


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_HEAD(self):
        self.server.requests.append(("HEAD", self.path, self.headers.get("Range")))
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.server.blob)))
        self.send_header("Content-Type", "application/octet-stream")
        self.end_headers()

    def do_GET(self):
        server = self.server
        server.requests.append(("GET", self.path, self.headers.get("Range")))
        if server.mode == "redirect":
            self.send_response(302)
            self.send_header("Location", "http://127.0.0.1:9/elsewhere")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        first, _, last = self.headers["Range"].removeprefix("bytes=").partition("-")
        start = int(first)
        end = int(last) if last else len(server.blob) - 1
        body = server.blob[start:end + 1]
        if server.mode == "overrun":
            body = server.blob[start:]
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        if len(body) <= GO_BUFFER and server.mode != "overrun":
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self._write(body)
        else:
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for i in range(0, len(body), 4096):
                piece = body[i:i + 4096]
                self._write(b"%x\r\n" % len(piece) + piece + b"\r\n")
            self._write(b"0\r\n\r\n")

    def _write(self, data: bytes) -> None:
        if self.server.mode != "drip":
            self.wfile.write(data)
            return
        for i in range(len(data)):
            self.wfile.write(data[i:i + 1])
            self.wfile.flush()
            time.sleep(0.2)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def layers(tmp_path_factory):
    """The converter's tar-rafs blobs of LOWER and UPPER (v6), packed once."""
    work = tmp_path_factory.mktemp("stream")
    big = {"data": None, "data/random": os.urandom(3 << 20), "data/copy": b"copy\n" * 5000}
    return [(pack(PYTHON_RAFS, work / f"pack{i}", layer_tar(layer), "6", extra=extra), layer)
            for i, (layer, extra) in enumerate(((LOWER, ()), (UPPER, ()), (big, ("--chunk-size", "0x10000"))))]


def stream_unpack(builder, work, blob: bytes, socket_path, *, ok: bool = True):
    """Unpack in stream mode: only image.boot is taken out of the layer; the blob comes through the
    socket. The backend config is the one the converter derives from its backend-config.json."""
    work.mkdir()
    (work / "image.boot").write_bytes(unpack_entry(blob, "image.boot"))
    config_file = json.dumps({"version": 2, "backend": {"type": "http-proxy",
                                                        "http-proxy": {"addr": str(socket_path)}}})
    backend = json.loads(config_file)["backend"]
    tar_out = Fifo(work / "oci.tar")
    proc = run(builder + ["unpack", "--log-level", "warn", "--bootstrap", str(work / "image.boot"),
                          "--output", str(work / "oci.tar"), "--backend-type", backend["type"],
                          "--backend-config", json.dumps(backend[backend["type"]], separators=(",", ":"))],
               ok=False)
    release(tar_out)
    if ok:
        assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    return proc, tar_out.join()


@pytest.mark.parametrize("builder_kind", ["nydus-image", "python -m rafs"])
def test_stream_unpack_through_the_content_store_proxy(layers, tmp_path, builder_kind):
    builder = [shim(tmp_path / "bin", "nydus-image")] if builder_kind == "nydus-image" else PYTHON_RAFS
    for i, (blob, layer) in enumerate(layers):
        sock = tmp_path / f"nydus-cs-proxy-{i}.sock"
        server = ContentStoreProxy(sock, unpack_entry(blob, "image.blob"))
        try:
            _, data = stream_unpack(builder, tmp_path / f"unpack{i}", blob, sock)
        finally:
            server.close()
        members = tar_members(data)
        expected = tar_members(layer_tar(layer))
        assert {k: v for k, v in members.items() if k in expected} == expected
        gets = [r for r in server.requests if r[0] == "GET"]
        assert gets and all(path == "/" and rng.startswith("bytes=") for _, path, rng in gets), server.requests
    assert any(not rng.startswith("bytes=0-") for _, _, rng in gets), gets      # ranges past the start too


def test_stream_unpack_with_no_server_names_the_socket(layers, tmp_path):
    blob, _ = layers[0]
    sock = tmp_path / "gone.sock"
    proc, _ = stream_unpack(PYTHON_RAFS, tmp_path / "unpack", blob, sock, ok=False)
    err = proc.stderr.decode()
    assert proc.returncode != 0 and str(sock) in err and "Traceback" not in err, err


# -- the client over a unix socket, against misbehaving servers ----------------------------------------

BLOB = bytes(range(256)) * 64


def test_unix_client_reads_ranges_with_and_without_content_length(tmp_path):
    server = ContentStoreProxy(tmp_path / "s.sock", BLOB)
    client = HttpClient(unix_socket=str(tmp_path / "s.sock"), timeout=5)
    try:
        url = unix_url(str(tmp_path / "s.sock"))
        assert client.request("HEAD", url)[0].getheader("Content-Length") == str(len(BLOB))
        assert client.request("GET", url, offset=100, size=50)[1] == BLOB[100:150]          # Content-Length
        assert client.request("GET", url, offset=5000, size=9000)[1] == BLOB[5000:14000]    # chunked
    finally:
        client.close()
        server.close()


@pytest.mark.parametrize("mode, message", [("overrun", "more than the 100 bytes asked for"),
                                           ("redirect", "redirect, which is not followed")])
def test_unix_client_refuses_what_a_proxy_must_not_do(tmp_path, mode, message):
    server = ContentStoreProxy(tmp_path / "s.sock", BLOB, mode)
    client = HttpClient(unix_socket=str(tmp_path / "s.sock"), timeout=5)
    try:
        with pytest.raises(BackendError, match=message):
            client.request("GET", unix_url(str(tmp_path / "s.sock")), offset=10, size=100)
    finally:
        client.close()
        server.close()


def test_unix_client_keeps_the_whole_request_deadline(tmp_path):
    server = ContentStoreProxy(tmp_path / "s.sock", BLOB, "drip")
    client = HttpClient(unix_socket=str(tmp_path / "s.sock"), timeout=1, connect_timeout=1)
    started = time.monotonic()
    try:
        with pytest.raises(TimeoutError):
            client.request("GET", unix_url(str(tmp_path / "s.sock")), offset=0, size=100)
    finally:
        client.close()
        server.close()
    assert time.monotonic() - started < 3


def test_only_a_unix_client_follows_unix_urls(tmp_path):
    """No server can send a plain client to a local socket (a redirect to an http+unix URL)."""
    from rafs.errors import InvalidArgumentError
    with pytest.raises(InvalidArgumentError, match="only http and https"):
        HttpClient().request("GET", unix_url(str(tmp_path / "s.sock")), offset=0, size=1)
    with pytest.raises(InvalidArgumentError, match="talks only to the unix socket"):
        HttpClient(unix_socket=str(tmp_path / "s.sock")).request("GET", "http://127.0.0.1:9/", offset=0, size=1)


def test_backend_config_with_a_unix_socket_addr(tmp_path):
    from rafs.io.backends import make_backend
    from rafs.io.retry import RetryPolicy
    backend = make_backend("http-proxy", {"addr": str(tmp_path / "s.sock"), "path": "/ignored"},
                           section="backend.http-proxy", retry=RetryPolicy())
    assert backend.url_for("a" * 64) == unix_url(str(tmp_path / "s.sock"))
    assert "unix socket" in backend.describe()
    with pytest.raises(Exception, match="addr"):
        make_backend("http-proxy", {"addr": "/" + "x" * 200}, section="backend.http-proxy", retry=RetryPolicy())
    assert os.path.basename(__file__)
