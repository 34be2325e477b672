"""Where the data of a plain EROFS inode lies: flat extents, chunk-based block maps and devices.

* ``FLAT_PLAIN``: ``i_size`` bytes in whole blocks from block ``i_u`` (the start block); a start block
  of ``EROFS_NULL_ADDR`` is a hole.
* ``FLAT_INLINE``: the same, except that the last partial block's bytes follow the inode and its
  inline xattrs (the "tail"), which must not cross a block boundary.
* ``CHUNK_BASED``: ``i_u`` is the chunk format (``struct erofs_inode_chunk_info``): log2 of the chunk
  size in blocks, and whether 8-byte chunk indexes (``struct erofs_inode_chunk_index``: device id in
  ``c_blob_addr_hi``, block in ``c_blk_addr``) or 4-byte block map entries follow the inode, aligned
  to their own size.

Addresses are in the unified block space of device 0 (the image); those falling into a device's
``mapped_blkaddr`` range are redirected to that device, as the kernel does (fs/erofs/data.c
``erofs_map_dev``). An extent is (file offset, length, blob index, offset): image bytes belong to the
pseudo blob :data:`rafs.model.META_BLOB_INDEX`, a device's to blob ``device - 1``. RAFS chunk indexes
are not resolved here but in :mod:`rafs.v6.chunks`. Every function takes the image's
:class:`rafs.v6.superblock.Geometry`.
"""

from __future__ import annotations

import struct
from typing import Callable

from ..errors import InvalidImageError
from ..model import META_BLOB_INDEX, Chunk
from . import layout
from .inodes import FLAT_PIECE_SIZE, Record, chunk_format_bits
from .records import CHUNK_INDEX
from .superblock import Geometry

_U32 = struct.Struct("<I")
Extent = tuple[int, int, int, int]


def unified(geo: Geometry, address: int, length: int, nid: int) -> tuple[int, int]:
    """(blob index, offset) of ``length`` bytes at ``address`` in the unified (device 0) space.

    RAFS device slots map blobs' *uncompressed* space, which only the kernel's view has: RAFS
    addresses in device 0 always mean the bootstrap itself.
    """
    block_size = geo.block_size
    for i, dev in enumerate(() if geo.is_rafs else geo.devices):
        if not dev.mapped_blkaddr:
            continue
        start = dev.mapped_blkaddr * block_size
        end = start + dev.blocks * block_size
        if start <= address < end:
            if address + length > end:
                break
            return i, address - start
    else:
        if address + length <= geo.size:
            return META_BLOB_INDEX, address
    raise InvalidImageError(f"nid {nid}: data [{address:#x}, +{length:#x}) lies outside the image and its "
                            "devices", structure="v6 inode", offset=geo.inode_offset(nid))


def index_array(geo: Geometry, rec: Record, unit: int, count: int) -> int:
    """Offset of the ``count`` entries of ``unit`` bytes that follow inode ``rec`` (aligned to
    ``unit``), checked to lie in the image."""
    start = (rec.body_end + unit - 1) // unit * unit
    if start + unit * count > geo.size:
        raise InvalidImageError(f"nid {rec.nid}: {count} chunk index entries run past the image",
                                structure="v6 chunk index", offset=start)
    return start


def extents(geo: Geometry, data, rec: Record) -> list[Extent]:
    """(file offset, length, blob index, offset) of the data of a non-RAFS-chunked inode; holes left
    out. Compressed inodes have none: their bytes come from :mod:`rafs.v6.zdata`."""
    size, bs = rec.size, geo.block_size
    if size == 0 or rec.datalayout in layout.EROFS_COMPRESSED_LAYOUTS:
        return []
    if rec.datalayout == layout.EROFS_INODE_CHUNK_BASED:
        return _plain_chunk_extents(geo, data, rec)
    nblocks = -(-size // bs)
    inline = rec.datalayout == layout.EROFS_INODE_FLAT_INLINE
    plain_bytes = (nblocks - 1) * bs if inline else size
    result = []
    if plain_bytes and rec.startblk != layout.EROFS_NULL_ADDR:
        blob, offset = unified(geo, rec.startblk * bs, plain_bytes, rec.nid)
        result.append((0, plain_bytes, blob, offset))
    if inline:
        tail_at, tail = rec.body_end, size - plain_bytes
        if tail_at % bs + tail > bs or tail_at + tail > geo.size:
            raise InvalidImageError(f"nid {rec.nid}: inline data of {tail} bytes crosses a block boundary",
                                    structure="v6 inode", offset=rec.offset)
        result.append((plain_bytes, tail, META_BLOB_INDEX, tail_at))
    return result


def _plain_chunk_extents(geo: Geometry, data, rec: Record) -> list[Extent]:
    bits = chunk_format_bits(geo, rec.nid, rec.i_u)
    if bits > 48:
        raise InvalidImageError(f"nid {rec.nid}: chunk size 2^{bits} is absurd", structure="v6 inode",
                                offset=rec.offset)
    chunk = 1 << bits
    count = -(-rec.size // chunk)
    indexes = rec.i_u & layout.EROFS_CHUNK_FORMAT_INDEXES
    unit = layout.EROFS_CHUNK_INDEX_SIZE if indexes else layout.EROFS_BLOCK_MAP_ENTRY_SIZE
    start = index_array(geo, rec, unit, count)
    if indexes:
        entries = ((e.c_blob_addr_hi & geo.device_id_mask, e.c_blk_addr)
                   for e in CHUNK_INDEX.iter_unpack(data, start, count))
    else:
        entries = ((0, blkaddr) for (blkaddr,) in _U32.iter_unpack(bytes(data[start:start + 4 * count])))
    devices, block_size = geo.devices, geo.block_size
    result = []
    for position, (device, blkaddr) in enumerate(entries):
        if blkaddr == layout.EROFS_NULL_ADDR:
            continue
        file_offset = position * chunk
        length = min(chunk, rec.size - file_offset)
        address = blkaddr * block_size
        if device == 0:
            blob, offset = unified(geo, address, length, rec.nid)
        elif device <= len(devices):
            blob, offset = device - 1, address
            # erofs-utils 1.5 leaves blocks 0 in --blobdev slots: only a recorded size is a bound
            blocks = devices[blob].blocks
            if blocks and offset + length > blocks * block_size:
                raise InvalidImageError(f"nid {rec.nid}: chunk {position} runs past device {device}",
                                        structure="v6 chunk index", offset=start + unit * position)
        else:
            raise InvalidImageError(f"nid {rec.nid}: chunk {position} names device {device} of "
                                    f"{len(devices)}", structure="v6 chunk index",
                                    offset=start + unit * position)
        result.append((file_offset, length, blob, offset))
    return result


def flat_chunks(geo: Geometry, data, rec: Record) -> list[Chunk]:
    """The chunks of a plain EROFS file's extents: pieces aligned to :data:`FLAT_PIECE_SIZE` in the
    file, addressed by byte offset in the image or device, without digests."""
    result = []
    for file_offset, length, blob, offset in extents(geo, data, rec):
        end = file_offset + length
        while file_offset < end:
            piece = min(end, (file_offset // FLAT_PIECE_SIZE + 1) * FLAT_PIECE_SIZE) - file_offset
            result.append(Chunk(digest=b"", blob_index=blob, compressed_offset=offset,
                                compressed_size=piece, uncompressed_offset=offset, uncompressed_size=piece,
                                file_offset=file_offset, index=offset // geo.block_size))
            file_offset += piece
            offset += piece
    return result


def meta_data(geo: Geometry, data, rec: Record, decompress: Callable[[Record], bytes]) -> bytes:
    """All bytes of a directory or symlink, which must live in the image itself; a compressed inode's
    come from ``decompress``."""
    if rec.size > geo.size:
        raise InvalidImageError(f"nid {rec.nid}: size {rec.size} exceeds the image", structure="v6 inode",
                                offset=rec.offset)
    if rec.datalayout in layout.EROFS_COMPRESSED_LAYOUTS:
        return decompress(rec)
    out = bytearray(rec.size)
    for file_offset, length, blob, offset in extents(geo, data, rec):
        if blob != META_BLOB_INDEX:
            raise InvalidImageError(f"nid {rec.nid}: directory or symlink data outside the image",
                                    structure="v6 inode", offset=rec.offset)
        out[file_offset:file_offset + length] = data[offset:offset + length]
    return bytes(out)
