"""Reading chunks out of a data blob: fetch the stored bytes, decompress, verify.

The blob's bytes come from a :class:`rafs.io.source.RangeReader` (local file, fsspec URL, cache);
this module only knows chunk addresses and codecs.
"""

from __future__ import annotations

from ..errors import DigestMismatchError, InvalidImageError, UnsupportedError
from ..model import Blob, BlobFeatures, Chunk, ChunkFlags, MAX_CHUNK_SIZE
from . import codecs, crypt

# plain ints: an IntFlag operand makes every ``&`` go through enum's Python code (a few µs per chunk)
_BATCH = int(ChunkFlags.BATCH)
_ENCRYPTED = int(ChunkFlags.ENCRYPTED)
_COMPRESSED = int(ChunkFlags.COMPRESSED)
_HAS_CRC32 = int(ChunkFlags.HAS_CRC32)
_ZRAN = int(BlobFeatures.ZRAN)


class ChunkReader:
    """Reads the chunks of one blob. Thread safe as long as its RangeReader is."""

    def __init__(self, blob: Blob, source, *, validate: bool = False):
        self.blob = blob
        self.source = source
        self.validate = validate

    def fetch_raw(self, chunk: Chunk) -> bytes:
        """The stored (possibly compressed) bytes of ``chunk``."""
        self.check_address(chunk)
        return self.source.read_range(chunk.compressed_offset, chunk.compressed_size)

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
        """Decompress and (when validating) verify the stored bytes of ``chunk``."""
        flags = int(chunk.flags)
        if flags & _BATCH:
            raise UnsupportedError(f"chunk {chunk.index} of blob {self.blob.blob_id} is packed in a batch "
                                   "chunk (nydus-image --batch-size), which rafs does not read yet")
        if int(self.blob.features) & _ZRAN:
            raise UnsupportedError(f"blob {self.blob.blob_id} is a ZRAN (targz-ref) blob: reading its data "
                                   "from the original .tar.gz is not supported yet")
        if flags & _ENCRYPTED:
            # encrypted after compression (utils/src/crypt.rs), with the blob's key and IV
            if self.blob.cipher in ("none", ""):
                raise InvalidImageError(f"chunk {chunk.index} of blob {self.blob.blob_id} is marked encrypted "
                                        "but the blob has no cipher", structure="chunk info")
            raw = crypt.decrypt(self.blob.cipher, self.blob.cipher_key, self.blob.cipher_iv, raw,
                                what=f"chunk {chunk.index} of blob {self.blob.blob_id}")
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
        return self.decode(chunk, self.fetch_raw(chunk), path=path)
