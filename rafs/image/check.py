"""Checking an image: its structure, the layout of every file's chunks and, on request, every chunk's data.

:func:`check` yields one message per fault found, so that an image is sound when nothing is yielded;
the tree is walked one entry at a time, never every path at once.
"""

from __future__ import annotations

from typing import Iterator

from .. import errors
from ..progress import Progress, Ticker
from ..text import printable
from .file import chunk_layout_problem
from .paths import fsdecode


def check(image, *, verify_data: bool = False, progress: Progress | None = None) -> Iterator[str]:
    """Every fault found in ``image`` (an :class:`~rafs.image.Image`): structure, digests, and with
    ``verify_data`` every chunk (each distinct chunk read once). ``progress(done, total)`` counts the
    uncompressed bytes verified, file by file, against the blobs' uncompressed sizes."""
    reader = image.reader
    ticker = Ticker(progress if verify_data else None,
                    sum(blob.uncompressed_size for blob in image.blobs)).start()
    yield from reader.verify_structure()
    seen_chunks = set()
    entries = image.iter_entries()
    while True:
        try:
            path, inode = next(entries)         # one at a time: never every path at once
        except StopIteration:
            break
        except errors.RafsError as exc:
            yield f"tree walk: {exc}"
            return
        if not inode.is_reg:
            continue
        try:
            chunks = reader.chunks(inode.ino)
        except errors.RafsError as exc:
            yield f"{printable(path)}: {exc}"
            continue
        problem = chunk_layout_problem(inode, chunks)
        if problem:
            yield f"{printable(path)}: {problem}"
        if not verify_data:
            continue
        verified = 0
        for chunk in chunks:
            key = (chunk.blob_index, chunk.compressed_offset, chunk.uncompressed_offset, chunk.digest)
            if key in seen_chunks:
                continue
            seen_chunks.add(key)
            verified += chunk.uncompressed_size
            try:
                source = image.chunk_reader(chunk.blob_index)
                data = source.decode(chunk, source.fetch_raw(chunk), path=fsdecode(path))
                source.verify(chunk, data, path=fsdecode(path))
            except errors.RafsError as exc:
                yield f"{printable(path)}: {exc}"
        ticker.advance(verified)
    ticker.finish()
