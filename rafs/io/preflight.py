"""Before an image is served: can each of its blobs be read from somewhere?

A mount whose blobs cannot be found starts fine and then fails every read with EIO, which tells the
user nothing. :func:`missing_blobs` looks for each blob where reads would look, the way they would:
in the blob cache (a blob whose every chunk is cached needs no backend, as nydusd serves it), then in
the backend (localfs: the file in ``dir``/``alt_dirs`` or ``blob_file``; s3 and http-proxy: one HEAD
request). Each blob that is nowhere comes back with the places looked at, named by the configuration
keys that chose them (``device.backend.config.dir /x``), so the caller can say it in the user's words.
"""

from __future__ import annotations

import logging
import os
import stat
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from ..errors import RafsError
from ..model import MAX_CHUNKS_PER_BLOB, Blob, BlobFeatures
from .layout import (CHUNK_MAP_ALL_READY, CHUNK_MAP_HEADER_SIZE, CHUNK_MAP_MAGIC, CHUNK_MAP_SUFFIX, DATA_SUFFIX,
                     META_SUFFIX)

log = logging.getLogger(__name__)


@dataclass
class MissingBlob:
    """A blob found nowhere: its id and the places looked at (config keys or flags with their values)."""

    blob_id: str
    looked: list[str] = field(default_factory=list)

    def message(self) -> str:
        if not self.looked:
            return f"blob {self.blob_id} has no source"
        return f"blob {self.blob_id} not found in " + " nor in ".join(self.looked)


def fully_cached(work_dir, blob: Blob, *, disable_indexed_map: bool = False) -> bool:
    """Whether the blob cache in ``work_dir`` holds every chunk of ``blob`` (read-only, creates nothing).

    Only a persisted chunk map can say so (nydusd's digest-keyed map lives in memory); v6 blobs that
    carry their chunk table also need their ``.blob.meta``.
    """
    if disable_indexed_map or not 0 < blob.chunk_count <= MAX_CHUNKS_PER_BLOB:
        return False
    base = os.path.join(os.fspath(work_dir), blob.blob_id)
    try:
        if not stat.S_ISREG(os.lstat(base + DATA_SUFFIX).st_mode):
            return False
        if blob.ci_compressed_size and not blob.features & BlobFeatures.SEPARATE and \
                not stat.S_ISREG(os.lstat(base + META_SUFFIX).st_mode):
            return False
        bitmap_size = (blob.chunk_count + 7) // 8
        fd = os.open(base + CHUNK_MAP_SUFFIX, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0))
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return False
            raw = os.pread(fd, CHUNK_MAP_HEADER_SIZE + bitmap_size, 0)
        finally:
            os.close(fd)
    except (OSError, ValueError):
        return False
    if len(raw) != CHUNK_MAP_HEADER_SIZE + bitmap_size or int.from_bytes(raw[:4], "little") != CHUNK_MAP_MAGIC:
        return False
    if int.from_bytes(raw[12:16], "little") == CHUNK_MAP_ALL_READY:
        return True
    bits = int.from_bytes(raw[CHUNK_MAP_HEADER_SIZE:], "big")
    spare = bitmap_size * 8 - blob.chunk_count        # bits past the last chunk, MSB-first order
    return bits >> spare == (1 << blob.chunk_count) - 1


def missing_blobs(image, *, blob_dir_words: str = "blob_dir", threads: int = 8) -> list[MissingBlob]:
    """The blobs of ``image`` that no read could find (an empty list when every blob has a source).

    ``blob_dir_words`` is what the caller calls a plain blob directory (``--localfs-dir``). Remote
    backends get one HEAD per blob not fully cached, ``threads`` at a time; a backend that cannot be
    asked (a network fault, not a missing object) is logged and not counted as missing.
    """
    blobs = [b for b in image.blobs if b.compressed_size or b.uncompressed_size or b.chunk_count]
    if not blobs:
        return []
    locator = image.locator
    config = getattr(locator, "config", None)
    if config is None:
        return [m for m in (_plain(locator, blob, blob_dir_words) for blob in blobs) if m is not None]
    with ThreadPoolExecutor(max(1, min(threads, len(blobs))), thread_name_prefix="rafs-preflight") as pool:
        return [m for m in pool.map(lambda blob: _configured(locator, config, blob), blobs) if m is not None]


def _plain(locator, blob: Blob, blob_dir_words: str) -> MissingBlob | None:
    if locator.source_for(blob.blob_id, blob.index) is not None:
        return None
    looked = []
    if locator.blob_dir is not None:
        looked.append(f"{blob_dir_words} {locator.blob_dir}")
    if locator.blobs is not None:
        looked.append(f"the {len(locator.blobs)} blobs given")
    return MissingBlob(blob.blob_id, looked)


def _configured(locator, config, blob: Blob) -> MissingBlob | None:
    cache_words = "device.cache.config.work_dir" if config.version == 1 else "cache.filecache.work_dir"
    if config.cached and fully_cached(config.work_dir, blob, disable_indexed_map=config.disable_indexed_map):
        log.debug("blob %s: fully cached in %s", blob.blob_id, config.work_dir)
        return None
    backend = locator.backend
    section = "device.backend.config" if config.version == 1 else f"backend.{config.backend_type}"
    if backend.type == "localfs":
        path = backend.path_for(blob.blob_id)
        if path is not None and os.path.isfile(path):
            return None
        if backend.blob_file:
            looked = [f"{section}.blob_file {backend.blob_file} (localfs)"]
        else:
            looked = [f"{section}.dir {backend.dir}" + "".join(f", alt_dirs {d}" for d in backend.alt_dirs) +
                      " (localfs)"]
    else:
        try:
            reader = backend.open(blob.blob_id)
            if hasattr(reader, "stat_size"):
                reader.stat_size()
            else:
                reader.retry.call(lambda: reader.fs.info(reader.path), f"{reader.name} (size)")
            return None
        except FileNotFoundError:
            looked = [f"{section} ({backend.describe()})"]
        except (RafsError, OSError, ValueError) as exc:
            log.warning("blob %s: cannot check %s now (%s); mounting anyway", blob.blob_id, backend.describe(),
                        " ".join(str(exc).split()))
            return None
    if config.cached:
        looked.append(f"the cache {cache_words} {config.work_dir}")
    return MissingBlob(blob.blob_id, looked)
