"""Logging in to an OCI registry: anonymous, Basic, and the Bearer token flow of the distribution spec.

A registry that wants credentials answers ``401`` with a ``WWW-Authenticate`` challenge:

- ``Basic realm="..."``: the next request carries ``Authorization: Basic base64(user:password)``;
- ``Bearer realm="URL",service="NAME",scope="repository:REPO:pull"``: a ``GET`` of the realm with
  ``service`` and ``scope`` as query parameters (and the Basic credentials, if any, in the
  ``Authorization`` header: anonymous pulls get a token too) answers JSON ``{"token": ..., "expires_in":
  seconds}`` (``access_token`` is the OAuth2 spelling of ``token``); requests then carry ``Authorization:
  Bearer TOKEN`` until it expires (60 s by default, per the token spec).

Facts from docker's token authentication spec (distribution docs/spec/auth/token.md) and nydus
storage/src/backend/registry.rs. :class:`RegistryAuth` holds the credentials and the current header;
its ``repr`` and every message carry neither. Credentials come from a nydusd ``auth`` (base64
``user:password``), ``registry_token`` or a docker ``config.json`` (:mod:`rafs.io.docker_config`).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import threading
import time
from dataclasses import dataclass, field
from urllib.parse import urlencode, urlsplit

from ..errors import BackendError, InvalidArgumentError

# the token spec's default lifetime when a token response names none
DEFAULT_TOKEN_LIFETIME = 60
# a token is renewed this long before it expires, so a request does not race its expiry
TOKEN_MARGIN = 5
MAX_TOKEN_RESPONSE = 1 << 20
_PARAM = re.compile(r'([A-Za-z][A-Za-z0-9_-]*)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^,\s]*))')


@dataclass(frozen=True)
class Credentials:
    """A user name and password (the password never shown)."""

    username: str
    password: str = field(repr=False)

    @classmethod
    def from_auth(cls, value: str, where: str) -> "Credentials":
        """From base64 ``user:password`` (a nydusd ``auth`` key, a docker config ``auth`` entry);
        ``where`` names the key in errors, which never quote the value."""
        try:
            text = base64.b64decode(value.strip(), validate=True).decode("utf-8")
        except (binascii.Error, ValueError):
            raise InvalidArgumentError(f"{where} is not base64 of 'user:password'") from None
        username, colon, password = text.partition(":")
        if not colon:
            raise InvalidArgumentError(f"{where} is not base64 of 'user:password' (no ':' in it)")
        return cls(username, password)

    def basic(self) -> str:
        return "Basic " + base64.b64encode(f"{self.username}:{self.password}".encode()).decode("ascii")

    def secrets(self) -> tuple[str, ...]:
        return tuple(s for s in (self.password, self.basic()[6:]) if s)


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """(scheme in lower case, parameters) of a ``WWW-Authenticate`` header."""
    scheme, _, rest = header.strip().partition(" ")
    params = {m.group(1).lower(): (m.group(2) if m.group(2) is not None else m.group(3))
              for m in _PARAM.finditer(rest)}
    return scheme.lower(), {k: re.sub(r"\\(.)", r"\1", v) for k, v in params.items()}


class RegistryAuth:
    """The ``Authorization`` header for one registry repository, renewed when the registry asks.

    ``credentials`` (or None: anonymous), ``token`` a fixed bearer token (nydusd's ``registry_token``),
    ``scope`` what to ask tokens for (``repository:REPO:pull``). Thread safe.
    """

    def __init__(self, credentials: Credentials | None = None, *, token: str | None = None, scope: str = ""):
        self.credentials = credentials
        self.scope = scope
        self._lock = threading.Lock()
        self._header = f"Bearer {token}" if token else None
        self._static_token = token
        self._expires = float("inf")
        self.logins = 0                                  # tokens fetched (for tests and statistics)

    def secrets(self) -> tuple[str, ...]:
        found = self.credentials.secrets() if self.credentials else ()
        header = self._header
        token = header.split(" ", 1)[1] if header else None
        return tuple(s for s in (*found, self._static_token, token) if s)

    def headers(self) -> dict[str, str]:
        """The header to send now (none before the registry asked for one, or once a token expired)."""
        with self._lock:
            if self._header and time.monotonic() < self._expires:
                return {"Authorization": self._header}
            return {}

    def login(self, client, challenge: str | None, refused: dict) -> bool:
        """Answer the registry's ``challenge`` (a 401's ``WWW-Authenticate``); False if there is nothing
        new to try (the same credentials were just refused). ``refused`` is the header that was sent."""
        if not challenge:
            return False
        scheme, params = parse_challenge(challenge)
        with self._lock:
            if self._header and time.monotonic() < self._expires and refused.get("Authorization") != self._header:
                return True                              # another thread has logged in meanwhile
            if scheme == "basic":
                if self.credentials is None or refused.get("Authorization") == self.credentials.basic():
                    return False
                self._header, self._expires = self.credentials.basic(), float("inf")
                return True
            if scheme != "bearer" or not params.get("realm"):
                return False
            token, lifetime = self._fetch_token(client, params)
            self._header = f"Bearer {token}"
            self._expires = time.monotonic() + max(lifetime - TOKEN_MARGIN, 1)
            self.logins += 1
            return True

    def _fetch_token(self, client, params: dict) -> tuple[str, float]:
        realm = params["realm"]
        if urlsplit(realm).scheme not in ("http", "https"):
            raise BackendError(f"registry token service {realm[:200]!r} is not an http(s) URL")
        query = {"service": params.get("service", "")}
        scope = params.get("scope") or self.scope
        if scope:
            query["scope"] = scope
        url = realm + ("&" if "?" in realm else "?") + urlencode({k: v for k, v in query.items() if v})
        headers = {"Authorization": self.credentials.basic()} if self.credentials else {}
        from .http import HTTPAuthError
        try:
            _, body = client.request("GET", url, headers=headers, limit=MAX_TOKEN_RESPONSE)
        except HTTPAuthError as exc:
            raise RegistryAuthError(f"token service {urlsplit(realm).netloc} refused "
                                    f"{self._who()} (HTTP {exc.status}) for {scope or 'the registry'}") from None
        try:
            answer = json.loads(body)
            token = answer.get("token") or answer.get("access_token")
            lifetime = answer.get("expires_in") or DEFAULT_TOKEN_LIFETIME
        except (ValueError, AttributeError):
            raise BackendError(f"token service {urlsplit(realm).netloc}: the answer is not a JSON token") from None
        if not isinstance(token, str) or not token or not isinstance(lifetime, (int, float)):
            raise BackendError(f"token service {urlsplit(realm).netloc}: the answer holds no token")
        return token, float(lifetime)

    def _who(self) -> str:
        return f"user {self.credentials.username!r}" if self.credentials else "anonymous access"

    def describe_refusal(self) -> str:
        """Whose access was refused, in words (never the secret)."""
        if self._static_token and self._header == f"Bearer {self._static_token}":
            return "the registry_token"
        return self._who()

    def __repr__(self) -> str:
        return f"<RegistryAuth {self._who()} scope={self.scope!r}>"


class RegistryAuthError(BackendError, PermissionError):
    """The registry or its token service refused the credentials (or their absence): not retried."""
