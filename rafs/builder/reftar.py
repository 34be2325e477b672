"""``targz-ref`` and ``tar-ref`` builds: an image whose data stays in the original OCI layer.

What nydus-image does (builder/src/tarball.rs, builder/src/core/node.rs ``read_file_chunk``,
builder/src/core/blob.rs, builder/src/lib.rs ``finalize_blob``): the layer is read once; a gzip layer
(magic ``1f 8b 08``) becomes a ZRAN blob, anything else silently a ``tar-ref`` blob. Every chunk of
regular-file data, in tar order, gets a CI v2 record: for ZRAN the gzip range inflated while the chunk
was read and its place in a ZRAN context (:mod:`rafs.builder.zran_context`), flagged ZRAN|COMPRESSED;
for tar-ref its offset in the tar, stored uncompressed. Chunks are sha256-digested and CRC-32C'd and
deduplicated by (digest, size) within the layer; uncompressed offsets are 4 KiB aligned. Nothing of
the data is written: the output blob (``-b``/``-D``) is the *RAFS meta blob*::

    CI (zstd when smaller) | CI header | [hdr(blob.meta) | chunk digests | hdr(blob.digest)]
                           | [bootstrap | hdr(image.boot)] | [ToC | hdr(rafs.blob.toc)]

(brackets: with ``--features blob-toc`` and ``--blob-inline-meta``). The blob table entry names the
layer: id = sha256 of the .tar.gz (or .tar), compressed size = its size, compressor gzip, digester
sha256, features CHUNK_INFO_V2|SEPARATE(|ZRAN)|ALIGNED|CAP_TAR_TOC; without inline meta it also keeps
the meta blob's sha256 (``blob_meta_digest``, over everything but the chunk-digest array, which is
also the meta blob's file name) and size, which is how readers find the CI.

The reference's rules for these types (src/bin/nydus-image/main.rs): v6 only; ``--prefetch-policy
blob``, ``--blob-id`` and ``--encrypt`` refused; other compressors and digesters replaced by gzip and
sha256 (an info message); ``--batch-size`` refused (dir/tar/targz/estargz-rafs only).
"""

from __future__ import annotations

import hashlib
import logging
import os

from ..blob import codecs
from ..blob.meta import encode_chunk_info_v2
from ..blob.writer import BlobWriter
from ..errors import BuildError, InvalidArgumentError
from ..model import BlobFeatures, Chunk, ChunkFlags, MAX_CHUNKS_PER_BLOB, Node

log = logging.getLogger(__name__)

_COMPRESSED = int(ChunkFlags.COMPRESSED)
_HAS_CRC32 = int(ChunkFlags.HAS_CRC32)
_READ_STEP = 1 << 20


def check_ref_options(source_type: str, *, fs_version: int, prefetch_policy: str, blob_id, encrypt: bool,
                      compressor: str, digester: str) -> None:
    """The reference's refusals for ``*-ref`` types, in its order and words."""
    if prefetch_policy == "blob":
        raise InvalidArgumentError(f"conversion type {source_type} conflicts with '--prefetch-policy blob'")
    if fs_version != 6:
        raise InvalidArgumentError(f"'--fs-version 5' conflicts with conversion type '{source_type}', "
                                   "only V6 is supported")
    if blob_id is not None and str(blob_id).strip():
        raise InvalidArgumentError(f"conversion type '{source_type}' conflicts with '--blob-id'")
    if encrypt:
        raise InvalidArgumentError(f"conversion type '{source_type}' conflicts with '--encrypt'")
    # the reference logs these only for a compressor or digester given on its command line; defaults are
    # indistinguishable here, so they are debug messages
    if compressor != "gzip":
        log.debug("only GZip is supported for conversion type %s, use GZip instead of %s", source_type, compressor)
    if digester != "sha256":
        log.debug("only SHA256 is supported for conversion type %s, use SHA256 instead of %s", source_type,
                  digester)


def _skip(node, stream) -> None:
    """The tree pass reads no file data: the chunks are made in the second pass."""


class RefLayer:
    """One ``*-ref`` source: the tree (first pass, :func:`rafs.builder.tar.read_tar`), then the blob
    writer that makes the chunk records (second pass over the layer)."""

    def __init__(self, source, source_type: str):
        if not isinstance(source, (str, bytes, os.PathLike)):
            raise InvalidArgumentError(f"conversion type {source_type} reads a tar file path")
        self.path = source
        self.source_type = source_type
        self.members: list[tuple[Node, int, int]] = []
        self.compression = "none"

    def load(self, *, whiteout_spec: str = "oci", layer: int = 0) -> Node:
        from .tar import read_tar
        with read_tar(self.path, on_file=_skip) as tar:
            self.compression = tar.compression
            self.members = tar.data_runs
        for node, offset, _ in self.members:
            if offset is None:
                raise BuildError(f"tarball: unsupported gnu sparse file extension from tar header ({self.source_type} "
                                 f"addresses file data in place: {node.name!r} is sparse)")
        if self.compression == "zstd" or self.tarfs and self.compression != "none":
            kinds = "plain tar" if self.tarfs else "tar or tar.gz"
            raise BuildError(f"conversion type {self.source_type} reads {kinds} layers, not {self.compression}")
        stack = [tar.root]
        while stack:
            node = stack.pop()
            node.layer = layer
            stack.extend(node.children)
        return tar.root

    @property
    def zran(self) -> bool:
        return self.compression == "gzip" and not self.tarfs

    @property
    def tarfs(self) -> bool:
        return self.source_type == "tar-tarfs"


class RefBlobWriter(BlobWriter):
    """A :class:`~rafs.blob.writer.BlobWriter` whose chunks stay in the layer: it writes only the RAFS
    meta blob (see the module docstring)."""

    def __init__(self, out, layer: RefLayer, *, blob_index: int = 0, chunk_size: int = 0x100000,
                 toc: bool = False, inline_meta: bool = False, crc32: bool = True, on_chunk=None):
        super().__init__(out, blob_index=blob_index, compressor="gzip", digester="sha256", chunk_size=chunk_size,
                         aligned=True, blob_meta=True, toc=toc, inline_meta=inline_meta, crc32=crc32)
        self.layer = layer
        self.ci_v2 = True
        self.features |= BlobFeatures.CHUNK_INFO_V2 | BlobFeatures.SEPARATE
        if layer.zran:
            self.features |= BlobFeatures.ZRAN
        self._generator = None
        self._contexts = (b"", 0)
        self.layer_id = ""
        self.layer_size = 0
        self._finished = False

    @property
    def meta_compressor(self) -> str:
        return "zstd"                     # Blob::get_compression_algorithm_for_meta: zstd for *-ref

    def _ci_contexts(self) -> tuple[bytes, int]:
        return self._contexts

    def dump(self, nodes, *, prefetch_count: int = 0) -> None:
        """Make the chunk records of every regular file, in tar order (``nodes`` is only drained, for
        progress reports: the layer decides the order)."""
        with open(self.layer.path, "rb") as f:
            if self.layer.zran:
                from .zran_context import ZranGenerator
                self._generator = ZranGenerator(f)
                try:
                    self._dump_members(f)
                    self._generator.read_all()
                    self.layer_id, self.layer_size = self._generator.digest(), self._generator.size
                    self._contexts = (self._generator.contexts_bytes(), len(self._generator.contexts))
                finally:
                    self._generator.close()
            else:
                self._dump_members(f)
                f.seek(0)
                digest = hashlib.sha256()
                while block := f.read(_READ_STEP):
                    digest.update(block)
                self.layer_id, self.layer_size = digest.hexdigest(), f.tell()
        for _ in nodes:
            pass

    def _dump_members(self, f) -> None:
        chunk_size = self.chunk_size
        for node, offset, size in self.layer.members:
            for file_offset in range(0, size, chunk_size):
                length = min(chunk_size, size - file_offset)
                data, coff, csize, context = self._read_chunk(f, offset + file_offset, length)
                self._add(node, file_offset, data, coff, csize, context)

    def _read_chunk(self, f, position: int, length: int):
        """(bytes, compressed offset, compressed size, (context index, offset) or None) of one chunk."""
        generator = self._generator
        if generator is None:
            f.seek(position)
            data = f.read(length)
            if len(data) != length:
                raise BuildError(f"the tar ends at {position + len(data)}, inside file data")
            return data, position, length, None
        generator.read_to(position)
        generator.begin_read(self.chunk_size)
        data = generator.read(length)
        info = generator.end_read()
        return data, info.in_offset, info.in_size, (info.context_index, info.context_offset)

    def _add(self, node: Node, file_offset: int, data: bytes, coff: int, csize: int, context) -> None:
        length = len(data)
        digest = hashlib.sha256(data).digest()
        # a chunk dictionary is asked first, then this layer's (and a parent's) chunks, as the reference
        # asks its global dictionary, then the layered one (node.rs deduplicate_chunk)
        existing = self._dict.get((digest, length)) if self._dict else None
        if existing is None:
            existing = self._dedup.get((digest, length))
        if existing is not None:
            node.chunks.append(Chunk(digest, existing.blob_index, existing.compressed_offset,
                                     existing.compressed_size, existing.uncompressed_offset,
                                     existing.uncompressed_size, file_offset, existing.index, existing.flags,
                                     existing.crc32))
            self.dedup_chunks += 1
            self.dedup_uncompressed_size += length
            return
        if self.chunk_count >= MAX_CHUNKS_PER_BLOB:
            raise BuildError(f"the blob would hold more than {MAX_CHUNKS_PER_BLOB} chunks")
        crc = codecs.crc32c(data) if self.crc32 else 0
        flags = (_COMPRESSED if context is not None else 0) | (_HAS_CRC32 if self.crc32 else 0)
        uncompressed_offset = self._allocate(length)
        chunk = Chunk(digest, self.blob_index, coff, csize, uncompressed_offset, length, file_offset,
                      self.chunk_count, flags, crc)
        if context is not None:
            # the CI record of a ZRAN chunk carries its context, not the CRC (ZranContextGenerator)
            words = encode_chunk_info_v2(coff, csize, uncompressed_offset, length, _COMPRESSED, zran=True,
                                         context_index=context[0], context_offset=context[1])
        else:
            words = encode_chunk_info_v2(coff, csize, uncompressed_offset, length, flags, crc32=crc)
        self._ci += words[0].to_bytes(8, "little") + words[1].to_bytes(8, "little") + words[2].to_bytes(8, "little")
        self._digests += digest
        self._dedup[(digest, length)] = chunk
        self.chunk_count += 1
        self.stored_uncompressed_size += length
        node.chunks.append(chunk)

    def end_data(self) -> None:
        """No ``image.blob`` entry: the data is the layer (SEPARATE)."""

    def inline_placeholder(self):
        """The blob as an inline bootstrap records it: the layer's id and size, no meta digest."""
        return self.blob(self.layer_id)

    def finish(self):
        super().finish()
        self._finished = True
        return self.blob(self.layer_id)

    def blob(self, blob_id: str):
        blob = super().blob(blob_id)
        blob.compressed_size = self.layer_size
        if self._finished and not self.inline_meta and self.features & BlobFeatures.SEPARATE:
            blob.meta_digest = bytes.fromhex(self.blob_id)
            blob.meta_size = self.pos
        return blob
