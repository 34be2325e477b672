"""Merging per-layer bootstraps into the one bootstrap an image mounts (``nydus-image merge``,
builder/src/merge.rs). Loading the bootstraps is :mod:`rafs.builder.parent`'s, which also puts a new
layer on a parent image for a build (``create --parent-bootstrap``).

Merge takes N layer bootstraps, lower to upper, optionally on top of a parent bootstrap, and lays
each tree over the ones below with OCI whiteouts applied (:mod:`rafs.builder.overlay`); the first
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
import logging
import os
from dataclasses import dataclass, field

from ..blob.ids import check_blob_id
from ..errors import BuildError, InvalidArgumentError, ParameterError
from ..model import DEFAULT_CHUNK_SIZE, Blob, BlobFeatures, Node, SuperFlags
from . import tree
from .outputs import Output
from .overlay import merge_overlay, tag_layer
from .parent import (InconsistentFilesystemError, LayerBootstrap, as_parent_blob, checked_ids, file_prefix,
                     load_bootstrap, unique_chunks)
from .prefetch import PREFETCH_POLICIES, check_prefetch_policy, normalise_prefetch_patterns, select_prefetch
from .report import MergeResult, Trace, output_document
from .writers import write_bootstrap

log = logging.getLogger(__name__)

__all__ = ["Merger", "MergedImage", "MergeResult", "InconsistentFilesystemError", "PREFETCH_POLICIES",
           "file_prefix", "write_merged"]


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
        check_prefetch_policy(prefetch_policy)
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
            for chunk in unique_chunks(tree.iter_nodes(upper)):
                if chunk.blob_index not in remap:
                    raise BuildError(f"{layer.name}: chunk refers to blob {chunk.blob_index} of {len(remap)}")
                chunk.blob_index = remap[chunk.blob_index]
            merged = upper if merged is None else merge_overlay(merged, upper, "oci")

        if tarfs and self.parent_bootstrap is not None:
            raise ParameterError("merging RAFS in TARFS mode conflicts with `{parent_bootstrap}`")
        if tarfs and dict_ids:
            raise ParameterError("merging RAFS in TARFS mode conflicts with `{chunk_dict}`")

        order = tree.number_tree(merged)
        blobs = checked_ids(_referenced_blobs(order.nodes, table))
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
            result.prefetch = select_prefetch(order, normalise_prefetch_patterns(self.prefetch_patterns)).exact
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
    return write_bootstrap(merged.root, merged.blobs, fs_version=merged.version, chunk_size=merged.chunk_size,
                           flags=merged.flags, prefetch=merged.prefetch or None, order=order)


def _referenced_blobs(nodes: list[Node], table: list[Blob]) -> list[Blob]:
    """Keep the blobs some chunk still references, in first-reference order over ``nodes`` (the index
    order); renumber the chunks accordingly."""
    new_index: dict[int, int] = {}
    blobs: list[Blob] = []
    for chunk in unique_chunks(nodes):
        position = new_index.get(chunk.blob_index)
        if position is None:
            if not 0 <= chunk.blob_index < len(table):
                raise BuildError(f"chunk refers to blob {chunk.blob_index} of {len(table)}")
            position = new_index[chunk.blob_index] = len(blobs)
            blobs.append(dataclasses.replace(table[chunk.blob_index], index=position))
        chunk.blob_index = position
    return blobs


