"""Compacting an image's data blobs (``nydus-image compact``, builder/src/compact.rs): drop the chunks no
file references any more and merge small blobs into bigger ones, then write a bootstrap pointing at the
result. Every file reads as before; only where its chunks live changes.

How the reference decides, step by step (``BlobCompactor::do_compact``):

1. Walk the tree breadth first and collect each blob's *used* chunks. A chunk already seen under the same
   key is redirected to the first one: v5 keys chunks by digest, v6 by (blob index, compressed offset).
   A chunk that the chunk dictionary (``--chunk-dict``) holds is redirected there; the dictionary's blobs
   are never rewritten.
2. A blob no chunk references is deleted.
3. A blob whose used ratio (compressed bytes of its used chunks x 100 / its compressed size) is under
   ``min_used_ratio`` is rebuilt (0 turns this off).
4. Blobs (kept or to be rebuilt) smaller than ``compact_blob_size`` are candidates for merging, smallest
   first: each is merged into the current target while their used bytes stay within
   ``max_compact_size``, else it becomes the next target. Fewer than two candidates merge nothing.
5. Kept blobs stay as they are; a rebuilt blob is written anew with its used chunks copied as stored
   (no recompression), in (blob, compressed offset) order, named by its sha256 in ``blobs_dir``.

Nothing happens when the image has fewer blobs than ``layers_to_compact`` (0: always compact).

Where rafs departs from the reference, and why:
- the reference's current code inverts two tests (since its 2023 refactors: step 1 collects only the
  dictionary's chunks, so every other blob counts as unused, and step 3 never turns a kept blob into a
  rebuilt one); rafs follows the design its first version (2022) implemented and its comments describe;
- blobs rafs cannot copy chunk by chunk are kept whole and never merged: encrypted blobs (their chunks
  are sealed with the blob's own key), batch blobs (members share one compressed unit), ZRAN, tarfs
  and external blobs (their data is elsewhere);
- only blobs with the same compressor, digester and chunk size are merged (a blob has one of each);
- a v5 chunk is redirected to an earlier one with the same digest only when both are stored alike
  (same sizes, same compressor and compression flag), where the reference fails the compaction.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import os
from dataclasses import dataclass, field

from ..errors import BuildError, InvalidArgumentError, ParameterError
from ..model import Blob, BlobFeatures, Chunk, ChunkFlags, SuperFlags
from . import tree
from .outputs import write_whole
from .parent import check_layer_compatibility, load_bootstrap, unique_chunks
from .report import BuildResult, Trace, output_document
from .rewrite import ChunkCopier
from .writers import write_bootstrap

log = logging.getLogger(__name__)

DEFAULT_COMPACT_BLOB_SIZE = 10 * 1024 * 1024      # builder/src/compact.rs DEFAULT_COMPACT_BLOB_SIZE
DEFAULT_MAX_COMPACT_SIZE = 100 * 1024 * 1024      # DEFAULT_MAX_COMPACT_SIZE
# Blob features whose chunks cannot be copied one by one into another blob (see the module docstring).
_PINNED_FEATURES = (BlobFeatures.ENCRYPTED | BlobFeatures.BATCH | BlobFeatures.ZRAN | BlobFeatures.TARFS
                    | BlobFeatures.EXTERNAL)


@dataclass
class CompactConfig:
    """The compaction settings (builder/src/compact.rs ``Config``; nydusify's ``--compact-config-file``
    has the same keys).

    ``min_used_ratio`` (0-99, 0 off): rebuild blobs whose used share is below this percentage.
    ``compact_blob_size``: blobs smaller than this many bytes are merged. ``max_compact_size``: a merged
    blob holds at most this many bytes of chunks. ``layers_to_compact``: compact only images with at
    least this many blobs (0: always).
    """

    min_used_ratio: int = 0
    compact_blob_size: int = DEFAULT_COMPACT_BLOB_SIZE
    max_compact_size: int = DEFAULT_MAX_COMPACT_SIZE
    layers_to_compact: int = 0

    def __post_init__(self):
        for name in ("min_used_ratio", "compact_blob_size", "max_compact_size", "layers_to_compact"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise InvalidArgumentError(f"{name} must be a non-negative integer, not {value!r}")
        if self.min_used_ratio > 99:
            raise InvalidArgumentError(f"min_used_ratio must be within 0-99, not {self.min_used_ratio}")

    @classmethod
    def from_dict(cls, values: dict) -> CompactConfig:
        """From nydusify's compact configuration (unknown keys are an error, missing ones default)."""
        if not isinstance(values, dict):
            raise InvalidArgumentError("a compact configuration is a JSON object")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known - {"blobs_dir"})
        if unknown:
            raise InvalidArgumentError(f"unknown compact configuration key {unknown[0]!r}")
        return cls(**{key: value for key, value in values.items() if key in known})


@dataclass
class _ChunkSet:
    """The used chunks of one blob (or of blobs merged into one), each once, with their stored bytes."""

    chunks: dict = field(default_factory=dict)      # key -> the first chunk record with that key
    total_size: int = 0

    def add(self, key, chunk: Chunk) -> None:
        if key not in self.chunks:
            self.chunks[key] = chunk
            self.total_size += chunk.compressed_size

    def merge(self, other: _ChunkSet) -> None:
        for key, chunk in other.chunks.items():
            self.add(key, chunk)


# blob states (builder/src/compact.rs ``State``)
KEEP, REBUILD, DELETE, DICT, PINNED = "keep", "rebuild", "delete", "dict", "pinned"


@dataclass
class _BlobState:
    blob: Blob
    state: str | None = None                # None until a used chunk is found ("Invalid")
    chunks: _ChunkSet = field(default_factory=_ChunkSet)


@dataclass
class CompactPlan:
    """What compaction decided, blob by blob of the source table: ``actions[i]`` is ``"keep"``,
    ``"delete"``, ``"rebuild"``, ``"dict"`` or ``"pinned"`` (kept because it cannot be rewritten), and
    ``merged_into[i]`` the source blob whose rebuilt blob takes blob i's chunks (i itself if rebuilt alone)."""

    actions: list[str]
    merged_into: dict[int, int]
    used_sizes: list[int]


class Compactor:
    """Compact the image ``source`` (a bootstrap path) whose blobs come from ``blob_dir`` or ``config``
    (a nydusd configuration, as :func:`rafs.open` takes); new blobs go to ``blob_dir``.

    :meth:`plan` says what would happen; :meth:`write` does it and writes the new bootstrap.
    """

    def __init__(self, source, *, blob_dir, config=None, chunk_dict=None,
                 settings: CompactConfig | None = None):
        if blob_dir is None or not os.path.isdir(blob_dir):
            raise ParameterError("{blob_dir} {path!r}: no such directory", path=blob_dir)
        self.source = source
        self.blob_dir = os.fspath(blob_dir)
        self.config = config
        self.chunk_dict = chunk_dict
        self.settings = settings or CompactConfig()

    # -- deciding ----------------------------------------------------------------------------------

    def _load(self):
        layer = load_bootstrap(self.source)
        self.layer = layer
        self.version = layer.version
        self.states = [_BlobState(blob) for blob in layer.blobs]
        self.dict_chunks: dict[tuple[bytes, int], Chunk] = {}
        if self.chunk_dict is not None:
            dictionary = load_bootstrap(self.chunk_dict)
            check_layer_compatibility(dictionary, fs_version=layer.version, chunk_size=layer.chunk_size,
                                      digester=layer.flags.digester, explicit_uidgid=layer.explicit_uidgid)
            position = {state.blob.blob_id: i for i, state in enumerate(self.states)}
            remap = {}
            for blob in dictionary.blobs:
                if blob.blob_id not in position:
                    position[blob.blob_id] = len(self.states)
                    self.states.append(_BlobState(dataclasses.replace(
                        blob, index=len(self.states), features=blob.features & ~BlobFeatures.INLINED_FS_META)))
                remap[blob.index] = position[blob.blob_id]
                self.states[position[blob.blob_id]].state = DICT
            for node in tree.iter_nodes(dictionary.root):
                for chunk in node.chunks:
                    if chunk.blob_index in remap:
                        self.dict_chunks.setdefault((chunk.digest, chunk.uncompressed_size),
                                                    dataclasses.replace(chunk, blob_index=remap[chunk.blob_index]))
        for state in self.states:
            if state.state is None and state.blob.features & _PINNED_FEATURES:
                state.state = PINNED

    def _key(self, chunk: Chunk):
        if self.version == 5:
            blob = self.states[chunk.blob_index].blob
            return (chunk.digest, chunk.uncompressed_size, chunk.compressed_size, blob.compressor,
                    bool(chunk.flags & ChunkFlags.COMPRESSED))
        return (chunk.blob_index, chunk.compressed_offset)

    def _collect(self) -> None:
        """Step 1: each blob's used chunks; repeated and dictionary chunks redirected."""
        seen: dict = {}
        count = len(self.states)
        queue = collections.deque([self.layer.root])
        while queue:                                    # breadth first, as Tree::walk_bfs
            node = queue.popleft()
            queue.extend(node.children)
            for position, chunk in enumerate(node.chunks):
                if not 0 <= chunk.blob_index < count:
                    raise BuildError(f"chunk refers to blob {chunk.blob_index} of {count}")
                state = self.states[chunk.blob_index]
                if state.state in (DICT, PINNED):
                    continue
                found = self.dict_chunks.get((chunk.digest, chunk.uncompressed_size))
                key = self._key(chunk)
                if found is None:
                    found = seen.get(key)
                if found is not None and found is not chunk:
                    node.chunks[position] = _moved(chunk, found)
                    continue
                seen[key] = chunk
                state.state = state.state or KEEP
                state.chunks.add(key, chunk)

    def plan(self) -> CompactPlan:
        """Decide what happens to each blob (steps 1 to 4 of the module docstring)."""
        self._load()
        self._collect()
        settings = self.settings
        for state in self.states:
            if state.state is None:
                log.info("compactor: delete unused blob %s", state.blob.blob_id)
                state.state = DELETE
        merged_into: dict[int, int] = {}
        for index, state in enumerate(self.states):
            if state.state != KEEP:
                continue
            size = state.blob.compressed_size or state.chunks.total_size
            ratio = state.chunks.total_size * 100 // size if size else 100
            log.info("compactor: blob %s uses %d%% of its data", state.blob.blob_id, ratio)
            if ratio < settings.min_used_ratio:
                state.state = REBUILD
                merged_into[index] = index
        self._merge_small(merged_into)
        return CompactPlan(actions=[state.state for state in self.states], merged_into=merged_into,
                           used_sizes=[state.chunks.total_size for state in self.states])

    def _merge_small(self, merged_into: dict[int, int]) -> None:
        """Step 4: greedy merging of small blobs, smallest first, within each family of like blobs."""
        settings = self.settings
        candidates = []
        for index, state in enumerate(self.states):
            if state.state == KEEP:
                size = state.blob.compressed_size or state.chunks.total_size
            elif state.state == REBUILD:
                size = state.chunks.total_size
            else:
                continue
            if size < settings.compact_blob_size:
                candidates.append((size, index))
        candidates.sort(key=lambda item: item[0])       # stable, as the reference's sort_by
        families: dict[tuple, list[int]] = {}
        for _, index in candidates:
            blob = self.states[index].blob
            families.setdefault((blob.compressor, blob.digester, blob.chunk_size), []).append(index)
        for members in families.values():
            if len(members) < 2:
                continue
            target = members[0]
            for index in members[1:]:
                into, other = self.states[target], self.states[index]
                if into.chunks.total_size + other.chunks.total_size <= settings.max_compact_size:
                    into.state = REBUILD
                    merged_into[target] = target
                    into.chunks.merge(other.chunks)
                    other.state = DELETE
                    merged_into[index] = target
                    for source, dest in list(merged_into.items()):
                        if dest == index:
                            merged_into[source] = target
                else:
                    target = index

    # -- doing -------------------------------------------------------------------------------------

    def write(self, bootstrap) -> BuildResult | None:
        """Compact and write the new bootstrap to ``bootstrap`` (and new blobs to the blob directory);
        None when the image has fewer blobs than ``layers_to_compact`` (nothing is written)."""
        trace = Trace()
        with trace.timed("total_build"):
            plan = self.plan()
            if len(self.layer.blobs) < self.settings.layers_to_compact:
                log.info("compactor: %d blobs, fewer than layers_to_compact %d: nothing to do",
                         len(self.layer.blobs), self.settings.layers_to_compact)
                return None
            import rafs
            with rafs.open(self.source, blob_dir=None if self.config else self.blob_dir,
                           config=self.config) as image:
                prefetch_inos = list(image.reader.prefetch_inodes())
                with trace.timed("dump_blob"):
                    table = self._dump_blobs(image, plan)
            if not table:
                log.info("compactor: no chance to compact data blobs")
                return None
            with trace.timed("dump_bootstrap"):
                # the prefetch table names the source's inodes: found before numbering changed them
                prefetch = [self._source_inos[ino] for ino in prefetch_inos if ino in self._source_inos]
                order = tree.number_tree(self.layer.root)
                data = write_bootstrap(self.layer.root, table, fs_version=self.version,
                                       chunk_size=self.layer.chunk_size, flags=SuperFlags(self.layer.flags),
                                       prefetch=prefetch or None, order=order)
                path = write_whole(bootstrap, data)
        blob_ids = [blob.blob_id for blob in table]
        output = output_document(blob_ids, trace, self.version, self.layer.flags.compressor)
        output["bootstrap"] = path or ""
        rebuilt = [blob for blob in table if blob.blob_id in self.new_blob_ids]
        return BuildResult(bootstrap=path, blob=None, blob_ids=blob_ids, bootstrap_size=len(data),
                           blob_size=sum(blob.compressed_size for blob in rebuilt), fs_version=self.version,
                           compressor=self.layer.flags.compressor, blobs=table, output=output,
                           blob_id=rebuilt[-1].blob_id if rebuilt else None)

    def _dump_blobs(self, image, plan: CompactPlan) -> list[Blob]:
        """Step 5: the new blob table; rebuilt blobs written, every chunk record pointed at its new place."""
        self._source_inos = {}
        for node in tree.iter_nodes(self.layer.root):
            self._source_inos.setdefault(node.inode.ino, node)
        table: list[Blob] = []
        moved: dict[int, int] = {}                      # source blob index -> new index (kept blobs)
        changed: dict[tuple, Chunk] = {}                # (source blob, key) -> new record (rebuilt blobs)
        self.new_blob_ids: set[str] = set()
        for index, state in enumerate(self.states):
            if state.state in (KEEP, DICT, PINNED):
                moved[index] = len(table)
                table.append(dataclasses.replace(state.blob, index=len(table)))
                log.info("compactor: keep blob %s", state.blob.blob_id)
            elif state.state == REBUILD:
                blob = self._rebuild(image, state, len(table), changed)
                table.append(blob)
                self.new_blob_ids.add(blob.blob_id)
                log.info("compactor: rebuilt blob %s", blob.blob_id)
        for chunk in unique_chunks(tree.iter_nodes(self.layer.root)):
            source = chunk.blob_index
            if source in moved:
                chunk.blob_index = moved[source]
                continue
            new = changed.get((source, chunk.compressed_offset, chunk.uncompressed_offset))
            if new is None:
                raise BuildError(f"compactor: chunk {chunk.index} of blob {source} has no new place")
            _point(chunk, new)
        return table

    def _rebuild(self, image, state: _BlobState, index: int, changed: dict) -> Blob:
        """Write the chunks of ``state`` into a new blob at table position ``index``."""
        chunks = sorted(state.chunks.chunks.values(), key=lambda c: (c.blob_index, c.compressed_offset))
        first = state.blob
        mapped = (self.version == 6 and first.compressor == "none"
                  and all(c.compressed_offset == c.uncompressed_offset for c in chunks))
        toc = any(self.states[c.blob_index].blob.has(BlobFeatures.HAS_TOC) for c in chunks)
        aligned = self.version == 6 or any(self.states[c.blob_index].blob.has(BlobFeatures.ALIGNED) for c in chunks)
        copier = ChunkCopier(image, self.blob_dir, index=index, like=first, version=self.version, aligned=aligned,
                             toc=toc, mapped=mapped)
        try:
            for chunk, new in zip(chunks, copier.copy_all(chunks)):
                changed[(chunk.blob_index, chunk.compressed_offset, chunk.uncompressed_offset)] = new
        except BaseException:
            copier.discard()
            raise
        return copier.finish()


def _moved(chunk: Chunk, to: Chunk) -> Chunk:
    """``chunk`` (a file's record) pointing where ``to`` is stored (``apply_chunk_change``)."""
    return dataclasses.replace(chunk, blob_index=to.blob_index, index=to.index,
                               compressed_offset=to.compressed_offset, compressed_size=to.compressed_size,
                               uncompressed_offset=to.uncompressed_offset, flags=to.flags, crc32=to.crc32)


def _point(chunk: Chunk, new: Chunk) -> None:
    """Rewrite a file's chunk record in place to the copy ``new`` in a rebuilt blob."""
    chunk.blob_index = new.blob_index
    chunk.index = new.index
    chunk.compressed_offset = new.compressed_offset
    chunk.compressed_size = new.compressed_size
    chunk.uncompressed_offset = new.uncompressed_offset
    chunk.flags = new.flags
    chunk.crc32 = new.crc32


def compact(source, *, blob_dir, output_bootstrap=None, config=None, chunk_dict=None,
            settings: CompactConfig | None = None) -> BuildResult | None:
    """Compact ``source`` as ``nydus-image compact`` does; the new bootstrap goes to
    ``output_bootstrap`` (default: the source's name with its extension replaced by
    ``.bootstrap.compact``, as the reference names it). None when nothing was compacted."""
    if output_bootstrap is None:
        output_bootstrap = default_output(source)
    return Compactor(source, blob_dir=blob_dir, config=config, chunk_dict=chunk_dict,
                     settings=settings).write(output_bootstrap)


def default_output(source) -> str:
    """``<bootstrap>`` with its extension replaced by ``bootstrap.compact`` (Rust's ``with_extension``)."""
    return os.path.splitext(os.fspath(source))[0] + ".bootstrap.compact"
