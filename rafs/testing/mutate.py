"""Mutations of real images: blind (bit flips, truncations, zeroed runs, aligned-word extremes) and
structure-aware (every integer field of every located structure set to 0, 1, max, max - 1 and to
offsets and sizes just past the end), plus decompression bombs.

Every generator yields ``(description, mutant bytes)`` pairs and is deterministic (seeded), so a
failure names a mutation that a regression test can replay from the fixture.
"""

from __future__ import annotations

import random
import stat as _stat
import struct
from dataclasses import dataclass
from typing import Iterable, Iterator

import construct
import zstandard

from ..model import BlobFeatures, InodeFlags
from . import schemas

_WORD = {4: struct.Struct("<I"), 8: struct.Struct("<Q")}


@dataclass(frozen=True)
class Located:
    """A structure found in an image: what it is, its construct schema and its byte offset."""

    name: str
    schema: construct.Construct
    offset: int


# -- blind mutations ---------------------------------------------------------------------------------

def bit_flips(data: bytes, count: int, seed: int = 1234, span: tuple[int, int] | None = None):
    """``count`` deterministic single-bit mutants of ``data`` as (description, bytes)."""
    rng = random.Random(seed)
    lo, hi = span or (0, len(data))
    hi = min(hi, len(data))
    for _ in range(count if hi > lo else 0):
        at = rng.randrange(lo, hi)
        bit = rng.randrange(8)
        mutant = bytearray(data)
        mutant[at] ^= 1 << bit
        yield f"bit {bit} of byte {at:#x}", bytes(mutant)


def flip_bit(data: bytes, at: int, bit: int) -> bytes:
    """``data`` with one bit flipped (to replay a recorded :func:`bit_flips` mutant)."""
    mutant = bytearray(data)
    mutant[at] ^= 1 << bit
    return bytes(mutant)


def truncations(data: bytes, count: int, seed: int = 99):
    """Prefixes of ``data``: empty, one byte, all but one, half, and ``count`` random lengths."""
    rng = random.Random(seed)
    points = sorted({0, 1, max(0, len(data) - 1), len(data) // 2,
                     *(rng.randrange(len(data)) for _ in range(count if data else 0))})
    for n in points:
        yield f"truncated to {n} bytes", data[:n]


def zeroed_runs(data: bytes, *, start: int = 0, step: int = 512, length: int = 256):
    """``data`` with ``length`` bytes zeroed every ``step`` bytes from ``start``, one run per mutant."""
    for at in range(start, len(data), step):
        mutant = bytearray(data)
        mutant[at:at + length] = bytes(len(mutant[at:at + length]))
        yield f"zeroed [{at:#x}, +{length:#x})", bytes(mutant)


def replace_unique(data: bytes, old: bytes, new: bytes) -> bytes:
    """``data`` with the single occurrence of ``old`` replaced by ``new`` of the same length: how a
    placeholder name written by a builder becomes a hostile one (``..``, ``a/b``, NUL) that no writer
    would produce."""
    if len(old) != len(new):
        raise ValueError(f"{old!r} and {new!r} differ in length")
    if data.count(old) != 1:
        raise ValueError(f"{old!r} occurs {data.count(old)} times, not once")
    return data.replace(old, new)


def set_int(data: bytes, offset: int, size: int, value: int) -> bytes:
    """``data`` with the little-endian unsigned ``size``-byte integer at ``offset`` set to ``value``."""
    mutant = bytearray(data)
    mutant[offset:offset + size] = (value % (1 << (8 * size))).to_bytes(size, "little")
    return bytes(mutant)


def word_extremes(data: bytes, *, span: tuple[int, int] | None = None, sizes=(4, 8),
                  values: Iterable[int] | None = None):
    """Every aligned u32/u64 word in ``span`` set to each extreme value: a blind cousin of
    :func:`field_extremes` that needs no schema (many mutants: meant for the deep profile)."""
    lo, hi = span or (0, len(data))
    for size in sizes:
        top = (1 << (8 * size)) - 1
        picks = sorted({v & top for v in (values or (0, 1, top, top - 1, len(data), len(data) + 1))})
        for at in range(lo - lo % size, min(hi, len(data)) - size + 1, size):
            current = int.from_bytes(data[at:at + size], "little")
            for value in picks:
                if value != current:
                    yield f"u{8 * size} at {at:#x} = {value:#x}", set_int(data, at, size, value)


# -- structure-aware mutations -----------------------------------------------------------------------

def extreme_values(lo: int, hi: int, *, past: Iterable[int] = ()) -> list[int]:
    """0, 1, max, max - 1 of a field's range, plus the ``past`` values (sizes and offsets just past
    the ends of the inputs) that fit it."""
    return sorted({v for v in (0, 1, hi, hi - 1, lo, *past) if lo <= v <= hi})


def field_extremes(data: bytes, structures: Iterable[Located], *, past: Iterable[int] = ()):
    """For each integer field of each structure: the image with the field at each extreme value.

    ``past`` adds values meant to point beyond the end (the default adds ``len(data)``,
    ``len(data) + 1`` and their 8- and 4096-scaled forms, for fields stored divided by 8 or in
    blocks). Descriptions read ``"<structure> .<field> = <value>"``.
    """
    n = len(data)
    past = set(past) | {n, n + 1, n // 8 + 1, n // 4096 + 1, n // 32 + 1}
    for located in structures:
        fields = schemas.flat_fields(located.schema)
        if fields is None:
            continue
        for name, rel, sub in fields:
            bounds = schemas.integer_range(sub)
            if bounds is None or name is None or isinstance(_unrenamed(sub), construct.Const):
                continue
            size = sub.sizeof()
            at = located.offset + rel
            if at + size > n:
                continue
            current = int.from_bytes(data[at:at + size], "little", signed=bounds[0] < 0)
            for value in extreme_values(*bounds, past=past):
                if value != current:
                    yield f"{located.name} .{name} = {value:#x}", set_int(data, at, size, value)


def _unrenamed(con):
    while isinstance(con, construct.Renamed):
        con = con.subcon
    return con


def set_field(data: bytes, located: Located, field: str, value: int) -> bytes:
    """``data`` with ``field`` of the located structure set to ``value`` (to replay a mutant)."""
    for name, rel, sub in schemas.flat_fields(located.schema):
        if name == field:
            return set_int(data, located.offset + rel, sub.sizeof(), value)
    raise KeyError(f"{located.name} has no field {field!r}")


def v5_structures(data: bytes) -> list[Located]:
    """Every structure of a RAFS v5 bootstrap: superblock, tables, inode records, xattr tables and
    chunk infos (found through :class:`rafs.v5.reader.V5Reader`)."""
    from ..errors import RafsError
    from ..v5 import layout
    from ..v5.reader import V5Reader
    reader = V5Reader(data)
    sb = reader.superblock
    found = [Located("v5 superblock", layout.SuperBlock, 0)]
    for i in range(sb.s_extended_blob_table_entries):
        found.append(Located(f"v5 ext blob {i}", layout.ExtBlobEntry,
                             sb.s_extended_blob_table_offset + layout.RAFSV5_EXT_BLOB_ENTRY_SIZE * i))
    found.append(Located("v5 blob table entry 0", layout.BlobTableEntryHeader, sb.s_blob_table_offset))
    for i in range(min(sb.s_prefetch_table_entries, 8)):
        found.append(Located(f"v5 prefetch {i}", layout.PrefetchTableEntry, sb.s_prefetch_table_offset + 4 * i))
    for index in range(1, reader.inode_count + 1):
        try:
            raw, offset = reader.record(index)
            found.append(Located(f"v5 inode {index}", layout.Inode, offset))
            _, xattr_at, chunks_at = reader.record_sections(raw, offset)
        except RafsError:
            continue
        if raw.i_flags & InodeFlags.XATTR:
            found.append(Located(f"v5 inode {index} xattrs", layout.XattrTableHeader, xattr_at))
            found.append(Located(f"v5 inode {index} xattr pair 0", layout.XattrPairHeader, xattr_at + 8))
        if _stat.S_ISREG(raw.i_mode):
            for c in range(min(raw.i_child_count, 4)):
                found.append(Located(f"v5 inode {index} chunk {c}", layout.ChunkInfo,
                                     chunks_at + layout.RAFSV5_CHUNK_INFO_SIZE * c))
    return found


def v6_structures(data: bytes) -> list[Located]:
    """Every structure of a RAFS v6 bootstrap reachable from its root: superblocks, device slots, blob
    table, chunk info table, inodes, inline xattrs, chunk indexes and directory entries."""
    from ..errors import RafsError
    from ..v6 import layout
    from ..v6.reader import V6Reader
    reader = V6Reader(data)
    base = layout.EROFS_SUPER_OFFSET
    found = [Located("v6 superblock", layout.SuperBlock, base)]
    sb, ext = reader.superblock, reader.superblock_ext
    if ext is not None:
        found.append(Located("v6 superblock ext", layout.SuperBlockExt, base + layout.EROFS_SUPER_BLOCK_SIZE))
        blob_size = layout.Blob.sizeof()
        for i in range(min(ext.s_blob_table_size // blob_size, 8)):
            found.append(Located(f"v6 blob {i}", layout.Blob, ext.s_blob_table_offset + blob_size * i))
        info_size = layout.ChunkInfo.sizeof()
        for i in range(min(ext.s_chunk_table_size // info_size, 8)):
            found.append(Located(f"v6 chunk info {i}", layout.ChunkInfo, ext.s_chunk_table_offset + info_size * i))
    for i in range(min(getattr(sb, "s_extra_devices", 0), 8)):
        found.append(Located(f"v6 device {i}", layout.Device,
                             sb.s_devt_slotoff * layout.EROFS_DEVT_SLOT_SIZE + layout.Device.sizeof() * i))
    seen, todo = set(), [reader.root_ino]
    while todo and len(seen) < 256:
        nid = todo.pop()
        if nid in seen:
            continue
        seen.add(nid)
        try:
            rec = reader.record(nid)
        except RafsError:
            continue
        schema = layout.InodeExtended if rec.extended else layout.InodeCompact
        found.append(Located(f"v6 inode nid {nid}", schema, rec.offset))
        if rec.raw.i_xattr_icount:
            body = rec.offset + rec.inode_size
            found.append(Located(f"v6 xattr header of nid {nid}", layout.XattrIbodyHeader, body))
            shared = data[body + 4] if body + 4 < len(data) else 0
            found.append(Located(f"v6 xattr entry 0 of nid {nid}", layout.XattrEntry,
                                 body + layout.EROFS_XATTR_IBODY_HEADER_SIZE + 4 * shared))
        try:
            if _stat.S_ISDIR(rec.mode):
                for file_offset, length, blob, offset in reader.flat_extents(rec):
                    if blob < 0 and length >= layout.EROFS_DIRENT_SIZE:
                        count = min(int.from_bytes(data[offset + 8:offset + 10], "little") // 12, 16)
                        for d in range(count):
                            found.append(Located(f"v6 dirent {d} of nid {nid} block {file_offset // reader.block_size}",
                                                 layout.Dirent, offset + 12 * d))
                todo.extend(child for _, child in reader.entries(nid))
            elif _stat.S_ISREG(rec.mode) and rec.datalayout == layout.EROFS_INODE_CHUNK_BASED and reader.is_rafs:
                for c, (position, _, _, _, at) in enumerate(reader.rafs_chunks.addresses(rec)):
                    if c >= 4:
                        break
                    found.append(Located(f"v6 chunk index {position} of nid {nid}", layout.ChunkIndex, at))
        except RafsError:
            continue
    return found


def blob_structures(blob: bytes, info=None) -> list[Located]:
    """Structures of a RAFS v6 data blob: the CI header (from ``info``, a :class:`rafs.model.Blob`, or
    the ToC) and CI records, the ToC entries and the tar headers of every section."""
    from ..blob import layout
    from ..blob.tar_header import walk_sections
    from ..blob.toc import read_toc
    from ..errors import RafsError
    from .exercise import BytesSource
    found = []
    source = BytesSource(blob)
    try:
        toc = read_toc(source)
    except RafsError:
        toc = None
    if toc is not None:
        for i in range(len(toc)):
            found.append(Located(f"ToC entry {i} ({toc[i].name})", layout.TocEntry,
                                 toc.offset + layout.TOC_ENTRY_SIZE * i))
    try:
        for section in walk_sections(source):
            found.append(Located(f"tar header of {section.name}", layout.TarHeader, section.header_offset))
    except RafsError:
        pass
    header_at = None
    if info is not None and info.ci_uncompressed_size:
        header_at = info.ci_offset + info.ci_compressed_size
    elif toc is not None and toc.get(layout.TOC_ENTRY_BLOB_META_HEADER) is not None:
        header_at = toc.get(layout.TOC_ENTRY_BLOB_META_HEADER).compressed_offset
    if header_at is not None and header_at + layout.BLOB_CCT_HEADER_SIZE <= len(blob):
        found.append(Located("CI header", layout.BlobCompressionContextHeader, header_at))
        if info is not None and info.ci_compressor == "none":
            v2 = info.features & BlobFeatures.CHUNK_INFO_V2
            record = layout.ChunkInfoV2Ondisk if v2 else layout.ChunkInfoV1Ondisk
            for i in range(min(info.chunk_count, 4)):
                found.append(Located(f"CI record {i}", record, info.ci_offset + record.sizeof() * i))
    return found


# -- decompression bombs -----------------------------------------------------------------------------

def zstd_bomb(expanded_size: int, *, content_size: bool = False, claimed_size: int | None = None) -> bytes:
    """A small zstd frame that inflates to ``expanded_size`` zero bytes.

    ``content_size`` writes the frame's content size field; ``claimed_size`` then overwrites that field
    with a lie (the frame still inflates to ``expanded_size``), to test readers that trust it.
    """
    compressor = zstandard.ZstdCompressor(level=1, write_content_size=content_size or claimed_size is not None,
                                          write_checksum=False)
    block = bytes(1 << 20)
    parts = []
    cobj = compressor.compressobj(size=expanded_size if (content_size or claimed_size is not None) else -1)
    left = expanded_size
    while left:
        step = min(left, len(block))
        parts.append(cobj.compress(block[:step]))
        left -= step
    parts.append(cobj.flush())
    frame = b"".join(parts)
    if claimed_size is not None:
        frame = _set_zstd_content_size(frame, claimed_size)
    return frame


def _set_zstd_content_size(frame: bytes, size: int) -> bytes:
    """Rewrite the Frame_Content_Size field of a single zstd frame (RFC 8878 3.1.1.1)."""
    descriptor = frame[4]
    fcs_flag = descriptor >> 6
    single_segment = (descriptor >> 5) & 1
    dict_id_flag = descriptor & 3
    field_size = {0: 1 if single_segment else 0, 1: 2, 2: 4, 3: 8}[fcs_flag]
    at = 5 + (0 if single_segment else 1) + {0: 0, 1: 1, 2: 2, 3: 4}[dict_id_flag]
    if field_size == 2:
        size -= 256
    if field_size == 0 or not 0 <= size < 1 << (8 * field_size):
        raise ValueError(f"frame has no room for content size {size}")
    return frame[:at] + size.to_bytes(field_size, "little") + frame[at + field_size:]


def all_mutants(data: bytes, structures: Iterable[Located] = (), *, flips: int = 200, cuts: int = 20,
                seed: int = 1) -> Iterator[tuple[str, bytes]]:
    """The standard battery: truncations, bit flips and (with ``structures``) field extremes."""
    yield from truncations(data, cuts, seed=seed)
    yield from bit_flips(data, flips, seed=seed)
    yield from field_extremes(data, structures)
