"""Finding the data blobs an image refers to: a directory searched by blob id, an explicit mapping of
id to path/URL/file object, or a list in device order (for EROFS extra devices without ids).

``chunk_reader(blob)`` hands out the :class:`~rafs.io.fetch.ChunkFetcher` that reads a blob's chunks
(lazily, merging adjacent ranges), through the nydusd-compatible blob cache when ``cache_dir`` is set;
with a cache, a backend that is gone matters only for chunks the cache lacks.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Mapping, Sequence

from ..blob.ids import blob_path, blob_url, image_blob_id
from ..errors import BlobNotFoundError, InvalidArgumentError, RafsError
from ..limits import DEFAULT_MERGE_SIZE
from .lazy import LazySource
from .redact import redact_url
from .retry import RetryPolicy
from .source import RangeReader, is_url, load_bytes, open_range_reader

log = logging.getLogger(__name__)


class BlobLocator:
    """Resolves a blob (by id and table position) to a RangeReader, opening each one once."""

    validate = False
    config = None                   # no nydusd configuration: default prefetch settings
    cache_dir = None
    disable_indexed_map = False
    merge_size = DEFAULT_MERGE_SIZE
    prefetch_bandwidth_limit = 0

    def __init__(self, *, blob_dir=None, blobs: Mapping | Sequence | None = None,
                 storage_options: dict | None = None, cache_dir=None, retry: RetryPolicy | None = None):
        if blobs is not None and not isinstance(blobs, (Mapping, Sequence)) or isinstance(blobs, (str, bytes)):
            raise InvalidArgumentError("blobs must be a mapping of blob id to source, or a list in "
                                       "device order")
        self.blob_dir = os.fspath(blob_dir) if blob_dir is not None else None
        self.blobs = blobs
        self.storage_options = storage_options or {}
        self._open: dict[int, RangeReader] = {}
        self._fetchers: dict[int, object] = {}
        self._lock = threading.Lock()
        if cache_dir is not None:
            self.cache_dir = os.fspath(cache_dir)
        if retry is not None:
            self.retry = retry

    def load_bootstrap(self, source):
        """The bytes of the bootstrap at ``source`` (path, URL, file object), read with ``storage_options``."""
        return load_bytes(source, self.storage_options)

    def describe(self) -> str:
        places = []
        if isinstance(self.blobs, Mapping):
            places.append(f"the blobs mapping ({len(self.blobs)} entries)")
        elif self.blobs is not None:
            places.append(f"the blobs list ({len(self.blobs)} entries)")
        if self.blob_dir is not None:
            places.append(f"the blob directory {redact_url(self.blob_dir)}")
        # said in words, not parameter names: this ends up in the logs of commands too
        return ", ".join(places) or "nowhere: no blob directory or blobs were given"

    def given(self, blob_id: str, index: int):
        """The source the caller gave for this blob (``blobs=`` by id or by position), else None."""
        if isinstance(self.blobs, Mapping):
            return self.blobs.get(blob_id)
        if self.blobs is not None and index < len(self.blobs):
            return self.blobs[index]
        return None

    def source_for(self, blob_id: str, index: int):
        source = self.given(blob_id, index)
        if source is not None:
            return source
        if self.blob_dir is not None:
            if is_url(self.blob_dir):
                return blob_url(self.blob_dir, blob_id)
            path = blob_path(self.blob_dir, blob_id)
            if os.path.exists(path):
                return path
        return None

    retry: RetryPolicy | None = None

    def _open_source(self, blob_id: str, index: int) -> RangeReader:
        source = self.source_for(blob_id, index)
        if source is None:
            raise BlobNotFoundError(blob_id, self.describe())
        try:
            return open_range_reader(source, self.storage_options, retry=self.retry)
        except FileNotFoundError:
            raise BlobNotFoundError(blob_id, str(source)) from None

    def open(self, blob_id: str, index: int) -> RangeReader:
        """The reader of blob table entry ``index``. Unless the caller gave its source, the image's id
        is about to name a file, URL or object: one the allow-list refuses is an InvalidImageError."""
        reader = self._open.get(index)
        if reader is None:
            if self.given(blob_id, index) is None:
                image_blob_id(blob_id, index)
            reader = self._open_source(blob_id, index)
            self._open[index] = reader
        return reader

    def chunk_reader(self, blob, *, validate: bool = False):
        """The ChunkFetcher of ``blob`` (a :class:`rafs.model.Blob`), made once per blob."""
        from .cache import BlobCache
        from .cachefiles import CacheError
        from .fetch import ChunkFetcher
        with self._lock:
            fetcher = self._fetchers.get(blob.index)
            if fetcher is None:
                cache = None
                if self.cache_dir is not None:
                    image_blob_id(blob.blob_id, blob.index)     # it names the cache files
                    try:
                        cache = BlobCache(self.cache_dir, blob, disable_indexed_map=self.disable_indexed_map)
                    except CacheError as exc:   # something else sits under a cache file's name
                        log.warning("blob %s: reading without the cache: %s", blob.blob_id, exc)
                source = self.open(blob.blob_id, blob.index) if cache is None else self._open_when_needed(blob)
                if cache is not None:
                    try:
                        cache.ensure_meta(source)
                    except (RafsError, OSError) as exc:     # the data is still readable without it
                        log.warning("blob %s: no .blob.meta in the cache: %s", blob.blob_id, exc)
                fetcher = ChunkFetcher(blob, source, validate=validate or self.validate, cache=cache,
                                       merge_size=self.merge_size)
                fetcher.bandwidth_limit = self.prefetch_bandwidth_limit
                self._fetchers[blob.index] = fetcher
        return fetcher

    def _open_when_needed(self, blob):
        """The source of a blob read through the cache: opened now when that asks no server anything
        (a local file, a caller's object, a configured backend's reader, whose first request is its
        first read), else, and when the blob is nowhere to be found now, a :class:`LazySource` that
        opens it when a chunk is missing from the cache. So a warm cache needs no backend."""
        source = self.given(blob.blob_id, blob.index)
        if source is None:
            source = self.source_for(blob.blob_id, blob.index)
        if isinstance(source, (str, os.PathLike)) and is_url(os.fspath(source)):
            return LazySource(self, blob)          # opening a URL sends a HEAD
        try:
            return self.open(blob.blob_id, blob.index)
        except (BlobNotFoundError, FileNotFoundError):
            return LazySource(self, blob)

    def close(self) -> None:
        for fetcher in self._fetchers.values():
            fetcher.close()
        self._fetchers.clear()
        for reader in self._open.values():
            reader.close()
        self._open.clear()
