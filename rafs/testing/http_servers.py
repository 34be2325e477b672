"""Hostile HTTP servers on loopback, for testing clients of untrusted storage (rafs's or another's).

:class:`HostileServer` is a real HTTP/1.1 server (``http.server`` in a thread) on 127.0.0.1 that serves
a dict of named objects; the first path segment chooses how it misbehaves:

``good``
    honours ``Range`` (206 with ``Content-Range``), answers HEAD;
``norange``
    ignores ``Range``: 200 declaring 1 GiB, the object then zeros until the client goes away;
``drip``
    correct headers, then the body one byte a second;
``driphead``
    the status line itself one byte a second;
``endless``
    the asked bytes (206 with a correct ``Content-Range``, or 200), no ``Content-Length``, then zeros
    without end;
``huge``
    declares a ``Content-Length`` of 1 TiB and pours zeros;
``overlong``
    a correct ``Content-Length``, then a forged second response and junk past it on the connection;
``nohead``
    405 to HEAD, ``good`` to GET;
``redirect``
    307 to ``{redirect_to}/good/<name>``.

With ``tls=True`` it speaks HTTPS with a self-signed certificate for ``127.0.0.1`` (made by
:func:`self_signed_certificate`), for clients' ``skip_verify`` and certificate errors.

It counts requests (``requests``: method, path, Range), the ``Authorization`` header of each
(``authorizations``), the client addresses (``clients``: one per connection) and the body bytes it
managed to send (``sent``): what a client let a hostile server push is measured on the server side,
not taken from the client.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

__all__ = ["HostileServer", "MODES", "SOCKET_SLACK", "self_signed_certificate"]

# Every behaviour, the first path segment of a URL (``redirect`` needs ``redirect_to`` set).
MODES = ("good", "norange", "drip", "driphead", "endless", "huge", "overlong", "nohead", "redirect")

PIECE = b"\0" * 0x10000
# What the loopback socket buffers of both ends can hold before a writer blocks: the most a client that
# stops reading lets a server push.
SOCKET_SLACK = 16 << 20


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request, client_address):
        """Clients that hang up mid-answer (as the clients under test should) are not news."""


class HostileServer:
    """``/<mode>/<name>`` serves ``files[name]`` the way ``mode`` says; counts requests and body bytes."""

    def __init__(self, files: dict[str, bytes], *, tls: bool = False):
        self.files = files
        self.stop = threading.Event()
        self.sent = 0
        self.requests: list[tuple[str, str, str | None]] = []
        self.authorizations: list[str | None] = []
        self.redirect_to = ""
        self.clients: set = set()
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True       # headers and body go out in two writes

            def log_message(self, *args):
                pass

            def do_HEAD(self):
                server.handle(self, head=True)

            def do_GET(self):
                server.handle(self, head=False)

        self.httpd = _QuietServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.scheme = "https" if tls else "http"
        if tls:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            with tempfile.TemporaryDirectory() as tmp:
                context.load_cert_chain(*self_signed_certificate(tmp))
            self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)
        self.thread.start()

    def url(self, mode: str, name: str = "") -> str:
        """The URL of ``name`` served in the hostile ``mode`` (what the path's first segment selects)."""
        return f"{self.scheme}://127.0.0.1:{self.port}/{mode}/{name}"

    def count(self, mode: str, name: str, method: str = "GET") -> int:
        """How many ``method`` requests came for ``name`` in ``mode``."""
        return sum(1 for m, p, _ in self.requests if m == method and p == f"/{mode}/{name}")

    def __enter__(self) -> "HostileServer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self):
        """Stop serving: end the hostile answers under way and close the socket."""
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
        """Answer the request of handler ``h`` in the mode its path names (``head``: a HEAD request)."""
        _, mode, name = h.path.split("/", 2)
        rng = h.headers.get("Range")
        with self._lock:
            self.requests.append((h.command, h.path, rng))
            self.authorizations.append(h.headers.get("Authorization"))
            self.clients.add(h.client_address)
        data = self.files.get(name)
        if mode == "redirect" or mode == "nohead" and head:
            h.send_response(307 if mode == "redirect" else 405)
            if mode == "redirect":
                h.send_header("Location", f"{self.redirect_to}/good/{name}")
            h.send_header("Content-Length", "0")
            h.end_headers()
            return
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


def self_signed_certificate(directory: str) -> tuple[str, str]:
    """(certificate path, key path) of a fresh self-signed certificate for 127.0.0.1, in ``directory``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = os.path.join(directory, "cert.pem"), os.path.join(directory, "key.pem")
    with open(cert_path, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(key_path, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    return cert_path, key_path
