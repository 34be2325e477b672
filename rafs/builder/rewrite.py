"""Writing a new data blob out of chunks an image already stores, for ``rafs compact`` and ``rafs optimize``.

A :class:`ChunkCopier` opens one new blob in a directory (named by its sha256 once complete, written
through a temporary file) and appends chunks taken from the image's blobs. A chunk whose source blob
uses the new blob's compressor and is stored on its own (not encrypted, not in a batch) is copied as
stored, without recompressing; any other is decoded and encoded again. Every chunk is checked against
its digest first: a damaged chunk stops the rewrite instead of spreading into the new blob.
"""

from __future__ import annotations

from ..blob import codecs
from ..blob.writer import BlobWriter
from ..errors import DigestMismatchError
from ..model import Blob, BlobFeatures, Chunk, ChunkFlags
from .outputs import Output

_REENCODE = int(ChunkFlags.ENCRYPTED | ChunkFlags.BATCH)


class ChunkCopier:
    """One new blob at table position ``index`` in ``directory``, for chunks of ``image``.

    ``like`` is the blob whose compressor, digester and chunk size the new one takes; ``version`` the
    RAFS version (v6 blobs carry the CI array); ``features`` more feature bits for the new blob.
    """

    def __init__(self, image, directory, *, index: int, like: Blob, version: int, aligned: bool,
                 toc: bool = False, mapped: bool = False, features: int = 0):
        self.image = image
        self.like = like
        self.out = Output(None, directory)
        try:
            self.writer = BlobWriter(self.out.fp, blob_index=index, compressor=like.compressor,
                                     digester=like.digester, chunk_size=like.chunk_size, aligned=aligned,
                                     blob_meta=version == 6, toc=toc, crc32=True, mapped=mapped, workers=1)
        except BaseException:
            self.out.discard()
            raise
        self.writer.features |= features

    def copy(self, chunk: Chunk) -> Chunk:
        """Append ``chunk`` (a record of the image) and return its record in the new blob."""
        reader = self.image.chunk_reader(chunk.blob_index)
        source = reader.blob
        stored = reader.fetch_raw(chunk)
        data = reader.decode(chunk, stored)
        if codecs.digest(self.like.digester, data) != chunk.digest:
            raise DigestMismatchError(f"chunk {chunk.index} of blob {source.blob_id} does not match its digest",
                                      structure="chunk data", offset=chunk.compressed_offset)
        compressed = bool(chunk.flags & ChunkFlags.COMPRESSED)
        if source.compressor != self.like.compressor or chunk.flags & _REENCODE \
                or source.features & (BlobFeatures.BATCH | BlobFeatures.ENCRYPTED):
            stored, compressed = codecs.compress_chunk(self.like.compressor, data)
        return self.writer.store_encoded(chunk.digest, chunk.uncompressed_size, stored, compressed,
                                         codecs.crc32c(data))

    def finish(self) -> Blob:
        """Write the blob's trailer (CI array for v6), name the file by the blob id; the new :class:`Blob`."""
        try:
            writer = self.writer
            writer.end_data()
            writer.write_meta()
            blob = writer.finish()
            self.out.commit(blob.blob_id)
        except BaseException:
            self.out.discard()
            raise
        return blob

    def discard(self) -> None:
        self.out.discard()
