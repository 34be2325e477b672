"""Reading chunks out of a data blob: fetch the stored bytes, decompress, verify.

The blob's bytes come from a :class:`rafs.ranges.RangeReader` (local file, fsspec URL, cache);
this module only knows chunk addresses and codecs.
"""

from __future__ import annotations

import threading

from ..errors import DigestMismatchError, InvalidImageError, UnsupportedError
from ..lru import LRU
from ..model import Blob, BlobFeatures, Chunk, ChunkFlags, MAX_CHUNK_SIZE
from . import codecs, crypt

# plain ints: an IntFlag operand makes every ``&`` go through enum's Python code (a few µs per chunk)
_BATCH = int(ChunkFlags.BATCH)
_ENCRYPTED = int(ChunkFlags.ENCRYPTED)
_COMPRESSED = int(ChunkFlags.COMPRESSED)
_HAS_CRC32 = int(ChunkFlags.HAS_CRC32)
_ZRAN = int(BlobFeatures.ZRAN)
_ENCRYPTED_BLOB = int(BlobFeatures.ENCRYPTED)
_BATCH_BLOB = int(BlobFeatures.BATCH)


# Decompressed batches kept per reader (bytes; the latest one always): members of one batch are
# usually read close together, and a batch may be 16 MiB.
BATCH_CACHE_BYTES = 16 << 20


class ChunkReader:
    """Reads the chunks of one blob. Thread safe as long as its RangeReader is.

    A batch member (``--batch-size``) arrives with its whole batch as stored bytes: the batch is
    decrypted and decompressed once (kept in a small cache) and the member cut out of it, where its
    CI record says; the CI array is read from the blob the first time a batch member is decoded.
    """

    def __init__(self, blob: Blob, source, *, validate: bool = False):
        self.blob = blob
        self.source = source
        self.validate = validate
        self._batch_lock = threading.Lock()
        self._blob_meta = None
        self._batches: LRU[bytes] = LRU(max_bytes=BATCH_CACHE_BYTES)

    def fetch_raw(self, chunk: Chunk) -> bytes:
        """The stored (possibly compressed) bytes of ``chunk`` (a batch member's: its whole batch)."""
        chunk = self.resolve(chunk)
        self.check_address(chunk)
        return self.source.read_range(chunk.compressed_offset, chunk.compressed_size)

    def resolve(self, chunk: Chunk) -> Chunk:
        """``chunk`` with the compressed range to fetch. A batch member's record (nydus-image leaves its
        compressed range empty and its flags without BATCH, in the bootstrap and in the CI) becomes one
        addressing its whole batch, flagged BATCH, from the CI array; other chunks come back as they are."""
        if chunk.compressed_size or not int(self.blob.features) & _BATCH_BLOB:
            return chunk
        info, context = self._batch_record(chunk)
        return Chunk(chunk.digest, chunk.blob_index, info.compressed_offset, context.compressed_size,
                     chunk.uncompressed_offset, chunk.uncompressed_size, chunk.file_offset, chunk.index,
                     int(chunk.flags) | _BATCH, chunk.crc32)

    def resolve_many(self, chunks: list[Chunk]) -> list[Chunk]:
        if not int(self.blob.features) & _BATCH_BLOB:
            return chunks
        return [self.resolve(chunk) for chunk in chunks]

    def check_address(self, chunk: Chunk) -> None:
        """Refuse a chunk whose sizes break the limits or whose range runs past the blob's end."""
        size = chunk.compressed_size
        if size > 2 * MAX_CHUNK_SIZE or chunk.uncompressed_size > MAX_CHUNK_SIZE:
            raise InvalidImageError(f"chunk {chunk.index} of blob {self.blob.blob_id} declares "
                                    f"{size}/{chunk.uncompressed_size} bytes, over the 16 MiB limit",
                                    structure="chunk info")
        known = getattr(self.source, "size", None)
        if known is not None and chunk.compressed_offset + size > known:
            raise InvalidImageError(f"chunk {chunk.index} [{chunk.compressed_offset:#x}, +{size:#x}) runs "
                                    f"past the end of blob {self.blob.blob_id} ({known} bytes)",
                                    structure="chunk info")

    def decode(self, chunk: Chunk, raw: bytes, *, path: str | None = None) -> bytes:
        """Decompress and (when validating) verify the stored bytes of ``chunk`` (for a batch member:
        of its batch, see :meth:`resolve`)."""
        chunk = self.resolve(chunk)
        flags = int(chunk.flags)
        if flags & _BATCH:
            data = self._batch_member(chunk, raw)
            if self.validate:
                self.verify(chunk, data, path=path)
            return data
        if int(self.blob.features) & _ZRAN:
            raise UnsupportedError(f"blob {self.blob.blob_id} is a ZRAN (targz-ref) blob: reading its data "
                                   "from the original .tar.gz is not supported yet")
        if flags & _ENCRYPTED:
            # encrypted after compression (utils/src/crypt.rs), with the blob's key and IV
            raw = self._decrypt(raw, f"chunk {chunk.index} of blob {self.blob.blob_id}")
        if flags & _COMPRESSED:
            data = codecs.decompress(self.blob.compressor, raw, chunk.uncompressed_size,
                                     what=f"chunk {chunk.index} of blob {self.blob.blob_id}",
                                     offset=chunk.compressed_offset)
        else:
            if len(raw) != chunk.uncompressed_size:
                raise InvalidImageError(f"uncompressed chunk {chunk.index} stores {len(raw)} bytes for "
                                        f"{chunk.uncompressed_size}", structure="chunk info")
            data = raw
        if self.validate:
            self.verify(chunk, data, path=path)
        return data

    def _decrypt(self, raw: bytes, what: str) -> bytes:
        if self.blob.cipher in ("none", ""):
            raise InvalidImageError(f"{what} is marked encrypted but the blob has no cipher",
                                    structure="chunk info")
        return crypt.decrypt(self.blob.cipher, self.blob.cipher_key, self.blob.cipher_iv, raw, what=what)

    def verify(self, chunk: Chunk, data: bytes, *, path: str | None = None) -> None:
        """Check the digest (and CRC-32C) the image records; a chunk recorded without a digest (plain
        EROFS data, v6 chunks known only from the CI array) has none to check."""
        where = f" of {path}" if path else ""
        actual = codecs.digest(self.blob.digester, data) if chunk.digest else b""
        if actual != chunk.digest:
            raise DigestMismatchError(
                f"chunk {chunk.index} (file offset {chunk.file_offset}){where} in blob {self.blob.blob_id}: "
                f"{self.blob.digester} digest {actual.hex()} != recorded {chunk.digest.hex()}",
                expected=chunk.digest, actual=actual, path=path, chunk_index=chunk.index,
                structure="chunk data", offset=chunk.compressed_offset)
        if chunk.flags & _HAS_CRC32 and codecs.crc32c(data) != chunk.crc32:
            raise DigestMismatchError(
                f"chunk {chunk.index}{where} in blob {self.blob.blob_id}: CRC-32C mismatch",
                path=path, chunk_index=chunk.index, structure="chunk data", offset=chunk.compressed_offset)

    def read(self, chunk: Chunk, *, path: str | None = None) -> bytes:
        data = self.cached_member(chunk, path=path)
        if data is not None:
            return data
        return self.decode(chunk, self.fetch_raw(chunk), path=path)

    def read_many(self, chunks: list[Chunk], *, path: str | None = None) -> list[bytes]:
        """:meth:`read` of each chunk (a fetching subclass merges adjacent ones into one request)."""
        return [self.read(chunk, path=path) for chunk in chunks]

    def is_cached(self, chunk: Chunk) -> bool:
        """False: without a blob cache, every chunk comes from the source."""
        return False

    def cached_member(self, chunk: Chunk, *, path: str | None = None) -> bytes | None:
        """The data of batch member ``chunk`` when its batch is decompressed in memory already (no
        fetch needed), else None."""
        if not self._batches or chunk.compressed_size and not int(chunk.flags) & _BATCH:
            return None
        chunk = self.resolve(chunk)
        if not int(chunk.flags) & _BATCH:
            return None
        info, _ = self._batch_record(chunk)
        batch = self._batches.get(info.context_index)
        if batch is None:
            return None
        data = batch[info.context_offset:info.context_offset + info.uncompressed_size]
        if self.validate:
            self.verify(chunk, data, path=path)
        return data

    # -- batch chunks ------------------------------------------------------------------------------

    def blob_meta(self):
        """The blob's decoded CI array (rafs.blob.meta.BlobMeta), read once."""
        if self._blob_meta is None:
            from .meta import load_blob_meta
            meta = load_blob_meta(self.blob, self.source)
            with self._batch_lock:
                if self._blob_meta is None:
                    self._blob_meta = meta
        return self._blob_meta

    def _batch_member(self, chunk: Chunk, raw: bytes) -> bytes:
        """The bytes of batch member ``chunk`` out of ``raw``, its whole stored batch."""
        where = f"chunk {chunk.index} of blob {self.blob.blob_id}"
        info, context = self._batch_record(chunk)
        if len(raw) != context.compressed_size:
            raise InvalidImageError(f"{where}: its batch {info.context_index} is {context.compressed_size} "
                                    f"bytes, {len(raw)} were read", structure="chunk info")
        batch = self._batch(info.context_index, context, raw, where)
        return batch[info.context_offset:info.context_offset + info.uncompressed_size]

    def _batch_record(self, chunk: Chunk):
        """(CI record, batch context) of batch member ``chunk``, checked against the bootstrap's record."""
        where = f"chunk {chunk.index} of blob {self.blob.blob_id}"
        meta = self.blob_meta()
        if not 0 <= chunk.index < len(meta.chunks) or not meta.chunks[chunk.index].is_batch:
            raise InvalidImageError(f"{where} has no compressed range but its CI record is not a batch member",
                                    structure="chunk info")
        info = meta.chunks[chunk.index]
        if info.uncompressed_size != chunk.uncompressed_size or info.uncompressed_offset != chunk.uncompressed_offset:
            raise InvalidImageError(f"{where}: [{chunk.uncompressed_offset:#x}, +{chunk.uncompressed_size:#x}) in "
                                    f"the bootstrap, [{info.uncompressed_offset:#x}, +{info.uncompressed_size:#x}) "
                                    "in the CI record", structure="chunk info")
        # decode_blob_meta checked that the batch exists and holds the member's range
        return info, meta.batch_contexts[info.context_index]

    def _batch(self, index: int, context, raw: bytes, where: str) -> bytes:
        batch = self._batches.get(index)
        if batch is not None:
            return batch
        data = raw
        if int(self.blob.features) & _ENCRYPTED_BLOB:
            data = self._decrypt(data, f"batch {index} of blob {self.blob.blob_id}")
        size = context.uncompressed_batch_size
        # stored raw when compression did not help: nydusd decompresses iff the stored size differs from
        # the batch's, which misreads an encrypted batch of less than 16 bytes (padded to 18); the
        # decrypted size says it right in every case
        if len(data) != size:
            batch = codecs.decompress(self.blob.compressor, data, size, what=f"batch {index} ({where})")
        else:
            batch = data
        self._batches.put(index, batch)
        return batch
