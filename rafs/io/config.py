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
import re
import stat
import tomllib
from dataclasses import dataclass, field

from ..errors import InvalidArgumentError, UnsupportedError
from ..limits import DEFAULT_MERGE_SIZE
from ..text import printable
from .backends import SECRET_KEYS, make_backend
from .blobs import BlobLocator
from .config_keys import MAX_CONFIG_DEPTH, NYDUSIFY_BACKEND, V2, check, depth, ignored_keys, schema_v1
from .redact import redact_url
from .retry import DEFAULT_RETRY_LIMIT, RetryPolicy, redact
from .source import is_url, load_bytes

log = logging.getLogger(__name__)

MAX_CONFIG_SIZE = 0x100000           # ConfigV2::from_file refuses larger files
CONFIG_READ_TIMEOUT = 30             # seconds a configuration read from a pipe may wait for more data
CACHE_TYPES = ("", "dummycache", "blobcache", "filecache", "fscache")
DEFAULT_PREFETCH_THREADS = 8         # default_prefetch_threads
DEFAULT_AMPLIFY_IO = 0x20000         # default_batch_size (128 KiB)


@dataclass
class PrefetchConfig:
    """``fs_prefetch`` (v1) / ``rafs.prefetch`` and ``cache.prefetch`` (v2)."""

    enable: bool = False
    threads: int = DEFAULT_PREFETCH_THREADS
    batch_size: int = DEFAULT_MERGE_SIZE    # v1 merging_size
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
    unknown_keys: list = field(default_factory=list, repr=False)   # full paths, warned about when parsed

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


def read_config_file(path, what: str = "configuration file") -> str:
    """The text of a configuration file, read with the 1 MiB cap whatever its size claims.

    Devices, sockets and directories are refused (``/dev/zero`` has no end); a FIFO or pipe (``<(...)``)
    is read like a file, up to the cap, as long as data keeps coming within ``CONFIG_READ_TIMEOUT``
    seconds. ``what`` names the file in errors (an option name or "configuration file").
    """
    path = os.fspath(path)
    if "\0" in (path if isinstance(path, str) else path.decode("utf-8", "surrogateescape")):
        raise InvalidArgumentError(f"{what} {printable(path)}: a path cannot hold a NUL character "
                                   f"(and the text is neither JSON nor TOML)")
    try:
        kind = _special_kind(os.stat(path).st_mode)     # before opening: opening a device can act on it
        if kind:
            raise InvalidArgumentError(f"{what} {path}: is {kind}, not a regular file")
        # non-blocking, so a FIFO without a writer cannot hang the open; pipes are then polled
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOCTTY", 0))
    except FileNotFoundError:
        raise InvalidArgumentError(f"{what} {path}: no such file") from None
    except OSError as exc:
        raise InvalidArgumentError(f"{what} {path}: {exc.strerror}") from None
    try:
        mode = os.fstat(fd).st_mode
        kind = _special_kind(mode)
        if kind:                                        # swapped after the stat above
            raise InvalidArgumentError(f"{what} {path}: is {kind}, not a regular file")
        data = _read_capped(fd, pipe=stat.S_ISFIFO(mode), name=f"{what} {path}")
    except OSError as exc:
        raise InvalidArgumentError(f"{what} {path}: {exc.strerror}") from None
    finally:
        os.close(fd)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidArgumentError(f"{what} {path}: not UTF-8 text (byte {exc.start})") from None


def _read_capped(fd: int, *, pipe: bool, name: str) -> bytes:
    """At most MAX_CONFIG_SIZE bytes of ``fd`` (an error past that); a pipe must not stall."""
    import select
    chunks, total = [], 0
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    while True:
        if pipe and not poller.poll(CONFIG_READ_TIMEOUT * 1000):
            raise InvalidArgumentError(f"{name}: no data for {CONFIG_READ_TIMEOUT} s")
        try:
            chunk = os.read(fd, MAX_CONFIG_SIZE + 1 - total)
        except BlockingIOError:
            continue
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        total += len(chunk)
        if total > MAX_CONFIG_SIZE:
            raise InvalidArgumentError(f"{name}: larger than 1 MiB")


def _special_kind(mode: int) -> str | None:
    """What a file that cannot hold a configuration is, in words; None for files and pipes."""
    for test, words in ((stat.S_ISDIR, "a directory"), (stat.S_ISCHR, "a character device"),
                        (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return words
    return None


def parse_text(text: str, name: str, *, formats=("json", "toml")) -> dict:
    """A configuration's text as a dict: JSON, else TOML (as nydusd tries them), with nesting bounded
    before the parsers recurse into it. ``name`` says where the text came from in errors."""
    nesting = bracket_depth(text)
    if nesting > MAX_CONFIG_DEPTH:
        raise InvalidArgumentError(f"{name}: nested more than {MAX_CONFIG_DEPTH} levels deep")
    errors = []
    try:
        for kind in formats:
            try:
                if kind == "toml" and dotted_key_depth(text) > MAX_CONFIG_DEPTH:
                    raise InvalidArgumentError(f"{name}: nested more than {MAX_CONFIG_DEPTH} levels deep")
                value = json.loads(text) if kind == "json" else tomllib.loads(text)
                break
            except ValueError as exc:           # JSONDecodeError and TOMLDecodeError are ValueErrors
                errors.append(f"{'JSON' if kind == 'json' else 'TOML'} ({exc})")
        else:
            raise InvalidArgumentError(f"{name} is neither " + " nor ".join(errors) if len(errors) > 1
                                       else f"{name} is not {errors[0]}")
    except RecursionError:                       # a nesting the scan above could not see
        raise InvalidArgumentError(f"{name}: nested too deeply") from None
    return _bounded(value, name)


def _bounded(value, name: str):
    if depth(value) > MAX_CONFIG_DEPTH:          # TOML dotted keys nest without brackets
        raise InvalidArgumentError(f"{name}: nested more than {MAX_CONFIG_DEPTH} levels deep")
    return value


def bracket_depth(text: str) -> int:
    """The deepest nesting of ``[``/``{`` in JSON or TOML text, outside strings and comments."""
    deepest = level = 0
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c in "[{":
            level += 1
            deepest = max(deepest, level)
        elif c in "]}":
            level = max(0, level - 1)
        elif c == "#":
            end = text.find("\n", i)
            i = n if end < 0 else end
            continue
        elif c in "\"'":
            quote = text[i:i + 3] if text[i:i + 3] in ('"""', "'''") else c
            j = i + len(quote)
            while True:
                j = text.find(quote, j)
                if j < 0:
                    return deepest                  # an unterminated string: the parser will say so
                if quote[0] == "'" or not _escaped(text, j):
                    break
                j += 1
            i = j + len(quote)
            continue
        i += 1
    return deepest


_QUOTED = re.compile(r'"(?:[^"\\\n]|\\.)*"|\'[^\'\n]*\'')


def dotted_key_depth(text: str) -> int:
    """The most parts a TOML key or table header has (``[a.b.c]``, ``a.b.c = 1``): dotted keys nest
    tables without brackets, and tomllib takes time quadratic in their length."""
    deepest = 0
    for line in text.splitlines():
        key = _QUOTED.sub("q", line).split("#", 1)[0].split("=", 1)[0]
        deepest = max(deepest, key.count(".") + 1)
    return deepest


def _escaped(text: str, at: int) -> bool:
    """Whether the quote at ``at`` follows an odd number of backslashes."""
    count = 0
    while at - count - 1 >= 0 and text[at - count - 1] == "\\":
        count += 1
    return count % 2 == 1


def _load(config, name: str = "configuration") -> tuple[dict, str]:
    """(the configuration as a dict, what to call it in messages), from a path, JSON/TOML text or a dict."""
    if isinstance(config, dict):
        return _bounded(copy.deepcopy(_bounded(config, name)), name), name
    if isinstance(config, bytes):
        try:
            config = config.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidArgumentError("configuration is not UTF-8 text") from None
    if isinstance(config, os.PathLike) or isinstance(config, str) and not _looks_like_text(config):
        name = os.fspath(config)
        config = read_config_file(name)
    if not isinstance(config, str):
        raise InvalidArgumentError(f"config must be a path, JSON/TOML text or a dict, not {type(config).__name__}")
    value = parse_text(config, name)
    if not isinstance(value, dict):
        raise InvalidArgumentError(f"{name} must be a JSON object or a TOML table")
    return value, name


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
        batch_size=_int(section, names[1], DEFAULT_MERGE_SIZE, where, high=0x1000_0000),
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
        if "work_dir" not in filecache:
            log.warning("%s%s.work_dir is not set: the blob cache goes to the current directory", where,
                        "config" if config.version == 1 else "filecache")
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
    """A :class:`NydusdConfig` from a path, JSON/TOML text, a dict (v1 or v2) or a NydusdConfig.

    A key of the wrong type is an error naming it; an unknown key is a warning naming it and the
    nearest known key (also kept in ``NydusdConfig.unknown_keys``).
    """
    if isinstance(config, NydusdConfig):
        return config
    raw, name = _load(config)
    if "version" in raw:
        if raw["version"] != 2:
            raise InvalidArgumentError(f"version must be 2, not {raw['version']!r}")
        schema, parse = V2, parse_v2
    elif "device" in raw:
        schema, parse = schema_v1(raw), parse_v1
    else:
        raise InvalidArgumentError(f"{name}: not a nydusd configuration: expected 'version = 2' (v2) or a "
                                   "'device' object (v1)")
    unknown = check(raw, schema)
    parsed = parse(raw)
    parsed.unknown_keys = [key.path for key in unknown]
    for key in unknown:
        log.warning("%s", key.message(name))
    ignored = ignored_keys(raw)
    if ignored:
        log.debug("%s: accepted and not acted on by rafs: %s", name, ", ".join(ignored))
    return parsed


def check_backend_config(config: dict, name: str) -> None:
    """Type errors and unknown keys of a nydusify backend configuration (``--backend-config[-file]``)."""
    for key in check(_bounded(config, name), NYDUSIFY_BACKEND):
        log.warning("%s", key.message(name))


class ConfigLocator(BlobLocator):
    """Blobs from a nydusd configuration's backend, through its blob cache.

    Used like a :class:`~rafs.io.blobs.BlobLocator`; ``config`` is the parsed :class:`NydusdConfig`
    (``enable_xattr``, ``prefetch`` ...), ``validate`` whether chunk digests are checked.
    """

    def __init__(self, config: NydusdConfig, *, storage_options: dict | None = None, backend=None):
        super().__init__(storage_options=storage_options)
        self.config = config
        self.validate = config.validate or config.cache_validate
        if backend is None:             # else one made already (an image reference's registry)
            self.retry = RetryPolicy(limit=config.retry_limit)
            backend = make_backend(config.backend_type, config.backend_config,
                                   section=f"backend.{config.backend_type}" if config.version == 2
                                   else "device.backend.config", retry=self.retry,
                                   storage_options=storage_options)
        self.backend = backend
        self.retry = backend.retry
        self.retry.secrets = tuple({*self.retry.secrets, *config.secrets()})
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
