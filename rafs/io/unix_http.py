"""HTTP over a unix socket: nydusd's ``http-proxy`` backend with an ``addr`` that is not a URL
(storage/src/backend/http_proxy.rs). :func:`unix_url` names a path on such a server; only an
:class:`rafs.io.http.HttpClient` made for that socket follows those URLs.
"""

from __future__ import annotations

import http.client
import socket
from urllib.parse import quote

# The scheme of URLs that name a unix socket (:func:`unix_url`); only a client made for that socket
# follows them, so no server can point a redirect at a local socket.
UNIX_SCHEME = "http+unix"


def unix_url(socket_path: str, path: str = "/") -> str:
    """The URL of ``path`` on the HTTP server at the unix socket ``socket_path`` (its name in messages too)."""
    return f"{UNIX_SCHEME}://{quote(socket_path, safe='')}{path}"


class UnixConnection(http.client.HTTPConnection):
    """An HTTP/1.1 connection over a unix stream socket (``Host: localhost``, as hyperlocal sends)."""

    def __init__(self, socket_path: str, timeout: float):
        super().__init__("localhost", timeout=timeout)
        self.socket_path = socket_path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.socket_path)
        except (TimeoutError, socket.timeout):
            sock.close()
            raise
        except OSError as exc:
            sock.close()
            # not FileNotFoundError: a missing socket is no missing blob
            raise ConnectionError(f"{self.socket_path}: cannot connect to the unix socket "
                                  f"({exc.strerror or exc})") from None
        self.sock = sock
