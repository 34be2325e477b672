"""Byte sources: a bootstrap's bytes and ranged reads of blobs, from a path, any fsspec URL, or a file
object. This module knows nothing of inodes or chunks; it moves bytes.
"""

from __future__ import annotations

import io
import mmap
import os
import threading
from typing import Protocol

import fsspec

from ..errors import BackendError, InvalidArgumentError, RafsError

# Bootstraps are bounded by RAFS_MAX_METADATA_SIZE (2 GiB); reading one whole into memory is what
# nydusd does too (it mmaps it).
MAX_BOOTSTRAP_SIZE = 0x8000_0000


class RangeReader(Protocol):
    """Anything that serves ``read_range(offset, size)``; ``size`` is the total length if known."""

    size: int | None

    def read_range(self, offset: int, size: int) -> bytes: ...

    def close(self) -> None: ...


def is_url(source) -> bool:
    return isinstance(source, str) and "://" in source


class LocalRangeReader:
    """Ranged reads of a local file through ``os.pread``: thread safe without a lock."""

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        self._fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        self.size = os.fstat(self._fd).st_size

    def read_range(self, offset: int, size: int) -> bytes:
        data = os.pread(self._fd, size, offset)
        if len(data) != size:
            raise BackendError(f"{self.path}: short read of {size} bytes at {offset} (got {len(data)})")
        return data

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __repr__(self) -> str:
        return f"LocalRangeReader({self.path!r}, size={self.size})"


class FileObjectRangeReader:
    """Ranged reads of a seekable binary file object (fsspec files included), serialised by a lock."""

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


def open_range_reader(source, storage_options: dict | None = None) -> RangeReader:
    """A RangeReader over a local path, an fsspec URL, or an open binary file object."""
    if hasattr(source, "read_range"):
        return source
    if hasattr(source, "read") and hasattr(source, "seek"):
        return FileObjectRangeReader(source, getattr(source, "name", "<file object>"))
    if isinstance(source, (str, os.PathLike)):
        if is_url(os.fspath(source)) and not os.fspath(source).startswith("file://"):
            try:
                f = fsspec.open(os.fspath(source), "rb", **(storage_options or {})).open()
            except FileNotFoundError:
                raise
            except Exception as exc:  # fsspec backends raise many types; say which URL failed
                raise BackendError(f"cannot open {source}: {exc}") from exc
            return FileObjectRangeReader(f, os.fspath(source))
        path = os.fspath(source)
        if path.startswith("file://"):
            path = path[len("file://"):]
        return LocalRangeReader(path)
    raise InvalidArgumentError(f"cannot read from {type(source).__name__}: expected a path, URL or "
                               "binary file object")


def load_bytes(source, storage_options: dict | None = None):
    """The whole content of a bootstrap: an mmap for local files, bytes otherwise."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return source
    if hasattr(source, "read"):
        data = source.read(MAX_BOOTSTRAP_SIZE + 1)
        if len(data) > MAX_BOOTSTRAP_SIZE:
            raise InvalidArgumentError("bootstrap larger than the 2 GiB RAFS metadata limit")
        return bytes(data)
    if not isinstance(source, (str, os.PathLike)):
        raise InvalidArgumentError(f"cannot read a bootstrap from {type(source).__name__}")
    path = os.fspath(source)
    if path.startswith("file://"):
        path = path[len("file://"):]
    if is_url(path):
        try:
            with fsspec.open(path, "rb", **(storage_options or {})) as f:
                data = f.read(MAX_BOOTSTRAP_SIZE + 1)
        except FileNotFoundError:
            raise
        except RafsError:
            raise
        except Exception as exc:
            raise BackendError(f"cannot read {path}: {exc}") from exc
        if len(data) > MAX_BOOTSTRAP_SIZE:
            raise InvalidArgumentError(f"{path}: larger than the 2 GiB RAFS metadata limit")
        return data
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size > MAX_BOOTSTRAP_SIZE:
            raise InvalidArgumentError(f"{path}: larger than the 2 GiB RAFS metadata limit")
        if size == 0:
            return b""
        return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
