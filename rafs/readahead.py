"""File data of a tree walk, read and decompressed ahead by a small thread pool, handed out in walk order.

Extraction (:func:`rafs.image.extract.extract_all`) and ``rafs unpack`` visit files in the walk's order,
which for images the builder wrote is also blob order. Reading each chunk when its file comes up leaves
the blob reads and the decompression (zstd and lz4 release the GIL) on the thread that writes files;
here they run ahead on ``threads`` workers while the caller writes what has arrived.

Work goes out in batches of whole chunks of about ``batch_size`` bytes (small files together, so one
ranged request and one task serve many of them; a large file over several batches) through
:meth:`rafs.Image.read_chunks`, which merges adjacent chunks of a blob into one request. What is
read ahead but not yet taken is bounded by ``window`` bytes of data and ``MAX_PENDING_ENTRIES``
entries, whatever the image declares.
"""

from __future__ import annotations

import collections
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable, Iterator

from .limits import DEFAULT_MERGE_SIZE

DEFAULT_THREADS = 2
DEFAULT_WINDOW = 64 << 20
MAX_PENDING_ENTRIES = 4096


class Pieces:
    """The data of one file as it arrives: ``(chunk, bytes)`` in file order (iterating waits)."""

    __slots__ = ("parts",)

    def __init__(self):
        self.parts: list[list] = []          # [batch future (None until sent), first index in it, count]

    def __iter__(self):
        for future, start, count in self.parts:
            chunks, datas = future.result()
            yield from zip(chunks[start:start + count], datas[start:start + count])


class _LargePieces:
    """The data of a file larger than the read-ahead window: its batches are sent when the caller
    reaches it, ``ahead`` at a time, so no more than that is ever held."""

    __slots__ = ("pool", "image", "chunks", "batch_size", "ahead")

    def __init__(self, pool, image, chunks, batch_size: int, ahead: int):
        self.pool, self.image, self.chunks, self.batch_size, self.ahead = pool, image, chunks, batch_size, ahead

    def __iter__(self):
        batches, batch, size = [], [], 0
        for chunk in self.chunks:
            batch.append(chunk)
            size += chunk.uncompressed_size
            if size >= self.batch_size:
                batches.append(batch)
                batch, size = [], 0
        if batch:
            batches.append(batch)
        futures: collections.deque = collections.deque()
        for batch in batches:
            futures.append(self.pool.submit(_read, self.image, batch))
            if len(futures) > self.ahead:
                yield from zip(*futures.popleft().result())
        while futures:
            yield from zip(*futures.popleft().result())


class DataOnce:
    """A ``wants`` test: a regular file's data, once per inode (a hardlink's later paths link to the
    first, so they need none)."""

    def __init__(self):
        self._seen: set[int] = set()

    def __call__(self, path, inode) -> bool:
        if not inode.is_reg:
            return False
        if inode.nlink > 1:
            if inode.ino in self._seen:
                return False
            self._seen.add(inode.ino)
        return True


def read_ahead(image, entries: Iterable, wants: Callable, *, threads: int = DEFAULT_THREADS,
               batch_size: int = DEFAULT_MERGE_SIZE, window: int = DEFAULT_WINDOW) -> Iterator[tuple]:
    """``(path, inode, pieces)`` for each ``(path, inode)`` of ``entries``; ``pieces`` yields the
    ``(chunk, data)`` of the regular files ``wants(path, inode)`` accepts, in file order, and is None
    for the rest.

    ``wants`` is asked about every entry once, in walk order, ahead of the caller (so it may only
    depend on earlier entries).
    A batch that fails raises from the pieces of a file it holds (the caller names the file).
    """
    threads = max(1, threads)
    pool = ThreadPoolExecutor(threads, thread_name_prefix="rafs-readahead")
    pending: collections.deque = collections.deque()
    batch: list = []
    open_parts: list[list] = []                  # parts of files in the batch not sent yet
    batch_bytes = held = 0                       # held: bytes sent or batched and not yet handed out

    def submit():
        nonlocal batch, batch_bytes
        if batch:
            future = pool.submit(_read, image, batch)
            for part in open_parts:
                part[0] = future
            open_parts.clear()
            batch, batch_bytes = [], 0

    it = iter(entries)
    exhausted = False
    try:
        while True:
            while not exhausted and held < window and len(pending) < MAX_PENDING_ENTRIES:
                try:
                    path, inode = next(it)
                except StopIteration:
                    exhausted = True
                    break
                pieces, size = None, 0
                if wants(path, inode) and inode.is_reg and inode.size:
                    chunks = image.open_inode(inode.ino).chunks
                    size = sum(c.uncompressed_size for c in chunks)
                    if size > window // 4:
                        pieces, size = _LargePieces(pool, image, chunks, batch_size, threads + 1), 0
                    else:
                        pieces = Pieces()
                        part = None
                        for chunk in chunks:
                            if batch_bytes >= batch_size:
                                submit()
                            if part is None or part[0] is not None:
                                part = [None, len(batch), 0]
                                pieces.parts.append(part)
                                open_parts.append(part)
                            part[2] += 1
                            batch.append(chunk)
                            batch_bytes += chunk.uncompressed_size
                        held += size
                pending.append((path, inode, pieces, size))
            if not pending:
                break
            path, inode, pieces, size = pending.popleft()
            if isinstance(pieces, Pieces) and pieces.parts and pieces.parts[-1][0] is None:
                submit()                         # the caller wants it now
            yield path, inode, pieces
            held -= size
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _read(image, chunks: list) -> tuple[list, list]:
    return chunks, image.read_chunks(chunks)
