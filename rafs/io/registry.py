"""nydusd's ``registry`` backend: blobs read by ranges from an OCI distribution registry.

A blob is ``GET {scheme}://{host}/v2/{repo}/blobs/sha256:{blob id}`` with ``Range``
(storage/src/backend/registry.rs). The keys (api/src/config.rs ``RegistryConfig``): ``scheme``
(default ``https``), ``host``, ``repo``; ``auth`` (base64 ``user:password``, overridden by the
``IMAGE_PULL_AUTH`` environment variable as nydusd does) and ``registry_token`` (a bearer token used as
it is); ``skip_verify``, ``ca_cert_files``, ``timeout``, ``connect_timeout``, ``retry_limit``; and for
registries that redirect blob reads to a storage service, ``blob_url_scheme`` (the scheme to use for
the redirected URL) and ``blob_redirected_host`` (the host to put in it).

A redirect is remembered per blob until the URL expires (its signature's ``X-Amz-Expires`` or
``Expires``, else :data:`REDIRECT_TTL`), so later ranges go straight to storage; a refusal from
storage sends the next read through the registry again. Logins go through
:class:`rafs.io.registry_auth.RegistryAuth`: a 401 in the middle of reading (an expired token) logs in
again and repeats the request once. 429 and 5xx are retried by the caller's
:class:`~rafs.io.retry.RetryPolicy`, honouring ``Retry-After``. Refusals (401, 403) and absences (404)
are one error naming the registry, the repository and the object; no credential is ever shown.
"""

from __future__ import annotations

import calendar
import os
import threading
import time
from urllib.parse import parse_qs, urlsplit, urlunsplit

from ..blob.ids import image_blob_id
from ..errors import BlobNotFoundError, InvalidArgumentError
from .redact import redact
from .config_keys import refuse_unsupported_connection_keys
from .registry_auth import Credentials, RegistryAuth, RegistryAuthError
from .retry import RetryPolicy, ShortReadError

DEFAULT_TIMEOUT = 5                      # nydusd's default_http_timeout
REDIRECT_TTL = 60.0                      # seconds a redirect without a stated expiry is reused
MAX_REDIRECT_TTL = 3600.0


class RegistryClient:
    """Requests to one repository of one registry, logged in as the registry asks. Thread safe."""

    def __init__(self, host: str, repo: str, *, scheme: str = "https", auth: RegistryAuth | None = None,
                 client=None, blob_url_scheme: str = "", blob_redirected_host: str = ""):
        from .http import HttpClient
        if scheme not in ("http", "https"):
            raise InvalidArgumentError(f"registry scheme must be 'http' or 'https', not {scheme!r}")
        self.scheme, self.host, self.repo = scheme, host, repo
        self.auth = auth or RegistryAuth(scope=f"repository:{repo}:pull")
        self.client = client or HttpClient()
        self.blob_url_scheme = blob_url_scheme
        self.blob_redirected_host = blob_redirected_host
        self._redirects: dict[str, tuple[str, float]] = {}
        self._lock = threading.Lock()
        self.requests = 0                                # counted, for statistics and tests

    @property
    def base(self) -> str:
        return f"{self.scheme}://{self.host}/v2/{self.repo}/"

    def secrets(self) -> tuple[str, ...]:
        return self.auth.secrets()

    def describe(self) -> str:
        return f"registry {self.scheme}://{self.host}/{self.repo}"

    def _rewrite(self, url: str) -> str:
        """A redirect's target with ``blob_url_scheme`` and ``blob_redirected_host`` applied."""
        if not (self.blob_url_scheme or self.blob_redirected_host):
            return url
        parts = urlsplit(url)
        return urlunsplit((self.blob_url_scheme or parts.scheme, self.blob_redirected_host or parts.netloc,
                           parts.path, parts.query, parts.fragment))

    def request(self, method: str, path: str, what: str, **kwargs):
        """``method`` on ``{base}{path}`` as :meth:`rafs.io.http.HttpClient.request`, logging in when
        the registry asks (once per call: a second refusal is final)."""
        return self.request_url(method, self.base + path, what, **kwargs)

    def request_url(self, method: str, url: str, what: str, **kwargs):
        """:meth:`request` for a whole URL of the registry (an upload location)."""
        from .http import HTTPAuthError
        extra = kwargs.pop("headers", {})
        body = kwargs.get("body")
        for attempt in (0, 1):
            headers = {**extra, **self.auth.headers()}
            if attempt and hasattr(body, "seek"):
                body.seek(0)
            self.requests += 1
            try:
                return self.client.request(method, url, headers=headers, rewrite_redirect=self._rewrite, **kwargs)
            except HTTPAuthError as exc:
                if attempt == 0 and exc.status == 401 and self.auth.login(self.client, exc.challenge, headers):
                    continue
                raise self._refused(exc, what) from None
            except FileNotFoundError:
                raise self._missing(what) from None
        raise AssertionError("unreachable")  # pragma: no cover

    def _refused(self, exc, what: str) -> RegistryAuthError:
        return RegistryAuthError(f"{self.describe()}: {what}: access refused to {self.auth.describe_refusal()} "
                                 f"(HTTP {exc.status})")

    def _missing(self, what: str) -> FileNotFoundError:
        return FileNotFoundError(2, f"{self.describe()}: {what}: not found (HTTP 404)")

    # -- blobs -------------------------------------------------------------------------------------

    def blob_range(self, blob_id: str, offset: int, size: int) -> bytes:
        """``size`` bytes at ``offset`` of blob ``sha256:blob_id``, from a remembered redirect if one
        is still valid."""
        from .http import HTTPAuthError
        what = f"blob sha256:{blob_id}"
        cached = self._redirect(blob_id)
        if cached is not None:
            try:
                self.requests += 1
                # a presigned storage URL: no registry credentials go there
                return self.client.request("GET", cached, offset=offset, size=size)[1]
            except (HTTPAuthError, FileNotFoundError):
                with self._lock:
                    self._redirects.pop(blob_id, None)
        path = f"blobs/sha256:{blob_id}"
        response, body = self.request("GET", path, what, offset=offset, size=size)
        final = getattr(response, "final_url", None)
        if final and final != self.base + path:          # redirected (to blob storage, as a rule)
            with self._lock:
                self._redirects[blob_id] = (final, time.time() + redirect_lifetime(final))
        return body

    def blob_size(self, blob_id: str) -> int | None:
        response, _ = self.request("HEAD", f"blobs/sha256:{blob_id}", f"blob sha256:{blob_id}")
        length = response.getheader("Content-Length")
        return int(length) if length and length.isdigit() else None

    def _redirect(self, blob_id: str) -> str | None:
        with self._lock:
            entry = self._redirects.get(blob_id)
            if entry is None:
                return None
            if time.time() >= entry[1]:
                del self._redirects[blob_id]
                return None
            return entry[0]

    def close(self) -> None:
        self.client.close()

    def __repr__(self) -> str:
        return f"<RegistryClient {self.describe()} {self.auth!r}>"


def redirect_lifetime(url: str) -> float:
    """Seconds a presigned URL stays valid: S3's ``X-Amz-Date`` + ``X-Amz-Expires``, or an ``Expires``
    epoch (OSS, CloudFront, GCS v2), less a margin; else :data:`REDIRECT_TTL`."""
    query = {k.lower(): v[0] for k, v in parse_qs(urlsplit(url).query).items()}
    now = time.time()
    try:
        if "x-amz-date" in query and "x-amz-expires" in query:
            start = calendar.timegm(time.strptime(query["x-amz-date"], "%Y%m%dT%H%M%SZ"))
            end = start + int(query["x-amz-expires"])
        elif "expires" in query:
            end = int(query["expires"])
        else:
            return REDIRECT_TTL
    except (ValueError, OverflowError):
        return REDIRECT_TTL
    return max(0.0, min(end - now - 5, MAX_REDIRECT_TTL))


class RegistryBlobReader:
    """Ranged reads of one blob through a :class:`RegistryClient`; ``size`` asked for (HEAD) when needed."""

    def __init__(self, registry: RegistryClient, blob_id: str, retry: RetryPolicy):
        self.registry, self.blob_id, self.retry = registry, blob_id, retry
        self.name = f"blob {blob_id} ({registry.describe()})"
        self._size = None

    @property
    def size(self) -> int | None:
        if self._size is None:
            self._size = self.retry.call(lambda: self.registry.blob_size(self.blob_id), f"{self.name} (size)")
        return self._size

    @size.setter
    def size(self, value) -> None:
        self._size = value

    def read_range(self, offset: int, size: int) -> bytes:
        if size <= 0:
            return b""

        got = bytearray()

        def fetch() -> bytes:
            # a connection dropped mid-body is resumed: the next attempt asks only for the bytes missing
            got.extend(self.registry.blob_range(self.blob_id, offset + len(got), size - len(got)))
            if len(got) != size:
                raise ShortReadError(f"{self.name}: short read of {size} bytes at {offset} (got {len(got)})")
            return bytes(got)

        try:
            return self.retry.call(fetch, f"{self.name} [{offset:#x}, +{size:#x})")
        except FileNotFoundError:
            raise BlobNotFoundError(self.blob_id, self.registry.describe()) from None

    def close(self) -> None:
        pass

    def __repr__(self) -> str:
        return f"RegistryBlobReader({self.name!r})"


class RegistryBackend:
    """``registry``: a nydusd backend section read into a :class:`RegistryClient`."""

    type = "registry"

    def __init__(self, config: dict, *, section: str = "backend.registry", retry: RetryPolicy | None = None,
                 storage_options: dict | None = None, registry: RegistryClient | None = None):
        from .http import HttpClient
        refuse_unsupported_connection_keys(section, config)
        self.retry = retry or RetryPolicy()
        if registry is None:
            host = config.get("host") or ""
            repo = (config.get("repo") or "").strip("/")
            if not host:
                raise InvalidArgumentError(f"{section}.host is required")
            if not repo:
                raise InvalidArgumentError(f"{section}.repo is required")
            scheme = config.get("scheme") or "https"
            if scheme not in ("http", "https"):
                raise InvalidArgumentError(f"{section}.scheme must be 'http' or 'https', not {scheme!r}")
            auth_value, auth_key = os.environ.get("IMAGE_PULL_AUTH"), "IMAGE_PULL_AUTH"
            if not auth_value:
                auth_value, auth_key = config.get("auth"), f"{section}.auth"
            credentials = Credentials.from_auth(auth_value, auth_key) if auth_value else None
            options = {"timeout": config.get("timeout") or DEFAULT_TIMEOUT,
                       "connect_timeout": config.get("connect_timeout") or DEFAULT_TIMEOUT,
                       "skip_verify": bool(config.get("skip_verify"))}
            options.update(storage_options or {})
            client = HttpClient.from_options(options, where="storage option")
            cafiles = config.get("ca_cert_files") or []
            if not all(isinstance(path, str) for path in cafiles):
                raise InvalidArgumentError(f"{section}.ca_cert_files must be a list of paths")
            client.ca_files = tuple(cafiles)
            registry = RegistryClient(host, repo, scheme=scheme, client=client,
                                      auth=RegistryAuth(credentials, token=config.get("registry_token") or None,
                                                        scope=f"repository:{repo}:pull"),
                                      blob_url_scheme=config.get("blob_url_scheme") or "",
                                      blob_redirected_host=config.get("blob_redirected_host") or "")
        self.registry = registry
        self.retry.secrets = tuple({*self.retry.secrets, *registry.secrets()})

    def open(self, blob_id: str) -> RegistryBlobReader:
        image_blob_id(blob_id, 0)                       # it becomes part of a URL
        return RegistryBlobReader(self.registry, blob_id, self.retry)

    def bootstrap_reader(self, url: str):
        return None

    def describe(self) -> str:
        return redact(self.registry.describe(), self.registry.secrets())

    def __repr__(self) -> str:
        return f"<RegistryBackend {self.describe()}>"
