"""Checks that RAFS v5 and v6 bootstraps share, so both readers word a fault alike.

Both versions place tables (inode, prefetch, blob, chunk info) at offsets their superblock declares
(``RafsV5SuperBlock``, ``RafsV6SuperBlockExt`` in rafs/src/metadata/layout/), which must not overlap;
both store blob ids as bytes that must be ASCII (sha256 hex, or a tag) before they can name a blob.
"""

from __future__ import annotations

from .errors import InvalidImageError


def first_overlap(spans) -> tuple[str, str] | None:
    """The names of the first two regions that overlap among ``spans``, (start, end, name) each, in
    order of their starts; None when they are disjoint."""
    ordered = sorted(spans)
    for (_, end, name), (start, _, other) in zip(ordered, ordered[1:]):
        if start < end:
            return name, other
    return None


def ascii_blob_id(raw: bytes, structure: str, offset: int) -> str:
    """The blob id stored as ``raw`` (NUL padding dropped), which must be ASCII."""
    text = raw.rstrip(b"\0")
    try:
        return text.decode("ascii")
    except UnicodeDecodeError:
        raise InvalidImageError(f"blob id {text!r} is not ASCII", structure=structure, offset=offset) from None
