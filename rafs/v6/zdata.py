"""File data of compressed EROFS inodes, for :class:`rafs.image.Image` (the kernel's zdata.c role).

A compressed file is handed out as one :class:`rafs.model.Chunk` per extent (fragments in pieces of
at most :data:`PIECE_SIZE`), all in the pseudo blob :data:`rafs.model.ZDATA_BLOB_INDEX`: ``index`` is
the file's nid, ``file_offset`` where the piece starts, ``compressed_offset``/``compressed_size`` the
pcluster (or the offset in the packed inode) and ``uncompressed_offset`` a key unique to the file and
offset (two files may share a pcluster yet need different lengths of it). :class:`ZDataReader` is the
chunk reader of that pseudo blob: it finds the extent again from the nid and decodes it.
"""

from __future__ import annotations

import bisect
import functools
import stat as _stat

from ..errors import InvalidImageError
from ..lru import LRU
from ..model import META_BLOB_INDEX, ZDATA_BLOB_INDEX, Chunk
from . import layout, zdecompress
from .zdecompress import INTERLACED
from .zmap import FRAGMENT, ZMapper

# Fragments (bytes of the packed inode) are handed out in pieces of at most this size.
PIECE_SIZE = 1 << 20
# Decoded extents kept for reuse: fragments of many small files share one pcluster of the packed inode.
DECODED_CACHE = 32


class ZDataReader:
    """Maps and decodes the compressed inodes of one :class:`rafs.v6.reader.V6Reader`."""

    source = None                           # data comes from the image itself: never a backend

    def __init__(self, reader):
        self.reader = reader
        self.mapper = ZMapper(reader)
        self._maps = functools.lru_cache(maxsize=256)(self._map)
        self._decoded: LRU[bytes] = LRU(DECODED_CACHE)

    # -- mapping ---------------------------------------------------------------------------------

    def _map(self, nid: int):
        rec = self.reader.record(nid)
        extents = self.mapper.extents(rec)
        return [e.file_offset for e in extents], extents

    def extents(self, nid: int):
        return self._maps(nid)[1]

    def chunks(self, rec) -> list[Chunk]:
        """The chunks of compressed inode ``rec``: one per extent, fragments cut into pieces."""
        nid = rec.nid
        result = []
        for ext in self.extents(nid):
            pieces = [(ext.file_offset, ext.length)]
            if ext.kind == FRAGMENT:
                pieces = [(at, min(PIECE_SIZE, ext.file_offset + ext.length - at))
                          for at in range(ext.file_offset, ext.file_offset + ext.length, PIECE_SIZE)]
            for at, length in pieces:
                address = ext.address + (at - ext.file_offset if ext.kind == FRAGMENT else 0)
                result.append(Chunk(digest=b"", blob_index=ZDATA_BLOB_INDEX, compressed_offset=address,
                                    compressed_size=ext.plen, uncompressed_offset=(nid << 64) | at,
                                    uncompressed_size=length, file_offset=at, index=nid))
        return result

    # -- the ChunkSource interface (rafs.image.protocols) ---------------------------------------------

    def read(self, chunk: Chunk, *, path: str | None = None) -> bytes:
        return self.read_range(chunk.index, chunk.file_offset, chunk.uncompressed_size)

    def read_many(self, chunks, *, path: str | None = None, **_) -> list[bytes]:
        return [self.read(chunk, path=path) for chunk in chunks]

    def fetch_raw(self, chunk: Chunk) -> Chunk:
        return chunk

    def decode(self, chunk: Chunk, raw, *, path: str | None = None) -> bytes:
        return self.read(chunk, path=path)

    def verify(self, chunk: Chunk, data: bytes, *, path: str | None = None) -> None:
        """EROFS records no digests: decoding to exactly the declared size is the only check."""

    def is_cached(self, chunk: Chunk) -> bool:
        return True

    # -- reading ---------------------------------------------------------------------------------

    def read_range(self, nid: int, offset: int, length: int, *, in_packed: bool = False) -> bytes:
        """``length`` bytes at ``offset`` of compressed inode ``nid``."""
        starts, extents = self._maps(nid)
        rec = self.reader.record(nid)
        if offset < 0 or offset + length > rec.size:
            raise InvalidImageError(f"nid {nid}: [{offset}, +{length}) is outside its {rec.size} bytes",
                                    structure="erofs compressed index", offset=rec.offset)
        out = bytearray()
        i = max(0, bisect.bisect_right(starts, offset) - 1)
        while len(out) < length:
            ext = extents[i]
            lo = offset + len(out) - ext.file_offset
            want = min(ext.length - lo, length - len(out))
            if ext.kind == FRAGMENT:
                if in_packed:
                    raise InvalidImageError(f"the packed inode {nid} itself refers to fragments",
                                            structure="erofs compressed index", offset=rec.offset)
                out += self.packed_range(ext.address + lo, want)
            else:
                out += self._decoded_extent(nid, ext)[lo:lo + want]
            i += 1
        return bytes(out)

    def read_all(self, rec) -> bytes:
        """Every byte of compressed inode ``rec`` (a directory or symlink)."""
        if rec.size > self.reader.size * 1024:
            raise InvalidImageError(f"nid {rec.nid}: size {rec.size} is beyond any compression ratio of the "
                                    "image", structure="erofs compressed index", offset=rec.offset)
        return self.read_range(rec.nid, 0, rec.size)

    def packed_range(self, offset: int, length: int) -> bytes:
        """Bytes of the packed inode (``s_packed_nid``), where fragments live."""
        reader = self.reader
        rec = self.mapper.packed_inode()
        nid = rec.nid
        if not _stat.S_ISREG(rec.mode):
            raise InvalidImageError(f"packed inode {nid} is not a regular file", structure="v6 inode",
                                    offset=rec.offset)
        if offset < 0 or offset + length > rec.size:
            raise InvalidImageError(f"fragment [{offset:#x}, +{length:#x}) lies outside the {rec.size}-byte "
                                    f"packed inode", structure="erofs compressed index", offset=rec.offset)
        if rec.datalayout in layout.EROFS_COMPRESSED_LAYOUTS:
            return self.read_range(nid, offset, length, in_packed=True)
        out = bytearray(length)
        for file_offset, ext_len, blob, at in reader.flat_extents(rec):
            lo, hi = max(offset, file_offset), min(offset + length, file_offset + ext_len)
            if lo >= hi:
                continue
            if blob != META_BLOB_INDEX:
                raise InvalidImageError(f"packed inode {nid} keeps data outside the image", structure="v6 inode",
                                        offset=rec.offset)
            out[lo - offset:hi - offset] = reader.data[at + lo - file_offset:at + hi - file_offset]
        return bytes(out)

    def _decoded_extent(self, nid: int, ext) -> bytes:
        key = (nid, ext.file_offset)
        data = self._decoded.get(key)
        if data is not None:
            return data
        mapper = self.mapper
        bs = mapper.block_size
        src = bytes(self.reader.data[ext.address:ext.address + ext.plen])
        if len(src) != ext.plen:
            raise InvalidImageError(f"nid {nid}: pcluster [{ext.address:#x}, +{ext.plen:#x}) runs past the image",
                                    structure="erofs pcluster", offset=ext.address)
        data = zdecompress.decode(ext.algorithm, src, ext.length, partial=ext.partial,
                                  zero_padding=mapper.zero_padding, first_block_room=bs - ext.address % bs,
                                  interlaced_at=bs - ext.file_offset % bs if ext.algorithm == INTERLACED else None,
                                  offset=ext.address)
        self._decoded.put(key, data)
        return data
