"""The chunk store of an image: reads chunks from the blobs a locator finds, and keeps the latest decoded.

It knows the blob table, the locator and the chunk sources of data kept inside the image (plain EROFS
data blocks, compressed EROFS extents), never the :class:`~rafs.image.Image` that owns it. Decoded
chunks are kept in one bounded :class:`rafs.lru.LRU` (``cache_size`` chunks, 64 by default, so at
most 64 chunk sizes of memory), shared by every file of the image.
"""

from __future__ import annotations

import threading
from typing import Callable, Mapping, Sequence

from ..blob.reader import ChunkReader
from ..errors import InvalidImageError
from ..io.source import LocalRangeReader
from ..lru import LRU
from ..model import META_BLOB_INDEX, Blob, Chunk
from .protocols import BlobLocator, ChunkSource


def _key(chunk: Chunk) -> tuple[int, int, int]:
    """What names a chunk's decoded bytes in the cache (the same data wherever files share it)."""
    return chunk.blob_index, chunk.uncompressed_offset, chunk.compressed_offset


def image_data_reader(data) -> ChunkReader:
    """The chunk source of data stored in the image itself (:data:`~rafs.model.META_BLOB_INDEX`:
    plain EROFS data blocks), which is never compressed and carries no digest."""
    from ..ranges import BytesRangeReader
    blob = Blob(index=META_BLOB_INDEX, blob_id="<image>", compressor="none")
    return ChunkReader(blob, BytesRangeReader(data, "image"), validate=False)


class BlobMetaChunkInfos:
    """The :class:`~rafs.image.protocols.ChunkInfoSource` of blobs found by a locator: each blob's CI
    array, read from its blob meta (the v6 reader caches what it gets)."""

    def __init__(self, locator: BlobLocator):
        self.locator = locator

    def __call__(self, blob: Blob) -> list:
        from ..blob.meta import load_chunk_infos
        return load_chunk_infos(blob, self.locator.open(blob.blob_id, blob.index))


class ChunkStore:
    """Chunk sources per blob (made once, then shared) and the cache of decoded chunks.

    ``inline`` maps the pseudo blob indexes of data kept in the image (META_BLOB_INDEX,
    ZDATA_BLOB_INDEX) to a function making its chunk source on first use.
    """

    def __init__(self, blobs: Sequence[Blob], locator: BlobLocator, *, validate: bool = False,
                 cache_size: int = 64, inline: Mapping[int, Callable[[], ChunkSource]] | None = None):
        self.blobs = blobs
        self.locator = locator
        self.validate = validate
        self._inline = dict(inline or {})
        self._sources: dict[int, ChunkSource] = {}
        self._lock = threading.Lock()
        self._cache: LRU[bytes] = LRU(cache_size)

    def chunk_reader(self, blob_index: int) -> ChunkSource:
        """The source that fetches, decodes and verifies chunks of blob ``blob_index`` (made once, then shared)."""
        reader = self._sources.get(blob_index)
        if reader is None:
            with self._lock:
                reader = self._sources.get(blob_index)
                if reader is None:
                    reader = self._sources[blob_index] = self._make(blob_index)
        return reader

    def opened(self) -> list[ChunkSource]:
        """The chunk sources made so far (for statistics over every blob read)."""
        return list(self._sources.values())

    def _make(self, blob_index: int) -> ChunkSource:
        make_inline = self._inline.get(blob_index)
        if make_inline is not None:
            return make_inline()
        if not 0 <= blob_index < len(self.blobs):
            raise InvalidImageError(f"chunk refers to blob {blob_index} of {len(self.blobs)}",
                                    structure="chunk info")
        return self.locator.chunk_reader(self.blobs[blob_index], validate=self.validate)

    def read_chunk(self, chunk: Chunk, *, path: str | None = None) -> bytes:
        """The uncompressed bytes of one chunk (verified when the store validates)."""
        key = _key(chunk)
        data = self._cache.get(key)
        if data is None:
            data = self.chunk_reader(chunk.blob_index).read(chunk, path=path)
            self._cache.put(key, data)
        return data

    def read_chunks(self, chunks: list[Chunk], *, path: str | None = None,
                    local_only: bool = False) -> list[bytes] | None:
        """The uncompressed bytes of each chunk; the chunks of a blob that are not in memory are read in
        one batch, so adjacent ones are fetched with one ranged request. With ``local_only`` nothing
        waits on a remote backend: None unless every chunk is in memory, in the blob cache or in a
        blob file on local disk (see :meth:`needs_backend`).
        """
        cache = self._cache
        if len(chunks) == 1:                 # most reads of a mount: no grouping
            chunk = chunks[0]
            key = _key(chunk)
            data = cache.get(key)
            if data is not None:
                return [data]
            if local_only and self.needs_backend((chunk,)):
                return None
            data = self.chunk_reader(chunk.blob_index).read_many([chunk], path=path)[0]
            cache.put(key, data)
            return [data]
        out: list = [None] * len(chunks)
        by_blob: dict[int, list[int]] = {}
        for i, chunk in enumerate(chunks):
            data = cache.get(_key(chunk))
            if data is not None:
                out[i] = data
            else:
                by_blob.setdefault(chunk.blob_index, []).append(i)
        if local_only and by_blob and self.needs_backend([chunks[i] for p in by_blob.values() for i in p]):
            return None
        for blob_index, positions in by_blob.items():
            datas = self.chunk_reader(blob_index).read_many([chunks[i] for i in positions], path=path)
            for i, data in zip(positions, datas):
                out[i] = data
                cache.put(_key(chunks[i]), data)
        return out

    def needs_backend(self, chunks) -> bool:
        """Whether reading ``chunks`` may wait on a remote backend: False when each one is in memory,
        in the blob cache, or in a blob file on local disk.
        """
        for chunk in chunks:
            if _key(chunk) in self._cache:
                continue
            reader = self._sources.get(chunk.blob_index)
            if reader is None:
                return True                  # not opened yet: opening may itself ask the backend
            if not (isinstance(reader.source, LocalRangeReader) or reader.is_cached(chunk)):
                return True
        return False
