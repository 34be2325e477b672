"""nydusd's cache files for a blob being built: ``nydus-image create --blob-cache-dir DIR``.

Instead of a data blob the build leaves, in DIR, what nydusd's blobcache would hold once it had read
the whole blob (builder/src/core/context.rs ``BlobCacheGenerator``):

- ``<blob id>.blob.data``: every chunk the blob stores, uncompressed, at its uncompressed offset
  (the file is as long as the blob's uncompressed size, gaps are zeros);
- ``<blob id>.blob.meta``: the uncompressed CI array, zeros to 4 KiB, then the 4096-byte CI header
  (:func:`rafs.blob.meta.write_blob_meta_file`; empty for RAFS v5, which has no CI).

Chunks are stored uncompressed in this mode (the reference forces compressor ``none``), so what the
blob writer stores is the chunk's data. Both files are written under temporary names in DIR and
renamed once the build succeeded.
"""

from __future__ import annotations

from ..blob.meta import write_blob_meta_file
from ..errors import InvalidArgumentError
from ..model import Chunk, ChunkFlags

DATA_SUFFIX = ".blob.data"
META_SUFFIX = ".blob.meta"


class Discard:
    """A blob output that keeps nothing (the reference's ``NoopArtifactWriter``): the blob id is
    still the sha256 of what would have been written."""

    def write(self, data) -> int:
        return len(data)


class BlobCacheFiles:
    """The two cache files of one blob, in ``directory``."""

    def __init__(self, directory, output_class):
        self.data = output_class(None, directory)
        try:
            self.meta = output_class(None, directory)
        except BaseException:
            self.data.discard()
            raise
        self.size = 0

    def store_chunk(self, chunk: Chunk, stored: bytes) -> None:
        """``stored`` is the chunk's data (uncompressed in this mode); it goes to its uncompressed offset."""
        if chunk.flags & ChunkFlags.COMPRESSED or len(stored) != chunk.uncompressed_size:
            raise InvalidArgumentError("blob cache files hold uncompressed chunks: build with compressor 'none'")
        self.data.fp.seek(chunk.uncompressed_offset)
        self.data.fp.write(stored)

    def finish(self, blob_id: str, uncompressed_size: int, ci_data: bytes, ci_header: bytes) -> tuple[str, str]:
        """Size the data file, write the meta file and move both into place; returns their paths."""
        self.data.fp.truncate(uncompressed_size)
        if ci_header:
            write_blob_meta_file(self.meta.fp, ci_data, ci_header)
        return (self.data.commit(blob_id + DATA_SUFFIX), self.meta.commit(blob_id + META_SUFFIX))

    def discard(self) -> None:
        self.data.discard()
        self.meta.discard()
