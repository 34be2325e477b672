"""nydusd's HTTP API (v1, and v2's ``/daemon``) on a unix socket, for ``rafs mount --apisock PATH``.

Same paths, methods, status codes and JSON fields as nydusd (api/src/http_handler.rs routes,
api/openapi/nydus-api-v1.yaml, the serialised structs of utils/src/metrics.rs and service/src/daemon.rs),
so nydusctl-style clients and nydus-snapshotter's checks work against a rafs mount:

- ``GET /api/v1/daemon``: ``version`` (``package_ver``, ``git_commit``, ``build_time``, ``profile``,
  ``rustc``), ``id``, ``supervisor``, ``state`` (INIT, RUNNING, STOPPED) and ``backend_collection``
  (per pseudo-fs mountpoint: ``backend_type`` "Rafs", ``mountpoint``, ``mounted_time``, ``config`` with
  secrets replaced); ``GET /api/v2/daemon`` the same without ``backend_collection``;
- ``GET /api/v1/metrics`` (FsIoStats; read latencies in ``fop_cumulative_latency_total`` and
  ``read_latency_dist``, from the request's arrival to its answer), ``/metrics/files`` (per-file
  counters with ``--iostats-files`` or the config's ``iostats_files``, else ``{}``: see
  :mod:`rafs.serve.metrics`; ``?latest=true`` the inodes read, as ``[[ino], [start, end]]`` ranges),
  ``/metrics/pattern`` (AccessPattern records, in first-read order, each with its ``path`` besides),
  ``/metrics/backend`` (BackendMetrics with nydusd's latency distributions, :mod:`rafs.io.latency`:
  every request for chunk data counts, not yet the blob meta read when a blob is opened), ``/metrics/blobcache``
  (BlobcacheMetrics, 404 without a blob cache) and ``/metrics/inflight`` (reads waiting on the
  backend, 204 when none);
- ``PUT /api/v1/daemon/exit``: 204, then the mount is unmounted and the process ends (SIGTERM to
  itself, as nydusd does);
- ``POST /api/v1/mount?mountpoint=DIR`` with nydusd's MountCmd body (``source`` bootstrap, ``fs_type``
  "rafs", ``config`` as JSON text, ``prefetch_files``) serves one more image in this daemon, and
  ``DELETE /api/v1/mount?mountpoint=DIR`` unmounts it. nydusd puts such mounts inside its own FUSE
  mount (a pseudo filesystem); rafs gives each its own FUSE mount at DIR, a directory on the host.

Metrics take ``?id=``: ``/`` for the ``--bootstrap`` mount, DIR for one mounted through the API, or a
mount's configuration ``id``; without it the only mount (with several, nydusd's ``NoCounter`` 404, as
for an unknown id). Errors are nydusd's ``{"code": "UNDEFINED", "message": ...}``. The server is the
standard library's, one thread per connection; it reads at most :data:`MAX_BODY` bytes of a request body.
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
from ..io.latency import sum_fields
from .metrics import file_records
from .trace import FOP_READ, FOPS, paths_of, pattern_records

log = logging.getLogger(__name__)

MAX_BODY = 1 << 20
FUSE_READ_OPCODE = 15        # the kernel's FUSE_READ, nydusd's inflight "opcode"
PSEUDO_MOUNTPOINT = "/"      # where nydusd's pseudo fs holds a single --bootstrap mount, and its metrics id


class ApiError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


class MountState:
    """What the API reports about one mounted image: counters, trace, prefetch; JSON as nydusd's.

    ``key`` is the mount's metrics id: ``/`` for the ``--bootstrap`` mount (nydusd's pseudo-fs root),
    the mountpoint for one mounted through ``POST /api/v1/mount``. ``stop`` (set by whoever mounted it
    through the API) unmounts it. ``to_fuse`` maps an image inode to the number the mount shows (the
    FUSE adapter's ``InodeNumbers.to_fuse``; the same number when not given).
    """

    def __init__(self, image, observer, *, config=None, key: str = PSEUDO_MOUNTPOINT, to_fuse=None):
        self.image = image
        self.observer = observer
        self.config = config
        self.key = key
        self.prefetch = None                   # the mount's rafs.io.prefetch.Prefetch, if any
        self.prefetch_started: float | None = None
        self.prefetch_ended: float | None = None
        self.mounted_time = datetime.datetime.now(datetime.timezone.utc)
        self.to_fuse = to_fuse or (lambda ino: ino)
        self.stop = None
        self._paths: dict[int, str] = {}

    @property
    def id(self) -> str | None:
        return getattr(self.config, "id", "") or None

    def patterns(self) -> list[dict]:
        accesses = self.observer.accesses()
        missing = [ino for ino, _, _ in accesses if ino not in self._paths]
        if missing:
            self._paths.update(paths_of(self.image, missing))
        return pattern_records(accesses, self.to_fuse, self._paths.get)

    def descriptor(self) -> dict:
        """nydusd's FsBackendDescriptor of this mount."""
        config = self.config.redacted() if hasattr(self.config, "redacted") else None
        stamp = self.mounted_time.strftime("%Y-%m-%d %H:%M:%S.%f +00:00:00")
        return {"backend_type": "Rafs", "mountpoint": self.key, "mounted_time": stamp, "config": config}

    def fs_metrics(self) -> dict:
        totals = self.observer.totals()
        hits, errors, latency = [0] * len(FOPS), [0] * len(FOPS), [0] * len(FOPS)
        hits[FOP_READ], errors[FOP_READ] = totals["reads"], totals["errors"]
        latency[FOP_READ] = totals["latency_us"]
        return {"files_account_enabled": self.observer.files, "access_pattern_enabled": self.observer.trace,
                "record_latest_read_files_enabled": self.observer.trace, "measure_latency": True,
                "id": self.key, "nr_opens": 0, "data_read": totals["data_read"],
                "block_count_read": totals["buckets"], "fop_hits": hits, "fop_errors": errors,
                "fop_cumulative_latency_total": latency, "read_latency_dist": totals["latency_dist"]}

    def files_metrics(self) -> dict:
        """``/api/v1/metrics/files``: per-file counters by inode (nydusd's ``InodeIoStats``), ``{}`` unless
        the mount keeps them (``--iostats-files``)."""
        return file_records(self.observer.file_counters(), self.to_fuse) if self.observer.files else {}

    def latest_read_files(self) -> list[list[int]]:
        """The inodes read so far as nydusd's ranges: [ino] alone, [start, end] for a run."""
        inos = sorted(self.to_fuse(ino) for ino, _, _ in self.observer.accesses())
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
        for reader in self.image.store.opened():
            stats = getattr(reader, "stats", None)
            if stats is not None:
                requests += stats.requests
                size += stats.bytes
                hits += stats.cache_hits
        return requests, size, hits

    def backend_metrics(self) -> dict:
        backend_type = getattr(self.config, "backend_type", "") or "localfs"
        latencies = []
        for reader in self.image.store.opened():
            stats = getattr(reader, "stats", None)
            if stats is not None:
                latencies.append(stats.latency.fields())
        return {"backend_type": backend_type, **sum_fields(latencies)}

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
        if prefetch is not None and prefetch.done and self.prefetch_ended is None:
            self.prefetch_ended = time.time()
        ended = self.prefetch_ended or 0.0
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
        return [{"inode": self.to_fuse(ino), "opcode": FUSE_READ_OPCODE, "unique": token,
                 "timestamp_secs": since} for token, ino, since in self.observer.inflight()]


class Daemon:
    """The daemon the API describes: its state and its mounts (:class:`MountState` by metrics id).

    ``mounter(mountpoint, source, config, prefetch_files)`` serves one more image for ``POST
    /api/v1/mount`` and returns its MountState (with ``stop``); without it that endpoint answers 501.
    """

    def __init__(self, *, mounter=None, exit_signal=signal.SIGTERM):
        self.state = "INIT"
        self.mounts: dict[str, MountState] = {}
        self.mounter = mounter
        self._exit_signal = exit_signal
        self._lock = threading.Lock()

    def add(self, mount: MountState) -> MountState:
        with self._lock:
            self.mounts[mount.key] = mount
        return mount

    def select(self, query: dict, what: str) -> MountState:
        """The mount ``?id=`` names (its metrics id or its configuration's ``id``); without an id the
        only one, as nydusd: with several, an id is needed."""
        wanted = query.get("id")
        with self._lock:
            mounts = list(self.mounts.values())
        if wanted is None and len(mounts) == 1:
            return mounts[0]
        for mount in mounts:
            if wanted is not None and wanted in (mount.key, mount.id):
                return mount
        raise ApiError(404, f"{what}(Metrics(Stats(NoCounter)))")

    def daemon_info(self, *, with_fs: bool) -> dict:
        with self._lock:
            mounts = list(self.mounts.values())
        first = mounts[0] if mounts else None
        info = {"version": {"package_ver": __version__, "git_commit": "", "build_time": "", "profile": "release",
                            "rustc": ""},
                "id": first.id if first is not None else None, "supervisor": None, "state": self.state,
                "backend_collection": None}
        if with_fs:
            info["backend_collection"] = {mount.key: mount.descriptor() for mount in mounts}
        return info

    def mount(self, query: dict, body) -> None:
        """``POST /api/v1/mount?mountpoint=DIR``: serve ``source`` (a bootstrap) at DIR with ``config``."""
        mountpoint = query.get("mountpoint")
        if not mountpoint:
            raise ApiError(400, "QueryString(\"'mountpoint' should be specified in query string\")")
        if not isinstance(body, dict) or not isinstance(body.get("source"), str) or \
                not isinstance(body.get("config", ""), str) or not isinstance(body.get("fs_type", "rafs"), str):
            raise ApiError(400, "ParseBody(expected {\"source\": ..., \"fs_type\": \"rafs\", \"config\": ...})")
        if body.get("fs_type", "rafs") != "rafs":
            raise ApiError(501, f"MountFilesystem(Unsupported(fs_type {body['fs_type']!r}: rafs serves rafs only))")
        prefetch_files = body.get("prefetch_files")
        if prefetch_files is not None and not (isinstance(prefetch_files, list) and
                                               all(isinstance(p, str) for p in prefetch_files)):
            raise ApiError(400, "ParseBody(prefetch_files must be a list of paths)")
        if self.mounter is None:
            raise ApiError(501, "MountFilesystem(Unsupported)")
        key = os.path.abspath(mountpoint)
        with self._lock:
            if key in self.mounts or mountpoint in self.mounts:
                raise ApiError(500, f"MountFilesystem(AlreadyExists({mountpoint}))")
        from ..errors import RafsError
        try:
            mount = self.mounter(key, body["source"], body.get("config") or None, prefetch_files)
        except RafsError as exc:
            raise ApiError(500, f"MountFilesystem({exc})") from None
        self.add(mount)

    def umount(self, query: dict) -> None:
        """``DELETE /api/v1/mount?mountpoint=DIR``: unmount what ``POST`` mounted there."""
        mountpoint = query.get("mountpoint")
        if not mountpoint:
            raise ApiError(400, "QueryString(\"'mountpoint' should be specified in query string\")")
        key = os.path.abspath(mountpoint)
        with self._lock:
            mount = self.mounts.get(key)
            if mount is None or mount.stop is None:
                raise ApiError(500, f"MountFilesystem(NotFound({mountpoint}))")
            del self.mounts[key]
        mount.stop()

    def stop_all(self) -> None:
        """Unmount every image mounted through the API (the daemon is ending)."""
        with self._lock:
            extra = [m for m in self.mounts.values() if m.stop is not None]
            for mount in extra:
                del self.mounts[mount.key]
        for mount in extra:
            try:
                mount.stop()
            except Exception as exc:  # noqa: BLE001 - the others still need unmounting
                log.warning("unmounting %s: %s", mount.key, exc)

    def exit(self) -> None:
        """Unmount and end: the same SIGTERM nydusd sends itself, after the answer went out."""
        self.state = "STOPPED"
        threading.Timer(0.05, os.kill, (os.getpid(), self._exit_signal)).start()

    def handle(self, method: str, path: str, query: dict, body=None) -> tuple[int, object]:
        """(status, JSON body or None) of one request."""
        def metric(what, answer):
            return lambda: answer(self.select(query, what))

        routes = {
            ("GET", "/api/v1/daemon"): lambda: self.daemon_info(with_fs=True),
            ("GET", "/api/v2/daemon"): lambda: self.daemon_info(with_fs=False),
            ("GET", "/api/v1/metrics"): metric("GlobalMetrics", MountState.fs_metrics),
            ("GET", "/api/v1/metrics/files"): metric("FsFilesMetrics", lambda m: m.latest_read_files()
                                                     if query.get("latest", "").lower() == "true"
                                                     else m.files_metrics()),
            ("GET", "/api/v1/metrics/pattern"): metric("Pattern", MountState.patterns),
            ("GET", "/api/v1/metrics/backend"): metric("BackendMetrics", MountState.backend_metrics),
            ("GET", "/api/v1/metrics/blobcache"): metric("BlobcacheMetrics", MountState.blobcache_metrics),
            ("GET", "/api/v1/metrics/inflight"): lambda: [entry for m in list(self.mounts.values())
                                                          for entry in m.inflight()] or None,
            ("PUT", "/api/v1/daemon/exit"): self.exit,
            ("POST", "/api/v1/mount"): lambda: self.mount(query, body),
            ("DELETE", "/api/v1/mount"): lambda: self.umount(query),
        }
        known = {p for _, p in routes}
        if path not in known:
            raise ApiError(404, "NoRoute")
        handler = routes.get((method, path))
        if handler is None:
            raise ApiError(400, "BadRequest")
        answer = handler()
        return (204, None) if answer is None else (200, answer)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 30                 # an idle connection is closed, so its thread ends
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
        raw = self.rfile.read(size) if size else b""
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        try:
            try:
                request_body = json.loads(raw) if raw else None
            except ValueError as exc:
                raise ApiError(400, f"ParseBody({exc})") from None
            status, body = self.server.daemon.handle(self.command, url.path, query, request_body)
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
    """The API of ``daemon`` on the unix socket ``path``, served by a background thread."""

    def __init__(self, path, daemon: Daemon):
        self.path = os.path.abspath(os.fspath(path))
        try:
            mode = os.lstat(self.path).st_mode
        except FileNotFoundError:
            mode = None
        if mode is not None:
            if not stat.S_ISSOCK(mode):
                from ..errors import ParameterError
                raise ParameterError("{path} {value}: exists and is not a socket", value=path)
            os.unlink(self.path)             # a socket left by an earlier daemon, as nydusd removes it
        self.server = _Server(self.path, _Handler, bind_and_activate=False)
        try:
            self.server.server_bind()
            os.chmod(self.path, 0o600)
            self.server.server_activate()
        except OSError as exc:
            self.server.server_close()
            from ..errors import ParameterError
            raise ParameterError("{path} {value}: {problem}", value=path, problem=exc.strerror or exc) from None
        self.server.daemon = daemon
        self._thread = threading.Thread(target=self.server.serve_forever, name="rafs-api", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        try:
            os.unlink(self.path)
        except OSError:
            pass


def request(path, method: str, url: str, body=None, *, timeout: float = 30) -> tuple[int, object]:
    """One request to the API on unix socket ``path``: (status, decoded JSON body or None)."""
    import http.client

    class _Connection(http.client.HTTPConnection):
        def connect(self):
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.settimeout(timeout)
            self.sock.connect(os.fspath(path))

    connection = _Connection("localhost", timeout=timeout)
    try:
        payload = None if body is None else json.dumps(body).encode()
        connection.request(method, url, body=payload,
                           headers={"Content-Type": "application/json"} if payload is not None else {})
        response = connection.getresponse()
        data = response.read()
    finally:
        connection.close()
    return response.status, (json.loads(data) if data else None)
