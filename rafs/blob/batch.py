"""Batch chunks (``nydus-image create --batch-size``): small files packed into one compressed unit.

What the reference does (builder/src/core/node.rs ``dump_file_chunk``, storage/src/meta/batch.rs):
a file with exactly one chunk smaller than half the batch size is appended, uncompressed, to a
buffer instead of being stored on its own. The buffer is compressed (and encrypted) as one unit and
written when the next such chunk would fill it to the batch size or beyond, when a chunk that is not
batched is stored, and when the blob's data ends. Each member's CI record (v2) carries the BATCH and
COMPRESSED flags, compressed size 0, the blob offset where its batch starts, and in ``data`` the
batch's index (high 32 bits) and the member's offset in the uncompressed buffer (low 32 bits). One
40-byte ``BatchInflateContext`` per batch (compressed size, uncompressed size) follows the records
in the CI data. Readers decompress a batch when its compressed and uncompressed sizes differ.
"""

from __future__ import annotations

from ..errors import InvalidArgumentError
from ..limits import is_chunk_size
from .ci import BATCH_CONTEXT


def check_batch_size(batch_size: int, chunk_size: int) -> int:
    """0 (no batches) or a power of two in [0x1000, 0x1000000] not above the chunk size, in the
    reference's words (src/bin/nydus-image/main.rs ``get_batch_size``)."""
    if not isinstance(batch_size, int) or isinstance(batch_size, bool):
        raise InvalidArgumentError(f"invalid batch size {batch_size!r}")
    if batch_size == 0:
        return 0
    if not is_chunk_size(batch_size):           # the reference bounds batches as chunks
        raise InvalidArgumentError(f"invalid batch size: {batch_size}")
    if batch_size > chunk_size:
        raise InvalidArgumentError(f"batch size 0x{batch_size:x} is bigger than chunk size 0x{chunk_size:x}")
    return batch_size


def pack_batch_context(compressed_size: int, uncompressed_size: int) -> bytes:
    """One ``BatchInflateContext``: the sizes, then 32 reserved bytes."""
    return BATCH_CONTEXT.pack(compressed_size, uncompressed_size, bytes(32))


class BatchPacker:
    """The buffer of the batch being filled and the contexts of the batches written so far."""

    def __init__(self, batch_size: int):
        self.size = batch_size
        self.limit = batch_size // 2        # members are strictly smaller than this
        self.buffer = bytearray()
        self.contexts = bytearray()
        self.count = 0

    def takes(self, file_size: int, chunk_size: int, length: int) -> bool:
        """Whether a chunk of ``length`` bytes of a file of ``file_size`` bytes goes into a batch."""
        return 0 < file_size <= chunk_size and length < self.limit

    def overflows(self, length: int) -> bool:
        """Whether the pending batch must be written before a member of ``length`` bytes joins."""
        return bool(self.buffer) and len(self.buffer) + length >= self.size

    def add(self, data) -> tuple[int, int]:
        """Append a member; returns (batch index, offset inside the batch's uncompressed buffer)."""
        where = (self.count, len(self.buffer))
        self.buffer += data
        return where

    def take(self) -> bytes:
        """The pending batch's uncompressed bytes, leaving the buffer empty."""
        data, self.buffer = bytes(self.buffer), bytearray()
        return data

    def written(self, compressed_size: int, uncompressed_size: int) -> None:
        """Record the context of the batch just written."""
        self.contexts += pack_batch_context(compressed_size, uncompressed_size)
        self.count += 1
