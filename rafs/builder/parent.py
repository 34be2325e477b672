"""Existing bootstraps a build or a merge starts from: loading one, and the two ways a build reuses one,
a new layer on a parent image (``create --parent-bootstrap``, builder/src/core/bootstrap.rs
``load_parent_bootstrap``) and a chunk dictionary (``create --chunk-dict``,
builder/src/core/chunk_dict.rs).

A loaded bootstrap keeps its tree (chunks included), blob table and superblock facts. A bootstrap a
build reuses chunks of must have been built as the build is (chunk size, explicit uid/gid, version,
v5 digester, no tarfs: ``RafsSuperConfig::check_compatibility``). Its blobs enter the new table no
longer marked as carrying the metadata inline (``BlobContext::from``), so the new bootstrap keeps
their ids wherever it is loaded from.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

from ..blob.ids import check_blob_id, image_blob_id
from ..errors import BuildError, RafsError
from ..image import open as open_image
from ..model import Blob, BlobFeatures, Chunk, Node, SuperFlags
from . import tree
from .overlay import merge_overlay, tag_layer


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



def checked_ids(blobs: list[Blob]) -> list[Blob]:
    """``blobs`` once every id is one a blob can be found by. Ids read from a table were checked when
    their bootstrap was loaded, and ``--original-blob-ids`` when given; what is left are the ids taken
    from a bootstrap's file name (a layer's own blob, an inline-meta blob)."""
    for position, blob in enumerate(blobs):
        check_blob_id(blob.blob_id, f"blob table entry {position}: the id taken from a bootstrap's file name "
                      "(up to its first dot)")
    return blobs



def unique_chunks(nodes):
    """Every chunk record once, in node then file order (hardlinks and readers may share them)."""
    seen: set[int] = set()
    for node in nodes:
        for chunk in node.chunks:
            if id(chunk) not in seen:
                seen.add(id(chunk))
                yield chunk



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
    return ParentImage(root=root, blobs=checked_ids([as_parent_blob(b) for b in parent.blobs]), chunks=chunks)


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
        for chunk in unique_chunks(nodes):
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
