"""``chunkdict generate``: a chunk dictionary chosen from several images by how their chunks repeat.

As nydus-image does it (src/bin/nydus-image/deduplicate.rs, builder/src/chunkdict_generator.rs):

1. every source bootstrap's blobs and chunks go into an SQLite database (tables ``blob`` and
   ``chunk``, the reference's schema), each chunk row tagged with the image name and version taken
   from the bootstrap's directory name ``...:NAME:VERSION``;
2. per image, versions are ordered by the numbers in their names and split 70/30 into a training
   and a test set; in the training versions every chunk gets an exponentially smoothed score
   (alpha 0.5) of "also in the previous version"; the threshold among 0.5, 0.55, ... 0.8 that leaves
   the fewest compressed bytes of the test versions outside the dictionary chooses the chunks;
3. every chunk of a blob that holds a chosen chunk joins the dictionary, so its blobs are whole;
4. the dictionary is a bootstrap of one file, ``/chunkdict``, holding those chunks, its blobs marked
   ``IS_CHUNKDICT_GENERATED``: ``create --chunk-dict bootstrap=PATH`` dedups against it.

Differences from the reference, each because the reference's result could not be read back:
the reference also clusters images (DBSCAN over at least 10 images of one cluster) before the
per-version step; with fewer than 10 images it never forms a cluster, and rafs does not run it.
The reference numbers the dictionary's chunks afresh and packs them at running file offsets; rafs
keeps each chunk's place in its blob (its CI index, the rank of its uncompressed offset) and puts
chunk ``i`` at ``i × chunk size`` of the file, so that the chunk records point where the blob's CI
does; a blob whose chunks the images do not all reference is left out (its indexes would be unknown).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import sqlite3
import stat
from dataclasses import dataclass

from ..errors import BuildError, InvalidArgumentError
from ..model import Blob, BlobFeatures, Chunk, ChunkFlags, Inode, Node, SuperFlags
from . import tree as _tree
from .merge import MergedImage, write_merged
from .parent import load_bootstrap

log = logging.getLogger(__name__)

ALPHA = 0.5
TRAIN_PERCENTAGE = 0.7
THRESHOLDS = tuple(0.5 + 0.05 * i for i in range(7))        # 0.5 .. 0.8, as the reference steps
BLOCK_SIZE = 4096                                             # v6 block: smaller blobs are dropped

_CHUNK_COLUMNS = ("image_reference", "version", "chunk_blob_id", "chunk_digest", "chunk_crc32",
                  "chunk_compressed_size", "chunk_uncompressed_size", "chunk_compressed_offset",
                  "chunk_uncompressed_offset")
_BLOB_COLUMNS = ("blob_id", "blob_compressed_size", "blob_uncompressed_size", "blob_compressor",
                 "blob_meta_ci_compressed_size", "blob_meta_ci_uncompressed_size", "blob_meta_ci_offset")


@dataclass(frozen=True)
class ChunkRow:
    """One row of the ``chunk`` table (ChunkdictChunkInfo)."""

    image_reference: str
    version: str
    chunk_blob_id: str
    chunk_digest: str
    chunk_crc32: int
    chunk_compressed_size: int
    chunk_uncompressed_size: int
    chunk_compressed_offset: int
    chunk_uncompressed_offset: int

    @property
    def place(self) -> tuple:
        """What identifies the chunk's bytes, whichever image listed it."""
        return (self.chunk_blob_id, self.chunk_uncompressed_offset, self.chunk_compressed_offset,
                self.chunk_digest)


def database_path(url: str) -> str:
    """The file of ``sqlite:///path`` (or ``sqlite://:memory:``), refused in the reference's words."""
    parts = url.split("://")
    if len(parts) != 2 or not (parts[1].startswith("/") or parts[1].startswith(":")):
        raise InvalidArgumentError(f"Invalid database URL: {url}")
    if parts[0] != "sqlite":
        raise InvalidArgumentError(f"Unsupported database type: {parts[0]}, please use a valid database URI, "
                                   "such as 'sqlite:///path/to/chunkdict.db'.")
    return parts[1]


class ChunkDatabase:
    """The statistics database (tables ``chunk`` and ``blob`` as the reference creates them)."""

    def __init__(self, path: str):
        self.conn = sqlite3.connect(path)
        self.conn.execute("CREATE TABLE IF NOT EXISTS chunk (id INTEGER PRIMARY KEY, image_reference TEXT, "
                          "version TEXT, chunk_blob_id TEXT NOT NULL, chunk_digest TEXT, chunk_crc32 INT, "
                          "chunk_compressed_size INT, chunk_uncompressed_size INT, chunk_compressed_offset INT, "
                          "chunk_uncompressed_offset INT)")
        self.conn.execute("CREATE TABLE IF NOT EXISTS blob (id INTEGER PRIMARY KEY, blob_id TEXT NOT NULL, "
                          "blob_compressed_size INT, blob_uncompressed_size INT, blob_compressor TEXT, "
                          "blob_meta_ci_compressed_size INT, blob_meta_ci_uncompressed_size INT, "
                          "blob_meta_ci_offset INT)")

    def close(self) -> None:
        self.conn.close()

    def save_image(self, bootstrap, image_reference: str, version: str) -> list[Blob]:
        """Insert the blobs and (pre-order, file order) chunks of one bootstrap; returns its blobs."""
        layer = load_bootstrap(bootstrap)
        with self.conn:
            self.conn.executemany(
                f"INSERT INTO blob ({', '.join(_BLOB_COLUMNS)}) VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(b.blob_id, b.compressed_size, b.uncompressed_size, b.compressor, b.ci_compressed_size,
                  b.ci_uncompressed_size, b.ci_offset) for b in layer.blobs])
            rows = []
            for node in _tree.iter_nodes(layer.root):
                for chunk in node.chunks:
                    if not 0 <= chunk.blob_index < len(layer.blobs):
                        raise BuildError(f"{layer.name}: a chunk refers to blob {chunk.blob_index} of "
                                         f"{len(layer.blobs)}")
                    rows.append((image_reference, version, layer.blobs[chunk.blob_index].blob_id,
                                 chunk.digest.hex(), chunk.crc32, chunk.compressed_size, chunk.uncompressed_size,
                                 chunk.compressed_offset, chunk.uncompressed_offset))
            self.conn.executemany(f"INSERT INTO chunk ({', '.join(_CHUNK_COLUMNS)}) VALUES "
                                  "(?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
        return layer.blobs

    def chunks(self, blob_id: str | None = None) -> list[ChunkRow]:
        query = f"SELECT {', '.join(_CHUNK_COLUMNS)} FROM chunk"
        args: tuple = ()
        if blob_id is not None:
            query, args = query + " WHERE chunk_blob_id = ?", (blob_id,)
        return [_checked_row(row) for row in self.conn.execute(query + " ORDER BY id", args)]

    def blob(self, blob_id: str) -> tuple:
        row = self.conn.execute(f"SELECT {', '.join(_BLOB_COLUMNS)} FROM blob WHERE blob_id = ? ORDER BY id",
                                (blob_id,)).fetchone()
        if row is None:
            raise BuildError(f"blob {blob_id} is not in the database")
        return row


def _checked_row(row) -> ChunkRow:
    """A ``chunk`` row as read back: the database may be an older file, so each value is checked."""
    chunk = ChunkRow(*row)
    texts = (chunk.image_reference, chunk.version, chunk.chunk_blob_id, chunk.chunk_digest)
    numbers = (chunk.chunk_crc32, chunk.chunk_compressed_size, chunk.chunk_uncompressed_size,
               chunk.chunk_compressed_offset, chunk.chunk_uncompressed_offset)
    if not all(isinstance(t, str) for t in texts) or not all(isinstance(n, int) and 0 <= n < 1 << 64
                                                             for n in numbers) \
            or not re.fullmatch(r"[0-9a-f]{64}", chunk.chunk_digest) \
            or not 0 < chunk.chunk_uncompressed_size <= 1 << 24:
        raise BuildError(f"the chunk database holds a malformed chunk row {row!r:.200}")
    return chunk


def image_name_and_version(bootstrap) -> tuple[str, str]:
    """NAME and VERSION from the bootstrap's directory name ``...:NAME:VERSION`` (the reference's rule)."""
    directory = os.path.basename(os.path.dirname(os.path.abspath(os.fspath(bootstrap))))
    parts = directory.split(":")
    if not directory or len(parts) < 2:
        raise InvalidArgumentError(f"Invalid image name: the directory of bootstrap {os.fspath(bootstrap)!r} "
                                   "must be named IMAGE:VERSION")
    return parts[-2], parts[-1]


def version_key(version: str) -> list[int]:
    """The reference orders versions by the numbers in their names (CustomString)."""
    return [int(n) for n in re.findall(r"\d+", version)]


def divide_set(chunks: list[ChunkRow], train_percentage: float = TRAIN_PERCENTAGE):
    """(training, test) chunks: per image, the first 70% of its versions (by number) train."""
    by_image: dict[str, dict[str, list[ChunkRow]]] = {}
    for chunk in chunks:
        by_image.setdefault(chunk.image_reference, {}).setdefault(chunk.version, []).append(chunk)
    train, test = [], []
    for image in sorted(by_image):
        versions = sorted(by_image[image].items(), key=lambda item: version_key(item[0]))
        cut = int(len(versions) * train_percentage)
        for position, (_, rows) in enumerate(versions):
            (train if position < cut else test).extend(rows)
    return train, test


def exponential_smoothing(chunks: list[ChunkRow], threshold: float) -> list[ChunkRow]:
    """Chunks (of one image, in version order) whose smoothed "seen in the previous version" score
    exceeds ``threshold``, one per digest (the smallest digest order, as the reference's BTreeMap)."""
    scores: list[float] = []
    previous: set[str] = set()
    current: set[str] = set()
    for position, chunk in enumerate(chunks):
        if chunk.version == chunks[0].version:
            scores.append(0.0)
            current.add(chunk.chunk_digest)
            continue
        if chunks[position - 1].version != chunk.version:
            previous, current = current, set()
        current.add(chunk.chunk_digest)
        seen = 1.0 if chunk.chunk_digest in previous else 0.0
        scores.append(ALPHA * seen + (1 - ALPHA) * scores[position - 1])
    chosen: dict[str, ChunkRow] = {}
    for chunk, score in zip(chunks, scores):
        if score > threshold:
            chosen.setdefault(chunk.chunk_digest, chunk)
    return [chosen[digest] for digest in sorted(chosen)]


def select_chunks(chunks: list[ChunkRow]) -> tuple[list[ChunkRow], list[str]]:
    """The chosen chunks (before whole blobs are added) and the images not worth deduplicating."""
    train, test = divide_set(chunks)
    train_by_image: dict[str, list[ChunkRow]] = {}
    for chunk in train:
        train_by_image.setdefault(chunk.image_reference, []).append(chunk)
    test_by_image: dict[str, list[ChunkRow]] = {}
    for chunk in test:
        test_by_image.setdefault(chunk.image_reference, []).append(chunk)
    best, best_size = {}, None
    for threshold in THRESHOLDS:
        dictionary = {image: exponential_smoothing(rows, threshold) for image, rows in train_by_image.items()}
        left = 0
        for image, rows in test_by_image.items():
            digests = {c.chunk_digest for c in dictionary.get(image, ())}
            left += sum(c.chunk_compressed_size for c in rows if c.chunk_digest not in digests)
        if best_size is None or left <= best_size:
            best, best_size = dictionary, left
    chosen = [chunk for image in sorted(best) for chunk in best[image]]
    images = sorted({c.image_reference for c in chunks})
    return chosen, images


@dataclass
class ChunkDictResult:
    bootstrap: str
    blob_ids: list[str]
    chunk_count: int
    noise_images: list[str]
    output: dict


def generate(sources, database: str, bootstrap) -> ChunkDictResult:
    """Record ``sources`` (bootstraps in ``IMAGE:VERSION`` directories) in ``database`` (a
    ``sqlite://`` URL) and write the chunk dictionary bootstrap to ``bootstrap``."""
    sources = list(sources)
    if not sources:
        raise InvalidArgumentError("the following required arguments were not provided: <SOURCE>...")
    path = database_path(database)
    names = [image_name_and_version(source) for source in sources]
    layers = [load_bootstrap(source) for source in sources]
    versions = {layer.version for layer in layers}
    if len(versions) > 1:
        raise BuildError("Bootstrap versions are inconsistent, cannot use chunkdict.")
    first = layers[0]
    db = ChunkDatabase(path)
    try:
        source_blobs: dict[str, Blob] = {}
        for source, (image, version) in zip(sources, names):
            for blob in db.save_image(source, image, version):
                source_blobs.setdefault(blob.blob_id, blob)
        log.info("Chunkdict metadata is saved at: %s", database)
        every = db.chunks()
        chosen, images = select_chunks(every)
        chunk_rows: dict[tuple, ChunkRow] = {}
        for blob_id in sorted({c.chunk_blob_id for c in chosen}):
            for row in db.chunks(blob_id):
                chunk_rows.setdefault(row.place, row)
    finally:
        db.close()
    core = {c.image_reference for c in chosen}
    noise = [image for image in images if image not in core]
    root, blobs = _dictionary_tree(list(chunk_rows.values()), source_blobs, first)
    flags = SuperFlags(first.flags)
    merged = MergedImage(root=root, blobs=blobs, version=first.version, flags=flags, chunk_size=first.chunk_size)
    data = write_merged(merged)
    from .outputs import write_whole
    written = write_whole(bootstrap, data)
    blob_ids = [b.blob_id for b in blobs]
    count = sum(len(n.chunks) for n in root.children)
    return ChunkDictResult(written, blob_ids, count, noise,
                           {"version": first.version, "bootstrap": written, "blobs": blob_ids})


def _dictionary_tree(rows: list[ChunkRow], source_blobs: dict[str, Blob], first) -> tuple[Node, list[Blob]]:
    """The dictionary's tree (``/`` and ``/chunkdict``) and blob table, from whole blobs' chunk rows."""
    rows.sort(key=lambda c: (c.chunk_blob_id, c.chunk_compressed_offset, c.chunk_uncompressed_offset,
                             c.chunk_digest))
    sizes: dict[str, int] = {}
    by_blob: dict[str, list[ChunkRow]] = {}
    for row in rows:
        sizes[row.chunk_blob_id] = sizes.get(row.chunk_blob_id, 0) + row.chunk_uncompressed_size
        by_blob.setdefault(row.chunk_blob_id, []).append(row)
    blobs: list[Blob] = []
    chunks: list[Chunk] = []
    chunk_size = first.chunk_size
    for blob_id, blob_rows in by_blob.items():
        blob = source_blobs.get(blob_id)
        if blob is None:        # recorded by an earlier run: its table entry is not at hand
            log.warning("blob %s: in the database but in none of the sources: left out of the dictionary",
                        blob_id)
            continue
        if sizes[blob_id] < BLOCK_SIZE:
            log.warning("Warning: Blob with id '%s' is smaller than %d bytes.", blob_id, BLOCK_SIZE)
            continue
        # chunk i of a native blob is the one at the i-th uncompressed offset: only a blob whose every
        # chunk is known keeps its indexes
        offsets = sorted({r.chunk_uncompressed_offset for r in blob_rows})
        if len(offsets) != blob.chunk_count or len(blob_rows) != blob.chunk_count:
            log.warning("blob %s: %d of its %d chunks are referenced by the images: left out of the dictionary",
                        blob_id, len(offsets), blob.chunk_count)
            continue
        index_of = {offset: i for i, offset in enumerate(offsets)}
        position = len(blobs)
        blobs.append(dataclasses.replace(blob, index=position,
                                         features=(blob.features & ~BlobFeatures.INLINED_FS_META)
                                         | BlobFeatures.IS_CHUNKDICT_GENERATED))
        compressed_flag = blob.compressor != "none"
        for row in blob_rows:
            flags = ChunkFlags.HAS_CRC32 if row.chunk_crc32 else ChunkFlags(0)
            if compressed_flag and row.chunk_compressed_size != row.chunk_uncompressed_size \
                    and row.chunk_compressed_size:
                flags |= ChunkFlags.COMPRESSED
            if blob.has(BlobFeatures.ENCRYPTED):
                flags |= ChunkFlags.ENCRYPTED
            chunks.append(Chunk(bytes.fromhex(row.chunk_digest), position, row.chunk_compressed_offset,
                                row.chunk_compressed_size, row.chunk_uncompressed_offset,
                                row.chunk_uncompressed_size, len(chunks) * chunk_size,
                                index_of[row.chunk_uncompressed_offset], int(flags), row.chunk_crc32))
    size = chunks[-1].file_offset + chunks[-1].uncompressed_size if chunks else 0
    digest = None
    if first.version == 5:
        from ..blob import codecs
        digester = "sha256" if first.flags & SuperFlags.HASH_SHA256 else "blake3"
        digest = codecs.digest(digester, b"".join(c.digest for c in chunks))
    file_inode = Inode(ino=2, mode=stat.S_IFREG | 0o660, size=size, nlink=1, chunk_count=len(chunks),
                       digest=digest)
    root = Node(b"/", Inode(ino=1, mode=stat.S_IFDIR | 0o660, uid=1000, gid=1000, nlink=3))
    root.children.append(Node(b"chunkdict", file_inode, chunks=chunks))
    return root, blobs
