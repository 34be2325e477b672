"""The tables a RAFS v6 bootstrap or plain EROFS image keeps beside its inodes, checked and decoded.

* The device table (``struct erofs_deviceslot``, 128 bytes a slot from ``s_devt_slotoff * 128``): in
  RAFS one slot per blob, ``blob_id`` naming it and ``mapped_blkaddr`` where the kernel maps its
  uncompressed space; in plain EROFS one slot per ``mkfs.erofs --blobdev`` device, ``blob_id`` being
  an optional tag.
* The RAFS blob table (``RafsV6Blob``, 256 bytes an entry at ``s_blob_table_offset``): each blob's id,
  algorithms, sizes and where its CI array (blob meta) and ToC are, checked as the reference's
  ``RafsV6Blob::validate`` does (rafs/src/metadata/layout/v6.rs).
* The RAFS chunk info table (``RafsV6ChunkInfo``, 80 bytes an entry at ``s_chunk_table_offset``):
  the chunk records that chunk indexes name by (blob index, CI index).
* The RAFS prefetch table: u32 nids at ``s_prefetch_table_offset``.
"""

from __future__ import annotations

import struct

from ..blob.ci import CHUNK_INFO_V1, CHUNK_INFO_V2
from ..errors import InvalidImageError
from ..model import (BLOB_FEATURES_INVALID_MASK, CIPHER_NAMES, COMPRESSOR_NAMES, DIGESTER_NAMES, MAX_CHUNKS_PER_BLOB,
                     Blob, BlobFeatures)
from ..table_checks import ascii_blob_id
from . import layout
from .records import BLOB, CHUNK_INFO, DEVICE

_U32 = struct.Struct("<I")
_BLOB_MAX_UNCOMPRESSED = 1 << 44        # v6.rs BLOB_MAX_SIZE_UNCOMPRESSED
_BLOB_MAX_COMPRESSED = 1 << 40
_CI_V1_SIZE, _CI_V2_SIZE = CHUNK_INFO_V1.size, CHUNK_INFO_V2.size


def read_devices(data, size: int, sb, count: int, is_rafs: bool) -> list:
    """The ``count`` slots of the device table; in RAFS each must name a distinct blob with blocks."""
    if not count:
        return []
    start = sb.s_devt_slotoff * layout.EROFS_DEVT_SLOT_SIZE
    if start < layout.EROFS_SUPER_OFFSET + layout.EROFS_SUPER_BLOCK_SIZE or \
            start + count * layout.EROFS_DEVT_SLOT_SIZE > size:
        raise InvalidImageError(f"device table of {count} slots at {start:#x} overlaps the superblock or "
                                "runs past the image", structure="v6 device table", offset=start)
    devices = list(DEVICE.iter_unpack(data, start, count))
    if is_rafs:
        seen = set()
        for i, dev in enumerate(devices):
            at = start + i * layout.EROFS_DEVT_SLOT_SIZE
            if dev.blocks == 0:
                raise InvalidImageError(f"device slot {i} has 0 blocks", structure="v6 device table", offset=at)
            blob_id = ascii_blob_id(dev.blob_id, "v6 device table", at)
            if blob_id in seen:
                raise InvalidImageError(f"duplicate blob id {blob_id} in the device table",
                                        structure="v6 device table", offset=at)
            seen.add(blob_id)
    return devices


def read_blob_table(data, ext, devices, *, chunk_size: int, tarfs: bool, blob_id_hint: str | None) -> list[Blob]:
    """The checked blob table of a RAFS image as model blobs; ``blob_id_hint`` (the id of the blob the
    bootstrap was found in) replaces the placeholder id, see :func:`_apply_blob_id_hint`."""
    count = ext.s_blob_table_size // layout.RAFSV6_BLOB_ENTRY_SIZE
    mapped = {}
    for dev in devices:
        mapped[dev.blob_id.rstrip(b"\0")] = dev.mapped_blkaddr
    blobs = []
    for i, entry in enumerate(BLOB.iter_unpack(data, ext.s_blob_table_offset, count)):
        at = ext.s_blob_table_offset + i * layout.RAFSV6_BLOB_ENTRY_SIZE
        _validate_blob_entry(entry, i, chunk_size, tarfs, at)
        raw_id = ascii_blob_id(entry.blob_id, "v6 blob table", at)
        cipher = CIPHER_NAMES[entry.cipher_algo]
        blob = Blob(index=i, blob_id=raw_id, compressor=COMPRESSOR_NAMES[entry.compression_algo],
                    digester=DIGESTER_NAMES[entry.digest_algo], chunk_size=entry.chunk_size,
                    chunk_count=entry.chunk_count, compressed_size=entry.compressed_size,
                    uncompressed_size=entry.uncompressed_size, features=entry.features,
                    ci_compressor=COMPRESSOR_NAMES[entry.ci_compressor], ci_offset=entry.ci_offset,
                    ci_compressed_size=entry.ci_compressed_size,
                    ci_uncompressed_size=entry.ci_uncompressed_size, toc_digest=entry.blob_toc_digest,
                    toc_size=entry.blob_toc_size, cipher=cipher,
                    mapped_blkaddr=mapped.get(entry.blob_id.rstrip(b"\0"), 0))
        if cipher == "none":
            blob.meta_digest, blob.meta_size = entry.blob_meta_digest, entry.blob_meta_size
        else:
            # encrypted blobs reuse these fields for the key and the first half of the IV
            blob.cipher_key = entry.blob_meta_digest
            blob.cipher_iv = entry.blob_meta_size.to_bytes(8, "little") + entry.cipher_iv
        blobs.append(blob)
    _apply_blob_id_hint(blobs, blob_id_hint)
    return blobs


def _validate_blob_entry(entry, index: int, chunk_size: int, tarfs: bool, at: int) -> None:
    """The checks of v6.rs ``RafsV6Blob::validate``."""
    def bad(message):
        raise InvalidImageError(f"blob entry {index}: {message}", structure="v6 blob table", offset=at)

    if entry.blob_index != index:
        bad(f"blob_index {entry.blob_index} is not its position")
    if entry.chunk_size != chunk_size:
        bad(f"chunk_size {entry.chunk_size:#x} differs from the superblock's")
    if entry.chunk_count > MAX_CHUNKS_PER_BLOB:
        bad(f"chunk_count {entry.chunk_count} exceeds {MAX_CHUNKS_PER_BLOB}")
    if entry.compression_algo not in COMPRESSOR_NAMES or entry.ci_compressor not in COMPRESSOR_NAMES or \
            entry.digest_algo not in DIGESTER_NAMES or entry.cipher_algo not in CIPHER_NAMES:
        bad(f"unknown algorithm ids {entry.compression_algo}/{entry.ci_compressor}/{entry.digest_algo}/"
            f"{entry.cipher_algo}")
    if entry.uncompressed_size > _BLOB_MAX_UNCOMPRESSED or entry.compressed_size > _BLOB_MAX_COMPRESSED:
        bad("blob sizes exceed the reference's limits")
    features = entry.features
    if features & BLOB_FEATURES_INVALID_MASK:
        bad(f"invalid feature bits {features:#x}")
    if bool(features & BlobFeatures.ALIGNED) == tarfs:
        bad("ALIGNED must be set exactly when the image is not in tarfs mode")
    if entry.ci_compressed_size > entry.ci_uncompressed_size:
        bad("ci_compressed_size exceeds ci_uncompressed_size")
    count, ci = entry.chunk_count, entry.ci_uncompressed_size
    special = features & (BlobFeatures.BATCH | BlobFeatures.ZRAN | BlobFeatures.ENCRYPTED)
    if features & BlobFeatures.CHUNK_INFO_V2:
        if (ci < count * _CI_V2_SIZE) if special else (ci != count * _CI_V2_SIZE):
            bad(f"ci_uncompressed_size {ci} does not fit {count} v2 chunk infos")
    elif special:
        bad("BATCH/ZRAN/ENCRYPTED blobs need CHUNK_INFO_V2")
    elif not (features & BlobFeatures.IS_CHUNKDICT_GENERATED) and not tarfs and ci != count * _CI_V1_SIZE:
        bad(f"ci_uncompressed_size {ci} does not fit {count} v1 chunk infos")


def _apply_blob_id_hint(blobs: list[Blob], hint: str | None) -> None:
    """Blobs that carried this bootstrap take the id they were found under (``BlobInfo::blob_id``):
    the placeholder id always; with a single blob also an inline-meta or pre-ToC blob's own id."""
    if not hint:
        return
    for blob in blobs:
        inline = blob.has(BlobFeatures.INLINED_FS_META) and not blob.has(BlobFeatures.SEPARATE)
        if blob.blob_id == layout.RAFSV6_INLINE_BLOB_ID_PLACEHOLDER or \
                (len(blobs) == 1 and (inline or not blob.has(BlobFeatures.CAP_TAR_TOC))):
            blob.blob_id = hint


def device_blobs(devices, block_size: int) -> list[Blob]:
    """Plain EROFS: one blob per extra device, named by its tag when it has one."""
    blobs = []
    for i, dev in enumerate(devices):
        tag = dev.blob_id.split(b"\0", 1)[0].decode("ascii", "replace")
        size = dev.blocks * block_size
        blobs.append(Blob(index=i, blob_id=tag or f"erofs-device-{i + 1}", compressor="none",
                          digester="sha256", chunk_size=block_size, compressed_size=size,
                          uncompressed_size=size, mapped_blkaddr=dev.mapped_blkaddr))
    return blobs


def prefetch_nids(data, ext) -> list[int]:
    """The nids of the RAFS prefetch table (none without a superblock extension or a table)."""
    if ext is None or not ext.s_prefetch_table_offset or not ext.s_prefetch_table_size:
        return []
    offset, size = ext.s_prefetch_table_offset, ext.s_prefetch_table_size
    return [nid for (nid,) in _U32.iter_unpack(bytes(data[offset:offset + size]))]


def read_chunk_table(data, ext) -> dict:
    """{(blob index, CI index): chunk info record} of the bootstrap's chunk info table; the first
    record of a pair wins."""
    table = {}
    if ext is not None and ext.s_chunk_table_size:
        count = ext.s_chunk_table_size // layout.RAFSV6_CHUNK_INFO_SIZE
        for rec in CHUNK_INFO.iter_unpack(data, ext.s_chunk_table_offset, count):
            table.setdefault((rec.blob_index, rec.index), rec)
    return table
