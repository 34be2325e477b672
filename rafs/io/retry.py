"""Retrying transient storage faults, the way nydusd's backends do with ``retry_limit``.

A transient fault is a 5xx answer, a dropped or refused connection, a timeout or a short body; a
permanent one is a missing object, a refused credential or a malformed request. Transient faults are
retried with exponential backoff up to the limit; then :class:`~rafs.errors.BackendError` names the
object and the byte range. Messages are scrubbed of the secrets the caller registered and of every URL's
userinfo, so a key can never leak through an error text. A request that runs past its deadline
(:class:`rafs.io.deadline.RequestTimeout`, a TimeoutError) is transient like any other timeout.
"""

from __future__ import annotations

import errno
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, TypeVar

from ..errors import BackendError, RafsError
from .redact import redact  # noqa: F401 - also imported from here

T = TypeVar("T")

# nydusd defaults retry_limit to 0; rafs retries a few times unless a configuration says otherwise.
DEFAULT_RETRY_LIMIT = 3
# HTTP statuses that are worth another try (timeouts, throttling, server faults).
TRANSIENT_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
# errno values s3fs/fsspec use for server-side faults (s3fs.errors: 500 -> EREMOTEIO, 503 -> EBUSY).
TRANSIENT_ERRNOS = frozenset({errno.EBUSY, getattr(errno, "EREMOTEIO", 121), errno.EAGAIN, errno.ETIMEDOUT,
                              errno.ECONNRESET, errno.ECONNREFUSED, errno.ECONNABORTED, errno.EPIPE,
                              errno.EIO})


class ShortReadError(BackendError):
    """The storage answered with fewer bytes than the range asked for (a cut connection)."""


def is_transient(exc: BaseException) -> bool:
    """Whether another attempt may succeed."""
    if isinstance(exc, ShortReadError):
        return True
    if isinstance(exc, RafsError):
        return False
    # a certificate that does not verify will not verify on the next try either (only a module that
    # was imported can have raised it, so ssl stays off the start-up path)
    cert_error = getattr(sys.modules.get("ssl"), "SSLCertVerificationError", None)
    if cert_error is not None and isinstance(exc, cert_error):
        return False
    if isinstance(exc, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)):
        return False
    status = getattr(exc, "status", None) or getattr(exc, "status_code", None)
    if isinstance(status, int):
        return status in TRANSIENT_STATUSES
    if isinstance(exc, (TimeoutError, ConnectionError)):
        return True
    if isinstance(exc, OSError) and exc.errno is not None:
        return exc.errno in TRANSIENT_ERRNOS
    name = type(exc).__name__
    # aiohttp / botocore / http.client connection-level faults carry no status or errno
    return any(word in name for word in ("Connection", "Timeout", "Payload", "IncompleteRead", "Disconnected",
                                         "ClientOSError", "HTTPClientError", "ResponseParser", "EndpointConnection",
                                         "RemoteProtocol", "ServerDisconnected")) or isinstance(exc, OSError)


@dataclass
class RetryPolicy:
    """``limit`` retries after the first attempt, sleeping ``base_delay * 2**n`` (jittered, capped)."""

    limit: int = DEFAULT_RETRY_LIMIT
    base_delay: float = 0.05
    max_delay: float = 2.0
    secrets: tuple = field(default=(), repr=False)

    def delay(self, attempt: int) -> float:
        import random           # only a retry needs it (random and logging stay off the start-up path)
        return min(self.max_delay, self.base_delay * (2 ** attempt)) * (0.5 + random.random() / 2)

    def call(self, fn: Callable[[], T], what: str) -> T:
        """``fn()`` with retries; ``what`` names the object and range for the final error."""
        attempt = 0
        while True:
            try:
                return fn()
            except Exception as exc:  # noqa: BLE001 - fsspec backends raise many types
                if not is_transient(exc):
                    if isinstance(exc, (RafsError, FileNotFoundError, PermissionError)):
                        raise
                    raise BackendError(redact(f"{what}: {type(exc).__name__}: {exc}", self.secrets)) from None
                if attempt >= self.limit:
                    tries = "attempt" if attempt == 0 else f"{attempt + 1} attempts"
                    raise BackendError(redact(f"{what}: failed after {tries} (retry_limit {self.limit}): "
                                              f"{type(exc).__name__}: {exc}", self.secrets)) from None
                import logging
                logging.getLogger(__name__).debug("%s", redact(
                    f"{what}: transient {type(exc).__name__}: {exc}; retry {attempt + 1}/{self.limit}",
                    self.secrets))
                # a server that said how long to wait (429/503 Retry-After) is obeyed, within reason
                time.sleep(max(self.delay(attempt), getattr(exc, "retry_after", None) or 0))
                attempt += 1
