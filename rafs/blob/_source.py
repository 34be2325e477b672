"""Ranged reads over whatever a blob reader is handed: a RangeReader, bytes or an mmap, a path."""

from __future__ import annotations

import contextlib
import functools

from ..errors import InvalidArgumentError, InvalidImageError
from ..io.source import open_range_reader


class BytesRangeReader:
    """A RangeReader over bytes, a bytearray, a memoryview or an mmap (no copy until read)."""

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


def as_range_reader(source):
    """``source`` as a RangeReader: bytes-like objects and mmaps are wrapped, paths opened."""
    if hasattr(source, "read_range"):
        return source
    if isinstance(source, (bytes, bytearray, memoryview)) or hasattr(source, "madvise"):
        return BytesRangeReader(source)
    return open_range_reader(source)


@contextlib.contextmanager
def opened(source):
    """``source`` as a RangeReader for the duration of a block; what was opened here is closed."""
    reader = as_range_reader(source)
    try:
        yield reader
    finally:
        if reader is not source:
            reader.close()


def reads_range(func):
    """Decorator: the function's first argument (path, bytes, file object, RangeReader) arrives as a
    RangeReader, opened and closed around the call when the caller did not pass one."""
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
