"""Blob ids as hypothesis strategies, and the mutation that writes them into a bootstrap's blob table.

:func:`valid_blob_ids` draws ids rafs must accept (sha256 hex, and the reference's other plain forms);
:func:`hostile_blob_ids` draws ids that must never name a file, URL or object: traversals (``..``,
``../../x``), absolute paths (``////etc/shadow``), separators, percent escapes, queries, NUL and
control characters, over-long ids. :func:`blob_id_strings` mixes both. :func:`with_blob_ids` puts ids
into a v5 or v6 bootstrap as its blob table holds them, so an image with any id can be made without
the writers (which refuse such ids).
"""

from __future__ import annotations

import struct

from hypothesis import strategies as st

from ..blob.ids import BLOB_ID, MAX_BLOB_ID_LENGTH

# Ids that reached a path, URL or key before rafs checked them (issue 12), and their near relatives.
KNOWN_HOSTILE = (
    "", ".", "..", "../", "./x", "../x", "../../etc/shadow", "/etc/shadow", "////" * 8 + "etc/shadow",
    "a/../../b", "a/b", "a\\b", "..\\x", "%2e%2e", "%2e%2e%2fx", "a%2fb", "a?b=1", "a#b", "a b", " a", "a\n",
    "-rf", ".hidden", "x\x1b[31m", "\x00", "a\x00b", "~root", "C:x", "a:b", "\u00e9", "x" * (MAX_BLOB_ID_LENGTH + 1),
    "a" * 250,
)
_ID_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-"
_BAD_CHARS = "/\\%?#: \t\n\r\x00\x1b\x7f~\u00e9\u202e"


def sha256_ids() -> st.SearchStrategy[str]:
    """64 lowercase hex digits: the reference's blob id."""
    return st.binary(min_size=32, max_size=32).map(bytes.hex)


def valid_blob_ids(*, max_size: int = MAX_BLOB_ID_LENGTH) -> st.SearchStrategy[str]:
    """Ids rafs must accept: sha256 hex, the inline placeholder, and plain names from the allow-list."""
    plain = st.builds(lambda first, rest: first + rest,
                      st.sampled_from(_ID_CHARS[:62]),
                      st.text(alphabet=_ID_CHARS, max_size=max(0, max_size - 1)))
    fixed = st.sampled_from(["x" * 64, "prefetch-blob", "erofs-device-1", "a..b", "A.tar.gz"])
    ids = st.one_of(sha256_ids(), fixed, plain) if max_size >= 64 else plain
    return ids.filter(lambda s: len(s.encode()) <= max_size and BLOB_ID.fullmatch(s) is not None)


@st.composite
def _traversals(draw) -> str:
    parts = draw(st.lists(st.sampled_from(["..", ".", "", "x", "etc", "shadow", "%2e%2e"]), min_size=2, max_size=12))
    return draw(st.sampled_from(["", "/", "////"])) + "/".join(parts)


# What a blob table can hold, as (most bytes, ASCII only, NUL allowed inside, trailing NULs kept): a v5
# table ends an id at a NUL; a v6 slot holds 64 bytes and drops trailing NULs; both readers refuse
# ids that are not ASCII when the image is opened, before any id is used.
_TABLES = {None: (None, False, True, True), "v5": (None, True, False, False), "v6": (64, True, True, False)}


def hostile_blob_ids(*, table: str | None = None) -> st.SearchStrategy[str]:
    """Ids that must be refused wherever an id becomes a location; ``table`` ("v5" or "v6") restricts
    them to what that version's blob table can hold (for :func:`with_blob_ids`)."""
    max_size, ascii_only, allow_nul, trailing_nul = _TABLES[table]

    def fits(s: str) -> bool:
        raw = s.encode("utf-8")
        return ((max_size is None or len(raw) <= max_size) and (not ascii_only or s.isascii())
                and (allow_nul or "\0" not in s) and (trailing_nul or not s.endswith("\0"))
                and BLOB_ID.fullmatch(s) is None)
    alphabet = st.characters(max_codepoint=0x7F if ascii_only else 0x10FFFF, exclude_categories=("Cs",))
    return st.one_of(
        st.sampled_from(KNOWN_HOSTILE),
        _traversals(),
        st.builds(lambda a, bad, b: a + bad + b, st.text(alphabet=_ID_CHARS, max_size=20),
                  st.sampled_from(_BAD_CHARS), st.text(alphabet=_ID_CHARS, max_size=20)),
        st.text(alphabet=alphabet, min_size=0, max_size=80),
        st.integers(MAX_BLOB_ID_LENGTH + 1, 300).map(lambda n: "a" * n),
    ).filter(fits)


def blob_id_strings(*, table: str | None = None) -> st.SearchStrategy[str]:
    """Valid and hostile ids mixed (``table`` as for :func:`hostile_blob_ids`)."""
    size = _TABLES[table][0] or MAX_BLOB_ID_LENGTH
    return st.one_of(valid_blob_ids(max_size=size), hostile_blob_ids(table=table))


def with_blob_ids(data: bytes, blob_ids) -> bytes:
    """``data`` (a v5 or RAFS v6 bootstrap) with its blob ids replaced by ``blob_ids``, one per blob in
    table order, written as the format holds them.

    v5: the blob table is rewritten (read-ahead fields kept), in place when it fits, else appended at
    the end of the bootstrap and the superblock pointed at it. v6: each id NUL-padded into its blob
    table entry and device slot; an id over 64 bytes raises ValueError.
    """
    from ..v5.reader import V5Reader, is_v5
    from .mutate import Located, set_field
    data = bytes(data)
    blob_ids = [s.encode("utf-8") if isinstance(s, str) else bytes(s) for s in blob_ids]
    if is_v5(bytes(data[:8])):
        from ..v5 import layout as v5_layout
        reader = V5Reader(data)
        if len(blob_ids) != len(reader.blobs):
            raise ValueError(f"{len(blob_ids)} ids for {len(reader.blobs)} blobs")
        table = b"\0".join(struct.pack("<II", b.readahead_offset, b.readahead_size) + raw
                           for b, raw in zip(reader.blobs, blob_ids))
        table += bytes(-len(table) % 8)
        sb = reader.superblock
        if len(table) <= sb.s_blob_table_size:
            at = sb.s_blob_table_offset
            return data[:at] + table.ljust(sb.s_blob_table_size, b"\0") + data[at + sb.s_blob_table_size:]
        superblock = Located("v5 superblock", v5_layout.SuperBlock, 0)
        out = set_field(data, superblock, "s_blob_table_offset", len(data))
        out = set_field(out, superblock, "s_blob_table_size", len(table))
        return out + table
    from ..v6 import layout as v6_layout
    from ..v6.reader import V6Reader
    reader = V6Reader(data)
    if len(blob_ids) != len(reader.blobs):
        raise ValueError(f"{len(blob_ids)} ids for {len(reader.blobs)} blobs")
    out = bytearray(data)
    size = v6_layout.RAFSV6_BLOB_ID_SIZE
    table = reader.superblock_ext.s_blob_table_offset
    slots = reader.superblock.s_devt_slotoff * v6_layout.EROFS_DEVT_SLOT_SIZE
    for i, raw in enumerate(blob_ids):
        if len(raw) > size:
            raise ValueError(f"a v6 blob id holds at most {size} bytes, not {len(raw)}")
        field = raw.ljust(size, b"\0")
        for at in (table + v6_layout.Blob.sizeof() * i, slots + v6_layout.EROFS_DEVT_SLOT_SIZE * i):
            out[at:at + size] = field
    return bytes(out)
