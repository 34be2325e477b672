"""Look after a nydusd/rafs blob cache ``work_dir``: what it holds, whether it is sound, what to drop.

A blob's cache files are ``<blob id>.blob.data`` (its decompressed chunks at their uncompressed
offsets), ``<blob id>.blob.data.chunk_map`` (which chunks are there) and ``<blob id>.blob.meta`` (its
chunk info array); :mod:`rafs.io.cache` owns those formats and is used here to read them.

- :func:`report`: per blob, the chunks and bytes cached against the blob's chunk count and data size,
  and which of the given images use it. Without an image a blob's size is unknown and only its files'
  sizes are reported.
- :func:`verify`: every cached chunk an image knows the digest of is read back and checked.
- :func:`prune`: removes the cache files of blobs no given image references.

Only names of the form ``<valid blob id><cache suffix>`` are ever opened or removed; anything else in
the directory (temporary files, the user's own files) is listed as ``other`` and left alone. Opening a
blob's cache never creates files here: a blob whose data or map file is missing is reported as such.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import os
import stat as _stat

from .blob import codecs
from .blob.ids import blob_id_problem
from .errors import InvalidArgumentError, RafsError
from .io.cache import BlobCache
from .io.cachefiles import CacheError, open_work_dir
from .io.layout import CHUNK_MAP_HEADER_SIZE, CHUNK_MAP_SUFFIX, DATA_SUFFIX, META_SUFFIX
from .model import MAX_CHUNKS_PER_BLOB, Chunk

# longest first, so ``x.blob.data.chunk_map`` is not taken for a ``.blob.data`` file
SUFFIXES = (CHUNK_MAP_SUFFIX, DATA_SUFFIX, META_SUFFIX)


@dataclasses.dataclass
class CachedBlob:
    """What the work_dir holds of one blob, and what the images say about it."""

    blob_id: str
    files: dict = dataclasses.field(default_factory=dict)      # suffix -> bytes on disk (allocated)
    images: list = dataclasses.field(default_factory=list)     # names of the images referencing it
    chunk_count: int | None = None
    size: int | None = None                                   # the blob's uncompressed data size
    ready_chunks: int | None = None
    cached_bytes: int | None = None
    problem: str = ""

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def scan(work_dir) -> tuple[dict[str, CachedBlob], list[str]]:
    """({blob id: CachedBlob with its files}, other names) of ``work_dir``, without opening any file."""
    dir_fd = open_work_dir(work_dir)
    try:
        blobs: dict[str, CachedBlob] = {}
        others = []
        for name in sorted(os.listdir(dir_fd)):
            suffix = next((s for s in SUFFIXES if name.endswith(s)), None)
            blob_id = name[:-len(suffix)] if suffix else None
            if suffix is None or blob_id_problem(blob_id) is not None:
                others.append(name)
                continue
            try:
                st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            except FileNotFoundError:
                continue
            if not _stat.S_ISREG(st.st_mode):
                others.append(name)
                continue
            blobs.setdefault(blob_id, CachedBlob(blob_id)).files[suffix] = st.st_blocks * 512
        return blobs, others
    finally:
        os.close(dir_fd)


def _known_chunks(image) -> dict[int, dict[int, Chunk]]:
    """{blob index: {chunk index: chunk}} of every chunk the image's files use (with digests)."""
    known: dict[int, dict[int, Chunk]] = {}
    for _path, inode in image.iter_entries():
        if inode.is_reg:
            for chunk in image.reader.chunks(inode.ino):
                if 0 <= chunk.blob_index < len(image.blobs):
                    known.setdefault(chunk.blob_index, {}).setdefault(chunk.index, chunk)
    return known


def _open_cache(work_dir, record: CachedBlob, blob) -> BlobCache | None:
    """The blob's cache through rafs.io.cache, only when its data and map files are already there
    and the map has the size this blob's chunk count gives (else opening it would rewrite it)."""
    if DATA_SUFFIX not in record.files:
        record.problem = "no data file"
        return None
    if not 0 < blob.chunk_count <= MAX_CHUNKS_PER_BLOB:
        record.problem = "no chunk count: readiness is not kept on disk"
        return None
    if CHUNK_MAP_SUFFIX not in record.files:
        record.problem = "no chunk map"
        return None
    map_path = os.path.join(os.fspath(work_dir), blob.blob_id + CHUNK_MAP_SUFFIX)
    expected = CHUNK_MAP_HEADER_SIZE + (blob.chunk_count + 7) // 8      # PersistChunkMap.size
    try:
        actual = os.stat(map_path, follow_symlinks=False).st_size
    except OSError as exc:
        record.problem = f"chunk map: {exc.strerror}"
        return None
    if actual != expected:
        record.problem = f"chunk map of {actual} bytes does not fit {blob.chunk_count} chunks"
        return None
    try:
        return BlobCache(work_dir, blob)
    except (CacheError, RafsError) as exc:
        record.problem = str(exc)
        return None


def _images_blobs(images) -> dict[str, list]:
    """{blob id: [(image, blob)]} over the images."""
    found: dict[str, list] = {}
    for image in images:
        for blob in image.blobs:
            found.setdefault(blob.blob_id, []).append((image, blob))
    return found


def report(work_dir, images=()) -> tuple[list[CachedBlob], list[str]]:
    """(one record per cached blob, names of other files) of ``work_dir``; see the module docstring."""
    blobs, others = scan(work_dir)
    users = _images_blobs(images)
    chunks_of = {}
    for record in blobs.values():
        used = users.get(record.blob_id)
        if not used:
            continue
        record.images = sorted({image.name for image, _ in used})
        image, blob = used[0]
        record.chunk_count, record.size = blob.chunk_count, blob.uncompressed_size
        cache = _open_cache(work_dir, record, blob)
        if cache is None:
            continue
        try:
            ready = cache.chunk_map.ready_indexes()
            if id(image) not in chunks_of:
                chunks_of[id(image)] = _known_chunks(image)
            sizes = {i: c.uncompressed_size for i, c in chunks_of[id(image)].get(blob.index, {}).items()}
            if len(sizes) < blob.chunk_count and META_SUFFIX in record.files:
                sizes = _sizes_from_meta(cache, blob) or sizes
            record.ready_chunks = len(ready)
            record.cached_bytes = sum(sizes.get(i, 0) for i in ready)
        finally:
            cache.close()
    return list(blobs.values()), others


def _sizes_from_meta(cache: BlobCache, blob) -> dict[int, int] | None:
    """{chunk index: data size} from the cached .blob.meta (every chunk of the blob), if it is sound."""
    from .blob.meta import load_blob_meta_file
    from .io.source import LocalRangeReader
    try:
        with contextlib.closing(LocalRangeReader(cache.meta_path)) as reader:
            meta = load_blob_meta_file(reader, blob)
    except (RafsError, OSError):
        return None
    return {i: ci.uncompressed_size for i, ci in enumerate(meta.chunks)}


@dataclasses.dataclass
class VerifyResult:
    """Chunks checked, and the (blob id, chunk index, what) of each one that is wrong."""

    checked: int = 0
    unchecked: int = 0           # ready chunks no image file uses: no digest to check them with
    bad: list = dataclasses.field(default_factory=list)


def verify(work_dir, images) -> VerifyResult:
    """Read back every cached chunk of the images' blobs and check it against its digest."""
    result = VerifyResult()
    blobs, _ = scan(work_dir)
    chunks_of = {}
    for blob_id, used in _images_blobs(images).items():
        record = blobs.get(blob_id)
        if record is None:
            continue
        image, blob = used[0]
        cache = _open_cache(work_dir, record, blob)
        if cache is None:
            continue
        try:
            if id(image) not in chunks_of:
                chunks_of[id(image)] = _known_chunks(image)
            known = chunks_of[id(image)].get(blob.index, {})
            for index in cache.chunk_map.ready_indexes():
                chunk = known.get(index)
                if chunk is None or not chunk.digest:
                    result.unchecked += 1
                    continue
                result.checked += 1
                data = cache.read(chunk)
                if data is None:
                    result.bad.append((blob_id, index, "marked ready but its data is short"))
                elif codecs.digest(blob.digester, data) != chunk.digest:
                    result.bad.append((blob_id, index, f"{blob.digester} digest mismatch"))
        finally:
            cache.close()
    return result


def prune(work_dir, images, *, dry_run: bool = False) -> list[str]:
    """Remove the cache files of every blob none of ``images`` references; the names removed."""
    if not images:
        raise InvalidArgumentError("pruning needs the images whose blobs to keep")
    keep = set(_images_blobs(images))
    blobs, _ = scan(work_dir)
    removed = []
    dir_fd = open_work_dir(work_dir)
    try:
        for blob_id, record in blobs.items():
            if blob_id in keep:
                continue
            for suffix in record.files:
                name = blob_id + suffix
                if not dry_run:
                    try:
                        os.unlink(name, dir_fd=dir_fd)
                    except OSError as exc:
                        if exc.errno != errno.ENOENT:
                            raise CacheError(f"cannot remove {name}: {exc.strerror}") from None
                removed.append(name)
    finally:
        os.close(dir_fd)
    return removed
