"""Logging of the ``rafs`` command: rafs's own events at the level asked for, other libraries quiet.

``--log-level debug`` (or ``--debug``) shows what rafs does: where the bootstrap came from, each fetch
(blob, range, bytes, time), cache hits and misses, retries and prefetch progress. The libraries under
the storage backends (botocore, s3fs, fsspec, urllib3, aiobotocore, aiohttp ...) log their own
internals at debug level, request by request; they stay at warning unless ``--log-level trace``.
Whatever the level, every handler scrubs credentials from what it writes: botocore at debug prints
request headers, whose ``Authorization`` names the access key id.
"""

from __future__ import annotations

import logging
import re
import sys

LEVELS = {"trace": logging.DEBUG, "debug": logging.DEBUG, "info": logging.INFO, "warn": logging.WARNING,
          "error": logging.ERROR}
# Loggers of the libraries behind the backends; everything else outside "rafs" follows the root.
THIRD_PARTY = ("botocore", "boto3", "s3fs", "fsspec", "urllib3", "aiobotocore", "aiohttp", "asyncio",
               "s3transfer", "charset_normalizer")
FORMAT = "[%(levelname)s] %(message)s"
FILE_FORMAT = "%(asctime)s [%(levelname)s] %(message)s"

# Header values and query parameters that carry credentials, in the forms botocore and aiohttp print them
_SECRETS = re.compile(
    r"""(?ix)
    (?P<key>['"]?(?:authorization|x-amz-security-token|x-amz-credential|x-amz-signature|signature
                   |awsaccesskeyid|credential|proxy-authorization|cookie)['"]?\s*[:=]\s*b?['"]?)
    (?P<value>[^'",&\s}]+(?:\s+[^'",&\s}]+)*)""")
_USERINFO = re.compile(r"(?P<scheme>\b[a-z][a-z0-9+.-]*://)[^/@\s'\"]+@", re.I)


def scrub(text: str) -> str:
    """``text`` with credential header values, signed-URL parameters and URL userinfo replaced."""
    text = _SECRETS.sub(lambda m: m.group("key") + "***", text)
    return _USERINFO.sub(lambda m: m.group("scheme") + "***@", text)


class ScrubFilter(logging.Filter):
    """Rewrites each record's final message through :func:`scrub` (set on handlers)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a broken record is the logging module's to report
            return True
        clean = scrub(message)
        if clean != message:
            record.msg, record.args = clean, None
        return True


# A context manager factory wrapped around every console write (a progress bar's, so that a log line
# does not land in the middle of the bar: rafs.cli.progress), or None.
_console_guard = None


def console_guard():
    """The guard set by :func:`set_console_guard`, or None."""
    return _console_guard


def set_console_guard(guard):
    """Wrap console log writes in ``guard()`` (None: no wrapping); returns the guard it replaces."""
    global _console_guard
    previous, _console_guard = _console_guard, guard
    return previous


class _Stderr(logging.StreamHandler):
    """A handler writing to whatever ``sys.stderr`` is when a record comes (as logging's last resort)."""

    def __init__(self):
        super().__init__(sys.stderr)

    def emit(self, record: logging.LogRecord) -> None:
        guard = _console_guard
        if guard is None:
            super().emit(record)
            return
        with guard():
            super().emit(record)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


_console: logging.Handler | None = None


def configure(level: str = "info") -> None:
    """Log rafs's events at ``level`` to stderr; third-party loggers at warning unless ``trace``.
    Called again (several commands in one process), it replaces its own handler, no other."""
    global _console
    numeric = LEVELS.get(level, logging.INFO)
    root = logging.getLogger()
    if _console is not None:
        root.removeHandler(_console)
    _console = _Stderr()
    _console.setFormatter(logging.Formatter(FORMAT))
    _console.addFilter(ScrubFilter())
    root.addHandler(_console)
    root.setLevel(numeric)
    quiet = logging.NOTSET if level == "trace" else max(logging.WARNING, numeric)
    for name in THIRD_PARTY:
        logging.getLogger(name).setLevel(quiet)


def add_file(path) -> logging.Handler:
    """Also write log messages to ``path`` (``--log-file``), scrubbed like the console's."""
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter(FILE_FORMAT))
    handler.addFilter(ScrubFilter())
    logging.getLogger().addHandler(handler)
    return handler
