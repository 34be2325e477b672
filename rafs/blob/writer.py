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

Reading, hashing and compressing run on a thread pool (zstandard, lz4, blake3, hashlib and crc32c
release the GIL) with a bounded number of chunks in flight; results are written in order as soon as
they are ready, so memory does not grow with the size of the tree.
"""

from __future__ import annotations

import collections
import hashlib
import os
import struct
from concurrent.futures import ThreadPoolExecutor

from .. import _codec
from ..errors import BuildError, InvalidArgumentError
from ..model import Blob, BlobFeatures, Chunk, ChunkFlags, COMPRESSOR_IDS, MAX_CHUNKS_PER_BLOB, Node
from . import codecs, layout
from .tar_header import build_tar_header
from .toc import TocEntry, toc_bytes

CI_HEADER = _codec.FastRecord(layout.BlobCompressionContextHeader, "CI header")
_CI_V1 = struct.Struct("<QQ")
INLINE_BLOB_ID = "x" * 64            # placeholder id in a bootstrap embedded in its own blob
_ALIGN = 4096
DEFAULT_INFLIGHT_BYTES = 32 << 20
# Small files are handed to the workers in batches of at most this many files / bytes: one task (and one
# thread hand-over) per file would cost more than reading and digesting a small file does.
BATCH_FILES = 256
BATCH_BYTES = 1 << 20
# Chunks smaller than this are gathered into one write (and one blob-id update) of about this size.
WRITE_BUFFER = 1 << 20
_COMPRESSED = int(ChunkFlags.COMPRESSED)
_HAS_CRC32 = int(ChunkFlags.HAS_CRC32)


def ci_v1_entry(compressed_offset: int, compressed_size: int, uncompressed_offset: int,
                uncompressed_size: int) -> bytes:
    """A 16-byte ``BlobChunkInfoV1Ondisk`` (storage/src/meta/chunk_info_v1.rs) from the layout masks."""
    c, u = compressed_size - 1, uncompressed_size - 1
    uncomp = ((uncompressed_offset & layout.CI_V1_UNCOMP_OFFSET_MASK)
              | (u & layout.CI_V1_SIZE_LOW_MASK) << layout.CI_V1_SIZE_LOW_SHIFT
              | (u & layout.CI_V1_SIZE_HIGH_MASK) >> layout.CI_V1_UNCOMP_SIZE_HIGH_SHIFT)
    comp = ((compressed_offset & layout.CI_V1_COMP_OFFSET_MASK)
            | (c & layout.CI_V1_SIZE_LOW_MASK) << layout.CI_V1_SIZE_LOW_SHIFT
            | (c & layout.CI_V1_SIZE_HIGH_MASK) << layout.CI_V1_COMP_SIZE_HIGH_SHIFT)
    return _CI_V1.pack(uncomp, comp)


def _read_chunk(path: bytes, offset: int, size: int) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise BuildError(f"failed to open node file {os.fsdecode(path)!r}: {exc.strerror}") from None
    try:
        data = os.pread(fd, size, offset)
        while len(data) < size:
            more = os.pread(fd, size - len(data), offset + len(data))
            if not more:
                raise BuildError(f"failed to read node file {os.fsdecode(path)!r}: it shrank below "
                                 f"{offset + size} bytes while building")
            data += more
        return data
    except OSError as exc:
        raise BuildError(f"failed to read node file {os.fsdecode(path)!r}: {exc.strerror}") from None
    finally:
        os.close(fd)


def _process(compressor: str, digester: str, data: bytes):
    """(digest, crc32c, stored bytes, compressed?) of one chunk; runs on a worker thread."""
    stored, compressed = codecs.compress_chunk(compressor, data)
    return codecs.digest(digester, data), codecs.crc32c(data), stored, compressed


def _process_batch(compressor: str, digester: str, data: bytes):
    return [_process(compressor, digester, data)]


def _process_file(compressor: str, digester: str, path: bytes, offset: int, size: int):
    return [_process(compressor, digester, _read_chunk(path, offset, size))]


def _process_files(compressor: str, digester: str, files: list[tuple[bytes, int]]):
    """Results for a batch of whole small files (each one chunk)."""
    return [_process(compressor, digester, _read_chunk(path, 0, size)) for path, size in files]


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
                 chunk_size: int = 0x100000, aligned: bool = True, blob_meta: bool = True,
                 toc: bool = False, inline_meta: bool = False, crc32: bool = True, mapped: bool = False,
                 workers: int | None = None, inflight_bytes: int = DEFAULT_INFLIGHT_BYTES):
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
        if workers is None:
            workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        self.workers = max(1, workers)
        self.max_inflight = max(2 * self.workers + 2, min(256, inflight_bytes // max(chunk_size, 1)))

        self.features = BlobFeatures.CAP_TAR_TOC
        if inline_meta:
            self.features |= BlobFeatures.INLINED_FS_META | BlobFeatures.HAS_TAR_HEADER
        if toc:
            self.features |= BlobFeatures.HAS_TOC | BlobFeatures.HAS_TAR_HEADER
        if blob_meta:
            # v6 chunks are always 4K aligned; the reference sets the bit when it writes the CI
            self.features |= BlobFeatures.ALIGNED
        self.pos = 0
        self._hash = hashlib.sha256()
        self._buffer = bytearray()          # written and hashed in WRITE_BUFFER pieces
        self._dedup: dict[tuple[bytes, int], Chunk] = {}
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
        self.compressed_size = 0            # what the bootstrap records (see :meth:`blob`)
        self.blob_id = ""
        # events the reference traces (src/bin/nydus-image/main.rs --output-json)
        self.dedup_chunks = 0
        self.dedup_uncompressed_size = 0
        self.stored_uncompressed_size = 0

    # -- writing -----------------------------------------------------------------------------------

    def _write(self, data, *, hashed: bool = True) -> None:
        """Append ``data`` to the blob (and to the blob id unless ``hashed`` is false). Small pieces
        are gathered and written and hashed together, a piece of WRITE_BUFFER bytes or more at once."""
        if hashed and len(data) < WRITE_BUFFER:
            buffer = self._buffer
            buffer += data
            if len(buffer) >= WRITE_BUFFER:
                self._flush()
        else:
            self._flush()
            self._emit(data)
            if hashed:
                self._hash.update(data)
        self.pos += len(data)

    def _flush(self) -> None:
        """Write and hash what :meth:`_write` gathered."""
        if self._buffer:
            data = bytes(self._buffer)
            self._buffer.clear()
            self._emit(data)
            self._hash.update(data)

    def _emit(self, data) -> None:
        written = self.out.write(data)
        if written is not None and written < len(data):      # a raw file object may write less
            view = memoryview(data)
            while written < len(data):
                step = self.out.write(view[written:])
                if not step:
                    raise BuildError(f"the blob output accepted no more bytes at offset "
                                     f"{self.pos - len(self._buffer) + written}")
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
        prefetch (readahead) size. Small files read from disk go to the workers in batches, so the
        per-task overhead does not dominate trees of many small files.
        """
        done: dict[int, list[Chunk]] = {}
        pending: collections.deque = collections.deque()     # (future, entries, units) in dump order
        batch: list = []
        batch_bytes = 0
        inflight = 0            # chunk_size units read ahead: one per chunk of a large file, a batch's bytes
        chunk_size = self.chunk_size
        # a batch is at most BATCH_FILES files and BATCH_BYTES bytes, and small enough that 2 per worker
        # fit the in-flight bound: the workers stay busy while this thread writes
        batch_limit = max(chunk_size, min(BATCH_BYTES, self.max_inflight // (2 * self.workers) * chunk_size))

        def submit(future, entries, units: int = 1) -> None:
            nonlocal inflight
            pending.append((future, entries, units))
            inflight += units
            while inflight >= self.max_inflight:
                retire()

        def retire() -> None:
            nonlocal inflight
            future, entries, units = pending.popleft()
            inflight -= units
            store = self._store
            for entry, result in zip(entries, future.result()):
                store(*entry, *result)

        def flush(pool) -> None:
            nonlocal batch, batch_bytes
            if batch:
                paths = [(source, entry[2]) for source, entry in batch]
                submit(pool.submit(_process_files, self.compressor, self.digester, paths),
                       [entry for _, entry in batch], -(-batch_bytes // chunk_size))
                batch, batch_bytes = [], 0

        with ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="rafs-blob") as pool:
            try:
                for position, node in enumerate(nodes):
                    chunks = done.get(id(node.inode))
                    if chunks is not None:
                        node.chunks = chunks
                        continue
                    node.chunks = []
                    done[id(node.inode)] = node.chunks
                    size = node.inode.size
                    if size == 0:
                        continue
                    prefetch = position < prefetch_count
                    source = self._source(node)
                    if isinstance(source, bytes) and size <= chunk_size:      # one chunk: batched
                        batch.append((source, (node, 0, size, prefetch)))
                        batch_bytes += size
                        if len(batch) >= BATCH_FILES or batch_bytes >= batch_limit:
                            flush(pool)
                        continue
                    flush(pool)
                    for future, entries in self._jobs(node, source, prefetch, pool):
                        submit(future, entries)
                flush(pool)
                while pending:
                    retire()
            except BaseException:
                for future, _, _ in pending:
                    future.cancel()
                raise

    @staticmethod
    def _source(node: Node):
        """A file's data: its path as bytes, or the callable that opens a stream."""
        source = node.data
        if source is None:
            raise BuildError(f"regular file {node.name!r} of {node.inode.size} bytes has no data source")
        if isinstance(source, (str, os.PathLike)):
            return os.fsencode(source)
        return source

    def _jobs(self, node: Node, source, prefetch: bool, pool):
        """One task per chunk of ``node``: read by the worker from a path, or here from a stream."""
        size, chunk_size = node.inode.size, self.chunk_size
        stream = None if isinstance(source, bytes) else source()
        try:
            for offset in range(0, size, chunk_size):
                length = min(chunk_size, size - offset)
                if stream is None:
                    future = pool.submit(_process_file, self.compressor, self.digester, source, offset, length)
                else:
                    data = stream.read(length)
                    while len(data) < length:
                        more = stream.read(length - len(data))
                        if not more:
                            raise BuildError(f"data of {node.name!r} ended at {offset + len(data)} of "
                                             f"{size} bytes")
                        data += more
                    future = pool.submit(_process_batch, self.compressor, self.digester, data)
                yield future, [(node, offset, length, prefetch)]
        finally:
            if stream is not None:
                stream.close()

    def _store(self, node: Node, file_offset: int, length: int, prefetch: bool,
               digest: bytes, crc: int, stored: bytes, compressed: bool) -> None:
        """Record one chunk of ``node``: a copy of an identical stored chunk, or a new one written now."""
        key = (digest, length)
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
        flags = _COMPRESSED if compressed else 0
        if self.crc32:
            flags |= _HAS_CRC32
        else:
            crc = 0
        uncompressed_offset = self.uncompressed_size
        self.uncompressed_size += (length + _ALIGN - 1) & ~(_ALIGN - 1) if self.aligned else length
        if self.mapped and self.pos < uncompressed_offset:
            self._pad(uncompressed_offset - self.pos)
        chunk = Chunk(digest, self.blob_index, self.pos, len(stored), uncompressed_offset, length,
                      file_offset, self.chunk_count, flags, crc)
        self.chunk_count += 1
        self.stored_uncompressed_size += length
        self._dedup[key] = chunk
        self._write(stored)
        self.data_size += len(stored)
        if prefetch:
            self.prefetch_size += len(stored)
        if self.blob_meta:
            self._ci += ci_v1_entry(chunk.compressed_offset, chunk.compressed_size, uncompressed_offset, length)
            self._digests += digest
        node.chunks.append(chunk)

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
        packed, compressed = codecs.compress_chunk(self.compressor, ci)
        self.ci_compressor = self.compressor if compressed else "none"
        self.ci_offset = self.pos
        self.ci_compressed_size = len(packed)
        self.ci_uncompressed_size = len(ci)
        if self.toc and self.chunk_count:
            self.features |= BlobFeatures.INLINED_CHUNK_DIGEST
        header = CI_HEADER.pack(layout.BLOB_CCT_MAGIC, int(self.features), COMPRESSOR_IDS[self.ci_compressor],
                                self.chunk_count, self.ci_offset, self.ci_compressed_size,
                                self.ci_uncompressed_size, 0, 0, 0, bytes(4032), layout.BLOB_CCT_MAGIC)
        self._write(packed)
        self._write(header)
        if self.toc or self.inline_meta:
            self._write_tar_header(layout.TOC_ENTRY_BLOB_META, len(packed) + len(header))
        if not self.toc:
            return
        self._toc_entries.append(TocEntry.new(layout.TOC_ENTRY_BLOB_META, self.ci_compressor,
                                              hashlib.sha256(ci).digest(), self.ci_offset, len(packed), len(ci)))
        self._toc_entries.append(TocEntry.new(layout.TOC_ENTRY_BLOB_META_HEADER, "none",
                                              hashlib.sha256(header).digest(), self.ci_offset + len(packed),
                                              len(header), len(header)))
        digests = bytes(self._digests)
        offset = self.pos
        self._write(digests, hashed=False)
        self._write_tar_header(layout.TOC_ENTRY_BLOB_DIGEST, len(digests))
        self._toc_entries.append(TocEntry.new(layout.TOC_ENTRY_BLOB_DIGEST, "none", hashlib.sha256(digests).digest(),
                                              offset, len(digests), len(digests)))

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
                    toc_digest=self.toc_digest, toc_size=self.toc_size)


def check_chunk_size(chunk_size: int) -> int:
    if not isinstance(chunk_size, int) or chunk_size < 0x1000 or chunk_size > 0x1000000 \
            or chunk_size & (chunk_size - 1):
        raise InvalidArgumentError(f"invalid chunk size: {chunk_size:#x} (a power of two in [0x1000, 0x1000000])"
                                   if isinstance(chunk_size, int) else f"invalid chunk size: {chunk_size!r}")
    return chunk_size
