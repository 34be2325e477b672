"""Every key a nydusd configuration may hold, with its value type, so mistakes are caught by name.

nydusd (serde, api/src/config.rs) ignores keys it does not know: a typo such as ``workdir`` for
``work_dir`` silently leaves the cache in the current directory. rafs knows the same keys and reports
an unknown one as a warning that names its full path in nydusd's words and the nearest known key
(``unknown key device.cache.config.workdir in CFG (did you mean work_dir?)``). A known key whose value
has the wrong type is refused with an error naming it, as serde refuses it.

A schema is a dict of key -> spec, where a spec is a value type (``str``, ``int``, ``bool``, ``list``,
``float`` for a number), a nested schema (a table), ``[schema]`` (a list of tables) or ``ANY`` (a value
rafs does not look into). Keys nydusd accepts but rafs does not act on are listed in ``IGNORED`` and
noted at debug level.

A backend section's values are checked once more where a backend is made (:func:`check_backend_values`,
:func:`refuse_unsupported_connection_keys`), by every backend alike.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

from ..errors import InvalidArgumentError, UnsupportedError

ANY = object()
# Deepest nesting a configuration may have (the real schema is 5 levels deep): deeper input is refused
# before anything walks it.
MAX_CONFIG_DEPTH = 32

PROXY = {"url": str, "ping_url": str, "fallback": bool, "check_interval": int, "use_http": bool,
         "check_pause_elapsed": int, "dragonfly_scheduler_endpoint": str}
# MirrorConfig of nydusd releases before mirrors were dropped (rafs refuses a non-empty list)
MIRROR = {"host": str, "ping_url": str, "headers": ANY, "health_check_interval": int, "failure_limit": int,
          "health_check_pause_elapsed": int}
CONNECTION = {"skip_verify": bool, "ca_cert_files": list, "timeout": int, "connect_timeout": int,
              "retry_limit": int, "proxy": PROXY, "mirrors": [MIRROR]}
# retry_limit is not nydusd's for localfs; rafs reads it from any backend section
LOCALFS = {"blob_file": str, "dir": str, "alt_dirs": list, "retry_limit": int}
LOCALDISK = {"device_path": str, "disable_gpt": bool}
OSS = {**CONNECTION, "scheme": str, "endpoint": str, "bucket_name": str, "object_prefix": str,
       "access_key_id": str, "access_key_secret": str}
# blob_prefix and meta_prefix are nydusify's keys, which the user's guide copies into nydusd's s3 section;
# rafs looks blobs up under blob_prefix when object_prefix is absent
S3 = {**OSS, "region": str, "blob_prefix": str, "meta_prefix": str}
HTTP_PROXY = {**CONNECTION, "addr": str, "path": str}
REGISTRY = {**CONNECTION, "scheme": str, "host": str, "repo": str, "auth": str, "registry_token": str,
            "blob_url_scheme": str, "blob_redirected_host": str}
BACKENDS = {"localfs": LOCALFS, "localdisk": LOCALDISK, "oss": OSS, "s3": S3, "registry": REGISTRY,
            "http-proxy": HTTP_PROXY}
FILECACHE = {"work_dir": str, "disable_indexed_map": bool, "enable_encryption": bool,
             "enable_convergent_encryption": bool, "encryption_key": str}
FSCACHE = {"work_dir": str}
CACHES = {"blobcache": FILECACHE, "filecache": FILECACHE, "fscache": FSCACHE}
PREFETCH_V2 = {"enable": bool, "threads": int, "batch_size": int, "bandwidth_limit": int, "prefetch_all": bool,
               "stream_prefetch": bool}
EXTERNAL_BACKEND = {"patch": ANY, "type": str, "config": ANY}
FILESYSTEM = {"mode": str, "enable_xattr": bool, "iostats_files": bool, "access_pattern": bool,
              "latest_read_files": bool}

V2 = {
    "version": int, "id": str, "external_backends": [EXTERNAL_BACKEND],
    # rafs also takes the table of an http-proxy backend as http_proxy
    "backend": {"type": str, **BACKENDS, "http_proxy": HTTP_PROXY},
    "cache": {"type": str, "compressed": bool, "validate": bool, "prefetch": PREFETCH_V2, "filecache": FILECACHE,
              "fscache": FSCACHE},
    "rafs": {**FILESYSTEM, "batch_size": int, "validate": bool, "prefetch": PREFETCH_V2},
    "overlay": {"upper_dir": str, "work_dir": str},
}

V1_PREFETCH = {"enable": bool, "threads_count": int, "merging_size": int, "bandwidth_rate": int,
               "prefetch_all": bool, "stream_prefetch": bool}

# nydusify's backend configuration (--backend-config[-file]): its s3 keys and nydusd's
NYDUSIFY_BACKEND = S3

# Keys nydusd accepts and rafs does not act on (paths relative to the configuration's root).
IGNORED = frozenset({
    "id", "external_backends", "overlay", "access_pattern", "latest_read_files",
    "rafs.access_pattern", "rafs.latest_read_files", "cache.fscache",
    "cache.filecache.encryption_key", "device.id", "device.external_backends",
    "device.cache.config.encryption_key",
})


def schema_v1(raw: dict) -> dict:
    """The v1 (``RafsConfig``) schema; what ``device.backend.config`` and ``device.cache.config`` hold
    depends on the backend and cache types given."""
    device = raw.get("device") if isinstance(raw.get("device"), dict) else {}
    backend = device.get("backend") if isinstance(device.get("backend"), dict) else {}
    cache = device.get("cache") if isinstance(device.get("cache"), dict) else {}
    backend_type = backend.get("type")
    cache_type = cache.get("type")
    return {
        "device": {
            "id": str, "external_backends": [EXTERNAL_BACKEND],
            "backend": {"type": str, "config": BACKENDS.get(backend_type, ANY) if isinstance(backend_type, str)
                        else ANY},
            "cache": {"type": str, "compressed": bool, "validate": bool,
                      "config": CACHES.get(cache_type, ANY) if isinstance(cache_type, str) else ANY},
        },
        **FILESYSTEM, "digest_validate": bool, "amplify_io": int, "fs_prefetch": V1_PREFETCH,
    }


@dataclass(frozen=True)
class UnknownKey:
    """A key the schema does not know: its full path and the nearest known key, if any is near."""

    path: str
    suggestion: str | None

    def message(self, where: str) -> str:
        hint = f" (did you mean {self.suggestion}?)" if self.suggestion else ""
        return f"unknown key {self.path} in {where}{hint}"


_TYPE_WORDS = {str: "a str", int: "an int", bool: "true or false", list: "a list", float: "a number"}


def check(raw: dict, schema: dict, prefix: str = "") -> list[UnknownKey]:
    """Refuse values of the wrong type (naming the key); return the keys ``schema`` does not know."""
    unknown: list[UnknownKey] = []
    everywhere = _all_paths(schema)
    stack = [(raw, schema, prefix)]
    while stack:
        table, spec, where = stack.pop()
        for key, value in table.items():
            path = f"{where}{key}"
            if not isinstance(key, str) or key not in spec:
                unknown.append(UnknownKey(path, _nearest(str(key), spec, everywhere, where)))
                continue
            expected = spec[key]
            if expected is ANY or value is None:
                continue
            if isinstance(expected, dict):
                if not isinstance(value, dict):
                    raise InvalidArgumentError(f"{path} must be an object/table, not {_shown(value)}")
                stack.append((value, expected, f"{path}."))
            elif isinstance(expected, list):
                if not isinstance(value, list):
                    raise InvalidArgumentError(f"{path} must be a list, not {_shown(value)}")
                for i, item in enumerate(value):
                    if not isinstance(item, dict):
                        raise InvalidArgumentError(f"{path}[{i}] must be an object/table, not {_shown(item)}")
                    stack.append((item, expected[0], f"{path}[{i}]."))
            elif not _is_a(value, expected):
                raise InvalidArgumentError(f"{path} must be {_TYPE_WORDS[expected]}, not {_shown(value)}")
    return sorted(unknown, key=lambda u: u.path)


def _is_a(value, expected) -> bool:
    if expected is bool:
        return isinstance(value, bool)
    if isinstance(value, bool):
        return False
    if expected is float:
        return isinstance(value, (int, float))
    return isinstance(value, expected)


def _shown(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _all_paths(schema: dict, prefix: str = "") -> list[str]:
    """Every key path of ``schema`` (lists of tables without an index)."""
    out = []
    stack = [(schema, prefix)]
    while stack:
        spec, where = stack.pop()
        for key, expected in spec.items():
            out.append(f"{where}{key}")
            if isinstance(expected, dict):
                stack.append((expected, f"{where}{key}."))
    return out


def _nearest(key: str, siblings: dict, everywhere: list[str], where: str) -> str | None:
    """The known key next to ``key`` that it most resembles, else the same name elsewhere (a key put
    in the wrong table), as a full path."""
    close = difflib.get_close_matches(key, [k for k in siblings if isinstance(k, str)], n=1, cutoff=0.6)
    if close:
        return close[0]
    elsewhere = [path for path in everywhere if path.rsplit(".", 1)[-1] == key and path != f"{where}{key}"]
    if elsewhere:
        return min(elsewhere, key=len)
    close = difflib.get_close_matches(key, sorted({p.rsplit(".", 1)[-1] for p in everywhere}), n=1, cutoff=0.8)
    if close:
        return min((p for p in everywhere if p.rsplit(".", 1)[-1] == close[0]), key=len)
    return None


def ignored_keys(raw: dict) -> list[str]:
    """The keys present in ``raw`` that nydusd accepts and rafs does not act on."""
    out = []
    for path in IGNORED:
        table, parts = raw, path.split(".")
        for part in parts[:-1]:
            table = table.get(part) if isinstance(table, dict) else None
        if isinstance(table, dict) and parts[-1] in table:
            out.append(path)
    return sorted(out)


def depth(value) -> int:
    """How deeply ``value`` nests objects and lists, counted without recursion."""
    deepest = 0
    stack = [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        deepest = max(deepest, level)
        if level > MAX_CONFIG_DEPTH:
            return level
        stack.extend((child, level + 1) for child in children)
    return deepest


# The value types of backend keys (api/src/config.rs): a wrong one is named here, not met later as a
# TypeError deep inside a backend or fsspec.
_KEY_TYPES = {
    **dict.fromkeys(("blob_file", "dir", "addr", "path", "bucket_name", "scheme", "endpoint", "region",
                     "object_prefix", "blob_prefix", "meta_prefix", "access_key_id", "access_key_secret",
                     "host", "repo", "auth", "registry_token", "blob_url_scheme", "blob_redirected_host"),
                    (str,)),
    **dict.fromkeys(("timeout", "connect_timeout", "retry_limit"), (int,)),
    "skip_verify": (bool,),
    "alt_dirs": (list,),
}


def check_backend_values(section: str, config: dict) -> None:
    """The value type of every backend key ``config`` (the backend section ``section``) holds."""
    for key, types in _KEY_TYPES.items():
        value = config.get(key)
        if value is None:
            continue
        if not isinstance(value, types) or isinstance(value, bool) and bool not in types:
            raise InvalidArgumentError(f"{section}.{key} must be a {types[0].__name__}, not {value!r}")
        if types == (int,) and value < 0:
            raise InvalidArgumentError(f"{section}.{key} must not be negative, not {value!r}")
    if not all(isinstance(d, str) for d in config.get("alt_dirs") or []):
        raise InvalidArgumentError(f"{section}.alt_dirs must be a list of paths")


def refuse_unsupported_connection_keys(section: str, config: dict) -> None:
    """Connection options rafs cannot honour yet: refused by name rather than silently ignored (and
    every key's value type checked)."""
    check_backend_values(section, config)
    proxy = config.get("proxy") or {}
    if isinstance(proxy, dict) and proxy.get("url"):
        raise UnsupportedError(f"{section}.proxy.url is not supported yet (rafs talks to the backend directly)")
    if config.get("mirrors"):
        raise UnsupportedError(f"{section}.mirrors is not supported yet")
