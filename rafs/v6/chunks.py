"""Chunk addressing of RAFS v6 files: chunk indexes resolved to :class:`rafs.model.Chunk` records.

Every RAFS regular file is chunk-based: after the inode (aligned to 8 bytes) come one 8-byte chunk index
(``struct erofs_inode_chunk_index`` / ``RafsV6InodeChunkAddr``, rafs/src/metadata/layout/v6.rs) per
``s_chunk_size`` of the file. ``c_blob_addr_hi & 0xff`` is the blob index plus one, its upper byte with
``c_blob_addr_lo`` a 24-bit index into that blob's CI array, and ``c_blk_addr`` the chunk's uncompressed
offset in blocks (``EROFS_NULL_ADDR``: a hole). A chunk is resolved through the bootstrap's chunk info
table, or failing that through the blob's CI array (blob meta) that the ``chunk_info_source`` given to
the reader loads. In tarfs mode the tar is the blob: a chunk is the plain bytes at ``c_blk_addr``
(512-byte blocks), with no digest.
"""

from __future__ import annotations

from typing import Callable, Iterator, Sequence

from ..errors import InvalidImageError
from ..model import Blob, Chunk, ChunkInfoSource
from . import extents, layout
from .inodes import Record
from .records import CHUNK_INDEX
from .superblock import Geometry


class RafsChunks:
    """Resolves the chunk indexes of one RAFS image's files.

    ``chunk_table`` (no arguments) gives the bootstrap's chunk info table (see
    :func:`rafs.v6.tables.read_chunk_table`); ``chunk_info_source`` (a :class:`rafs.model.Blob` -> its
    CI array, or None) resolves chunks the table does not hold; each blob's array is asked for once.
    """

    def __init__(self, data, geometry: Geometry, blobs: list[Blob], chunk_table: Callable[[], dict],
                 chunk_info_source: ChunkInfoSource | None = None):
        self.data = data
        self.geometry = geometry
        self.blobs = blobs
        self.chunk_table = chunk_table
        self.chunk_info_source = chunk_info_source
        self._ci_arrays: dict[int, Sequence | None] = {}

    def chunks(self, rec: Record) -> list[Chunk]:
        """The chunks of RAFS file ``rec``.

        The usual file, every chunk in the bootstrap's chunk info table, is read in one pass over the
        chunk indexes without intermediate records (a mount asks this once per file); anything unusual
        (a CI-only chunk, a bad blob index, an overrun, tarfs mode) goes :meth:`long_way`, which says why.
        """
        table = self.chunk_table()
        geo = self.geometry
        if not table or geo.tarfs:
            return self.long_way(rec)
        size, chunk_size, blob_count = rec.size, geo.chunk_size, len(self.blobs)
        count = -(-size // chunk_size)
        start = extents.index_array(geo, rec, layout.EROFS_CHUNK_INDEX_SIZE, count)
        end = start + count * layout.EROFS_CHUNK_INDEX_SIZE
        result = []
        file_offset = -chunk_size
        for lo, hi, blkaddr in CHUNK_INDEX.struct.iter_unpack(memoryview(self.data)[start:end]):
            file_offset += chunk_size
            if blkaddr == layout.EROFS_NULL_ADDR:
                continue
            blob_index = (hi & 0xFF) - 1
            ci_index = ((hi >> 8) << 16) | lo
            info = table.get((blob_index, ci_index)) if 0 <= blob_index < blob_count else None
            if info is None or info.uncompressed_size > min(chunk_size, size - file_offset):
                return self.long_way(rec)
            result.append(Chunk(info.block_id, blob_index, info.compressed_offset, info.compressed_size,
                                info.uncompressed_offset, info.uncompressed_size, file_offset, ci_index,
                                info.flags, info.crc32))
        return result

    def addresses(self, rec: Record) -> Iterator[tuple[int, int, int, int, int]]:
        """(position, blob index, CI index, c_blk_addr, entry offset) of a RAFS file's chunk indexes,
        holes left out; a blob index outside the blob table is an error."""
        geo = self.geometry
        count = -(-rec.size // geo.chunk_size)
        start = extents.index_array(geo, rec, layout.EROFS_CHUNK_INDEX_SIZE, count)
        for position, e in enumerate(CHUNK_INDEX.iter_unpack(self.data, start, count)):
            if e.c_blk_addr == layout.EROFS_NULL_ADDR:
                continue
            at = start + position * layout.EROFS_CHUNK_INDEX_SIZE
            blob_index = (e.c_blob_addr_hi & 0xFF) - 1
            if not 0 <= blob_index < len(self.blobs):
                raise InvalidImageError(f"nid {rec.nid}: chunk {position} names blob {blob_index} of "
                                        f"{len(self.blobs)}", structure="v6 chunk index", offset=at)
            yield position, blob_index, ((e.c_blob_addr_hi >> 8) << 16) | e.c_blob_addr_lo, e.c_blk_addr, at

    def long_way(self, rec: Record) -> list[Chunk]:
        """The chunks of RAFS file ``rec`` one index at a time, each checked and any fault named."""
        geo = self.geometry
        table = self.chunk_table()
        tarfs = geo.tarfs
        chunk_size = geo.chunk_size
        result = []
        for position, blob_index, ci_index, blkaddr, at in self.addresses(rec):
            file_offset = position * chunk_size
            info = None if tarfs else table.get((blob_index, ci_index))
            if tarfs:
                # the tar is the blob: data sits uncompressed at c_blk_addr (512-byte blocks), no digest
                length = min(chunk_size, rec.size - file_offset)
                offset = blkaddr * geo.block_size
                chunk = Chunk(digest=b"", blob_index=blob_index, compressed_offset=offset, compressed_size=length,
                              uncompressed_offset=offset, uncompressed_size=length, file_offset=file_offset,
                              index=ci_index)
            elif info is not None:
                chunk = Chunk(digest=info.block_id, blob_index=blob_index, compressed_offset=info.compressed_offset,
                              compressed_size=info.compressed_size, uncompressed_offset=info.uncompressed_offset,
                              uncompressed_size=info.uncompressed_size, file_offset=file_offset, index=ci_index,
                              flags=info.flags, crc32=info.crc32)
            else:
                chunk = self._from_ci(blob_index, ci_index, file_offset, rec.nid, at)
            if chunk.uncompressed_size > min(chunk_size, rec.size - file_offset):
                raise InvalidImageError(f"nid {rec.nid}: chunk {position} of {chunk.uncompressed_size} bytes "
                                        "overruns its place in the file", structure="v6 chunk info", offset=at)
            result.append(chunk)
        return result

    def _from_ci(self, blob_index: int, ci_index: int, file_offset: int, nid: int, at: int) -> Chunk:
        if self.chunk_info_source is None:
            raise InvalidImageError(f"nid {nid}: chunk {ci_index} of blob {blob_index} is not in the chunk "
                                    "table and no blob meta (CI array) is available", structure="v6 chunk index",
                                    offset=at)
        infos = self._ci_arrays.get(blob_index)
        if infos is None:
            infos = self._ci_arrays[blob_index] = self.chunk_info_source(self.blobs[blob_index])
        if infos is None or not 0 <= ci_index < len(infos):
            raise InvalidImageError(f"nid {nid}: CI index {ci_index} outside blob {blob_index}'s "
                                    f"{0 if infos is None else len(infos)} chunk infos",
                                    structure="v6 chunk index", offset=at)
        ci = infos[ci_index]
        return Chunk(digest=b"", blob_index=blob_index, compressed_offset=ci.compressed_offset,
                     compressed_size=ci.compressed_size, uncompressed_offset=ci.uncompressed_offset,
                     uncompressed_size=ci.uncompressed_size, file_offset=file_offset, index=ci_index,
                     flags=int(ci.flags), crc32=getattr(ci, "crc32", 0))

    def address_faults(self, rec: Record) -> Iterator[str]:
        """Chunk indexes of RAFS file ``rec`` whose ``c_blk_addr`` disagrees with their chunk info's
        uncompressed offset (in blocks), as the reference's checker reports them."""
        geo = self.geometry
        if rec.datalayout != layout.EROFS_INODE_CHUNK_BASED:
            if rec.size:
                yield f"nid {rec.nid}: regular file with {rec.layout_name} layout in a RAFS image"
            return
        if geo.tarfs:
            return                              # tarfs chunk tables carry no usable addresses
        table = self.chunk_table()
        for position, blob_index, ci_index, blkaddr, _ in self.addresses(rec):
            info = table.get((blob_index, ci_index))
            if info is not None and info.uncompressed_offset != blkaddr * geo.block_size:
                yield (f"nid {rec.nid}: chunk {position} c_blk_addr {blkaddr} disagrees with uncompressed offset "
                       f"{info.uncompressed_offset:#x}")

    def table_faults(self) -> Iterator[str]:
        """Chunk info table entries that name a blob outside the blob table or a CI index past their
        blob's chunk count."""
        blobs = self.blobs
        for (blob_index, ci_index), info in self.chunk_table().items():
            if not 0 <= blob_index < len(blobs):
                yield f"chunk table entry for CI index {ci_index} names blob {blob_index} of {len(blobs)}"
            elif blobs[blob_index].chunk_count and ci_index >= blobs[blob_index].chunk_count:
                yield (f"chunk table entry CI index {ci_index} exceeds blob {blob_index}'s "
                       f"{blobs[blob_index].chunk_count} chunks")
