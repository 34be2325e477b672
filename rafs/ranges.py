"""Ranged reads at the bottom of the read path, with no I/O of their own: the :class:`RangeReader`
protocol, readers over bytes and over a file object someone else opened, and the bounds checks that
blob parsers use. :mod:`rafs.blob` takes only what this module accepts; opening paths, URLs and
registry references is :mod:`rafs.io`'s job (:func:`rafs.io.source.open_range_reader`).
"""

from __future__ import annotations

import contextlib
import functools
import io
import mmap
import threading
from typing import Protocol

from .errors import BackendError, InvalidArgumentError, InvalidImageError


class RangeReader(Protocol):
    """Anything that serves ``read_range(offset, size)``; ``size`` is the total length if known."""

    size: int | None

    def read_range(self, offset: int, size: int) -> bytes: ...

    def close(self) -> None: ...


class BytesRangeReader:
    """A RangeReader over bytes, a bytearray, a memoryview or an mmap (no copy until read). A read
    outside the bytes is an InvalidImageError: whatever asked for it took the offset from an image."""

    def __init__(self, data, name: str = "<bytes>"):
        self._data = data
        self.name = name
        self.size = len(data)

    def read_range(self, offset: int, size: int) -> bytes:
        if offset < 0 or size < 0 or offset + size > self.size:
            raise InvalidImageError(f"read of {size} bytes at {offset} runs past the end ({self.size} bytes)",
                                    structure=self.name, offset=offset)
        return bytes(self._data[offset:offset + size])

    def close(self) -> None:
        pass

    def __repr__(self) -> str:
        return f"BytesRangeReader({self.name!r}, size={self.size})"


class FileObjectRangeReader:
    """Ranged reads of a seekable binary file object (fsspec files included), serialised by a lock.
    The caller opened the object and closes it."""

    def __init__(self, fileobj, name: str = "<file object>"):
        self._f = fileobj
        self.name = name
        self._lock = threading.Lock()
        try:
            self.size = fileobj.seek(0, io.SEEK_END)
        except (OSError, ValueError, AttributeError):
            self.size = None

    def read_range(self, offset: int, size: int) -> bytes:
        with self._lock:
            self._f.seek(offset)
            data = self._f.read(size)
        if data is None or len(data) != size:
            got = 0 if data is None else len(data)
            raise BackendError(f"{self.name}: short read of {size} bytes at {offset} (got {got})")
        return bytes(data)

    def close(self) -> None:
        pass

    def __repr__(self) -> str:
        return f"FileObjectRangeReader({self.name!r}, size={self.size})"


def is_bytes_like(source) -> bool:
    """Bytes already in memory: bytes, bytearray, memoryview or an mmap."""
    return isinstance(source, (bytes, bytearray, memoryview, mmap.mmap))


def as_range_reader(source) -> RangeReader:
    """``source`` as a RangeReader: a RangeReader as it is, bytes-like objects and open binary file
    objects wrapped. Paths and URLs are refused: :mod:`rafs.io` opens those."""
    if hasattr(source, "read_range"):
        return source
    if is_bytes_like(source):
        return BytesRangeReader(source)
    if hasattr(source, "read") and hasattr(source, "seek"):
        return FileObjectRangeReader(source, getattr(source, "name", "<file object>"))
    raise InvalidArgumentError(f"cannot read ranges of {type(source).__name__}: expected a range reader, bytes "
                               "or a binary file object (rafs.io.source.open_range_reader opens paths and URLs)")


@contextlib.contextmanager
def opened(source):
    """``source`` as a RangeReader for the duration of a block; a wrapper made here is closed."""
    reader = as_range_reader(source)
    try:
        yield reader
    finally:
        if reader is not source:
            reader.close()


def reads_range(func):
    """Decorator: the function's first argument (bytes, file object, RangeReader) arrives as a
    RangeReader."""
    @functools.wraps(func)
    def wrapper(source, *args, **kwargs):
        with opened(source) as reader:
            return func(reader, *args, **kwargs)
    return wrapper


def known_size(source) -> int:
    """The total size of ``source``; readers of blob tails need it."""
    size = getattr(source, "size", None)
    if size is None:
        raise InvalidArgumentError(f"{source!r}: the blob size must be known to read its tail")
    return size


def read_checked(source, offset: int, size: int, what: str) -> bytes:
    """``size`` bytes at ``offset``, InvalidImageError when the range lies outside the blob."""
    total = known_size(source)
    if offset < 0 or size < 0 or offset + size > total:
        raise InvalidImageError(f"[{offset:#x}, +{size:#x}) lies outside the blob ({total} bytes)",
                                structure=what, offset=offset)
    return source.read_range(offset, size)
