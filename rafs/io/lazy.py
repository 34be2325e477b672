"""A blob's range reader opened on its first read, so that a warm blob cache never asks the backend.

Both ways of serving an image use it: :meth:`rafs.io.blobs.BlobLocator.chunk_reader` (FUSE, the API)
and the on-demand EROFS driver (:mod:`rafs.serve.ondemand`). A blob whose backend is gone (a removed
localfs directory, a stopped S3 server) is then still read from the cache; only a chunk missing from
the cache opens the backend, and fails with the backend's own error if it cannot be had.
"""

from __future__ import annotations

import threading


class LazySource:
    """``locator.open(blob id, index)`` on first use; the locator owns (and closes) the reader."""

    def __init__(self, locator, blob):
        self._locator = locator
        self._blob = blob
        self._reader = None
        self._lock = threading.Lock()

    def _open(self):
        with self._lock:
            if self._reader is None:          # a failed open is tried again on the next read
                self._reader = self._locator.open(self._blob.blob_id, self._blob.index)
        return self._reader

    @property
    def size(self):
        return getattr(self._open(), "size", None)

    def read_range(self, offset: int, size: int) -> bytes:
        return self._open().read_range(offset, size)

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return getattr(self._open(), name)

    def close(self) -> None:
        pass

    def __repr__(self) -> str:
        return f"<LazySource blob {self._blob.blob_id}{'' if self._reader is None else ' (open)'}>"
