"""Encoding the records of a RAFS v6 bootstrap: what :mod:`rafs.v6.writer` puts where.

Each function turns model values into the bytes of one EROFS/RAFS v6 record, checking that they fit it
(an :class:`~rafs.errors.InvalidArgumentError` naming the value otherwise): inline xattr bodies
(``RafsXAttrs::store_v6``), directory blocks and directory sizes (``v6_dirent_size``) and the names
they may hold, extended inode records, device slots and blob table entries (``RafsV6Blob``). The
record layouts are declared in :mod:`rafs.v6.layout` (through :mod:`rafs.v6.records`).
"""

from __future__ import annotations

import struct

from ..errors import InvalidArgumentError
from ..model import CIPHER_IDS, COMPRESSOR_IDS, DIGESTER_IDS, MAX_NAME_SIZE, Blob, BlobFeatures
from . import layout
from .records import BLOB, DEVICE, DIRENT, INODE_EXTENDED as INODE, XATTR_ENTRY, XATTR_HEADER

# Xattr name prefixes RAFS stores and their EROFS name indexes (v6.rs RAFSV6_XATTR_TYPES: no lustre).
XATTR_INDEXES = tuple((prefix, index) for index, prefix in layout.EROFS_XATTR_PREFIXES.items()
                      if index != layout.EROFS_XATTR_INDEX_LUSTRE)

# The inode packed with the fast codec's own format; its trailing reserved bytes as pad bytes, so each
# pack needs no zero bytes object.
assert INODE.fields[-1] == "i_reserved2" and INODE.struct.format.endswith("16s")
_INODE_PACK = struct.Struct(INODE.struct.format[:-3] + "16x").pack
_DIRENT_PACK = DIRENT.struct.pack


def round_up(value: int, unit: int) -> int:
    return -(-value // unit) * unit


def bad(message: str) -> InvalidArgumentError:
    return InvalidArgumentError(f"cannot write RAFS v6 bootstrap: {message}")


def xattr_body(xattrs: dict[bytes, bytes]) -> bytes:
    """Inline xattrs of one inode: body header, then entries padded to 4 bytes (RafsXAttrs::store_v6).

    Names are stored without their prefix, which becomes the EROFS name index.
    """
    if not xattrs:
        return b""
    parts = [XATTR_HEADER.pack(0, 0, bytes(7))]
    for key, value in xattrs.items():
        for prefix, index in XATTR_INDEXES:
            if key.startswith(prefix):
                break
        else:
            raise bad(f"xattr {key!r} has none of the prefixes RAFS stores")
        name = key[len(prefix):]
        if len(name) > 0xFF or len(value) > 0xFFFF:
            raise bad(f"xattr {key!r} is too long (name {len(name)} > 255 or value {len(value)} > 65535)")
        entry = XATTR_ENTRY.pack(len(name), index, len(value)) + name + value
        parts.append(entry + bytes(-len(entry) % layout.EROFS_XATTR_ALIGNMENT))
    body = b"".join(parts)
    if (len(body) - layout.EROFS_XATTR_IBODY_HEADER_SIZE) // 4 + 1 > 0xFFFF:
        raise bad("extended attributes of one inode are too big")
    return body


def dirent_blocks(entries: list[tuple[bytes, int, int]], block_size: int) -> list[bytes]:
    """Directory blocks for sorted (name, nid, file type) entries: each ``[dirents][names]``.

    An entry (12 bytes + name) never straddles a block; every block but the last is as full as entries
    allow and is not padded here (the rest of its block stays zero).
    """
    if layout.EROFS_DIRENT_SIZE * len(entries) + sum([len(entry[0]) for entry in entries]) <= block_size:
        return [_dirent_block(entries)] if entries else []      # all in one block: no sizes to add up
    blocks, current, used = [], [], 0
    for entry in entries:
        size = layout.EROFS_DIRENT_SIZE + len(entry[0])
        if used + size > block_size:
            blocks.append(_dirent_block(current))
            current, used = [], 0
        current.append(entry)
        used += size
    if current:
        blocks.append(_dirent_block(current))
    return blocks


def _dirent_block(entries: list[tuple[bytes, int, int]]) -> bytes:
    nameoff = layout.EROFS_DIRENT_SIZE * len(entries)
    heads, names = [], []
    try:
        for name, nid, file_type in entries:
            heads.append(_DIRENT_PACK(nid, nameoff, file_type, 0))
            names.append(name)
            nameoff += len(name)
    except struct.error as exc:
        raise InvalidArgumentError(f"cannot encode {DIRENT.name}: {exc}") from None
    heads += names
    return b"".join(heads)


def dirent_size(names: list[bytes], block_size: int) -> int:
    """``i_size`` of a directory with these (sorted) names incl. ``.`` and ``..`` (v6_dirent_size)."""
    total = layout.EROFS_DIRENT_SIZE * len(names) + sum(map(len, names))
    if total <= block_size:             # one block holds them all (most directories): no entry is moved
        return total
    size = 0
    for name in names:
        entry = layout.EROFS_DIRENT_SIZE + len(name)
        if size % block_size + entry > block_size:
            size = round_up(size, block_size)
        size += entry
    return size


def check_names(names: list[bytes]) -> None:
    """Refuse the names of one directory's entries that EROFS cannot hold: empty, longer than 255 bytes,
    holding "/" or NUL (``.`` and ``..`` are refused before, as duplicates). The joined names are
    scanned first, once per directory; only a directory with a bad name is looked at name by name."""
    if not names:
        return
    joined = b"".join(names)
    if b"/" in joined or b"\0" in joined or min(map(len, names)) == 0 or max(map(len, names)) > MAX_NAME_SIZE:
        for name in names:
            if not name or len(name) > MAX_NAME_SIZE or b"/" in name or b"\0" in name or name in (b".", b".."):
                raise bad(f"invalid file name {name!r}")


def inode_record(obj, data_layout: int, i_u: int, size: int | None = None) -> bytes:
    """The extended inode of ``obj`` (an object to write: its ``node`` and its inline ``xattrs`` body;
    i_size = ``size``, or the inode's own) and its inline xattrs."""
    inode = obj.node.inode
    xattrs = obj.xattrs
    xattr_count = (len(xattrs) - layout.EROFS_XATTR_IBODY_HEADER_SIZE) // 4 + 1 if xattrs else 0
    try:
        record = _INODE_PACK(layout.EROFS_INODE_LAYOUT_EXTENDED | data_layout << 1, xattr_count,
                             inode.mode & 0xFFFF, 0, inode.size if size is None else size, i_u, inode.ino,
                             inode.uid, inode.gid, inode.mtime, inode.mtime_nsec, inode.nlink)
    except struct.error as exc:
        for value, what in ((inode.ino, "ino"), (inode.uid, "uid"), (inode.gid, "gid"), (inode.nlink, "nlink")):
            u32(value, what)
        raise InvalidArgumentError(f"cannot encode {INODE.name}: {exc}") from None
    return record + xattrs if xattrs else record


def u32(value: int, what: str) -> int:
    if not 0 <= value <= 0xFFFF_FFFF:
        raise bad(f"{what} {value} does not fit 32 bits")
    return value


def digest32(value: bytes) -> bytes:
    if len(value) > 32:
        raise bad(f"digest of {len(value)} bytes is longer than 32")
    return bytes(value).ljust(32, b"\0")


def device_slots(blobs: list[Blob], block_size: int, alignment: int, position: int) -> tuple[bytes, int, bool]:
    """The device table (one slot per blob, each blob mapped at the next multiple of ``alignment`` from
    ``position`` on, or at 0 when ``alignment`` is 0), the total data blocks (``s_blocks``) and whether
    every blob inlines its chunk digests."""
    bs, align = block_size, alignment
    slots, total, inlined_digest = [], 0, True
    for blob in blobs:
        blob_id = blob_id_field(blob)
        count = blob.uncompressed_size // bs
        mapped = round_up(position, align) // bs if align else 0
        if mapped + count > 0xFFFF_FFFF:
            raise bad(f"blob {blob.blob_id} ends beyond the 32-bit block address space")
        position = (mapped + count) * bs
        total += count
        if not blob.features & BlobFeatures.INLINED_CHUNK_DIGEST:
            inlined_digest = False
        slots.append(DEVICE.pack(blob_id, count, mapped, bytes(56)))
    if total > 0xFFFF_FFFF:
        raise bad(f"{total} data blocks do not fit s_blocks")
    return b"".join(slots), total, inlined_digest

def blob_id_field(blob: Blob) -> bytes:
    """``blob_id`` as the device slot and the blob table hold it: 64 bytes, NUL padded."""
    raw = blob.blob_id.encode("utf-8")
    if not raw or len(raw) > layout.RAFSV6_BLOB_ID_SIZE:
        raise bad(f"blob id {blob.blob_id!r} must be 1 to {layout.RAFSV6_BLOB_ID_SIZE} bytes")
    return raw.ljust(layout.RAFSV6_BLOB_ID_SIZE, b"\0")

def blob_entry(position: int, blob: Blob) -> bytes:
    """The blob table entry of ``blob`` at ``position``."""
    if blob.index != position:
        raise bad(f"blob {blob.blob_id} has index {blob.index} at position {position}")
    try:
        compressor, ci_compressor = COMPRESSOR_IDS[blob.compressor], COMPRESSOR_IDS[blob.ci_compressor]
        digester, cipher = DIGESTER_IDS[blob.digester], CIPHER_IDS[blob.cipher]
    except KeyError as exc:
        raise bad(f"blob {blob.blob_id}: unknown algorithm {exc}") from None
    if cipher:
        if len(blob.cipher_key) != 32 or len(blob.cipher_iv) != 16:
            raise bad(f"blob {blob.blob_id}: cipher key/IV must be 32/16 bytes")
        # Encrypted blobs keep the key in blob_meta_digest and the IV across blob_meta_size and
        # cipher_iv (rafs/src/metadata/layout/v6.rs RafsV6Blob::from_blob_info).
        meta_digest = blob.cipher_key
        meta_size = int.from_bytes(blob.cipher_iv[:8], "little")
        cipher_iv = blob.cipher_iv[8:]
    else:
        meta_digest, meta_size, cipher_iv = blob.meta_digest, blob.meta_size, bytes(8)
    return BLOB.pack(
        blob_id_field(blob), position, blob.chunk_size, blob.chunk_count, compressor, digester,
        blob.features, blob.compressed_size, blob.uncompressed_size, blob.toc_size, ci_compressor,
        blob.ci_offset, blob.ci_compressed_size, blob.ci_uncompressed_size,
        digest32(blob.toc_digest), digest32(meta_digest), meta_size, cipher_iv, cipher, bytes(36))
