"""Storage backends of a nydusd configuration, mapped onto fsspec filesystems.

Each backend finds a blob by id and hands out RangeReaders over it. The keys are nydusd's
(api/src/config.rs ``LocalFsConfig``, ``S3Config``, ``HttpProxyConfig``), and the object key of a blob
is built as the reference builds it (storage/src/backend/{localfs,s3,http_proxy}.rs). Credentials stay
inside the fsspec filesystem: ``describe()``, ``repr()`` and every error name the bucket, endpoint and
key, never a secret: URLs pass through :func:`rafs.io.redact.redact_url`, and the S3 access key id is
treated as the secret it half is.
"""

from __future__ import annotations

import os

from ..blob.ids import blob_key, blob_path, blob_url
from ..errors import BlobNotFoundError, InvalidArgumentError, UnsupportedError
from .config_keys import check_backend_values, refuse_unsupported_connection_keys
from .redact import redact_url
from .registry import RegistryBackend
from .retry import RetryPolicy
from .source import FsspecRangeReader, HttpRangeReader, LocalRangeReader

# Keys that hold secrets in any backend section; redacted wherever a configuration is shown.
SECRET_KEYS = frozenset({"access_key_id", "access_key_secret", "auth", "registry_token", "encryption_key",
                         "key", "secret", "token", "password", "session_token"})
S3_DEFAULT_ENDPOINT = "s3.amazonaws.com"       # S3_DEFAULT_ENDPOINT, storage/src/backend/s3.rs
# nydusd's default_http_timeout, seconds. For http-proxy, ``timeout`` bounds each whole request, from
# connecting to the last body byte (nydusd hands it to reqwest's ClientBuilder::timeout, which means just
# that) and ``connect_timeout`` the connect within it; s3 hands both to botocore, which bounds each
# socket read.
DEFAULT_TIMEOUT = 5
# The least whole-request deadline of an S3 blob read, seconds (see S3Backend.client).
S3_MIN_REQUEST_TIMEOUT = 30


class LocalFsBackend:
    """``localfs``: one ``blob_file`` for every blob, or ``dir/<blob id>`` (then each of ``alt_dirs``)."""

    type = "localfs"

    def __init__(self, config: dict, *, section: str = "backend.localfs", retry: RetryPolicy | None = None):
        check_backend_values(section, config)
        self.blob_file = config.get("blob_file") or ""
        self.dir = config.get("dir") or ""
        self.alt_dirs = list(config.get("alt_dirs") or [])
        if not self.blob_file and not self.dir:
            raise InvalidArgumentError(f"{section}: needs 'dir' or 'blob_file'")
        self.retry = retry

    def path_for(self, blob_id: str) -> str | None:
        if self.blob_file:
            return self.blob_file
        for directory in [self.dir, *self.alt_dirs]:
            if directory:
                path = blob_path(directory, blob_id)
                if os.path.isfile(path):
                    return path
        return None

    def open(self, blob_id: str) -> LocalRangeReader:
        path = self.path_for(blob_id)
        if path is None or not os.path.isfile(path):
            raise BlobNotFoundError(blob_id, self.describe())
        return LocalRangeReader(path)

    def describe(self) -> str:
        if self.blob_file:
            return f"localfs blob_file {self.blob_file}"
        return "localfs dir " + ", ".join(d for d in [self.dir, *self.alt_dirs] if d)

    storage_options: dict = {}

    def bootstrap_reader(self, url: str):
        return None


class _RemoteBackend:
    """A backend reached through an fsspec filesystem, made on first use."""

    storage_options: dict
    _fs = None

    @property
    def fs(self):
        if self._fs is None:
            self._fs = self._make_fs()
        return self._fs

    def _make_fs(self):
        raise NotImplementedError


class S3Backend(_RemoteBackend):
    """``s3``: ``{scheme}://{endpoint}/{bucket_name}/{object_prefix}{blob id}`` (path-style, as nydusd).

    nydusify's backend configuration names the blob prefix ``blob_prefix`` and the guide copies it into
    the nydusd configuration: without ``object_prefix``, ``blob_prefix`` is where blobs are looked up.
    """

    type = "s3"

    def __init__(self, config: dict, *, section: str = "backend.s3", retry: RetryPolicy | None = None,
                 storage_options: dict | None = None):
        refuse_unsupported_connection_keys(section, config)
        self.bucket = config.get("bucket_name") or ""
        if not self.bucket:
            raise InvalidArgumentError(f"{section}.bucket_name is required")
        self.scheme = config.get("scheme") or "https"
        if self.scheme not in ("http", "https"):
            raise InvalidArgumentError(f"{section}.scheme must be 'http' or 'https', not {self.scheme!r}")
        self.endpoint = config.get("endpoint") or S3_DEFAULT_ENDPOINT
        if "://" in self.endpoint:                   # tolerate a full URL in 'endpoint'
            self.scheme, self.endpoint = self.endpoint.split("://", 1)
        # userinfo in the endpoint means nothing to S3 (requests are signed with the access keys) and
        # botocore would send it on as part of the Host: it is dropped, never shown
        authority, slash, rest = self.endpoint.partition("/")
        self.endpoint = authority.rpartition("@")[2] + slash + rest
        self.region = config.get("region") or ""
        if "object_prefix" in config:
            self.object_prefix = config.get("object_prefix") or ""
        else:
            self.object_prefix = config.get("blob_prefix") or ""
        self.meta_prefix = config.get("meta_prefix") or ""
        self.retry = retry or RetryPolicy()
        key = config.get("access_key_id") or ""
        secret = config.get("access_key_secret") or ""
        self.retry.secrets = tuple(s for s in (key, secret) if s)
        timeout = config.get("timeout") or DEFAULT_TIMEOUT
        connect_timeout = config.get("connect_timeout") or DEFAULT_TIMEOUT
        options = {
            "endpoint_url": f"{self.scheme}://{self.endpoint}",
            "skip_instance_cache": True,
            "config_kwargs": {"s3": {"addressing_style": "path"}, "retries": {"total_max_attempts": 1},
                              "connect_timeout": connect_timeout, "read_timeout": timeout},
            "client_kwargs": {},
        }
        if self.region:
            options["client_kwargs"]["region_name"] = self.region
        if config.get("skip_verify"):
            options["client_kwargs"]["verify"] = False
        if key or secret:
            options.update(key=key, secret=secret)
        else:
            options["anon"] = True
        # with storage options of the caller's, blobs are read through s3fs, which honours them
        self._plain = not storage_options
        options.update(storage_options or {})
        self.storage_options = options
        self._keys = (key, secret)
        self._timeouts = (timeout, connect_timeout, bool(config.get("skip_verify")))
        self._client = None

    @property
    def client(self):
        """The signing client of blob reads (:mod:`rafs.io.s3sign`), made on first use. botocore's
        ``timeout`` bounds each socket read; here it bounds the whole request, so it is given at least
        ``S3_MIN_REQUEST_TIMEOUT`` seconds (a large prefetch range takes more than 5)."""
        if self._client is None:
            from .http import HttpClient
            from .s3sign import SignedClient
            timeout, connect_timeout, skip_verify = self._timeouts
            self._client = SignedClient(HttpClient(timeout=max(timeout, S3_MIN_REQUEST_TIMEOUT),
                                                   connect_timeout=connect_timeout, verify=not skip_verify),
                                        *self._keys, self.region)
        return self._client

    def _make_fs(self):
        import s3fs
        fs = s3fs.S3FileSystem(**self.storage_options)
        fs.retries = 1                            # one attempt per call: retries are ours (retry_limit)
        return fs

    def key_for(self, blob_id: str) -> str:
        return blob_key(self.object_prefix, blob_id)

    def url(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    def open(self, blob_id: str) -> FsspecRangeReader | HttpRangeReader:
        key = self.key_for(blob_id)
        if self._plain:
            from .s3sign import object_url
            url = object_url(self.scheme, self.endpoint, self.bucket, key)
            return HttpRangeReader(url, client=self.client, name=f"blob {blob_id} ({self.url(key)})",
                                   retry=self.retry)
        return FsspecRangeReader(self.fs, f"{self.bucket}/{key}", name=f"blob {blob_id} ({self.url(key)})",
                                 retry=self.retry)

    def bootstrap_reader(self, url: str):
        """A reader (with this backend's endpoint and credentials) for an ``s3://`` bootstrap, else None."""
        if url.startswith(("s3://", "s3a://")):
            return FsspecRangeReader(self.fs, self.fs._strip_protocol(url), name=url, retry=self.retry)
        return None

    def describe(self) -> str:
        return redact_url(f"s3 {self.scheme}://{self.endpoint}/{self.bucket}/{self.object_prefix}")

    def __repr__(self) -> str:
        return f"<S3Backend {self.describe()}>"


class _HeadSizedReader(HttpRangeReader):
    """An http-proxy blob whose ``size`` comes from a HEAD request on first use (nydusd's
    ``blob_size()``), for readers of a blob's tail (its chunk table, ToC); opening stays free of I/O."""

    _size: int | None = None
    _asked = False

    @property
    def size(self) -> int | None:
        if self._size is None and not self._asked:
            self._asked = True
            self._size = self.stat_size()
        return self._size

    @size.setter
    def size(self, value: int | None) -> None:
        self._size = value

    def __repr__(self) -> str:
        return f"HttpRangeReader({self.name!r}, size={self._size})"          # no request for a repr


# Longest unix socket path the kernel takes (sun_path is 108 bytes with its terminating NUL).
MAX_UNIX_SOCKET_PATH = 107


class HttpProxyBackend:
    """``http-proxy``: ``GET {addr}{path}/{blob id}`` with ``Range`` (storage/src/backend/http_proxy.rs).

    An ``addr`` that is not an http(s) URL is the path of a unix socket, as in nydusd: then every blob is
    ``GET /`` on that socket (the reference ignores ``path`` and the blob id there; nydus-snapshotter's
    streaming unpack serves one blob per socket that way).
    """

    type = "http-proxy"

    def __init__(self, config: dict, *, section: str = "backend.http-proxy", retry: RetryPolicy | None = None,
                 storage_options: dict | None = None):
        refuse_unsupported_connection_keys(section, config)
        self.addr = config.get("addr") or ""
        if not self.addr:
            raise InvalidArgumentError(f"{section}.addr is required")
        self.unix_socket = None if self.addr.startswith(("http://", "https://")) else self.addr
        if self.unix_socket is not None and ("\0" in self.unix_socket
                                             or len(os.fsencode(self.unix_socket)) > MAX_UNIX_SOCKET_PATH):
            raise InvalidArgumentError(f"{section}.addr {self.unix_socket!r} is neither an http(s) URL nor a usable "
                                       f"unix socket path (at most {MAX_UNIX_SOCKET_PATH} bytes)")
        self.path = config.get("path") or ""
        self.retry = retry or RetryPolicy()
        options = {"timeout": config.get("timeout") or DEFAULT_TIMEOUT,
                   "connect_timeout": config.get("connect_timeout") or DEFAULT_TIMEOUT,
                   "skip_verify": bool(config.get("skip_verify"))}
        options.update(storage_options or {})
        self.storage_options = options
        self._client = None

    @property
    def client(self):
        """The :class:`rafs.io.http.HttpClient` (whole-request deadlines, ranged reads only), made on
        first use."""
        if self._client is None:
            from .http import HttpClient
            self._client = HttpClient.from_options(self.storage_options, where="storage option",
                                                   unix_socket=self.unix_socket)
        return self._client

    @property
    def prefix(self) -> str:
        """``{addr}/{path}/``: the URL every blob of this backend lies directly under."""
        path = self.path.strip("/")
        return self.addr.rstrip("/") + "/" + (path + "/" if path else "")

    def url_for(self, blob_id: str) -> str:
        url = blob_url(self.prefix, blob_id)              # the blob id is checked either way
        if self.unix_socket is not None:
            from .unix_http import unix_url
            return unix_url(self.unix_socket)
        return url

    def open(self, blob_id: str) -> HttpRangeReader:
        url = self.url_for(blob_id)
        where = f"unix socket {self.unix_socket}" if self.unix_socket is not None else url
        return _HeadSizedReader(url, client=self.client, name=f"blob {blob_id} ({where})", retry=self.retry)

    def bootstrap_reader(self, url: str):
        """A reader through this backend's client (its timeouts) for a bootstrap under ``addr``, else None."""
        if self.unix_socket is None and url.startswith(self.addr):
            return HttpRangeReader(url, client=self.client, retry=self.retry)
        return None

    def describe(self) -> str:
        if self.unix_socket is not None:
            return f"http-proxy unix socket {self.unix_socket}"
        return redact_url(f"http-proxy {self.prefix}")

    def __repr__(self) -> str:
        return f"<HttpProxyBackend {self.describe()}>"


BACKENDS = {"localfs": LocalFsBackend, "s3": S3Backend, "http-proxy": HttpProxyBackend, "registry": RegistryBackend}
# Backend types nydusd knows that rafs does not implement yet.
UNSUPPORTED_BACKENDS = ("oss", "localdisk")


def make_backend(backend_type: str, config: dict, *, section: str, retry: RetryPolicy,
                 storage_options: dict | None = None):
    """The backend object for ``backend_type`` with its ``config`` section."""
    if backend_type == "http_proxy":
        backend_type = "http-proxy"
    cls = BACKENDS.get(backend_type)
    if cls is None:
        if backend_type in UNSUPPORTED_BACKENDS:
            raise UnsupportedError(f"{section.rsplit('.', 1)[0]}.type {backend_type!r} is not supported yet "
                                   f"(supported: {', '.join(BACKENDS)})")
        raise InvalidArgumentError(f"{section.rsplit('.', 1)[0]}.type {backend_type!r} is not a nydusd backend "
                                   f"type (supported: {', '.join(BACKENDS)})")
    if not isinstance(config, dict):
        raise InvalidArgumentError(f"{section} must be an object")
    if cls is LocalFsBackend:
        return cls(config, section=section, retry=retry)
    return cls(config, section=section, retry=retry, storage_options=storage_options)
