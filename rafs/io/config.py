"""nydusd configuration files, read as nydusd reads them (api/src/config.rs).

Two forms exist. The legacy v1 JSON (``RafsConfig``)::

    {"device": {"backend": {"type": "s3", "config": {...}},
                "cache": {"type": "blobcache", "config": {"work_dir": "cache"}}},
     "mode": "direct", "digest_validate": false, "enable_xattr": true,
     "fs_prefetch": {"enable": true, "threads_count": 8, "merging_size": 1048576, "prefetch_all": true}}

and v2 (``ConfigV2``), TOML or JSON with ``version = 2`` and the sections ``backend`` (``type`` plus a
table named after it), ``cache`` (``type``, ``filecache.work_dir``, ``prefetch``) and ``rafs``
(``validate``, ``enable_xattr``, ``prefetch``). Both parse into one :class:`NydusdConfig`. Settings
rafs cannot honour yet are refused with an error naming the key; keys nydusd ignores are ignored.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import tomllib
from dataclasses import dataclass, field

from ..errors import InvalidArgumentError, UnsupportedError
from .backends import SECRET_KEYS, make_backend
from .blobs import BlobLocator
from .redact import redact_url
from .retry import DEFAULT_RETRY_LIMIT, RetryPolicy, redact
from .source import is_url, load_bytes

log = logging.getLogger(__name__)

MAX_CONFIG_SIZE = 0x100000           # ConfigV2::from_file refuses larger files
CACHE_TYPES = ("", "dummycache", "blobcache", "filecache", "fscache")
DEFAULT_PREFETCH_THREADS = 8         # default_prefetch_threads
DEFAULT_PREFETCH_BATCH_SIZE = 0x100000
DEFAULT_AMPLIFY_IO = 0x20000         # default_batch_size (128 KiB)


@dataclass
class PrefetchConfig:
    """``fs_prefetch`` (v1) / ``rafs.prefetch`` and ``cache.prefetch`` (v2)."""

    enable: bool = False
    threads: int = DEFAULT_PREFETCH_THREADS
    batch_size: int = DEFAULT_PREFETCH_BATCH_SIZE    # v1 merging_size
    bandwidth_limit: int = 0                         # v1 bandwidth_rate, bytes/s, 0 = unlimited
    prefetch_all: bool = False


@dataclass
class NydusdConfig:
    """A parsed nydusd configuration; ``backend_config`` keeps the backend section as written."""

    version: int = 2
    id: str = ""
    backend_type: str = ""
    backend_config: dict = field(default_factory=dict, repr=False)
    cache_type: str = ""
    work_dir: str = "."
    cache_validate: bool = False
    disable_indexed_map: bool = False
    mode: str = "direct"
    validate: bool = False                           # v1 digest_validate / v2 rafs.validate
    enable_xattr: bool = False
    iostats_files: bool = False
    access_pattern: bool = False
    latest_read_files: bool = False
    batch_size: int = DEFAULT_AMPLIFY_IO             # v1 amplify_io / v2 rafs.batch_size
    prefetch: PrefetchConfig = field(default_factory=PrefetchConfig)

    @property
    def cached(self) -> bool:
        """Whether blob data is kept in ``work_dir`` (``blobcache`` / ``filecache``)."""
        return self.cache_type in ("blobcache", "filecache")

    @property
    def retry_limit(self) -> int:
        value = self.backend_config.get("retry_limit")
        if value is None:
            return DEFAULT_RETRY_LIMIT
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise InvalidArgumentError(f"backend retry_limit must be a non-negative integer, not {value!r}")
        return value

    def secrets(self) -> tuple[str, ...]:
        return tuple(str(v) for k, v in _walk(self.backend_config) if k in SECRET_KEYS and v)

    def redacted(self) -> dict:
        """The configuration as a v2-shaped dict with every secret replaced by ``***``."""
        backend = _redact_dict(self.backend_config)
        return {"version": 2, "id": self.id, "backend": {"type": self.backend_type, self.backend_type: backend},
                "cache": {"type": self.cache_type, "validate": self.cache_validate,
                          "filecache": {"work_dir": self.work_dir,
                                        "disable_indexed_map": self.disable_indexed_map}},
                "rafs": {"mode": self.mode, "validate": self.validate, "enable_xattr": self.enable_xattr,
                         "batch_size": self.batch_size, "prefetch": vars(self.prefetch).copy()}}

    def __repr__(self) -> str:
        return (f"NydusdConfig(backend={self.backend_type!r} {json.dumps(_redact_dict(self.backend_config))}, "
                f"cache={self.cache_type!r} work_dir={self.work_dir!r}, validate={self.validate}, "
                f"enable_xattr={self.enable_xattr}, prefetch={self.prefetch})")

    __str__ = __repr__


def _walk(value, key=None):
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _walk(v, k)
    elif isinstance(value, list):
        for v in value:
            yield from _walk(v, key)
    else:
        yield key, value


def _redact_dict(value):
    """A configuration value with secrets by key replaced by ``***`` and userinfo dropped from URLs."""
    if isinstance(value, dict):
        return {k: ("***" if k in SECRET_KEYS and v else _redact_dict(v)) for k, v in value.items()}
    if isinstance(value, list):
        return [_redact_dict(v) for v in value]
    if isinstance(value, str):
        return redact_url(value)
    return value


def _load(config) -> dict:
    """The configuration as a dict, from a path, JSON/TOML text or a dict."""
    if isinstance(config, dict):
        return copy.deepcopy(config)
    if isinstance(config, bytes):
        config = config.decode("utf-8")
    if isinstance(config, os.PathLike) or isinstance(config, str) and not _looks_like_text(config):
        path = os.fspath(config)
        try:
            size = os.path.getsize(path)
            if size > MAX_CONFIG_SIZE:
                raise InvalidArgumentError(f"configuration file {path} is larger than 1 MiB")
            with open(path, encoding="utf-8") as f:
                config = f.read()
        except FileNotFoundError:
            raise InvalidArgumentError(f"configuration file {path} not found") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise InvalidArgumentError(f"cannot read configuration file {path}: {exc}") from None
    if not isinstance(config, str):
        raise InvalidArgumentError(f"config must be a path, JSON/TOML text or a dict, not {type(config).__name__}")
    try:
        value = json.loads(config)
    except ValueError as json_error:
        try:
            value = tomllib.loads(config)
        except tomllib.TOMLDecodeError as toml_error:
            raise InvalidArgumentError(f"configuration is neither JSON ({json_error}) nor TOML ({toml_error})") \
                from None
    if not isinstance(value, dict):
        raise InvalidArgumentError("configuration must be a JSON object or a TOML table")
    return value


def _looks_like_text(value: str) -> bool:
    stripped = value.lstrip()
    return stripped.startswith(("{", "[", "#")) or "\n" in value or "=" in value


def _section(parent: dict, key: str, where: str) -> dict:
    value = parent.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidArgumentError(f"{where}{key} must be an object/table")
    return value


def _int(section: dict, key: str, default: int, where: str, *, low: int = 0, high: int = 1 << 62) -> int:
    value = section.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidArgumentError(f"{where}{key} must be an integer in [{low}, {high}], not {value!r}")
    return value


def _bool(section: dict, key: str, default: bool, where: str) -> bool:
    value = section.get(key, default)
    if not isinstance(value, bool):
        raise InvalidArgumentError(f"{where}{key} must be true or false, not {value!r}")
    return value


def _prefetch(section: dict, where: str, *, v1: bool) -> PrefetchConfig:
    names = ("threads_count", "merging_size", "bandwidth_rate") if v1 else ("threads", "batch_size",
                                                                          "bandwidth_limit")
    config = PrefetchConfig(
        enable=_bool(section, "enable", False, where),
        threads=_int(section, names[0], DEFAULT_PREFETCH_THREADS, where, high=1024),
        batch_size=_int(section, names[1], DEFAULT_PREFETCH_BATCH_SIZE, where, high=0x1000_0000),
        bandwidth_limit=_int(section, names[2], 0, where, high=1 << 40),
        # FsPrefetchControl defaults prefetch_all to true in v1, PrefetchConfigV2 to false
        prefetch_all=_bool(section, "prefetch_all", v1, where))
    if config.enable and config.threads == 0:
        raise InvalidArgumentError(f"{where}{names[0]} must be at least 1 when prefetch is enabled")
    if section.get("stream_prefetch"):
        raise UnsupportedError(f"{where}stream_prefetch is not supported yet")
    return config


def _cache(config: NydusdConfig, cache_type: str, filecache: dict, where: str, *, compressed: bool) -> None:
    if cache_type not in CACHE_TYPES:
        raise InvalidArgumentError(f"{where}type {cache_type!r} is not a nydusd cache type "
                                   f"(blobcache, filecache, fscache, dummycache)")
    if cache_type == "fscache":
        raise UnsupportedError(f"{where}type 'fscache' is not supported (it needs the kernel's cachefiles); use "
                               "'blobcache'")
    if compressed:
        raise UnsupportedError(f"{where}compressed = true (a .blob.raw cache) is not supported yet")
    for key in ("enable_encryption", "enable_convergent_encryption"):
        if filecache.get(key):
            raise UnsupportedError(f"{where}{'config' if config.version == 1 else 'filecache'}.{key} is not "
                                   "supported yet")
    config.cache_type = cache_type
    if config.cached:
        work_dir = filecache.get("work_dir", ".")
        if not isinstance(work_dir, str) or not work_dir:
            raise InvalidArgumentError(f"{where}work_dir must be a non-empty path")
        config.work_dir = work_dir
        config.disable_indexed_map = _bool(filecache, "disable_indexed_map", False, where)


def _filesystem(config: NydusdConfig, section: dict, where: str, *, validate_key: str, batch_key: str) -> None:
    """The filesystem settings: v1 top level (``digest_validate``, ``amplify_io``) or v2 ``rafs``."""
    config.mode = section.get("mode", "direct")
    if config.mode not in ("direct", "cached"):
        raise InvalidArgumentError(f"{where}mode must be 'direct' or 'cached', not {config.mode!r}")
    config.validate = _bool(section, validate_key, False, where)
    for name in ("enable_xattr", "iostats_files", "access_pattern", "latest_read_files"):
        setattr(config, name, _bool(section, name, False, where))
    config.batch_size = _int(section, batch_key, DEFAULT_AMPLIFY_IO, where, high=0x1000_0000)


def parse_v1(raw: dict) -> NydusdConfig:
    """The legacy ``RafsConfig`` JSON (``device``, ``mode``, ``digest_validate``, ``fs_prefetch``, ...)."""
    config = NydusdConfig(version=1)
    device = _section(raw, "device", "")
    config.id = str(device.get("id") or "")
    backend = _section(device, "backend", "device.")
    config.backend_type = str(backend.get("type") or "")
    if not config.backend_type:
        raise InvalidArgumentError("device.backend.type is required")
    backend_config = backend.get("config", {})
    if not isinstance(backend_config, dict):
        raise InvalidArgumentError("device.backend.config must be an object")
    config.backend_config = backend_config
    cache = _section(device, "cache", "device.")
    cache_config = _section(cache, "config", "device.cache.")
    _cache(config, str(cache.get("type") or ""), cache_config, "device.cache.",
           compressed=_bool(cache, "compressed", False, "device.cache."))
    _filesystem(config, raw, "", validate_key="digest_validate", batch_key="amplify_io")
    config.prefetch = _prefetch(_section(raw, "fs_prefetch", ""), "fs_prefetch.", v1=True)
    return config


def parse_v2(raw: dict) -> NydusdConfig:
    """``ConfigV2`` (``version = 2`` with ``backend``, ``cache``, ``rafs``)."""
    config = NydusdConfig(version=2, id=str(raw.get("id") or ""))
    backend = _section(raw, "backend", "")
    config.backend_type = str(backend.get("type") or "")
    if not config.backend_type:
        raise InvalidArgumentError("backend.type is required")
    table = config.backend_type
    if table not in backend and table == "http-proxy" and "http_proxy" in backend:
        table = "http_proxy"
    config.backend_config = _section(backend, table, "backend.")
    if not config.backend_config and config.backend_type in ("localfs", "s3", "http-proxy"):
        raise InvalidArgumentError(f"backend.{config.backend_type} is required for backend type "
                                   f"{config.backend_type!r}")
    cache = _section(raw, "cache", "")
    _cache(config, str(cache.get("type") or ""), _section(cache, "filecache", "cache."), "cache.",
           compressed=_bool(cache, "compressed", False, "cache."))
    config.cache_validate = _bool(cache, "validate", False, "cache.")
    rafs = _section(raw, "rafs", "")
    _filesystem(config, rafs, "rafs.", validate_key="validate", batch_key="batch_size")
    if "prefetch" in rafs:
        config.prefetch = _prefetch(_section(rafs, "prefetch", "rafs."), "rafs.prefetch.", v1=False)
    elif "prefetch" in cache:
        config.prefetch = _prefetch(_section(cache, "prefetch", "cache."), "cache.prefetch.", v1=False)
    return config


def parse_config(config) -> NydusdConfig:
    """A :class:`NydusdConfig` from a path, JSON/TOML text, a dict (v1 or v2) or a NydusdConfig."""
    if isinstance(config, NydusdConfig):
        return config
    raw = _load(config)
    if "version" in raw:
        if raw["version"] != 2:
            raise InvalidArgumentError(f"version must be 2, not {raw['version']!r}")
        return parse_v2(raw)
    if "device" in raw:
        return parse_v1(raw)
    raise InvalidArgumentError("not a nydusd configuration: expected 'version = 2' (v2) or a 'device' object (v1)")


class ConfigLocator(BlobLocator):
    """Blobs from a nydusd configuration's backend, through its blob cache.

    Used like a :class:`~rafs.io.blobs.BlobLocator`; ``config`` is the parsed :class:`NydusdConfig`
    (``enable_xattr``, ``prefetch`` ...), ``validate`` whether chunk digests are checked.
    """

    def __init__(self, config: NydusdConfig, *, storage_options: dict | None = None):
        super().__init__(storage_options=storage_options)
        self.config = config
        self.validate = config.validate or config.cache_validate
        self.retry = RetryPolicy(limit=config.retry_limit)
        self.backend = make_backend(config.backend_type, config.backend_config,
                                    section=f"backend.{config.backend_type}" if config.version == 2
                                    else "device.backend.config", retry=self.retry,
                                    storage_options=storage_options)
        self.retry.secrets = config.secrets()
        self.cache_dir = config.work_dir if config.cached else None
        self.disable_indexed_map = config.disable_indexed_map
        self.merge_size = max(config.prefetch.batch_size, config.batch_size, 1)
        self.prefetch_bandwidth_limit = config.prefetch.bandwidth_limit

    def source_for(self, blob_id: str, index: int):
        return None

    def _open_source(self, blob_id: str, index: int):
        return self.backend.open(blob_id)

    def load_bootstrap(self, source):
        """A bootstrap's bytes; ``s3://`` (or the http-proxy address) through the backend's credentials."""
        if isinstance(source, (str, os.PathLike)) and is_url(os.fspath(source)):
            url = os.fspath(source)
            reader = self.backend.bootstrap_reader(url)
            if reader is not None and not (self.storage_options and self.backend.type == "s3"):
                return reader.read_all()
        return load_bytes(source, self.storage_options)

    def describe(self) -> str:
        return self.backend.describe()

    def __repr__(self) -> str:
        return f"<ConfigLocator {redact(self.describe(), self.retry.secrets)} cache={self.cache_dir!r}>"


def locator_from_config(config, *, storage_options: dict | None = None) -> ConfigLocator:
    """A blob locator for a nydusd configuration (path, JSON/TOML text, dict or NydusdConfig)."""
    return ConfigLocator(parse_config(config), storage_options=storage_options)
