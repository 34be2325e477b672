"""Keeping secrets out of what rafs shows: reprs, ``describe()``, error messages and log lines.

Two kinds of secret reach rafs. Credentials written in a URL's userinfo (``http://user:pass@host``, an
http-proxy ``addr``, an S3 ``endpoint``) are found by their shape, so every URL shown passes through
:func:`redact_url` or, inside a longer text, :func:`redact_urls`. Credentials given by key
(``access_key_id``, ``access_key_secret``, tokens) are known by value and scrubbed by :func:`redact`.
"""

from __future__ import annotations

import re

REDACTED = "***"

# ``scheme://userinfo@``: the userinfo runs to the last ``@`` before the authority ends (``/ ? #`` or
# white space), as urllib.parse.urlsplit reads it, so a raw ``@`` inside a password is covered too.
_URL_USERINFO = re.compile(r"\b([A-Za-z][A-Za-z0-9+.\-]*://)[^/?#\s]*@")


def redact_url(url: str) -> str:
    """``url`` with its userinfo (user and password) replaced by ``***``; also a bare authority
    (``user:pass@host:port/path``, as an S3 ``endpoint`` may be written)."""
    if not isinstance(url, str):
        return url
    if "://" in url:
        return _URL_USERINFO.sub(rf"\1{REDACTED}@", url)
    authority = re.split(r"[/?#\s]", url, maxsplit=1)[0]
    if "@" in authority:
        return REDACTED + url[authority.rindex("@"):]
    return url


def redact_urls(text: str) -> str:
    """``text`` with the userinfo of every URL in it replaced by ``***``."""
    return _URL_USERINFO.sub(rf"\1{REDACTED}@", text) if "@" in text else text


def redact(text: str, secrets=()) -> str:
    """``text`` with every non-trivial secret in ``secrets`` and every URL userinfo replaced by ``***``."""
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, REDACTED)
    return redact_urls(text)
