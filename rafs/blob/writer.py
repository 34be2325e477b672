"""Write a native RAFS data blob: chunking, parallel compression, dedup, blob meta, ToC, inline meta.

What goes where follows builder/src/core/node.rs (``dump_node_data``), builder/src/core/blob.rs and
builder/src/lib.rs (``finalize_blob``, ``dump_toc``, ``dump_bootstrap``)::

    chunk data | [hdr(image.blob)] | [CI | CI header | [hdr(blob.meta)]]                 (v6: CI)
               | [chunk digests | hdr(blob.digest)]                                      (blob-toc)
               | [bootstrap | hdr(image.boot)]                                           (inline meta)
               | [ToC entries | hdr(rafs.blob.toc)]                                      (blob-toc)

Every file is cut into ``chunk_size`` pieces; each piece is digested (blake3/sha256), CRC-32C'd and
compressed on its own, and stored raw when compression does not make it smaller. A piece whose
(digest, size) was already stored in this blob is not written again: the file's chunk record copies
the earlier one with its own ``file_offset``. Uncompressed offsets are 4 KiB aligned for v6 (and v5
with ``--aligned-chunk``). The blob id is the sha256 of every byte written except the chunk-digest
array.

With ``mapped`` (v6 builds without compression) every chunk is stored at its uncompressed offset, the
gaps and the tail of the last block zero-filled, so the data section *is* the blob's uncompressed
address space: the kernel's EROFS reads such a blob directly as an extra device (``-o device=``),
as it reads a ``mkfs.erofs --blobdev`` file. nydus-image packs the chunks back to back instead;
nydusd and rafs read both, since they go by ``compressed_offset``.

Reading, hashing and compressing run on a thread pool (:mod:`rafs.blob.pipeline`), results stored in
order as soon as they are ready; the blob id's sha256 and the writes run on one more thread, so
memory does not grow with the size of the tree and the thread storing results is never the
bottleneck.
"""

from __future__ import annotations

import collections
import hashlib
from concurrent.futures import ThreadPoolExecutor

from ..errors import BuildError, InvalidArgumentError
from ..limits import CHUNK_SIZE_RULE, DEFAULT_CHUNK_SIZE, is_chunk_size
from ..model import Blob, BlobFeatures, Chunk, ChunkFlags, COMPRESSOR_IDS, MAX_CHUNKS_PER_BLOB, Node
from . import codecs, crypt, layout
from .batch import BatchPacker
from .ids import INLINE_BLOB_ID
from .ci import CHUNK_INFO_V2, CI_HEADER, ci_v1_entry, encode_chunk_info_v2, round_up_4k
from .pipeline import DEFAULT_INFLIGHT_BYTES, ChunkPipeline, default_workers
from .tar_header import build_tar_header
from .toc import TocEntry, toc_bytes

# Chunks smaller than this are gathered into one write (and one blob-id update) of about this size.
WRITE_BUFFER = 1 << 20
# Hand-overs of about WRITE_BUFFER bytes that may wait for the sink thread.
SINK_QUEUE = 8
_COMPRESSED = int(ChunkFlags.COMPRESSED)
_HAS_CRC32 = int(ChunkFlags.HAS_CRC32)
_BATCH_MEMBER = int(ChunkFlags.BATCH | ChunkFlags.COMPRESSED)
_ENCRYPTED = int(ChunkFlags.ENCRYPTED)
_PACK_CI_V2 = CHUNK_INFO_V2.struct.pack


class BlobWriter:
    """Streams one native data blob to ``out`` (a binary file object opened for writing).

    Call :meth:`dump` with the regular files in dump order, then :meth:`end_data`, :meth:`write_meta`
    (v6), optionally :meth:`append_bootstrap`, and :meth:`finish`, which returns the :class:`Blob`.
    ``blob_meta`` writes the CI array and header (v6); ``toc`` adds the chunk-digest array and the
    ToC (``--features blob-toc``); ``inline_meta`` marks the blob for an inline bootstrap. ``crc32``
    stores CRC-32C in chunk records (nydus-image >= 2.3.1). ``mapped`` stores chunks at their
    uncompressed offsets (see the module docstring).
    """

    def __init__(self, out, *, blob_index: int = 0, compressor: str = "zstd", digester: str = "blake3",
                 chunk_size: int = DEFAULT_CHUNK_SIZE, aligned: bool = True, blob_meta: bool = True,
                 toc: bool = False, inline_meta: bool = False, crc32: bool = True, mapped: bool = False,
                 workers: int | None = None, inflight_bytes: int = DEFAULT_INFLIGHT_BYTES,
                 offset: int = 0, on_chunk=None, batch_size: int = 0, encrypt: bool = False,
                 cipher_key: bytes | None = None, cipher_iv: bytes | None = None):
        codecs.check_compressor(compressor)
        codecs.check_digester(digester)
        self.out = out
        self.blob_index = blob_index
        self.compressor = compressor
        self.digester = digester
        self.chunk_size = chunk_size
        self.aligned = aligned
        self.blob_meta = blob_meta
        self.toc = toc
        self.inline_meta = inline_meta
        self.crc32 = crc32
        if mapped and (compressor != "none" or not aligned):
            raise InvalidArgumentError("a mapped blob needs compressor 'none' and aligned chunks")
        self.mapped = mapped
        if batch_size and (not blob_meta or mapped):
            raise InvalidArgumentError("batch chunks need a v6 blob with packed chunks")
        # small single-chunk files are packed into batch chunks (rafs.blob.batch)
        self.batch = BatchPacker(batch_size) if batch_size else None
        if encrypt and (not blob_meta or mapped):
            raise InvalidArgumentError("encryption needs a v6 blob with packed chunks")
        # --encrypt: AES-128-XTS with a fresh key and IV (rafs.blob.crypt), kept in the blob table
        self.cipher = "aes128xts" if encrypt else "none"
        self.cipher_key, self.cipher_iv = crypt.new_secrets(self.cipher, cipher_key, cipher_iv) if encrypt \
            else (b"", b"")
        self.ci_v2 = self.batch is not None or encrypt
        self.workers = max(1, workers if workers is not None else default_workers())
        self.inflight_bytes = inflight_bytes
        self.max_inflight = 0               # the running pipeline's bound, once dump() starts
        # nydus-image's --blob-offset: where the data will sit in a larger file (chunk records say so)
        self.offset = offset
        self.on_chunk = on_chunk            # called with (chunk, stored bytes) for each chunk written

        self.features = BlobFeatures.CAP_TAR_TOC
        if inline_meta:
            self.features |= BlobFeatures.INLINED_FS_META | BlobFeatures.HAS_TAR_HEADER
        if toc:
            self.features |= BlobFeatures.HAS_TOC | BlobFeatures.HAS_TAR_HEADER
        if blob_meta:
            # v6 chunks are always 4K aligned; the reference sets the bit when it writes the CI
            self.features |= BlobFeatures.ALIGNED
        if self.batch is not None:
            self.features |= BlobFeatures.BATCH | BlobFeatures.CHUNK_INFO_V2
        if encrypt:
            self.features |= BlobFeatures.ENCRYPTED | BlobFeatures.CHUNK_INFO_V2
        self.pos = 0
        self._hash = hashlib.sha256()
        self._pieces: list = []             # written and hashed in WRITE_BUFFER pieces
        self._pending = 0
        self._sink = None                   # the thread that hashes and writes while dump() runs
        self._sink_queue: collections.deque = collections.deque()
        self._dedup: dict[tuple[bytes, int], Chunk] = {}
        self._dict: dict[tuple[bytes, int], Chunk] = {}
        self._ci = bytearray()
        self._digests = bytearray()
        self._toc_entries: list[TocEntry] = []
        self.chunk_count = 0
        self.data_size = 0                  # bytes of the data section (`compressed_blob_size` so far)
        self.uncompressed_size = 0
        self.prefetch_size = 0
        self.ci_compressor = "none"
        self.ci_offset = self.ci_compressed_size = self.ci_uncompressed_size = 0
        self.toc_digest = b""
        self.toc_size = 0
        self.ci_data = b""                  # the uncompressed CI and its header, once write_meta() ran
        self.ci_header = b""
        self.compressed_size = 0            # what the bootstrap records (see :meth:`blob`)
        self.blob_id = ""
        # events the reference traces (src/bin/nydus-image/main.rs --output-json)
        self.dedup_chunks = 0
        self.dedup_uncompressed_size = 0
        self.stored_uncompressed_size = 0

    # -- writing -----------------------------------------------------------------------------------

    def _write(self, data, *, hashed: bool = True) -> None:
        """Append ``data`` to the blob (and to the blob id unless ``hashed`` is false). Small pieces
        are gathered and written and hashed together, WRITE_BUFFER bytes or more at once; while
        :meth:`dump` runs, that happens on the sink thread (hashlib and file writes release the GIL)."""
        if hashed:
            self._pieces.append(data)
            self._pending += len(data)
            if self._pending >= WRITE_BUFFER:
                self._hand_over()
        else:
            self._flush()                   # everything before it is written first
            self._sink_write((data,), hashed=False)
        self.pos += len(data)

    def _hand_over(self) -> None:
        """Pass the gathered pieces to the sink thread, or write them here when there is none. At most
        SINK_QUEUE hand-overs wait, so memory stays bounded when the output is slow."""
        if not self._pieces:
            return
        pieces, self._pieces, self._pending = self._pieces, [], 0
        if self._sink is None:
            self._sink_write(pieces)
            return
        queued = self._sink_queue
        while len(queued) >= SINK_QUEUE:
            queued.popleft().result()
        queued.append(self._sink.submit(self._sink_write, pieces))

    def _flush(self) -> None:
        """Everything written so far is in the output and in the blob id."""
        self._hand_over()
        while self._sink_queue:
            self._sink_queue.popleft().result()

    def _sink_write(self, pieces, hashed: bool = True) -> None:
        data = pieces[0] if len(pieces) == 1 else b"".join(pieces)
        if hashed:
            self._hash.update(data)
        self._emit(data)

    def _emit(self, data) -> None:
        written = self.out.write(data)
        if written is not None and written < len(data):      # a raw file object may write less
            view = memoryview(data)
            while written < len(data):
                step = self.out.write(view[written:])
                if not step:
                    raise BuildError(f"the blob output accepted no more bytes ({written} of a {len(data)}-byte "
                                     "write)")
                written += step

    def _write_tar_header(self, name: str, size: int) -> bytes:
        header = build_tar_header(name, size)
        self._write(header)
        return header

    # -- chunk data --------------------------------------------------------------------------------

    def dump(self, nodes, *, prefetch_count: int = 0) -> None:
        """Chunk the regular files ``nodes`` in order, filling each node's ``chunks``.

        Hardlinked paths (same ``hardlink_key`` and Inode) are read once; later paths share the chunk
        list. The compressed bytes of the first ``prefetch_count`` nodes are counted as the blob's
        prefetch (readahead) size.
        """
        pipeline = ChunkPipeline(self._store, compressor=self.compressor, digester=self.digester,
                                 chunk_size=self.chunk_size, workers=self.workers,
                                 inflight_bytes=self.inflight_bytes)
        self.max_inflight = pipeline.max_inflight
        done: dict[int, list[Chunk]] = {}
        with pipeline, ThreadPoolExecutor(max_workers=1, thread_name_prefix="rafs-blob-sink") as self._sink:
            try:
                add = pipeline.add
                for position, node in enumerate(nodes):
                    chunks = done.get(id(node.inode))
                    if chunks is not None:
                        node.chunks = chunks
                        continue
                    node.chunks = []
                    done[id(node.inode)] = node.chunks
                    if node.inode.size:
                        add(node, position < prefetch_count)
                pipeline.drain()
                if self.batch is not None and self.batch.buffer:
                    self._write_batch(False)        # the last batch is part of no node's size
                self._flush()
            except BaseException:
                for future in self._sink_queue:
                    future.cancel()
                self._sink_queue.clear()
                raise
            finally:
                self._sink = None

    def _store(self, node: Node, file_offset: int, length: int, prefetch: bool,
               digest: bytes, crc: int, stored: bytes, compressed: bool) -> None:
        """Record one chunk of ``node``: a copy of an identical stored chunk, or a new one written now."""
        key = (digest, length)
        # a chunk dictionary is asked first, as the reference asks its global dictionary first
        existing = self._dict.get(key) if self._dict else None
        if existing is None:
            existing = self._dedup.get(key)
        if existing is not None:
            node.chunks.append(Chunk(digest, existing.blob_index, existing.compressed_offset,
                                     existing.compressed_size, existing.uncompressed_offset,
                                     existing.uncompressed_size, file_offset, existing.index,
                                     existing.flags, existing.crc32))
            self.dedup_chunks += 1
            self.dedup_uncompressed_size += length
            return
        if self.chunk_count >= MAX_CHUNKS_PER_BLOB:
            raise BuildError(f"the blob would hold more than {MAX_CHUNKS_PER_BLOB} chunks")
        batch = self.batch
        if batch is not None:
            if batch.takes(node.inode.size, self.chunk_size, length):
                self._store_batched(node, file_offset, length, prefetch, digest, crc, stored, compressed)
                return
            if batch.buffer:                # a chunk outside the batches ends the pending one
                self._write_batch(prefetch)
        flags = _COMPRESSED if compressed else 0
        if self.crc32:
            flags |= _HAS_CRC32
        else:
            crc = 0
        plain = stored
        if self.cipher != "none":
            stored = self._encrypt(stored)
            flags |= _ENCRYPTED
        uncompressed_offset = self._allocate(length)
        if self.mapped and self.pos < uncompressed_offset:
            self._pad(uncompressed_offset - self.pos)
        chunk = Chunk(digest, self.blob_index, self.offset + self.pos, len(stored), uncompressed_offset, length,
                      file_offset, self.chunk_count, flags, crc)
        self.chunk_count += 1
        self.stored_uncompressed_size += length
        self._dedup[key] = chunk
        self._write(stored)
        self.data_size += len(stored)
        if prefetch:
            self.prefetch_size += len(stored)
        if self.on_chunk is not None:
            self.on_chunk(chunk, plain)
        if self.blob_meta:
            if not self.ci_v2:
                self._ci += ci_v1_entry(chunk.compressed_offset, chunk.compressed_size, uncompressed_offset, length)
            else:
                self._ci += _PACK_CI_V2(*encode_chunk_info_v2(chunk.compressed_offset, chunk.compressed_size,
                                                              uncompressed_offset, length, flags, crc32=crc))
            self._digests += digest
        node.chunks.append(chunk)

    def _allocate(self, length: int) -> int:
        """The uncompressed offset of the next chunk of ``length`` bytes (4 KiB aligned when aligned)."""
        uncompressed_offset = self.uncompressed_size
        self.uncompressed_size += round_up_4k(length) if self.aligned else length
        return uncompressed_offset

    def _store_batched(self, node: Node, file_offset: int, length: int, prefetch: bool, digest: bytes, crc: int,
                       stored: bytes, compressed: bool) -> None:
        """Add a chunk to the pending batch (rafs.blob.batch). Its bootstrap record has no compressed
        range (compressed offset and size 0, flags only HAS_CRC32), as nydus-image writes it: readers
        find the batch through the CI record."""
        batch = self.batch
        data = codecs.decompress(self.compressor, stored, length, what="a chunk") if compressed else stored
        if batch.overflows(length):
            self._write_batch(prefetch)
        uncompressed_offset = self._allocate(length)
        batch_index, in_batch = batch.add(data)
        flags = _HAS_CRC32 if self.crc32 else 0
        member = _BATCH_MEMBER
        if self.cipher != "none":
            flags |= _ENCRYPTED
            member |= _ENCRYPTED
        chunk = Chunk(digest, self.blob_index, 0, 0, uncompressed_offset, length, file_offset, self.chunk_count,
                      flags, crc if self.crc32 else 0)
        self.chunk_count += 1
        self.stored_uncompressed_size += length
        self._dedup[(digest, length)] = chunk
        if self.on_chunk is not None:
            self.on_chunk(chunk, data)
        # the batch will start where the data section ends now: nothing else is written before it
        self._ci += _PACK_CI_V2(*encode_chunk_info_v2(self.offset + self.pos, 0, uncompressed_offset, length,
                                                      member, context_index=batch_index,
                                                      context_offset=in_batch))
        self._digests += digest
        node.chunks.append(chunk)

    def _encrypt(self, data: bytes) -> bytes:
        return crypt.encrypt(self.cipher, self.cipher_key, self.cipher_iv, data)

    def _write_batch(self, prefetch: bool) -> None:
        """Compress and write the pending batch as one unit and record its context."""
        data = self.batch.take()
        packed, _ = codecs.compress_chunk(self.compressor, data)
        if self.cipher != "none":
            packed = self._encrypt(packed)
        self._write(packed)
        self.data_size += len(packed)
        if prefetch:
            self.prefetch_size += len(packed)
        self.batch.written(len(packed), len(data))

    def store_encoded(self, digest: bytes, length: int, stored: bytes, compressed: bool, crc: int) -> Chunk:
        """Append one chunk already encoded by this blob's compressor (``rafs compact`` copies chunks
        between blobs as they are stored); its record comes back, the file offset left 0."""
        holder = _Holder()
        self._store(holder, 0, length, False, digest, crc, stored, compressed)
        return holder.chunks[-1]

    def seed_dict(self, chunks) -> None:
        """A chunk dictionary's chunks (keyed by (digest, uncompressed size)): files repeating one get
        a record pointing at it, even when this blob stores the same data already."""
        self._dict = dict(chunks)

    def seed_dedup(self, chunks) -> None:
        """Chunks stored in other blobs (a parent image's, keyed by (digest, uncompressed size)) that
        this blob need not store again: files repeating them get records pointing there."""
        for key, chunk in dict(chunks).items():
            self._dedup.setdefault(key, chunk)

    # -- sections after the data -------------------------------------------------------------------

    def _pad(self, size: int) -> None:
        """Zeros in the data section (``mapped`` blobs), part of the blob id like the chunks."""
        self._write(bytes(size))
        self.data_size += size

    def end_data(self) -> None:
        """The ``image.blob`` header (with blob-toc or inline meta) and its ToC entry."""
        if self.mapped and self.pos < self.uncompressed_size:
            self._pad(self.uncompressed_size - self.pos)
        if not (self.toc or self.inline_meta):
            return
        self._write_tar_header(layout.TOC_ENTRY_BLOB_RAW, self.data_size)
        if self.toc:
            self._flush()
            self._toc_entries.append(TocEntry.new(layout.TOC_ENTRY_BLOB_RAW, "none", self._hash.digest(), 0,
                                                  self.data_size, self.uncompressed_size))

    def write_meta(self) -> None:
        """The CI array (compressed with the blob's compressor when that helps) and its header,
        then with blob-toc the chunk-digest array (not part of the blob id) and their ToC entries.
        Skipped for a blob without data, as the reference does."""
        if not self.blob_meta or self.uncompressed_size == 0:
            return
        ci = bytes(self._ci)
        contexts_at = contexts_size = contexts = 0
        extra, count = self._ci_contexts()
        if count:
            # batch or ZRAN contexts follow the records (s_ci_zran_offset/size/count say where)
            contexts_at, contexts_size, contexts = len(ci), len(extra), count
            ci += extra
        packed, compressed = codecs.compress_chunk(self.meta_compressor, ci)
        self.ci_compressor = self.meta_compressor if compressed else "none"
        if self.cipher != "none":
            packed = self._encrypt(packed)      # after compression, like the chunks
        self.ci_offset = self.pos
        self.ci_compressed_size = len(packed)
        self.ci_uncompressed_size = len(ci)
        if self.toc and self.chunk_count:
            self.features |= BlobFeatures.INLINED_CHUNK_DIGEST
        header = CI_HEADER.pack(layout.BLOB_CCT_MAGIC, int(self.features), COMPRESSOR_IDS[self.ci_compressor],
                                self.chunk_count, self.ci_offset, self.ci_compressed_size,
                                self.ci_uncompressed_size, contexts_at, contexts_size, contexts, bytes(4032),
                                layout.BLOB_CCT_MAGIC)
        self.ci_data, self.ci_header = ci, header
        # an encrypted blob's header is encrypted too (its ToC digest stays the plaintext's)
        stored_header = self._encrypt(header) if self.cipher != "none" else header
        self._write(packed)
        self._write(stored_header)
        if self.toc or self.inline_meta:
            self._write_tar_header(layout.TOC_ENTRY_BLOB_META, len(packed) + len(stored_header))
        if not self.toc:
            return
        self._toc_entries.append(TocEntry.new(layout.TOC_ENTRY_BLOB_META, self.ci_compressor,
                                              hashlib.sha256(ci).digest(), self.ci_offset, len(packed), len(ci)))
        self._toc_entries.append(TocEntry.new(layout.TOC_ENTRY_BLOB_META_HEADER, "none",
                                              hashlib.sha256(header).digest(), self.ci_offset + len(packed),
                                              len(stored_header), len(stored_header)))
        digests = bytes(self._digests)
        offset = self.pos
        self._write(digests, hashed=False)
        self._write_tar_header(layout.TOC_ENTRY_BLOB_DIGEST, len(digests))
        self._toc_entries.append(TocEntry.new(layout.TOC_ENTRY_BLOB_DIGEST, "none", hashlib.sha256(digests).digest(),
                                              offset, len(digests), len(digests)))

    @property
    def meta_compressor(self) -> str:
        """What the CI is compressed with (when that helps): the blob's compressor."""
        return self.compressor

    def _ci_contexts(self) -> tuple[bytes, int]:
        """The contexts that follow the CI records, and how many (the batches' here)."""
        if self.batch is None:
            return b"", 0
        return bytes(self.batch.contexts), self.batch.count

    def inline_placeholder(self) -> Blob:
        """The blob as the embedded bootstrap records it: placeholder id, size up to here."""
        self.compressed_size = self.pos
        return self.blob(INLINE_BLOB_ID)

    def append_bootstrap(self, bootstrap: bytes) -> None:
        """The inline bootstrap (zstd-compressed with blob-toc when that helps, else raw) and header."""
        offset = self.pos
        if self.toc:
            stored, compressed = codecs.compress_chunk("zstd", bootstrap)
            compressor = "zstd" if compressed else "none"
        else:
            stored, compressor = bootstrap, "none"
        self._write(stored)
        self._write_tar_header(layout.TOC_ENTRY_BOOTSTRAP, len(stored))
        if self.toc:
            self._toc_entries.append(TocEntry.new(layout.TOC_ENTRY_BOOTSTRAP, compressor,
                                                  hashlib.sha256(bootstrap).digest(), offset, len(stored),
                                                  len(bootstrap)))

    def finish(self) -> Blob:
        """Write the ToC (blob-toc) and compute the blob id; returns the final :class:`Blob`."""
        if self.toc:
            data = toc_bytes(self._toc_entries)
            self._write(data)
            self.toc_digest = hashlib.sha256(data).digest()
            self.toc_size = len(data)
        if not self.inline_meta:
            self.compressed_size = self.pos
        self._flush()
        self.blob_id = self._hash.hexdigest()
        return self.blob(self.blob_id)

    def blob(self, blob_id: str) -> Blob:
        """The model :class:`Blob` as it stands (features, sizes, CI location, ToC)."""
        return Blob(index=self.blob_index, blob_id=blob_id, compressor=self.compressor, digester=self.digester,
                    chunk_size=self.chunk_size, chunk_count=self.chunk_count,
                    compressed_size=self.compressed_size, uncompressed_size=self.uncompressed_size,
                    features=int(self.features), readahead_size=self.prefetch_size,
                    ci_compressor=self.ci_compressor, ci_offset=self.ci_offset,
                    ci_compressed_size=self.ci_compressed_size, ci_uncompressed_size=self.ci_uncompressed_size,
                    toc_digest=self.toc_digest, toc_size=self.toc_size, cipher=self.cipher,
                    cipher_key=self.cipher_key, cipher_iv=self.cipher_iv)


def check_chunk_size(chunk_size: int) -> int:
    if not isinstance(chunk_size, int) or not is_chunk_size(chunk_size):
        raise InvalidArgumentError(f"invalid chunk size: {chunk_size:#x} ({CHUNK_SIZE_RULE})"
                                   if isinstance(chunk_size, int) else f"invalid chunk size: {chunk_size!r}")
    return chunk_size


class _Holder:
    """What :meth:`BlobWriter._store` fills for a chunk that belongs to no file yet."""

    __slots__ = ("chunks", "inode")

    def __init__(self):
        self.chunks: list[Chunk] = []
        self.inode = None
