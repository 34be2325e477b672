"""A small ranged HTTP/1.1 client on the standard library, for bootstraps and blobs over http(s) URLs
and nydusd's ``http-proxy`` backend.

Why not fsspec's HTTPFileSystem: it answers ``cat_file(url, start, end)`` with ``await r.read()``, so a
server that ignores ``Range`` has its whole body buffered, and aiohttp's timeouts bound each socket read,
not the request, so a server dripping a byte a second holds a read forever. This client keeps the three
promises rafs makes about a server it does not trust:

- **a deadline for each whole request** (``timeout`` seconds from connecting to the last body byte, as
  nydusd's reqwest ``timeout``): a watchdog thread (:mod:`rafs.io.deadline`) shuts the socket down
  when the deadline passes, which ends a blocked connect, TLS handshake, header or body read at once;
- **a ranged GET never reads more than the bytes asked for**: a ``200`` answer to a ``Range`` request (the
  server ignored it) is refused before its body is read, a ``206`` whose ``Content-Range`` or
  ``Content-Length`` does not match the request is refused, and a connection whose body was not read to
  its end is closed, never reused;
- **a whole-object GET (a bootstrap) is bounded**: a declared ``Content-Length`` past the limit is
  refused before reading, and a body without one is cut off at the limit.

Over a unix socket (``HttpClient(unix_socket=PATH)``, nydusd's ``http-proxy`` backend with an ``addr``
that is not a URL: storage/src/backend/http_proxy.rs, :mod:`rafs.io.unix_http`), every request goes to
that socket with the same deadlines and bounds, to URLs :func:`~rafs.io.unix_http.unix_url` makes. Such
a local proxy may answer a ranged GET with ``200`` and just the bytes asked for (nydusd reads whatever
body comes; nydus-snapshotter's content-store proxy sets ``Content-Range`` only after writing the body,
which Go then drops), so there a ``200`` is taken as the range, still refused past the size asked for;
redirects are not followed.

Redirects are followed (at most :data:`MAX_REDIRECTS`); credentials from the URL's userinfo go out as
``Authorization: Basic`` to the URL's own origin only, never to the origin a redirect leads to. Every
name this module puts in a message passes through :func:`rafs.io.redact.redact_url`.
"""

from __future__ import annotations

import base64
import http.client
import select
import socket
import ssl
import threading
import time
from dataclasses import dataclass, field
from urllib.parse import unquote, urljoin, urlsplit

from ..errors import BackendError, InvalidArgumentError
from .deadline import WATCHDOG, RequestTimeout, Watch
from .redact import redact_url
from .unix_http import UNIX_SCHEME, UnixConnection

# Defaults for plain http(s) URLs opened without a nydusd configuration: aiohttp's own (5 minutes for a
# whole request, 30 s to connect), so a URL that worked before keeps working. nydusd's backends
# default both to 5 s (rafs.io.backends.DEFAULT_TIMEOUT).
DEFAULT_REQUEST_TIMEOUT = 300.0
DEFAULT_CONNECT_TIMEOUT = 30.0
MAX_REDIRECTS = 5
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
# Answers to HEAD that mean "ask with GET" rather than "not there": method not allowed or not
# implemented, and 403 from stores whose presigned URLs are signed for GET only.
HEAD_REFUSED = frozenset({403, 405, 501})
# Idle keep-alive connections kept per origin.
MAX_IDLE_CONNECTIONS = 8
# Body reads are done in pieces of at most this much, so memory follows what arrived, not what a
# header declared.
READ_PIECE = 0x100000
# storage_options keys an http(s) URL understands (anything else is refused by name).
OPTION_KEYS = ("timeout", "connect_timeout", "headers", "skip_verify")


class HTTPStatusError(OSError):
    """An HTTP answer with an unexpected status; ``status`` tells retries whether it is transient and
    ``retry_after`` (seconds, from a ``Retry-After`` header, else None) how long the server asked to wait."""

    def __init__(self, status: int, reason: str, url: str, retry_after: float | None = None):
        self.status = status
        self.retry_after = retry_after
        super().__init__(f"HTTP {status} {reason} from {redact_url(url)}")


class HTTPAuthError(PermissionError):
    """401 or 403: ``status``, and ``challenge`` the ``WWW-Authenticate`` header (how to log in), if any."""

    def __init__(self, status: int, url: str, challenge: str | None):
        self.status = status
        self.challenge = challenge
        super().__init__(13, f"access refused (HTTP {status})", redact_url(url))


# Longest wait a Retry-After header may impose on one retry (a server asking for an hour is not obeyed).
MAX_RETRY_AFTER = 60.0


def retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header: delay-seconds or an HTTP date; None if absent or invalid."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return min(float(value), MAX_RETRY_AFTER)
    from email.utils import parsedate_to_datetime
    try:
        when = parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return min(max(when - time.time(), 0.0), MAX_RETRY_AFTER)


def _origin(parts) -> tuple[str, str, int]:
    if parts.scheme not in ("http", "https"):
        raise InvalidArgumentError(f"{redact_url(parts.geturl())}: only http and https URLs are supported here")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise InvalidArgumentError(f"{redact_url(parts.geturl())}: invalid port") from None
    if not parts.hostname:
        raise InvalidArgumentError(f"{redact_url(parts.geturl())}: the URL names no host")
    return parts.scheme, parts.hostname, port


@dataclass
class HttpClient:
    """Requests with a deadline over a small pool of keep-alive connections; thread safe.

    ``timeout`` bounds each whole request (seconds), ``connect_timeout`` the TCP connect and TLS
    handshake within it; ``headers`` go with every request; ``verify=False`` skips TLS certificate
    checks (nydusd's ``skip_verify``).
    """

    timeout: float = DEFAULT_REQUEST_TIMEOUT
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    headers: dict = field(default_factory=dict, repr=False)
    verify: bool = True
    ca_files: tuple = ()                 # extra CA certificates (PEM files) to trust, nydusd's ca_cert_files
    unix_socket: str | None = None       # every request goes to this unix socket (URLs from unix_url)
    _pool: dict = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _context: ssl.SSLContext | None = field(default=None, repr=False)

    @classmethod
    def from_options(cls, options: dict | None, *, where: str = "storage_options",
                     unix_socket: str | None = None) -> "HttpClient":
        """A client from ``storage_options`` for an http(s) URL: ``timeout``, ``connect_timeout``
        (seconds), ``headers`` (a dict) and ``skip_verify``; other keys are refused by name. With
        ``unix_socket`` it talks to the server on that socket."""
        options = dict(options or {})
        unknown = sorted(set(options) - set(OPTION_KEYS))
        if unknown:
            raise InvalidArgumentError(f"{where} {', '.join(map(repr, unknown))} not understood for http(s) URLs "
                                       f"(supported: {', '.join(OPTION_KEYS)})")
        kwargs = {}
        for key in ("timeout", "connect_timeout"):
            value = options.get(key)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 86400:
                raise InvalidArgumentError(f"{where} {key!r} must be a number of seconds in (0, 86400], "
                                           f"not {value!r}")
            kwargs[key] = float(value)
        headers = options.get("headers") or {}
        if not isinstance(headers, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                    for k, v in headers.items()):
            raise InvalidArgumentError(f"{where} 'headers' must map header names to strings")
        return cls(headers=dict(headers), verify=not options.get("skip_verify"), unix_socket=unix_socket, **kwargs)

    # connections

    def _connect(self, origin, deadline: float, watch: Watch) -> http.client.HTTPConnection:
        """A connection to ``origin``, the TLS handshake included; the watchdog follows its socket from
        the moment it exists, so a handshake dripped byte by byte ends at the deadline too."""
        scheme, host, port = origin
        limit = min(self.connect_timeout, max(deadline - time.monotonic(), 0.001))
        if scheme == "unix":
            conn = UnixConnection(host, limit)
            try:
                conn.connect()
                WATCHDOG.follow(watch, conn.sock)
            except BaseException:
                conn.close()
                raise
            return conn
        if scheme == "https":
            context = self._ssl_context()
            conn = http.client.HTTPSConnection(host, port, timeout=limit, context=context)
        else:
            conn = http.client.HTTPConnection(host, port, timeout=limit)
        try:
            http.client.HTTPConnection.connect(conn)         # TCP only (HTTPSConnection's also shakes hands)
            WATCHDOG.follow(watch, conn.sock)
            if scheme == "https":
                conn.sock = context.wrap_socket(conn.sock, server_hostname=host, do_handshake_on_connect=False)
                WATCHDOG.follow(watch, conn.sock)
                conn.sock.do_handshake()
        except BaseException:
            conn.close()
            raise
        return conn

    def _ssl_context(self) -> ssl.SSLContext:
        """One TLS context per client (loading the CA store is the slow part of making one)."""
        with self._lock:
            if self._context is None:
                context = ssl.create_default_context()
                for path in self.ca_files:
                    try:
                        context.load_verify_locations(cafile=path)
                    except (OSError, ssl.SSLError) as exc:
                        raise InvalidArgumentError(f"CA certificate file {path}: {exc}") from None
                if not self.verify:
                    context.check_hostname = False
                    context.verify_mode = ssl.CERT_NONE
                self._context = context
            return self._context

    def _take(self, origin):
        """An idle connection to ``origin``; one with bytes waiting (junk past a body's declared end) or
        closed by the server (readable at EOF) is dropped, never reused."""
        while True:
            with self._lock:
                idle = self._pool.get(origin)
                conn = idle.pop() if idle else None
            if conn is None or conn.sock is None:
                return conn
            try:
                readable = select.select([conn.sock], [], [], 0)[0]
            except (OSError, ValueError):
                readable = True
            if not readable:
                return conn
            conn.close()

    def _give_back(self, origin, conn) -> None:
        with self._lock:
            idle = self._pool.setdefault(origin, [])
            if len(idle) < MAX_IDLE_CONNECTIONS:
                idle.append(conn)
                return
        conn.close()

    def close(self) -> None:
        with self._lock:
            pools, self._pool = self._pool, {}
        for idle in pools.values():
            for conn in idle:
                conn.close()

    # requests

    def request(self, method: str, url: str, *, offset: int | None = None, size: int | None = None,
                limit: int | None = None, headers: dict | None = None, rewrite_redirect=None,
                body=None) -> tuple[http.client.HTTPResponse, bytes]:
        """``method url`` within one deadline, following redirects.

        With ``offset``/``size`` a ranged GET that returns exactly those bytes; otherwise the whole
        body, refused past ``limit`` bytes. Returns (response, body); HEAD returns no body. ``headers``
        go with this request (an ``Authorization`` among them only to ``url``'s own origin);
        ``rewrite_redirect(url)`` may change where a redirect leads before it is followed. The URL that
        answered is ``response.final_url``. ``body`` (bytes, or a seekable binary file sent with the
        ``Content-Length`` the caller puts in ``headers``) goes with a POST or PUT, whose answer may be
        any 2xx.
        """
        deadline = time.monotonic() + self.timeout
        headers = {**self.headers, **(headers or {})}
        if offset is not None:
            headers["Range"] = f"bytes={offset}-{offset + size - 1}"
        parts = urlsplit(url)
        auth_origin = self._origin(parts)
        if parts.username is not None:
            userinfo = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
            headers["Authorization"] = "Basic " + base64.b64encode(userinfo.encode()).decode("ascii")
        for _ in range(MAX_REDIRECTS + 1):
            origin = self._origin(parts)
            if origin != auth_origin:               # credentials stay with the origin they were given for
                headers = {k: v for k, v in headers.items() if k.lower() != "authorization"}
            target = parts.path or "/"
            if parts.query:
                target += "?" + parts.query
            response, answer = self._once(origin, method, target, headers, deadline, url, offset, size, limit,
                                          body)
            if response is None:                       # a redirect: ``answer`` is where to
                if self.unix_socket is not None:
                    raise BackendError(f"{redact_url(url)}: the server on the unix socket answered with a "
                                       "redirect, which is not followed")
                url = urljoin(url, answer)
                if rewrite_redirect is not None:
                    url = rewrite_redirect(url)
                parts = urlsplit(url)
                continue
            response.final_url = url
            return response, answer
        raise BackendError(f"{redact_url(url)}: more than {MAX_REDIRECTS} redirects")

    def _origin(self, parts) -> tuple[str, str, int]:
        """Where a URL's requests go: its (scheme, host, port), or this client's unix socket for the
        URLs :func:`unix_url` makes (and only those)."""
        if self.unix_socket is None:
            return _origin(parts)
        if parts.scheme != UNIX_SCHEME or unquote(parts.netloc) != self.unix_socket:
            raise InvalidArgumentError(f"{redact_url(parts.geturl())}: this client talks only to the unix socket "
                                       f"{self.unix_socket}")
        return ("unix", self.unix_socket, 0)

    def _once(self, origin, method, target, headers, deadline, url, offset, size, limit, body=None):
        for attempt in (0, 1):
            conn = self._take(origin) if attempt == 0 else None
            reused = conn is not None
            if conn is None and time.monotonic() >= deadline:
                raise RequestTimeout(f"{redact_url(url)}: no answer within {self.timeout:g} s")
            watch = WATCHDOG.watch(deadline, conn.sock if conn is not None else None)
            keep = fired = False
            try:
                if conn is None:
                    try:
                        conn = self._connect(origin, deadline, watch)
                    except (TimeoutError, socket.timeout):
                        raise RequestTimeout(f"{redact_url(url)}: could not connect within "
                                             f"{min(self.connect_timeout, self.timeout):g} s") from None
                conn.sock.settimeout(max(deadline - time.monotonic(), 0.001))
                try:
                    if attempt and hasattr(body, "seek"):
                        body.seek(0)             # sent again, whole, on a fresh connection
                    conn.request(method, target, body=body, headers=headers)
                    response = conn.getresponse()
                except (ConnectionError, http.client.BadStatusLine):
                    if reused and not watch.fired:
                        # a keep-alive connection the server had closed meanwhile: once more, fresh
                        continue
                    raise
                answer, keep = self._answer(response, method, url, offset, size, limit)
                fired = WATCHDOG.cancel(watch)
                if fired:                # the body may have been cut short by the shutdown
                    raise RequestTimeout(f"{redact_url(url)}: no complete answer within {self.timeout:g} s "
                                         "(the request timeout)")
                return answer
            except (OSError, http.client.HTTPException) as exc:
                if isinstance(exc, RequestTimeout):
                    raise
                # the socket's own timeout is the time left, so it may fire a moment before the watchdog
                if watch.fired or isinstance(exc, TimeoutError) or time.monotonic() >= deadline:
                    raise RequestTimeout(f"{redact_url(url)}: no complete answer within {self.timeout:g} s "
                                         "(the request timeout)") from None
                if isinstance(exc, http.client.HTTPException) and not isinstance(exc, OSError):
                    raise ConnectionError(f"{redact_url(url)}: {type(exc).__name__}: {exc}") from None
                raise
            except ValueError as exc:            # http.client.InvalidURL: control characters and such
                raise InvalidArgumentError(f"{redact_url(url)}: not a valid URL for a request ({exc})") from None
            finally:
                fired = WATCHDOG.cancel(watch) or fired
                if conn is not None and keep and not fired:
                    self._give_back(origin, conn)
                elif conn is not None:
                    conn.close()
        raise AssertionError("unreachable")  # pragma: no cover

    def _answer(self, response, method, url, offset, size, limit):
        """((response, body), whether the connection may be reused), or ((None, location), ...) for a
        redirect."""
        status = response.status
        name = redact_url(url)
        if status in REDIRECT_STATUSES and response.getheader("Location"):
            return (None, response.getheader("Location")), False
        if status == 404:
            raise FileNotFoundError(2, "not found (HTTP 404)", name)
        if method == "HEAD" and status in HEAD_REFUSED:
            raise _status_error(response, url)
        if status in (401, 403):
            raise HTTPAuthError(status, url, response.getheader("WWW-Authenticate"))
        length = _content_length(response, name)
        if method == "HEAD":
            if status != 200:
                raise _status_error(response, url)
            response.read()                      # no body; closes the response so the connection is free
            return (response, b""), response.isclosed() and not response.will_close
        if offset is not None and status == 200 and self.unix_socket is not None:
            # a local proxy's 200 carries the range (see the module's docstring), never more than asked for
            if length is not None and length > size:
                raise BackendError(f"{name}: answered {length} bytes for a range of {size} bytes")
            body = _read(response, size + 1, keep_partial=True)
            if len(body) > size:
                raise BackendError(f"{name}: answered more than the {size} bytes asked for (the server ignored "
                                   "the Range header)")
            return (response, body), response.isclosed() and not response.will_close and len(body) == size
        if offset is not None:
            if status == 200 and not (offset == 0 and length == size):
                raise BackendError(f"{name}: the server ignored the Range header (HTTP 200 with the whole object "
                                   f"instead of 206 with bytes {offset}-{offset + size - 1}); rafs reads blobs "
                                   "by ranges and refuses to download whole objects")
            if status == 416:
                raise BackendError(f"{name}: bytes {offset}-{offset + size - 1} lie past the end of the object "
                                   "(HTTP 416)")
            if status not in (200, 206):
                raise _status_error(response, url)
            if status == 206:
                _check_content_range(response, name, offset, size)
            if length is not None and length > size:
                raise BackendError(f"{name}: answered {length} bytes for a range of {size} bytes")
            # a ranged read keeps what arrived before a connection dropped: the caller sees the short
            # body and asks for the rest (a whole-object read fails instead, never returning a stub)
            body = _read(response, size, keep_partial=True)
            return (response, body), response.isclosed() and not response.will_close and len(body) == size
        if status != 200 and not (method in ("POST", "PUT", "PATCH") and 200 <= status < 300):
            raise _status_error(response, url)
        if limit is not None and length is not None and length > limit:
            raise BackendError(f"{name}: declares {length} bytes, more than the limit of {limit} bytes")
        want = length if length is not None else (limit + 1 if limit is not None else None)
        body = _read(response, want)
        if limit is not None and len(body) > limit:
            raise BackendError(f"{name}: the body runs past the limit of {limit} bytes (cut off there)")
        return (response, body), response.isclosed() and not response.will_close


def _content_length(response, name: str) -> int | None:
    value = response.getheader("Content-Length")
    if value is None:
        return None
    try:
        length = int(value)
    except ValueError:
        raise BackendError(f"{name}: invalid Content-Length {value[:40]!r}") from None
    if length < 0:
        raise BackendError(f"{name}: invalid Content-Length {value[:40]!r}")
    return length


def _check_content_range(response, name: str, offset: int, size: int) -> None:
    """A 206 must carry the range asked for (``bytes first-last/total``); a shorter one at the end of
    the object is left to the caller's short-read check."""
    value = response.getheader("Content-Range") or ""
    try:
        unit, _, spec = value.partition(" ")
        first, _, last = spec.partition("/")[0].partition("-")
        first, last = int(first), int(last)
    except ValueError:
        raise BackendError(f"{name}: a 206 answer without a valid Content-Range ({value[:60]!r})") from None
    if unit != "bytes" or first != offset or last < first or last - first + 1 > size:
        raise BackendError(f"{name}: asked for bytes {offset}-{offset + size - 1}, got Content-Range "
                           f"{value[:60]!r}")


def _read(response, want: int | None, *, keep_partial: bool = False) -> bytes:
    """At most ``want`` bytes of the body (all of it if None), in bounded pieces; with
    ``keep_partial`` a body cut short by the server returns what came (the connection is not reused)."""
    pieces = []
    got = 0
    while want is None or got < want:
        try:
            piece = response.read(READ_PIECE if want is None else min(READ_PIECE, want - got))
        except http.client.IncompleteRead as exc:
            if not keep_partial:
                raise
            pieces.append(exc.partial)
            response.close()
            break
        if not piece:
            break
        pieces.append(piece)
        got += len(piece)
    return b"".join(pieces)


def _status_error(response, url: str) -> HTTPStatusError:
    return HTTPStatusError(response.status, response.reason, url, retry_after(response.getheader("Retry-After")))
