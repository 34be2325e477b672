"""Pushing a built image to object storage, the way ``nydusify build --backend-push`` does.

The backend configuration is nydusify's (contrib/nydusify/pkg/packer/backend.go): ``endpoint``,
``scheme``, ``access_key_id``, ``access_key_secret``, ``bucket_name``, ``region``, ``meta_prefix`` (where
bootstraps go) and ``blob_prefix`` (where blobs go). The blob is stored as ``blob_prefix + blob id`` and
the bootstrap as ``meta_prefix + name`` (pkg/packer/pusher.go), so a nydusd configuration that copies
the same keys (as the user's guide does) finds the blobs again.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from fsspec.callbacks import Callback

from ..errors import InvalidArgumentError, UnsupportedError
from ..options import PUSH_BACKEND_TYPES
from ..progress import Progress, Ticker
from .backends import S3Backend
from .config import check_backend_config, parse_text, read_config_file
from .retry import RetryPolicy, redact

log = logging.getLogger(__name__)


class _Uploaded(Callback):
    """fsspec's upload callback (s3fs calls it per part uploaded), passed on to a :class:`Ticker`."""

    def __init__(self, ticker: Ticker):
        super().__init__()
        self.ticker = ticker
        self.passed_on = 0

    def call(self, *args, **kwargs) -> None:
        step = self.value - self.passed_on
        self.passed_on = self.value
        if step > 0:
            self.ticker.advance(step)


@dataclass(frozen=True)
class PushResult:
    """Where the bootstrap and the blob now live: ``s3://`` URLs (what ``rafs.open`` takes) and the
    ``https://<bucket>.<endpoint>/<key>`` form nydusify prints."""

    bootstrap_url: str
    blob_url: str | None
    bootstrap_http_url: str
    blob_http_url: str | None


def load_backend_config(*, config=None, config_file=None) -> dict:
    """nydusify's backend configuration from inline JSON text, a dict, or a file (read as nydusd
    configurations are: capped, no devices, nesting bounded; unknown keys warned about)."""
    name = "--backend-config"
    if config_file is not None:
        name = f"--backend-config-file {config_file}"
        config = read_config_file(config_file, "--backend-config-file")
    if config is None:
        raise InvalidArgumentError("--backend-push needs --backend-config or --backend-config-file")
    if isinstance(config, str):
        config = parse_text(config, name, formats=("json",))
    if not isinstance(config, dict):
        raise InvalidArgumentError(f"{name} must be a JSON object")
    check_backend_config(config, name)
    return config


class Pusher:
    """Uploads blobs and bootstraps to an ``s3`` backend; retries transient faults like reads do."""

    def __init__(self, backend_type: str, config: dict, *, storage_options: dict | None = None,
                 retry_limit: int | None = None):
        if backend_type not in PUSH_BACKEND_TYPES:
            if backend_type in ("oss", "localfs", "registry"):
                raise UnsupportedError(f"backend_type {backend_type!r} is not supported yet (supported: "
                                       f"{', '.join(PUSH_BACKEND_TYPES)})")
            raise InvalidArgumentError(f"unknown backend_type {backend_type!r}")
        retry = RetryPolicy() if retry_limit is None else RetryPolicy(limit=retry_limit)
        self.backend = S3Backend(config, section="backend config", retry=retry, storage_options=storage_options)
        self.retry = self.backend.retry
        self.blob_prefix = config.get("blob_prefix") or config.get("object_prefix") or ""
        self.meta_prefix = config.get("meta_prefix") or ""

    def _http_url(self, key: str) -> str:
        return f"{self.backend.scheme}://{self.backend.bucket}.{self.backend.endpoint}/{key}"

    def _put(self, path: str, key: str, ticker: Ticker | None = None) -> str:
        target = f"{self.backend.bucket}/{key}"
        url = self.backend.url(key)
        ticker = ticker or Ticker(None)
        base = ticker.done

        def attempt():
            ticker.advance(base - ticker.done)          # a retried upload starts again from its beginning
            return self.backend.fs.put_file(os.fspath(path), target, callback=_Uploaded(ticker))
        self.retry.call(attempt, f"upload of {path} to {url}")
        log.debug("uploaded %s to %s", path, redact(url, self.retry.secrets))
        return url

    def push_blob(self, path, blob_id: str, *, ticker: Ticker | None = None) -> str:
        """Upload the data blob as ``blob_prefix + blob_id``; its ``s3://`` URL."""
        return self._put(path, self.blob_prefix + blob_id, ticker)

    def push_bootstrap(self, path, name: str, *, ticker: Ticker | None = None) -> str:
        """Upload the bootstrap as ``meta_prefix + name``; its ``s3://`` URL."""
        if not name or "/" in name:
            raise InvalidArgumentError(f"image name {name!r} cannot be an object name")
        return self._put(path, self.meta_prefix + name, ticker)

    def push(self, *, bootstrap, name: str, blob=None, blob_id: str | None = None,
             progress: Progress | None = None) -> PushResult:
        """Blob first, then the bootstrap (so a bootstrap never points at a blob not yet there).
        ``progress(done, total)`` (:mod:`rafs.progress`) counts the bytes uploaded."""
        total = sum(os.path.getsize(p) for p in (blob, bootstrap) if p is not None)
        ticker = Ticker(progress, total).start()
        blob_url = self.push_blob(blob, blob_id, ticker=ticker) if blob is not None else None
        bootstrap_url = self.push_bootstrap(bootstrap, name, ticker=ticker)
        ticker.finish()
        return PushResult(bootstrap_url=bootstrap_url, blob_url=blob_url,
                          bootstrap_http_url=self._http_url(self.meta_prefix + name),
                          blob_http_url=self._http_url(self.blob_prefix + blob_id) if blob is not None else None)
