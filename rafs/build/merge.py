"""Merging per-layer bootstraps into the one bootstrap an image mounts (``nydus-image merge``,
builder/src/merge.rs), and putting a new layer on a parent image (``create --parent-bootstrap``,
builder/src/core/bootstrap.rs ``load_parent_bootstrap``).

Merge takes N layer bootstraps, lower to upper, optionally on top of a parent bootstrap, and lays
each tree over the ones below with OCI whiteouts applied (:mod:`rafs.build.overlay`); the first
tree is taken as it is when there is no parent (its own whiteout entries stay). Every layer may
reference at most one data blob that is not in the chunk dictionary, its "own" blob, whose id is
rewritten the way nydusify needs: ``original_blob_ids[i]``, else the source file name up to its
first dot, then ``blob_digests[i]`` (the sha256 of the blob as stored in the registry); sizes and
ToC digests/sizes can be overridden likewise. Blob ids are kept as they are when the blobs are
accessible (``-C``). Blobs that carried their layer's bootstrap inline lose that mark in the merged
table (builder/src/core/context.rs ``BlobContext::from``), so the merged bootstrap keeps their ids
wherever it is loaded from. The merged blob table holds only the blobs still referenced by a chunk, in the
order the merged tree first references them (nodes in index order, chunks in file order, as the
reference's breadth-first walk of the merged tree finds them).

Layers must agree on chunk size, explicit uid/gid, RAFS version, tarfs mode and, for v5, digester
(``RafsSuperConfig::check_compatibility``); compressor and digester of the result are the last
layer's, and it is marked encrypted if any layer is.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from dataclasses import dataclass, field

from ..blob.ids import check_blob_id, image_blob_id
from ..errors import BuildError, InvalidArgumentError, ParameterError, RafsError
from ..image import open as open_image
from ..model import DEFAULT_CHUNK_SIZE, Blob, BlobFeatures, Chunk, Node, SuperFlags
from ..options import PREFETCH_POLICIES
from . import tree
from .builder import Output, Trace, normalise_prefetch_patterns, output_document
from .overlay import merge_overlay, tag_layer

log = logging.getLogger(__name__)


class InconsistentFilesystemError(BuildError):
    """Layers that cannot be merged (``MergeError::InconsistentFilesystem``; exit code 2)."""


@dataclass
class LayerBootstrap:
    """One loaded bootstrap: its tree (chunks included), blob table and superblock facts."""

    name: str
    root: Node
    blobs: list[Blob]
    version: int
    flags: SuperFlags
    chunk_size: int

    @property
    def explicit_uidgid(self) -> bool:
        return bool(self.flags & SuperFlags.EXPLICIT_UID_GID)

    @property
    def tarfs(self) -> bool:
        return bool(self.flags & SuperFlags.TARTFS_MODE)

    @property
    def encrypted(self) -> bool:
        return bool(self.flags & SuperFlags.ENCRYPTION_ASE_128_XTS)


def load_bootstrap(source) -> LayerBootstrap:
    """Read a bootstrap (or a blob carrying one inline) into a :class:`LayerBootstrap`.

    As ``RafsSuper::load_from_file`` does, a blob with inlined metadata takes its id from the file
    name (up to the first dot), which is how nydusify names the bootstraps it extracts.
    """
    name = _source_name(source)
    try:
        with open_image(source) as image:
            reader = image.reader
            root = image.tree()
            blobs = [dataclasses.replace(blob) for blob in reader.blobs]
            for blob in blobs:      # ids carried into a new bootstrap must be ones a blob can be found by
                image_blob_id(blob.blob_id, blob.index)
            version, flags, chunk_size = reader.version, SuperFlags(reader.flags), reader.chunk_size
    except RafsError as exc:
        raise BuildError(f"load bootstrap {name}: {exc}") from exc
    prefix = file_prefix(name)
    for blob in blobs:
        if prefix and blob.has(BlobFeatures.INLINED_FS_META) and not blob.has(BlobFeatures.SEPARATE):
            blob.blob_id = prefix
    return LayerBootstrap(name, root, blobs, version, flags, chunk_size)


def as_parent_blob(blob: Blob) -> Blob:
    """A blob of a source bootstrap as a merged table records it: no longer marked as carrying
    the metadata inline (``BlobContext::from`` for parent and dictionary blobs), its id fixed."""
    return dataclasses.replace(blob, features=blob.features & ~BlobFeatures.INLINED_FS_META)


def file_prefix(path: str) -> str:
    """The file name up to its first dot (``BlobInfo::get_blob_id_from_meta_path``)."""
    base = os.path.basename(path)
    return base.split(".", 1)[0]


def _source_name(source) -> str:
    if isinstance(source, (str, bytes, os.PathLike)):
        return os.fsdecode(os.fspath(source))
    return str(getattr(source, "name", "<bootstrap>"))


def check_compatibility(expected: LayerBootstrap, other: LayerBootstrap) -> None:
    """``RafsSuperConfig::check_compatibility`` (rafs/src/metadata/mod.rs)."""
    if expected.chunk_size != other.chunk_size:
        raise InconsistentFilesystemError(f"{other.name}: inconsistent configuration of chunk_size: "
                                          f"{expected.chunk_size} vs {other.chunk_size}")
    if expected.explicit_uidgid != other.explicit_uidgid:
        raise InconsistentFilesystemError(f"{other.name}: using inconsistent explicit_uidgid setting "
                                          f"{expected.explicit_uidgid}, target {other.explicit_uidgid}")
    if expected.version != other.version:
        raise InconsistentFilesystemError(f"{other.name}: using inconsistent RAFS version {expected.version}, "
                                          f"target RAFS version {other.version}")
    if expected.version == 5 and expected.flags.digester != other.flags.digester:
        raise InconsistentFilesystemError(f"{other.name}: RAFS v5 can not support different digest algorithm "
                                          f"due to inode digest, {expected.flags.digester} vs "
                                          f"{other.flags.digester}")
    if expected.tarfs != other.tarfs:
        raise InconsistentFilesystemError(f"{other.name}: using inconsistent RAFS TARFS mode")


def _per_source(name: str, values, count: int, parse=None):
    if values is None:
        return None
    values = [v.strip() for v in values.split(",")] if isinstance(values, str) else list(values)
    if len(values) != count:
        raise InvalidArgumentError(f"number of {name} entries {len(values)} doesn't match number of sources "
                                   f"{count}")
    if parse is not None:
        try:
            values = [parse(v) for v in values]
        except InvalidArgumentError:
            raise
        except (TypeError, ValueError):
            raise InvalidArgumentError(f"invalid value in --{name}") from None
    return values


def _digest(value: str) -> bytes:
    value = value.strip()
    if value.startswith("sha256:"):
        value = value[len("sha256:"):]
    raw = bytes.fromhex(value)
    if len(raw) != 32:
        raise ValueError(value)
    return raw


@dataclass
class MergedImage:
    """The merged tree and what its bootstrap needs; :meth:`Merger.write` writes it."""

    root: Node
    blobs: list[Blob]
    version: int
    flags: SuperFlags
    chunk_size: int
    prefetch: list[Node] = field(default_factory=list)
    first_version: int = 6
    first_compressor: str = "zstd"


@dataclass
class MergeResult:
    """What a merge produced; ``output`` is the ``--output-json`` document."""

    bootstrap: str | None
    blob_ids: list[str]
    blobs: list[Blob]
    bootstrap_size: int
    fs_version: int
    compressor: str
    output: dict = field(default_factory=dict)

    def to_json(self) -> str:
        """The output document (:attr:`output`) as indented JSON text."""
        return json.dumps(self.output, indent=2)


class Merger:
    """Merge layer bootstraps ``sources`` (lower to upper) as ``nydus-image merge`` does.

    Options mirror the command line: ``parent_bootstrap``, ``chunk_dict`` (a bootstrap whose blobs
    are shared, not owned, by the layers), ``blob_digests``, ``original_blob_ids``, ``blob_sizes``,
    ``blob_toc_digests``, ``blob_toc_sizes`` (one entry per source, lists or comma-separated
    strings), ``prefetch_policy`` and ``prefetch_patterns`` (absolute paths), ``blob_accessible``
    (keep the blob ids recorded in the bootstraps, as ``-C`` does).
    """

    def __init__(self, sources, *, parent_bootstrap=None, chunk_dict=None, blob_digests=None,
                 original_blob_ids=None, blob_sizes=None, blob_toc_digests=None, blob_toc_sizes=None,
                 prefetch_policy: str = "none", prefetch_patterns=None, blob_accessible: bool = False):
        sources = list(sources)
        if not sources:
            raise InvalidArgumentError("source bootstrap list is empty , at least one bootstrap is required")
        if prefetch_policy not in PREFETCH_POLICIES:
            raise InvalidArgumentError(f"invalid prefetch policy {prefetch_policy!r} (expected one of "
                                       f"{', '.join(PREFETCH_POLICIES)})")
        count = len(sources)
        self.sources = sources
        self.parent_bootstrap = parent_bootstrap
        self.chunk_dict = chunk_dict
        self.blob_digests = _per_source("blob-digests", blob_digests, count, _digest)
        self.original_blob_ids = _per_source("original-blob-ids", original_blob_ids, count,
                                             lambda value: check_blob_id(value, "--original-blob-ids entry"))
        self.blob_sizes = _per_source("blob-sizes", blob_sizes, count, int)
        self.blob_toc_digests = _per_source("blob-toc-digests", blob_toc_digests, count, _digest)
        self.blob_toc_sizes = _per_source("blob-toc-sizes", blob_toc_sizes, count, int)
        self.prefetch_policy = prefetch_policy
        self.prefetch_patterns = list(prefetch_patterns or ()) if prefetch_policy != "none" else []
        self.blob_accessible = blob_accessible

    # -- the merge ---------------------------------------------------------------------------------

    def merge(self) -> MergedImage:
        """The layers' trees merged in order (whiteouts applied) with the merged blob table; no output."""
        merged: Node | None = None
        table: list[Blob] = []
        index_by_id: dict[str, int] = {}
        first_layer = 0
        if self.parent_bootstrap is not None:
            parent = load_bootstrap(self.parent_bootstrap)
            for blob in parent.blobs:
                index_by_id[blob.blob_id] = len(table)
                table.append(as_parent_blob(blob))
            merged = tag_layer(parent.root, 0)
            first_layer = 1

        config: LayerBootstrap | None = None
        dict_ids: set[str] = set()
        if self.chunk_dict is not None:
            chunk_dict = load_bootstrap(self.chunk_dict)
            config = chunk_dict
            dict_ids = {blob.blob_id for blob in chunk_dict.blobs}

        chunk_size = None
        compressor = digester = None
        explicit_uidgid = encrypted = tarfs = False
        version = first_version = None
        first_compressor = None
        for position, source in enumerate(self.sources):
            layer = load_bootstrap(source)
            if config is None:
                config = layer
            check_compatibility(config, layer)
            version = layer.version
            if first_version is None:
                first_version, first_compressor = layer.version, layer.flags.compressor
            compressor, digester = layer.flags.compressor, layer.flags.digester
            explicit_uidgid = layer.explicit_uidgid
            encrypted = encrypted or layer.encrypted
            tarfs = tarfs or config.tarfs

            remap: dict[int, int] = {}
            own_blob = False
            for local_index, blob in enumerate(layer.blobs):
                original_id = blob.blob_id
                if chunk_size is None:
                    chunk_size = blob.chunk_size
                elif blob.chunk_size != chunk_size:
                    raise InconsistentFilesystemError(
                        f"can not merge bootstraps with inconsistent chunk size, current bootstrap {layer.name} "
                        f"with chunk size {blob.chunk_size:#x}, expected {chunk_size:#x}")
                if original_id not in dict_ids:
                    if own_blob:
                        raise InconsistentFilesystemError(f"invalid per layer bootstrap {layer.name}, having "
                                                          "multiple associated data blobs")
                    own_blob = True
                    self._rename_own_blob(blob, position, layer, tarfs)
                if original_id not in index_by_id:
                    index_by_id[original_id] = len(table)
                    table.append(as_parent_blob(blob))
                remap[local_index] = index_by_id[original_id]
            upper = tag_layer(layer.root, first_layer + position)
            for chunk in _unique_chunks(tree.iter_nodes(upper)):
                if chunk.blob_index not in remap:
                    raise BuildError(f"{layer.name}: chunk refers to blob {chunk.blob_index} of {len(remap)}")
                chunk.blob_index = remap[chunk.blob_index]
            merged = upper if merged is None else merge_overlay(merged, upper, "oci")

        if tarfs and self.parent_bootstrap is not None:
            raise ParameterError("merging RAFS in TARFS mode conflicts with `{parent_bootstrap}`")
        if tarfs and dict_ids:
            raise ParameterError("merging RAFS in TARFS mode conflicts with `{chunk_dict}`")

        blobs = _checked_ids(_referenced_blobs(merged, table))
        flags = SuperFlags.for_compressor(compressor) | SuperFlags.for_digester(digester) | SuperFlags.HAS_XATTR
        if explicit_uidgid:
            flags |= SuperFlags.EXPLICIT_UID_GID
        if tarfs:
            flags |= SuperFlags.TARTFS_MODE
        if version == 6:
            flags |= SuperFlags.ENCRYPTION_ASE_128_XTS if encrypted else SuperFlags.ENCRYPTION_NONE
        result = MergedImage(root=merged, blobs=blobs, version=version, flags=flags,
                             chunk_size=chunk_size or DEFAULT_CHUNK_SIZE, first_version=first_version,
                             first_compressor=first_compressor)
        if self.prefetch_policy == "fs":
            result.prefetch = prefetch_nodes(merged, self.prefetch_patterns)
        return result

    def _rename_own_blob(self, blob: Blob, position: int, layer: LayerBootstrap, tarfs: bool) -> None:
        """The id and sizes the layer's own blob gets in the merged table (builder/src/merge.rs)."""
        if not (self.blob_accessible or tarfs):
            if self.original_blob_ids is not None:
                blob.blob_id = self.original_blob_ids[position]
            else:
                recorded, blob.blob_id = blob.blob_id, file_prefix(layer.name)
                if not blob.blob_id:
                    raise InvalidArgumentError(f"failed to get blob id from meta file path {layer.name}")
                if blob.blob_id != recorded and (self.blob_digests is None or blob.has(BlobFeatures.SEPARATE)):
                    # as the reference does; the merged bootstrap then finds the blob only if it is
                    # stored under that name
                    log.warning("the blob of %s gets the id %r from its file name (it was %s): give "
                                "--blob-digests (or --original-blob-ids, or -C when the blobs are readable) "
                                "unless the blob is stored under that name", layer.name, blob.blob_id, recorded)
        separate = blob.has(BlobFeatures.SEPARATE)
        if self.blob_digests is not None:
            if separate:
                blob.meta_digest = self.blob_digests[position]
            else:
                blob.blob_id = self.blob_digests[position].hex()
        if self.blob_sizes is not None:
            if separate:
                blob.meta_size = self.blob_sizes[position]
            else:
                blob.compressed_size = self.blob_sizes[position]
        if self.blob_toc_digests is not None:
            blob.toc_digest = self.blob_toc_digests[position]
        if self.blob_toc_sizes is not None:
            blob.toc_size = self.blob_toc_sizes[position]

    # -- output ------------------------------------------------------------------------------------

    def write(self, *, bootstrap=None, blob_dir=None) -> MergeResult:
        """Write the merged bootstrap to ``bootstrap``, or into ``blob_dir`` named by its sha256."""
        if bootstrap is None and blob_dir is None:
            raise InvalidArgumentError("both --bootstrap and --blob-dir are missing, please specify one to store "
                                       "the generated metadata blob file")
        if bootstrap is None and not os.path.isdir(blob_dir):
            raise InvalidArgumentError("Directory to store blobs does not exist")
        out = Output(bootstrap, None if bootstrap is not None else blob_dir)
        try:
            result = self.write_fp(out.fp)
            result.bootstrap = out.commit(out.digest_name())
        except BaseException:
            out.discard()
            raise
        result.output["bootstrap"] = result.bootstrap or ""
        return result

    def write_fp(self, fp) -> MergeResult:
        """Merge and write the bootstrap to the file object ``fp``; ``bootstrap`` of the result is None."""
        trace = Trace()
        with trace.timed("total_build"):
            with trace.timed("merge_bootstrap"):
                merged = self.merge()
            with trace.timed("dump_bootstrap"):
                data = write_merged(merged)
                fp.write(data)
        blob_ids = [blob.blob_id for blob in merged.blobs]
        # the reference reports the first source's version and compressor
        output = output_document(blob_ids, trace, merged.first_version, merged.first_compressor)
        return MergeResult(bootstrap=None, blob_ids=blob_ids, blobs=merged.blobs, bootstrap_size=len(data),
                           fs_version=merged.version, compressor=merged.flags.compressor, output=output)


def write_merged(merged: MergedImage) -> bytes:
    """The bootstrap bytes of a merged (or layered) tree."""
    order = tree.number_tree(merged.root)
    if merged.version == 5:
        from ..v5.writer import write_bootstrap as write_v5
        return write_v5(merged.root, merged.blobs, chunk_size=merged.chunk_size, flags=merged.flags,
                        prefetch=merged.prefetch or None, order=order)
    from ..v6.writer import write_bootstrap as write_v6
    return write_v6(merged.root, merged.blobs, chunk_size=merged.chunk_size, flags=merged.flags,
                    prefetch=merged.prefetch or None)


def _checked_ids(blobs: list[Blob]) -> list[Blob]:
    """``blobs`` once every id is one a blob can be found by. Ids read from a table were checked when
    their bootstrap was loaded, and ``--original-blob-ids`` when given; what is left are the ids taken
    from a bootstrap's file name (a layer's own blob, an inline-meta blob)."""
    for position, blob in enumerate(blobs):
        check_blob_id(blob.blob_id, f"blob table entry {position}: the id taken from a bootstrap's file name "
                      "(up to its first dot)")
    return blobs


def _referenced_blobs(root: Node, table: list[Blob]) -> list[Blob]:
    """Keep the blobs some chunk still references, in first-reference order over the index order;
    renumber the chunks accordingly."""
    new_index: dict[int, int] = {}
    blobs: list[Blob] = []
    for chunk in _unique_chunks(tree.number_tree(root).nodes):
        position = new_index.get(chunk.blob_index)
        if position is None:
            if not 0 <= chunk.blob_index < len(table):
                raise BuildError(f"chunk refers to blob {chunk.blob_index} of {len(table)}")
            position = new_index[chunk.blob_index] = len(blobs)
            blobs.append(dataclasses.replace(table[chunk.blob_index], index=position))
        chunk.blob_index = position
    return blobs


def _unique_chunks(nodes):
    """Every chunk record once, in node then file order (hardlinks and readers may share them)."""
    seen: set[int] = set()
    for node in nodes:
        for chunk in node.chunks:
            if id(chunk) not in seen:
                seen.add(id(chunk))
                yield chunk


def find_node(root: Node, path: bytes) -> Node | None:
    node = root
    for part in path.split(b"/"):
        if not part:
            continue
        if not node.inode.is_dir:
            return None
        node = node.child(part)
        if node is None:
            return None
    return node


def prefetch_nodes(root: Node, patterns) -> list[Node]:
    """The nodes named exactly by ``patterns`` (absolute paths), in pattern order; a pattern covered
    by an earlier one is dropped and empty regular files never match (builder/src/core/prefetch.rs)."""
    nodes = []
    for pattern in normalise_prefetch_patterns(patterns):
        node = find_node(root, pattern)
        if node is not None and not (node.inode.is_reg and node.inode.size == 0):
            nodes.append(node)
    return nodes


# -- a new layer on a parent image (create --parent-bootstrap) ----------------------------------------

@dataclass
class ParentImage:
    """A parent bootstrap prepared for a layered build: the merged tree (upper over parent), the
    parent's blob table (kept, the new blob is appended) and its chunks by (digest, size) for dedup."""

    root: Node
    blobs: list[Blob]
    chunks: dict[tuple[bytes, int], Chunk]


def check_layer_compatibility(parent: LayerBootstrap, *, fs_version: int, chunk_size: int, digester: str,
                              explicit_uidgid: bool) -> None:
    """A bootstrap a build reuses chunks of (a parent, a chunk dictionary) was built as this build is:
    chunk size, explicit uid/gid, version, v5 digester, no tarfs (RafsSuperConfig::check_compatibility)."""
    if parent.chunk_size != chunk_size:
        raise InconsistentFilesystemError(f"inconsistent configuration of chunk_size: {chunk_size} vs "
                                          f"{parent.chunk_size}")
    if parent.explicit_uidgid != explicit_uidgid:
        raise InconsistentFilesystemError(f"using inconsistent explicit_uidgid setting {explicit_uidgid}, "
                                          f"target explicit_uidgid setting {parent.explicit_uidgid}")
    if parent.version != fs_version:
        raise InconsistentFilesystemError(f"using inconsistent RAFS version {fs_version}, target RAFS version "
                                          f"{parent.version}")
    if fs_version == 5 and parent.flags.digester != digester:
        raise InconsistentFilesystemError(f"RAFS v5 can not support different digest algorithm due to inode "
                                          f"digest, {digester} vs {parent.flags.digester}")
    if parent.tarfs:
        raise InconsistentFilesystemError("using inconsistent RAFS TARFS mode")


def chunks_by_digest(root: Node) -> dict[tuple[bytes, int], Chunk]:
    """Every chunk of a tree, the first one for each (digest, uncompressed size), for dedup."""
    chunks: dict[tuple[bytes, int], Chunk] = {}
    for node in tree.iter_nodes(root):
        for chunk in node.chunks:
            chunks.setdefault((chunk.digest, chunk.uncompressed_size), chunk)
    return chunks


def layer_on_parent(upper: Node, parent_bootstrap, *, whiteout_spec: str, fs_version: int, chunk_size: int,
                    digester: str, explicit_uidgid: bool) -> ParentImage:
    """Lay ``upper`` over the tree of ``parent_bootstrap`` with ``whiteout_spec`` applied, after the
    reference's compatibility checks (:func:`check_layer_compatibility`)."""
    parent = load_bootstrap(parent_bootstrap)
    check_layer_compatibility(parent, fs_version=fs_version, chunk_size=chunk_size, digester=digester,
                              explicit_uidgid=explicit_uidgid)
    chunks = chunks_by_digest(parent.root)
    tag_layer(parent.root, 0)
    tag_layer(upper, 1)
    root = merge_overlay(parent.root, upper, whiteout_spec)
    return ParentImage(root=root, blobs=_checked_ids([as_parent_blob(b) for b in parent.blobs]), chunks=chunks)


@dataclass
class ChunkDictionary:
    """A chunk dictionary for a build (``create --chunk-dict``): the dictionary bootstrap's blobs and its
    chunks by (digest, size), their ``blob_index`` moved to ``base + index in the dictionary`` so they
    stand apart from the build's own until :meth:`place` gives the referenced blobs their places."""

    blobs: list[Blob]
    chunks: dict[tuple[bytes, int], Chunk]
    base: int

    def place(self, nodes, own_index: int, first: int) -> tuple[int, list[Blob]]:
        """Number the build's own blob (chunks at ``own_index``) and the dictionary blobs its files
        reference from ``first`` on, in the order chunks first reference them (the reference allocates
        a blob index when a chunk first needs one); renumber the chunks of ``nodes`` to match. Returns
        the own blob's index (after the others when it holds no chunk) and the referenced dictionary
        blobs with their indexes; only those enter the blob table."""
        places: dict[int, int] = {}
        for chunk in _unique_chunks(nodes):
            index = chunk.blob_index
            if index == own_index or index >= self.base:
                if index not in places:
                    places[index] = first + len(places)
                chunk.blob_index = places[index]
        own = places.get(own_index, first + len(places))
        used = [dataclasses.replace(as_parent_blob(self.blobs[index - self.base]), index=position)
                for index, position in places.items() if index != own_index]
        return own, used


def load_chunk_dict(source, *, fs_version: int, chunk_size: int, digester: str,
                    explicit_uidgid: bool) -> ChunkDictionary:
    """The chunk dictionary in bootstrap ``source`` (builder/src/core/chunk_dict.rs): it must have been
    built as this build is; with another digester its chunks cannot match, so none are offered."""
    dictionary = load_bootstrap(source)
    check_layer_compatibility(dictionary, fs_version=fs_version, chunk_size=chunk_size, digester=digester,
                              explicit_uidgid=explicit_uidgid)
    base = 1 << 16                          # past any blob index a table can hold (v6: 256, v5: u32 but few)
    chunks = {}
    if dictionary.flags.digester == digester:
        for key, chunk in chunks_by_digest(dictionary.root).items():
            chunks[key] = dataclasses.replace(chunk, blob_index=base + chunk.blob_index)
    return ChunkDictionary(blobs=dictionary.blobs, chunks=chunks, base=base)
