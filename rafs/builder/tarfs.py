"""``tar-tarfs`` builds: the tar itself is the data blob, addressed in 512-byte blocks.

What nydus-image does (builder/src/tarball.rs ``ConversionType::TarToTarfs``, builder/src/core/node.rs,
builder/src/lib.rs ``finalize_blob``, src/bin/nydus-image/main.rs): the plain tar is read once; each
chunk of regular-file data is recorded where it lies in the tar (compressed and uncompressed offset =
its offset in the tar, a multiple of 512, stored uncompressed), without digest, CRC or deduplication
and without a CI array. The bootstrap is a v6 image with 512-byte EROFS blocks and the TARTFS_MODE
superblock flag, so each chunk's block address is its tar offset / 512 and the kernel can mount the
bootstrap with the tar as its device. The blob table entry: id = sha256 of the tar (or ``--blob-id``),
compressed = uncompressed size = the tar's size, compressor none, digester sha256, features
TARFS|CAP_TAR_TOC (not ALIGNED). No blob file is written: the tar is the blob.

The reference's rules: v6 only; compressor none and digester sha256 forced; ``--blob`` refused (use
``--blob-dir``); ``--chunk-dict``, ``--parent-bootstrap``, ``--blob-inline-meta``, ``--features
blob-toc``, ``--aligned-chunk``, ``--encrypt`` and ``--prefetch-policy blob`` refused, each with its
message.
"""

from __future__ import annotations

from ..errors import BuildError, InvalidArgumentError
from ..model import BlobFeatures, Chunk, MAX_CHUNKS_PER_BLOB, Node
from ..options import TARFS_SOURCE_TYPE
from .reftar import RefBlobWriter

def check_tarfs_options(*, fs_version: int, prefetch_policy: str, chunk_dict, parent_bootstrap,
                        blob_inline_meta: bool, blob_toc: bool, aligned_chunk: bool, encrypt: bool) -> None:
    """The reference's refusals for ``tar-tarfs``, in its order and words (``--blob`` is refused when
    the outputs are known, :func:`check_tarfs_outputs`)."""
    t = TARFS_SOURCE_TYPE
    if prefetch_policy == "blob":
        raise InvalidArgumentError(f"conversion type {t} conflicts with '--prefetch-policy blob'")
    if fs_version != 6:
        raise InvalidArgumentError(f"'--fs-version 5' conflicts with conversion type '{t}', only V6 is supported")
    for given, option in ((chunk_dict, "--chunk-dict"), (parent_bootstrap, "--parent-bootstrap"),
                          (blob_inline_meta, "--blob-inline-meta"), (blob_toc, "--features blob-toc"),
                          (aligned_chunk, "--aligned-chunk"), (encrypt, "--encrypt")):
        if given:
            raise InvalidArgumentError(f"conversion type '{t}' conflicts with '{option}'")


def check_tarfs_outputs(blob) -> None:
    if blob is not None:
        raise InvalidArgumentError(f"conversion type `{TARFS_SOURCE_TYPE}` conflicts with `--blob`")


class TarfsBlobWriter(RefBlobWriter):
    """Chunk records pointing into the tar; writes nothing (the tar is the blob)."""

    def __init__(self, out, layer, *, blob_index: int = 0, chunk_size: int = 0x100000, **_):
        super().__init__(out, layer, blob_index=blob_index, chunk_size=chunk_size, crc32=False)
        self.compressor = "none"
        self.blob_meta = False
        self.aligned = False
        self.ci_compressor = "lz4_block"   # the untouched header's default (BlobCompressionContextHeader)
        self.features = BlobFeatures.CAP_TAR_TOC | BlobFeatures.TARFS

    def _add(self, node: Node, file_offset: int, data: bytes, coff: int, csize: int, context) -> None:
        if self.chunk_count >= MAX_CHUNKS_PER_BLOB:
            raise BuildError(f"the blob would hold more than {MAX_CHUNKS_PER_BLOB} chunks")
        node.chunks.append(Chunk(b"", self.blob_index, coff, csize, coff, csize, file_offset, self.chunk_count))
        self.chunk_count += 1
        self.stored_uncompressed_size += csize

    def _read_chunk(self, f, position: int, length: int):
        # nothing is digested: the data is not read, only addressed
        return memoryview(b""), position, length, None

    def write_meta(self) -> None:
        """No CI array in tarfs mode."""

    def finish(self):
        self._finished = True
        self.blob_id = self.layer_id
        return self.blob(self.layer_id)

    def blob(self, blob_id: str):
        blob = super().blob(blob_id)
        blob.uncompressed_size = self.layer_size
        return blob
