"""Validating the JSON documents of an OCI image layout before anything uses them.

An image layout is input like any other: ``oci-layout``, ``index.json`` and the manifests, indexes
and configs under ``blobs/`` may be damaged or made to break a reader. Each document is bounded
(:data:`MAX_JSON_SIZE` bytes, nesting at most :data:`MAX_JSON_DEPTH` deep, checked on the bytes
before parsing), parsed, and then every field rafs uses is checked for its type (image-spec
descriptor.md, manifest.md, image-index.md, config.md). A fault is an InvalidImageError naming the
file and the field (``index.json: manifests[0].digest: ...``), never a KeyError or AttributeError
from deep inside a conversion. Fields rafs does not use are left as they are.
"""

from __future__ import annotations

import itertools
import json
import re

from ..blob.ids import SHA256_ID
from ..errors import InvalidImageError

MAX_JSON_SIZE = 8 << 20               # manifests, indexes and configs are small; refuse giants
MAX_JSON_DEPTH = 64                   # real documents nest about 5 deep (annotations in a descriptor)
MAX_INDEX_DEPTH = 8                   # indexes inside indexes, as a walk from index.json follows them
MAX_MANIFESTS = 4096                  # manifest descriptors one walk visits (indexes may share children)

_DIGEST = re.compile(r"sha256:(%s)" % SHA256_ID.pattern)      # the hex part is a blob id: rafs.blob.ids
_STRING = re.compile(rb'"(?:[^"\\]++|\\.)*+"')
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_NESTING = {ord("["): 1, ord("{"): 1, ord("]"): -1, ord("}"): -1}


def _fault(what: str, field: str | None, message: str) -> InvalidImageError:
    return InvalidImageError(f"{what}: {field}: {message}" if field else f"{what}: {message}")


def digest_hex(digest, what: str = "OCI descriptor", field: str | None = "digest") -> str:
    """The hex part of a ``sha256:`` + 64 lowercase hex digest, refusing anything else (it becomes a
    file name under ``blobs/sha256``)."""
    match = _DIGEST.fullmatch(digest) if isinstance(digest, str) else None
    if match is None:
        raise _fault(what, field, f"unsupported or malformed digest {_shown(digest)} (want sha256:<64 hex digits>)")
    return match.group(1)


def nesting_depth(data: bytes) -> int:
    """How deep the arrays and objects of a JSON text nest, counted on the bytes (strings skipped)."""
    brackets = _STRING.sub(b"", data).translate(None, _NOT_BRACKETS)
    return max(itertools.accumulate(map(_NESTING.__getitem__, brackets)), default=0)


def parse(data: bytes, what: str) -> dict:
    """The JSON object in ``data`` (at most :data:`MAX_JSON_SIZE` bytes, :data:`MAX_JSON_DEPTH` deep)."""
    if len(data) > MAX_JSON_SIZE:
        raise _fault(what, None, f"over the {MAX_JSON_SIZE}-byte limit for a JSON document")
    if nesting_depth(data) > MAX_JSON_DEPTH:
        raise _fault(what, None, f"JSON nested deeper than {MAX_JSON_DEPTH} levels")
    try:
        document = json.loads(data)
    except UnicodeDecodeError:
        raise _fault(what, None, "not UTF-8 JSON") from None
    except (ValueError, RecursionError) as exc:          # JSONDecodeError, or an int of 5000 digits
        raise _fault(what, None, f"invalid JSON ({exc})") from None
    if not isinstance(document, dict):
        raise _fault(what, None, f"a JSON {type(document).__name__}, not an object")
    return document


def _shown(value) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _typed(document: dict, key: str, kind, what: str, prefix: str, *, required: bool = False):
    value = document.get(key)
    field = prefix + key
    if value is None:
        if required:
            raise _fault(what, field, "missing")
        return None
    # bool is an int to Python, never to JSON's readers
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        names = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
        raise _fault(what, field, f"{_shown(value)} is not a {names}")
    return value


def _string_map(document: dict, key: str, what: str, prefix: str) -> None:
    value = _typed(document, key, dict, what, prefix)
    for name, item in (value or {}).items():
        if not isinstance(item, str):
            raise _fault(what, f"{prefix}{key}[{name!r}]", f"{_shown(item)} is not a string")


def descriptor(desc, what: str, field: str) -> dict:
    """A descriptor (mediaType, digest, size; optional annotations, platform, artifactType) checked."""
    if not isinstance(desc, dict):
        raise _fault(what, field, f"{_shown(desc)} is not a descriptor object")
    prefix = field + "."
    _typed(desc, "mediaType", str, what, prefix)
    digest_hex(desc.get("digest"), what, prefix + "digest")
    size = _typed(desc, "size", int, what, prefix, required=True)
    if size < 0:
        raise _fault(what, prefix + "size", f"{size} is negative")
    _string_map(desc, "annotations", what, prefix)
    _typed(desc, "artifactType", str, what, prefix)
    platform = _typed(desc, "platform", dict, what, prefix)
    if platform is not None:
        for key in ("os", "architecture", "variant"):
            _typed(platform, key, str, what, prefix + "platform.")
    return desc


def _descriptors(document: dict, key: str, what: str) -> None:
    entries = _typed(document, key, list, what, "", required=True)
    for number, entry in enumerate(entries):
        descriptor(entry, what, f"{key}[{number}]")


def _schema_version(document: dict, what: str) -> None:
    version = _typed(document, "schemaVersion", int, what, "", required=True)
    if version != 2:
        raise _fault(what, "schemaVersion", f"{version} is not 2")


def layout_file(document: dict, what: str = "oci-layout") -> dict:
    """``oci-layout``: ``imageLayoutVersion`` a string."""
    _typed(document, "imageLayoutVersion", str, what, "", required=True)
    return document


def index(document: dict, what: str) -> dict:
    """An image index (or Docker manifest list): schemaVersion 2, ``manifests`` a list of descriptors."""
    _schema_version(document, what)
    _typed(document, "mediaType", str, what, "")
    _descriptors(document, "manifests", what)
    _string_map(document, "annotations", what, "")
    return document


def manifest(document: dict, what: str) -> dict:
    """An image manifest: schemaVersion 2, a ``config`` descriptor, ``layers`` a list of descriptors."""
    _schema_version(document, what)
    _typed(document, "mediaType", str, what, "")
    _typed(document, "artifactType", str, what, "")
    descriptor(_typed(document, "config", dict, what, "", required=True), what, "config")
    _descriptors(document, "layers", what)
    _string_map(document, "annotations", what, "")
    if document.get("subject") is not None:
        descriptor(document["subject"], what, "subject")
    return document


def config(document: dict, what: str) -> dict:
    """An image config: ``rootfs`` an object whose ``diff_ids`` are strings, ``history`` a list of objects."""
    rootfs = _typed(document, "rootfs", dict, what, "")
    if rootfs is not None:
        for number, diff_id in enumerate(_typed(rootfs, "diff_ids", list, what, "rootfs.") or []):
            if not isinstance(diff_id, str):
                raise _fault(what, f"rootfs.diff_ids[{number}]", f"{_shown(diff_id)} is not a string")
    for number, entry in enumerate(_typed(document, "history", list, what, "") or []):
        if not isinstance(entry, dict):
            raise _fault(what, f"history[{number}]", f"{_shown(entry)} is not an object")
    return document
