"""Writing a new data blob out of chunks an image already stores, for ``rafs compact`` and ``rafs optimize``.

A :class:`ChunkCopier` opens one new blob in a directory (named by its sha256 once complete, written
through a temporary file) and appends chunks taken from the image's blobs. A chunk whose source blob
uses the new blob's compressor and is stored on its own (not encrypted, not in a batch) is copied as
stored, without recompressing; any other is decoded and encoded again. Every chunk is checked against
its digest first: a damaged chunk stops the rewrite instead of spreading into the new blob. Chunks stored
back to back are read with one request (nydus-image reads each chunk on its own: its "todo: merge
download requests").
"""

from __future__ import annotations

from ..blob import codecs
from ..blob.writer import BlobWriter
from ..errors import DigestMismatchError
from ..model import Blob, BlobFeatures, Chunk, ChunkFlags
from .outputs import Output

_REENCODE = int(ChunkFlags.ENCRYPTED | ChunkFlags.BATCH)
# Largest read of chunks stored back to back: nydusd's default merging size, as rafs.io.fetch's
# DEFAULT_MERGE_SIZE (not imported: the builder reads blobs through the image, not through rafs.io)
MERGE_SIZE = 0x100000


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
        return self.copy_all([chunk])[0]

    def copy_all(self, chunks: list[Chunk]) -> list[Chunk]:
        """Append ``chunks`` in the order given; their records in the new blob. Runs of chunks stored back to
        back in one source blob are read with one request of up to MERGE_SIZE bytes."""
        records = []
        for run in self._runs(chunks):
            reader = self.image.chunk_reader(run[0].blob_index)
            if len(run) == 1:
                stored = [reader.fetch_raw(run[0])]
            else:
                for chunk in run:
                    reader.check_address(chunk)
                start = run[0].compressed_offset
                raw = reader.source.read_range(start, run[-1].compressed_offset + run[-1].compressed_size - start)
                stored = [raw[c.compressed_offset - start:c.compressed_offset - start + c.compressed_size]
                          for c in run]
            records += [self._append(reader, chunk, data) for chunk, data in zip(run, stored)]
        return records

    def _runs(self, chunks: list[Chunk]) -> list[list[Chunk]]:
        """``chunks`` cut into runs, in order, each stored back to back in one blob within MERGE_SIZE bytes;
        a chunk of a batch or encrypted blob, whose stored range its record does not give, runs alone."""
        runs: list[list[Chunk]] = []
        for chunk in chunks:
            if runs:
                last = runs[-1][-1]
                blob = self.image.blobs[chunk.blob_index]
                if (chunk.blob_index == last.blob_index and chunk.compressed_size
                        and not blob.features & (BlobFeatures.BATCH | BlobFeatures.ENCRYPTED)
                        and chunk.compressed_offset == last.compressed_offset + last.compressed_size
                        and chunk.compressed_offset + chunk.compressed_size - runs[-1][0].compressed_offset
                        <= MERGE_SIZE):
                    runs[-1].append(chunk)
                    continue
            runs.append([chunk])
        return runs

    def _append(self, reader, chunk: Chunk, stored: bytes) -> Chunk:
        source = reader.blob
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
