"""The chunk pipeline of a build: files read, digested, CRC-32C'd and compressed on a thread pool.

Regular files go in in dump order and their chunk results come out in that order, whatever order the
workers finish in, so the blob is laid out exactly as a sequential build would lay it out. Small files
read from disk travel in batches (one hand-over per file would cost more than reading and digesting a
small file does); a larger file, or one read from a stream (a tar member), is one task per chunk.
Memory stays bounded: at most ``max_inflight`` chunk-size units are read ahead of what has been stored.

zstandard, lz4, blake3, hashlib and crc32c release the GIL, so the workers use every core.
"""

from __future__ import annotations

import collections
import os
from concurrent.futures import ThreadPoolExecutor

from .._beneath import TreeFile, open_regular_path
from ..errors import BuildError
from ..limits import DEFAULT_CHUNK_SIZE
from ..model import Node
from . import codecs

DEFAULT_INFLIGHT_BYTES = 32 << 20
# Small files are handed to the workers in batches of at most this many files / bytes.
BATCH_FILES = 256
BATCH_BYTES = 1 << 20


def default_workers() -> int:
    """The CPUs this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _read_chunk(source, offset: int, size: int) -> bytes:
    """``size`` bytes at ``offset`` of a file: a :class:`~rafs._beneath.TreeFile` (a directory build's,
    opened beneath the tree's root and checked to be the file the walk saw) or a path (any regular file)."""
    fd = source.open() if type(source) is TreeFile else open_regular_path(source)
    try:
        data = os.pread(fd, size, offset)
        while len(data) < size:
            more = os.pread(fd, size - len(data), offset + len(data))
            if not more:
                raise BuildError(f"failed to read node file {_named(source)!r}: it shrank below "
                                 f"{offset + size} bytes while building")
            data += more
        return data
    except OSError as exc:
        raise BuildError(f"failed to read node file {_named(source)!r}: {exc.strerror}") from None
    finally:
        os.close(fd)


def _named(source) -> str:
    return os.fsdecode(os.fspath(source))


def _process_data(process, data: bytes):
    """The result of one chunk already read (from a stream); runs on a worker thread."""
    return [process(data)]


def _process_file(process, path: bytes, offset: int, size: int):
    return [process(_read_chunk(path, offset, size))]


def _process_files(process, files: list[tuple[bytes, int]]):
    """Results for a batch of whole small files (each one chunk)."""
    return [process(_read_chunk(path, 0, size)) for path, size in files]


def file_source(node: Node):
    """A file's data: a TreeFile or a path as bytes (both read at offsets, on the workers), or the
    callable that opens a stream."""
    source = node.data
    if source is None:
        raise BuildError(f"regular file {node.name!r} of {node.inode.size} bytes has no data source")
    if type(source) is TreeFile:
        return source
    if isinstance(source, (str, os.PathLike)):
        return os.fsencode(source)
    return source


class ChunkPipeline:
    """Chunk results of regular files, computed on ``workers`` threads and delivered in order.

    Use it as a context manager (the pool lives inside it). :meth:`add` queues a file's chunks;
    results go to ``store(node, file_offset, length, prefetch, digest, crc32c, stored, compressed)``
    in the order files were added, as room is needed and at :meth:`drain`.
    """

    def __init__(self, store, *, compressor: str = "zstd", digester: str = "blake3",
                 chunk_size: int = DEFAULT_CHUNK_SIZE, workers: int | None = None,
                 inflight_bytes: int = DEFAULT_INFLIGHT_BYTES):
        self._process = codecs.chunk_processor(compressor, digester)   # checks both names
        self.store = store
        self.chunk_size = chunk_size
        self.workers = max(1, workers if workers is not None else default_workers())
        self.max_inflight = max(2 * self.workers + 2, min(256, inflight_bytes // max(chunk_size, 1)))
        # a batch is small enough that 2 per worker fit the in-flight bound: the workers stay busy
        # while the results are being stored
        self._batch_limit = max(chunk_size, min(BATCH_BYTES, self.max_inflight // (2 * self.workers) * chunk_size))
        self._pool: ThreadPoolExecutor | None = None
        self._pending: collections.deque = collections.deque()    # (future, entries, units) in order
        self._inflight = 0          # chunk_size units read ahead: one per chunk of a large file, a batch's bytes
        self._batch: list = []
        self._batch_bytes = 0

    def __enter__(self) -> "ChunkPipeline":
        self._pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="rafs-blob")
        return self

    def __exit__(self, *exc) -> None:
        for future, _, _ in self._pending:
            future.cancel()
        self._pending.clear()
        self._batch.clear()
        self._pool.shutdown(wait=True)
        self._pool = None

    def add(self, node: Node, prefetch: bool = False) -> None:
        """Queue every chunk of regular file ``node`` (not empty)."""
        size, chunk_size = node.inode.size, self.chunk_size
        source = file_source(node)
        seekable = type(source) is TreeFile or isinstance(source, bytes)
        if seekable and size <= chunk_size:      # one chunk: batched
            self._batch.append((source, (node, 0, size, prefetch)))
            self._batch_bytes += size
            if len(self._batch) >= BATCH_FILES or self._batch_bytes >= self._batch_limit:
                self._flush_batch()
            return
        self._flush_batch()
        stream = None if seekable else source()
        try:
            for offset in range(0, size, chunk_size):
                length = min(chunk_size, size - offset)
                if stream is None:
                    future = self._pool.submit(_process_file, self._process, source, offset, length)
                else:
                    future = self._pool.submit(_process_data, self._process, _read_stream(stream, length, node, offset))
                self._submit(future, [(node, offset, length, prefetch)], 1)
        finally:
            if stream is not None:
                stream.close()

    def drain(self) -> None:
        """Store every result still in flight."""
        self._flush_batch()
        while self._pending:
            self._retire()

    def _flush_batch(self) -> None:
        batch = self._batch
        if batch:
            units = -(-self._batch_bytes // self.chunk_size)
            self._batch, self._batch_bytes = [], 0
            future = self._pool.submit(_process_files, self._process, [(source, entry[2]) for source, entry in batch])
            self._submit(future, [entry for _, entry in batch], units)

    def _submit(self, future, entries: list, units: int) -> None:
        self._pending.append((future, entries, units))
        self._inflight += units
        while self._inflight >= self.max_inflight:
            self._retire()

    def _retire(self) -> None:
        future, entries, units = self._pending.popleft()
        self._inflight -= units
        store = self.store
        for entry, result in zip(entries, future.result()):
            store(*entry, *result)


def _read_stream(stream, length: int, node: Node, offset: int) -> bytes:
    data = stream.read(length)
    while len(data) < length:
        more = stream.read(length - len(data))
        if not more:
            raise BuildError(f"data of {node.name!r} ended at {offset + len(data)} of {node.inode.size} bytes")
        data += more
    return data
