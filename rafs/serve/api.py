"""nydusd's HTTP API (v1, and v2's ``/daemon``) on a unix socket, for ``rafs mount --apisock PATH``.

Same paths, methods, status codes and JSON fields as nydusd (api/src/http_handler.rs routes,
api/openapi/nydus-api-v1.yaml, the serialised structs of utils/src/metrics.rs and service/src/daemon.rs),
so nydusctl-style clients and nydus-snapshotter's checks work against a rafs mount:

- ``GET /api/v1/daemon``: ``version`` (``package_ver``, ``git_commit``, ``build_time``, ``profile``,
  ``rustc``), ``id``, ``supervisor``, ``state`` (INIT, RUNNING, STOPPED) and ``backend_collection``
  (per pseudo-fs mountpoint: ``backend_type`` "Rafs", ``mountpoint``, ``mounted_time``, ``config`` with
  secrets replaced); ``GET /api/v2/daemon`` the same without ``backend_collection``;
- ``GET /api/v1/metrics`` (FsIoStats), ``/metrics/files`` (per-file counters: rafs keeps none, ``{}``;
  ``?latest=true`` the inodes read, as ``[[ino], [start, end]]`` ranges), ``/metrics/pattern``
  (AccessPattern records, in first-read order, each with its ``path`` besides), ``/metrics/backend``
  (BackendMetrics: ``read_count`` and ``read_amount_total`` count chunk data fetched, not yet the blob
  meta read when a blob is opened; latencies are not measured), ``/metrics/blobcache`` (BlobcacheMetrics, 404 without a blob cache) and
  ``/metrics/inflight`` (reads waiting on the backend, 204 when none);
- ``PUT /api/v1/daemon/exit``: 204, then the mount is unmounted and the process ends (SIGTERM to
  itself, as nydusd does).

Metrics take an optional ``?id=``: the pseudo-fs mountpoint ``/`` or the configuration's ``id``; any
other id is 404 with nydusd's ``NoCounter`` error. Errors are nydusd's ``{"code": "UNDEFINED",
"message": ...}``. The server is the standard library's, one thread per connection; it reads at most
:data:`MAX_BODY` bytes of a request body.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import signal
import socket
import socketserver
import stat
import threading
import time
from http.server import BaseHTTPRequestHandler
from urllib.parse import parse_qs, urlsplit

from .. import __version__
from ..fuse import InodeNumbers
from .trace import BLOCK_BUCKETS, FOP_READ, FOPS, pattern_records, paths_of

log = logging.getLogger(__name__)

MAX_BODY = 1 << 20
FUSE_READ_OPCODE = 15        # the kernel's FUSE_READ, nydusd's inflight "opcode"
PSEUDO_MOUNTPOINT = "/"      # where nydusd's pseudo fs holds a single --bootstrap mount, and its metrics id


class ApiError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


class DaemonState:
    """What the API reports about one mount: state, counters, trace, prefetch; JSON as nydusd's."""

    def __init__(self, image, observer, *, config=None, mountpoint: str = "", exit_signal=signal.SIGTERM):
        self.image = image
        self.observer = observer
        self.config = config
        self.mountpoint = mountpoint
        self.state = "INIT"
        self.prefetch = None                   # the mount's rafs.io.prefetch.Prefetch, if any
        self.prefetch_started: float | None = None
        self.prefetch_ended: float | None = None
        self.mounted_time = datetime.datetime.now(datetime.timezone.utc)
        self.numbers = InodeNumbers(image.root_ino)
        self._exit_signal = exit_signal
        self._paths: dict[int, str] = {}

    # -- helpers ---------------------------------------------------------------------------------

    @property
    def id(self) -> str | None:
        return getattr(self.config, "id", "") or None

    def check_id(self, query: dict, what: str) -> None:
        wanted = query.get("id")
        if wanted is not None and wanted not in (PSEUDO_MOUNTPOINT, self.id):
            raise ApiError(404, f"{what}(Metrics(Stats(NoCounter)))")

    def patterns(self) -> list[dict]:
        accesses = self.observer.accesses()
        missing = [ino for ino, _, _ in accesses if ino not in self._paths]
        if missing:
            self._paths.update(paths_of(self.image, missing))
        return pattern_records(accesses, self.numbers.to_fuse, self._paths.get)

    # -- endpoints -------------------------------------------------------------------------------

    def daemon_info(self, *, with_fs: bool) -> dict:
        info = {"version": {"package_ver": __version__, "git_commit": "", "build_time": "", "profile": "release",
                            "rustc": ""},
                "id": self.id, "supervisor": None, "state": self.state, "backend_collection": None}
        if with_fs:
            config = self.config.redacted() if self.config is not None and hasattr(self.config, "redacted") \
                else None
            stamp = self.mounted_time.strftime("%Y-%m-%d %H:%M:%S.%f +00:00:00")
            info["backend_collection"] = {PSEUDO_MOUNTPOINT: {
                "backend_type": "Rafs", "mountpoint": PSEUDO_MOUNTPOINT, "mounted_time": stamp, "config": config}}
        return info

    def fs_metrics(self) -> dict:
        totals = self.observer.totals()
        hits, errors = [0] * len(FOPS), [0] * len(FOPS)
        hits[FOP_READ], errors[FOP_READ] = totals["reads"], totals["errors"]
        return {"files_account_enabled": False, "access_pattern_enabled": self.observer.trace,
                "record_latest_read_files_enabled": self.observer.trace, "measure_latency": False,
                "id": PSEUDO_MOUNTPOINT, "nr_opens": 0, "data_read": totals["data_read"],
                "block_count_read": totals["buckets"], "fop_hits": hits, "fop_errors": errors,
                "fop_cumulative_latency_total": [0] * len(FOPS), "read_latency_dist": [0] * BLOCK_BUCKETS}

    def latest_read_files(self) -> list[list[int]]:
        """The inodes read so far as nydusd's ranges: [ino] alone, [start, end] for a run."""
        inos = sorted(self.numbers.to_fuse(ino) for ino, _, _ in self.observer.accesses())
        ranges: list[list[int]] = []
        for ino in inos:
            if ranges and ranges[-1][-1] + 1 == ino:
                ranges[-1] = [ranges[-1][0], ino]
            else:
                ranges.append([ino])
        return ranges

    def _fetch_stats(self) -> tuple[int, int, int]:
        """(backend requests, backend bytes, chunks served from the blob cache) over every blob."""
        requests = size = hits = 0
        for reader in list(getattr(self.image, "_chunk_readers", {}).values()):
            stats = getattr(reader, "stats", None)
            if stats is not None:
                requests += stats.requests
                size += stats.bytes
                hits += stats.cache_hits
        return requests, size, hits

    def backend_metrics(self) -> dict:
        requests, size, _ = self._fetch_stats()
        backend_type = getattr(self.config, "backend_type", "") or "localfs"
        return {"backend_type": backend_type, "read_count": requests, "read_errors": 0, "read_amount_total": size,
                "read_cumulative_latency_millis_total": 0,
                "read_cumulative_latency_millis_dist": [0] * BLOCK_BUCKETS,
                "read_count_block_size_dist": [0] * BLOCK_BUCKETS,
                "read_latency_sizes_dist": [[0] * BLOCK_BUCKETS for _ in range(BLOCK_BUCKETS)]}

    def blobcache_metrics(self) -> dict:
        if not getattr(self.config, "cached", False):
            raise ApiError(404, "BlobcacheMetrics(Metrics(Stats(NoCounter)))")
        work_dir = self.config.work_dir
        files = []
        for blob in self.image.blobs:
            for suffix in (".blob.data", ".blob.data.chunk_map", ".blob.meta"):
                if os.path.exists(os.path.join(work_dir, blob.blob_id + suffix)):
                    files.append(os.path.join(work_dir, blob.blob_id + suffix))
        _, _, hits = self._fetch_stats()
        prefetch = self.prefetch
        began = self.prefetch_started or 0.0
        ended = self.prefetch_ended or (time.time() if prefetch is not None and prefetch.done else 0.0)
        if prefetch is not None and prefetch.done and self.prefetch_ended is None:
            self.prefetch_ended = ended
        return {"underlying_files": files, "store_path": work_dir, "partial_hits": 0, "whole_hits": hits,
                "total": self.observer.totals()["reads"], "entries_count": hits,
                "prefetch_data_amount": getattr(prefetch, "fetched_bytes", 0),
                "prefetch_requests_count": prefetch.requests_done if prefetch is not None else 0,
                "prefetch_workers": prefetch.threads if prefetch is not None and not prefetch.done else 0,
                "prefetch_unmerged_chunks": prefetch.fetched if prefetch is not None else 0,
                "prefetch_cumulative_time_millis": int((ended - began) * 1000) if ended else 0,
                "prefetch_begin_time_secs": int(began), "prefetch_begin_time_millis": int(began * 1000) % 1000,
                "prefetch_end_time_secs": int(ended), "prefetch_end_time_millis": int(ended * 1000) % 1000,
                "buffered_backend_size": 0, "data_all_ready": False}

    def inflight(self) -> list[dict]:
        return [{"inode": self.numbers.to_fuse(ino), "opcode": FUSE_READ_OPCODE, "unique": token,
                 "timestamp_secs": since} for token, ino, since in self.observer.inflight()]

    def exit(self) -> None:
        """Unmount and end: the same SIGTERM nydusd sends itself, after the answer went out."""
        self.state = "STOPPED"
        threading.Timer(0.05, os.kill, (os.getpid(), self._exit_signal)).start()

    def handle(self, method: str, path: str, query: dict) -> tuple[int, object]:
        """(status, JSON body or None) of one request."""
        routes = {
            ("GET", "/api/v1/daemon"): lambda: self.daemon_info(with_fs=True),
            ("GET", "/api/v2/daemon"): lambda: self.daemon_info(with_fs=False),
            ("GET", "/api/v1/metrics"): lambda: (self.check_id(query, "GlobalMetrics"), self.fs_metrics())[1],
            ("GET", "/api/v1/metrics/files"): lambda: (
                self.check_id(query, "FsFilesMetrics"),
                self.latest_read_files() if query.get("latest", "").lower() == "true" else {})[1],
            ("GET", "/api/v1/metrics/pattern"): lambda: (self.check_id(query, "Pattern"), self.patterns())[1],
            ("GET", "/api/v1/metrics/backend"): lambda: (self.check_id(query, "BackendMetrics"),
                                                         self.backend_metrics())[1],
            ("GET", "/api/v1/metrics/blobcache"): lambda: (self.check_id(query, "BlobcacheMetrics"),
                                                           self.blobcache_metrics())[1],
            ("GET", "/api/v1/metrics/inflight"): lambda: self.inflight() or None,
            ("PUT", "/api/v1/daemon/exit"): lambda: self.exit(),
        }
        known = {p for _, p in routes}
        if path not in known:
            raise ApiError(404, "NoRoute")
        handler = routes.get((method, path))
        if handler is None:
            raise ApiError(400, "BadRequest")
        body = handler()
        return (204, None) if body is None else (200, body)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "Nydus API"
    sys_version = ""

    def log_message(self, format, *args):       # noqa: A002 - the base class's name
        log.debug("api: " + format, *args)

    def address_string(self) -> str:
        return "unix"

    def _serve(self) -> None:
        length = self.headers.get("Content-Length")
        try:
            size = int(length) if length else 0
        except ValueError:
            size = -1
        if size < 0 or size > MAX_BODY:
            self._send(400, {"code": "UNDEFINED", "message": "BadRequest"})
            self.close_connection = True
            return
        if size:
            self.rfile.read(size)
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        try:
            status, body = self.server.state.handle(self.command, url.path, query)
        except ApiError as exc:
            status, body = exc.status, {"code": "UNDEFINED", "message": exc.message}
        except Exception as exc:  # noqa: BLE001 - a failed answer must not end the server
            log.exception("api: %s %s failed", self.command, url.path)
            status, body = 500, {"code": "UNDEFINED", "message": f"{type(exc).__name__}: {exc}"}
        self._send(status, body)

    def _send(self, status: int, body) -> None:
        payload = b"" if body is None else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if payload:
            self.wfile.write(payload)

    do_GET = do_PUT = do_POST = do_DELETE = do_PATCH = _serve


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


class ApiServer:
    """The API of ``state`` on the unix socket ``path``, served by a background thread."""

    def __init__(self, path, state: DaemonState):
        self.path = os.path.abspath(os.fspath(path))
        try:
            mode = os.lstat(self.path).st_mode
        except FileNotFoundError:
            mode = None
        if mode is not None:
            if not stat.S_ISSOCK(mode):
                from ..errors import InvalidArgumentError
                raise InvalidArgumentError(f"--apisock {path}: exists and is not a socket")
            os.unlink(self.path)             # a socket left by an earlier daemon, as nydusd removes it
        self.server = _Server(self.path, _Handler, bind_and_activate=False)
        try:
            self.server.server_bind()
            os.chmod(self.path, 0o600)
            self.server.server_activate()
        except OSError as exc:
            self.server.server_close()
            from ..errors import InvalidArgumentError
            raise InvalidArgumentError(f"--apisock {path}: {exc.strerror or exc}") from None
        self.server.state = state
        self._thread = threading.Thread(target=self.server.serve_forever, name="rafs-api", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        try:
            os.unlink(self.path)
        except OSError:
            pass


def request(path, method: str, url: str, *, timeout: float = 10) -> tuple[int, object]:
    """One request to the API on unix socket ``path``: (status, decoded JSON body or None)."""
    import http.client

    class _Connection(http.client.HTTPConnection):
        def connect(self):
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.settimeout(timeout)
            self.sock.connect(os.fspath(path))

    connection = _Connection("localhost", timeout=timeout)
    try:
        connection.request(method, url)
        response = connection.getresponse()
        data = response.read()
    finally:
        connection.close()
    return response.status, (json.loads(data) if data else None)
