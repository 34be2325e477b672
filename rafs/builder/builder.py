"""``rafs.Builder``: turn a source into a RAFS bootstrap and data blob as ``nydus-image create`` does.

The steps are the reference's (builder/src/directory.rs, builder/src/lib.rs): load the source into a
:class:`~rafs.model.Node` tree, number it (:func:`rafs.builder.tree.number_tree`), stream the regular
files' chunks into the blob (prefetch files first), append the blob meta (v6), then write the
bootstrap — into the blob itself with ``blob_inline_meta`` — and finish the blob. Outputs go to
temporary files in their target directories and are renamed only when everything succeeded.

Sources are pluggable: :data:`SOURCE_TYPES` maps a ``--type`` name to a loader
``loader(source, *, whiteout_spec, layer) -> Node``; :meth:`Builder.from_tree` builds a ready
:class:`~rafs.model.Node` tree. What the build writes goes through :mod:`rafs.builder.outputs`, which
files come first through :mod:`rafs.builder.prefetch`, the bootstrap through
:mod:`rafs.builder.writers`, and a parent image or chunk dictionary is :mod:`rafs.builder.parent`'s.
"""

from __future__ import annotations

import os
import time
from typing import Callable

from ..blob import codecs
from ..blob.writer import BlobWriter, check_chunk_size
from ..errors import BuildError, InvalidArgumentError, ParameterError
from ..model import Blob, BlobFeatures, Node, SuperFlags
from ..options import BLOB_LAYOUTS, COMPAT_MODES, FEATURES, FS_VERSIONS, TAR_SOURCE_TYPES
from ..options import COMPRESSORS as CREATE_COMPRESSORS
from ..options import SOURCE_TYPES as PATH_SOURCE_TYPES
from ..progress import Progress, Ticker
from . import tree
from .directory import load_directory
from .outputs import Output
from .prefetch import check_prefetch_policy, normalise_prefetch_patterns, select_prefetch
from .report import BuildResult, Trace, output_document
from .writers import write_bootstrap


def load_tar(source, **options) -> Node:
    """:func:`rafs.builder.tar.load_tar`, imported when a tar is built (not by every directory build)."""
    from .tar import load_tar as load
    return load(source, **options)


def load_tree(source, *, whiteout_spec: str = "oci", layer: int = 0) -> Node:
    """The ``tree`` source: a ready :class:`~rafs.model.Node` tree, taken as it is (names unchecked,
    whiteout entries kept); see :meth:`Builder.from_tree`."""
    if not isinstance(source, Node):
        raise InvalidArgumentError(f"a tree source is a rafs.model.Node, not {type(source).__name__}")
    return source


TREE_SOURCE_TYPE = "tree"

#: ``--type`` name -> loader returning the source's tree.
SOURCE_TYPES: dict[str, Callable[..., Node]] = {
    "dir-rafs": load_directory,
    "directory": load_directory,          # the reference's backward-compatible alias
    "tar-rafs": load_tar,                 # gzip (and zstd) detected by magic, as the reference does
    "targz-rafs": load_tar,
    "estargz-rafs": load_tar,             # an eStargz is a tar.gz; its index and landmark files are skipped
    TREE_SOURCE_TYPE: load_tree,
}
# The types that read a path (rafs.options.SOURCE_TYPES), which ``rafs create --type`` offers; types
# registered later (such as rafs.testing's in-memory trees) are for library callers only. Tarball types
# (rafs.options.TAR_SOURCE_TYPES) store v5 i_rdev u32::MAX unless devices or fifos.
BATCH_SOURCE_TYPES = PATH_SOURCE_TYPES    # the reference's dir/tar/targz/estargz-rafs
BLOB_ID_MAX_LENGTH = 255                  # BLOB_ID_MAXIMUM_LENGTH in src/bin/nydus-image/main.rs


class Builder:
    """Build a RAFS image from ``source`` (a directory for ``source_type="dir-rafs"``, a ready
    :class:`~rafs.model.Node` tree through :meth:`from_tree`).

    Options mirror ``nydus-image create``: ``fs_version`` 5 or 6, ``compressor`` none/lz4_block/zstd,
    ``digester`` blake3/sha256, ``chunk_size`` (power of two, 4 KiB..16 MiB), ``whiteout_spec``
    oci/overlayfs/none, ``repeatable`` (uid/gid written as 0, no EXPLICIT_UID_GID),
    ``blob_inline_meta`` (the bootstrap goes into the blob), ``features=("blob-toc",)`` (v6: chunk
    digests and a ToC in the blob), ``prefetch_patterns`` (absolute paths; ``prefetch_policy`` "fs" by
    default when given, or "blob"), ``aligned_chunk`` (v5: 4 KiB aligned uncompressed offsets; v6 is
    always aligned). ``blob_layout`` is ``"packed"`` (chunks back to back, as nydus-image writes them)
    or ``"mapped"`` (v6 with compressor none only: every chunk at its uncompressed offset, zero-padded,
    so the kernel's EROFS can use the blob itself as the extra device, like a ``mkfs.erofs --blobdev``
    file; nydusd and rafs read both). ``compat="2.2"`` writes a v5 bootstrap the way nydus-image 2.2 did (records in
    index order, no CRC-32C, no blob features, the root left out of ``s_inodes_count``). ``workers`` bounds
    the compression threads. ``batch_size`` (v6, a power of two in 4 KiB..16 MiB, at most the chunk
    size) packs single-chunk files smaller than half of it into batch chunks (:mod:`rafs.blob.batch`).
    ``encrypt`` (v6) encrypts the chunks, the CI array and its header with AES-128-XTS under a fresh
    random key and IV, which the bootstrap's blob table holds (so the bootstrap is the secret).
    Invalid combinations raise :class:`~rafs.errors.InvalidArgumentError` with the reference's words.
    """

    def __init__(self, source, *, source_type: str = "dir-rafs", fs_version: int = 6,
                 compressor: str = "zstd", digester: str = "blake3", chunk_size: int = 0x100000,
                 whiteout_spec: str = "oci", repeatable: bool = False, blob_inline_meta: bool = False,
                 features=(), prefetch_patterns=None, prefetch_policy: str | None = None,
                 aligned_chunk: bool = False, compat: str | None = None, workers: int | None = None,
                 parent_bootstrap=None, blob_layout: str = "packed", blob_id: str | None = None,
                 blob_offset: int = 0, chunk_dict=None, batch_size: int = 0, encrypt: bool = False):
        if source_type not in SOURCE_TYPES:
            raise InvalidArgumentError(f"unsupported source type {source_type!r} (expected one of "
                                       f"{', '.join(SOURCE_TYPES)})")
        try:
            fs_version = int(fs_version)
        except (TypeError, ValueError):
            raise InvalidArgumentError(f"invalid fs-version: {fs_version!r}") from None
        if fs_version not in FS_VERSIONS:
            raise InvalidArgumentError(f"invalid fs-version: {fs_version}")
        if compressor not in CREATE_COMPRESSORS:
            raise InvalidArgumentError(f"invalid compressor {compressor!r} (expected one of "
                                       f"{', '.join(CREATE_COMPRESSORS)})")
        codecs.check_digester(digester)
        check_chunk_size(chunk_size)
        tree.check_whiteout_spec(whiteout_spec)
        features = (features,) if isinstance(features, str) else tuple(features)
        for feature in features:
            if feature not in FEATURES:
                raise InvalidArgumentError(f"unknown feature {feature!r} (expected one of {', '.join(FEATURES)})")
        if "blob-toc" in features and fs_version == 5:
            raise InvalidArgumentError("`--features blob-toc` can't be used with `--version 5`")
        if prefetch_policy is None:
            prefetch_policy = "fs" if prefetch_patterns else "none"
        check_prefetch_policy(prefetch_policy)
        if compat not in COMPAT_MODES:
            raise InvalidArgumentError(f"unknown compat mode {compat!r} (expected one of {COMPAT_MODES})")
        if compat is not None and fs_version != 5:
            raise InvalidArgumentError(f"compat mode {compat!r} only applies to RAFS v5")
        self.source = source
        self.source_type = source_type
        self.fs_version = fs_version
        self.compressor = compressor
        self.digester = digester
        self.chunk_size = chunk_size
        self.whiteout_spec = whiteout_spec
        self.repeatable = bool(repeatable)
        self.blob_inline_meta = bool(blob_inline_meta)
        self.features = features
        self.prefetch_policy = prefetch_policy
        self.prefetch_patterns = (normalise_prefetch_patterns(prefetch_patterns or ()) if prefetch_policy != "none"
                                  else [])
        # v6 (except tarfs) is always 4K aligned; --aligned-chunk only matters for v5
        self.aligned_chunk = True if fs_version == 6 else bool(aligned_chunk)
        self.compat = compat
        self.workers = workers
        self.parent_bootstrap = parent_bootstrap
        if blob_layout not in BLOB_LAYOUTS:
            raise InvalidArgumentError(f"unknown blob layout {blob_layout!r} (expected one of "
                                       f"{', '.join(BLOB_LAYOUTS)})")
        if blob_layout == "mapped" and (fs_version != 6 or compressor != "none"):
            raise ParameterError("{blob_layout} mapped needs {fs_version} 6 and {compressor} none: only "
                                 "uncompressed v6 chunks can sit at their block addresses")
        self.blob_layout = blob_layout
        if blob_id is not None:
            check_blob_id(blob_id)
            if self.blob_inline_meta:
                raise ParameterError("{blob_inline_meta} cannot be used with {blob_id}")
        self.blob_id = blob_id
        if not isinstance(blob_offset, int) or not 0 <= blob_offset < 1 << 64:
            raise InvalidArgumentError(f"invalid blob offset {blob_offset!r}")
        self.blob_offset = blob_offset
        self.chunk_dict = chunk_dict
        self.batch_size = check_batch_options(batch_size, fs_version=fs_version, source_type=source_type,
                                              chunk_size=chunk_size, blob_layout=blob_layout)
        if encrypt and fs_version != 6:
            raise InvalidArgumentError("--encrypt needs --fs-version 6: the RAFS v5 blob table has no place for "
                                       "the key")
        if encrypt and blob_layout == "mapped":
            raise InvalidArgumentError("--blob-layout mapped stores chunks as they are: it cannot be combined "
                                       "with --encrypt")
        self.encrypt = bool(encrypt)
        self._on_chunk = None               # set by write() while it fills blob cache files
        self._progress: Progress | None = None      # set by write() and write_fp() for one build

    @classmethod
    def from_tree(cls, root: Node, **options) -> "Builder":
        """A builder of the ready tree ``root`` (a :class:`~rafs.model.Node` with its inodes and file
        ``data``), taken as it is: names are not checked and whiteout entries are kept, so hostile
        images can be made. The tree is consumed (the build numbers it and fills in chunks).
        ``options`` are the constructor's."""
        return cls(root, source_type=TREE_SOURCE_TYPE, **options)

    @property
    def source_layer(self) -> int:
        """The layer index of the source's nodes: 1 on a parent image (the parent's are 0), else 0."""
        return 0 if self.parent_bootstrap is None else 1

    @property
    def blob_toc(self) -> bool:
        """Whether the blob gets a ToC and chunk digests (``features=("blob-toc",)``)."""
        return "blob-toc" in self.features

    # -- outputs -----------------------------------------------------------------------------------

    def write(self, *, bootstrap=None, blob=None, blob_dir=None, blob_cache_dir=None,
              progress: Progress | None = None) -> BuildResult:
        """Build to files: ``blob`` (the data blob path) and/or ``blob_dir`` (blob named by its id,
        and the bootstrap named by the sha256 of its bytes unless ``bootstrap`` is given).

        With ``blob_cache_dir`` no blob is written: that directory receives nydusd's cache files of it
        instead (:mod:`rafs.builder.blobcache`; needs ``compressor="none"`` and a ``bootstrap`` path).
        ``progress(done, total)`` (:mod:`rafs.progress`) counts the bytes of file data chunked.
        """
        self._progress = progress
        if blob_cache_dir is not None:
            return self._write_blob_cache(bootstrap, blob, blob_dir, blob_cache_dir)
        if blob is None and blob_dir is None:
            raise ParameterError("both {blob} and {blob_dir} are missing, please specify one to store the "
                                 "generated data blob file")
        if bootstrap is not None and self.blob_inline_meta:
            raise ParameterError("{bootstrap} conflicts with {blob_inline_meta}")
        if bootstrap is None and blob_dir is None and not self.blob_inline_meta:
            raise ParameterError("both {bootstrap} and {blob_dir} are missing, please specify one to store the "
                                 "generated metadata blob file")
        if blob_dir is not None and not os.path.isdir(blob_dir):
            raise InvalidArgumentError(f"directory to store blobs does not exist: {os.fspath(blob_dir)!r}")
        outputs: dict[str, Output] = {}

        def open_outputs():
            # opened only once the source is read, so an output inside the source is not part of it
            outputs["blob"] = Output(blob, blob_dir)
            if not self.blob_inline_meta:
                outputs["bootstrap"] = Output(bootstrap, blob_dir)
            return outputs["blob"].fp, outputs["bootstrap"].fp if "bootstrap" in outputs else None

        try:
            result = self._build(open_outputs)
            blob_path = outputs["blob"].commit(result.blob_id)
            boot_path = None
            if "bootstrap" in outputs:
                boot_path = outputs["bootstrap"].commit(outputs["bootstrap"].digest_name())
        except BaseException:
            for output in outputs.values():
                output.discard()
            raise
        result.blob = blob_path
        result.bootstrap = boot_path
        result.output["bootstrap"] = boot_path or ""
        return result

    def _write_blob_cache(self, bootstrap, blob, blob_dir, cache_dir) -> BuildResult:
        from .blobcache import BlobCacheFiles, Discard
        for given, parameter in ((blob, "blob"), (blob_dir, "blob_dir")):
            if given is not None:
                raise ParameterError("{blob_cache_dir} cannot be used with {%s}" % parameter)
        if self.blob_inline_meta:
            raise ParameterError("{blob_cache_dir} cannot be used with {blob_inline_meta}")
        if self.compressor != "none":
            raise InvalidArgumentError("blob cache files hold uncompressed chunks: build with compressor 'none'")
        if bootstrap is None:
            raise ParameterError("both {bootstrap} and {blob_dir} are missing, please specify one to store the "
                                 "generated metadata blob file")
        if not os.path.isdir(cache_dir):
            raise InvalidArgumentError(f"directory to store blob cache does not exist: {os.fspath(cache_dir)!r}")
        outputs: dict = {}

        def open_outputs():
            outputs["cache"] = BlobCacheFiles(cache_dir, Output)
            self._on_chunk = outputs["cache"].store_chunk
            outputs["bootstrap"] = Output(bootstrap, None)
            return Discard(), outputs["bootstrap"].fp

        try:
            result = self._build(open_outputs)
            if result.blob_id is not None:
                writer = self._last_writer
                outputs["cache"].finish(result.blob_id, writer.uncompressed_size, writer.ci_data, writer.ci_header)
            else:
                outputs["cache"].discard()
            result.bootstrap = outputs["bootstrap"].commit(None)
        except BaseException:
            for output in outputs.values():
                output.discard()
            raise
        finally:
            self._on_chunk = None
        result.output["bootstrap"] = result.bootstrap or ""
        return result

    def write_fp(self, blob_fp, bootstrap_fp=None, *, progress: Progress | None = None) -> BuildResult:
        """Build to binary file objects (``bootstrap_fp`` is not used with ``blob_inline_meta``);
        ``progress`` as in :meth:`write`."""
        self._progress = progress
        if bootstrap_fp is None and not self.blob_inline_meta:
            raise InvalidArgumentError("a bootstrap file object is needed unless blob_inline_meta is set")
        if bootstrap_fp is not None and self.blob_inline_meta:
            raise ParameterError("{bootstrap} conflicts with {blob_inline_meta}")
        return self._build(lambda: (blob_fp, bootstrap_fp))

    # -- the build ---------------------------------------------------------------------------------

    def _build(self, open_outputs) -> BuildResult:
        """Read the source, then write through the file objects ``open_outputs()`` returns."""
        try:
            return self._build_image(open_outputs)
        except OSError as exc:
            # reading the source raises BuildError itself: what is left is the outputs failing
            where = f" ({os.fsdecode(exc.filename)})" if exc.filename else ""
            raise BuildError(f"failed to write the image: {exc.strerror or exc}{where}") from exc

    def _build_image(self, open_outputs) -> BuildResult:
        trace = Trace()
        started = time.perf_counter()
        with trace.timed("build_tree"), trace.timed("load_from_directory"):
            # on a parent image the source is an upper layer: its whiteouts are applied, not dropped
            root = SOURCE_TYPES[self.source_type](self.source, whiteout_spec=self.whiteout_spec,
                                                  layer=self.source_layer)
        parent = None
        if self.parent_bootstrap is not None:
            from .parent import layer_on_parent
            with trace.timed("load_tree_from_bootstrap"), trace.timed("merge_bootstrap"):
                parent = layer_on_parent(root, self.parent_bootstrap, whiteout_spec=self.whiteout_spec,
                                         fs_version=self.fs_version, chunk_size=self.chunk_size,
                                         digester=self.digester, explicit_uidgid=not self.repeatable)
            root = parent.root
        nodes = list(tree.iter_nodes(root))
        trace.registered_events["load_from_directory"] = len(nodes) - 1
        if self.repeatable:
            for node in nodes:
                node.inode.uid = node.inode.gid = 0
        with trace.timed("build_bootstrap"):
            order = tree.number_tree(root)
            selection = select_prefetch(order, self.prefetch_patterns)
            prefetch_nodes, dump_order, prefetch_count = selection.exact, selection.files, selection.count
        parent_blobs = []
        if parent is not None:
            # only the upper layer's files are written; the parent's keep their chunks
            upper = [n.data is not None or not n.chunks for n in dump_order]
            prefetch_count = sum(upper[:prefetch_count])
            dump_order = [n for n, own in zip(dump_order, upper) if own]
            parent_blobs = parent.blobs

        blob_fp, bootstrap_fp = open_outputs()
        writer = BlobWriter(blob_fp, blob_index=len(parent_blobs), compressor=self.compressor,
                            digester=self.digester, chunk_size=self.chunk_size, aligned=self.aligned_chunk,
                            blob_meta=self.fs_version == 6, toc=self.blob_toc,
                            inline_meta=self.blob_inline_meta, crc32=self.compat is None, workers=self.workers,
                            mapped=self.blob_layout == "mapped", offset=self.blob_offset, on_chunk=self._on_chunk,
                            batch_size=self.batch_size, encrypt=self.encrypt)
        self._last_writer = writer
        if parent is not None:
            writer.seed_dedup(parent.chunks)
        dictionary = None
        if self.chunk_dict is not None:
            from .parent import load_chunk_dict
            with trace.timed("import_chunk_dict"):
                dictionary = load_chunk_dict(self.chunk_dict, fs_version=self.fs_version,
                                             chunk_size=self.chunk_size, digester=self.digester,
                                             explicit_uidgid=not self.repeatable)
            writer.seed_dict(dictionary.chunks)
        with trace.timed("dump_blob"):
            writer.dump(_counted(dump_order, self._progress), prefetch_count=prefetch_count)
            has_blob = writer.chunk_count > 0 or self.blob_inline_meta
            if writer.chunk_count:
                writer.end_data()
                writer.write_meta()
        dict_blobs: list[Blob] = []
        if dictionary is not None:
            writer.blob_index, dict_blobs = dictionary.place(dump_order, writer.blob_index, len(parent_blobs))

        def table(own: list[Blob]) -> list[Blob]:
            """The blob table: the parent's, then this build's and the dictionary's it references."""
            return parent_blobs + sorted(own + dict_blobs, key=lambda blob: blob.index)

        if self.prefetch_policy != "blob":
            writer.prefetch_size = 0
        flags = self._flags(nodes, writer)
        tar_layer = self.source_layer if self.source_type in TAR_SOURCE_TYPES else None

        def bootstrap_for(blobs):
            return write_bootstrap(root, blobs, fs_version=self.fs_version, chunk_size=self.chunk_size,
                                   flags=flags, prefetch=prefetch_nodes if self.prefetch_policy == "fs" else None,
                                   order=order, compat=self.compat is not None, tar_layer=tar_layer)

        blobs: list[Blob] = []
        with trace.timed("dump_bootstrap"):
            if self.blob_inline_meta:
                # A v6 blob without data would be a device slot of 0 blocks, which readers refuse
                # (RafsV6Device::validate): then the blob only carries the bootstrap, outside the table.
                in_table = writer.chunk_count > 0 or self.fs_version == 5
                placeholder = [writer.inline_placeholder()] if in_table else []
                bootstrap = bootstrap_for(table(placeholder))
                writer.append_bootstrap(bootstrap)
                written = writer.finish()
                blobs = table([written] if in_table else [])
            else:
                own = []
                if has_blob:
                    written = writer.finish()
                    if self.blob_id is not None:
                        # --blob-id names the blob instead of the sha256 of its bytes
                        writer.blob_id = self.blob_id
                        written = writer.blob(self.blob_id)
                    own.append(written)
                blobs = table(own)
                bootstrap = bootstrap_for(blobs)
                bootstrap_fp.write(bootstrap)
        trace.consumed_time["total_build"] = round(time.perf_counter() - started, 6)
        trace.registered_events.update({
            "blob_uncompressed_size": writer.stored_uncompressed_size,
            "dedup_chunks": writer.dedup_chunks,
            "dedup_uncompressed_size": writer.dedup_uncompressed_size,
            "euid": str(os.geteuid()) if hasattr(os, "geteuid") else "0",
            "egid": str(os.getegid()) if hasattr(os, "getegid") else "0",
        })
        blob_ids = [b.blob_id for b in blobs]
        if has_blob and writer.blob_id not in blob_ids:
            blob_ids.append(writer.blob_id)
        output = output_document(blob_ids, trace, self.fs_version, self.compressor)
        return BuildResult(blob_id=writer.blob_id if has_blob else None,
                           bootstrap=None, blob=None, blob_ids=blob_ids, bootstrap_size=len(bootstrap),
                           blob_size=writer.pos if has_blob else None, fs_version=self.fs_version,
                           compressor=self.compressor, blobs=blobs, output=output)

    def _flags(self, nodes: list[Node], writer: BlobWriter) -> SuperFlags:
        flags = SuperFlags.for_compressor(self.compressor) | SuperFlags.for_digester(self.digester)
        if not self.repeatable:
            flags |= SuperFlags.EXPLICIT_UID_GID
        if any(n.inode.xattrs for n in nodes):
            flags |= SuperFlags.HAS_XATTR
        if self.fs_version == 6:
            flags |= SuperFlags.ENCRYPTION_ASE_128_XTS if self.encrypt else SuperFlags.ENCRYPTION_NONE
            if writer.chunk_count and writer.features & BlobFeatures.INLINED_CHUNK_DIGEST:
                flags |= SuperFlags.INLINED_CHUNK_DIGEST
        return flags

def _counted(nodes: list[Node], progress: Progress | None):
    """``nodes`` in order, reporting the bytes of file data handed to the blob writer per file."""
    if progress is None:
        yield from nodes
        return
    ticker = Ticker(progress, sum(node.inode.size for node in nodes)).start()
    for node in nodes:
        yield node
        ticker.advance(node.inode.size)
    ticker.finish()


def check_batch_options(batch_size, *, fs_version: int, source_type: str, chunk_size: int,
                        blob_layout: str) -> int:
    """``--batch-size``: 0, or for v6 builds of directories and tar streams a power of two in
    [0x1000, 0x1000000] not above the chunk size (the reference's rules and words)."""
    from ..blob.batch import check_batch_size
    if batch_size and fs_version == 5:
        raise InvalidArgumentError("`--batch-size` with non-zero value conflicts with `--fs-version 5`")
    if batch_size and source_type not in BATCH_SOURCE_TYPES:
        raise InvalidArgumentError(f"unsupported ConversionType for batch chunk: {source_type}")
    batch_size = check_batch_size(batch_size, chunk_size)
    if batch_size and blob_layout == "mapped":
        raise ParameterError("{blob_layout} mapped stores every chunk at its block address: it cannot be "
                             "combined with {batch_size}")
    return batch_size


def check_blob_id(blob_id) -> str:
    """A blob id given by the user (``--blob-id``): at most 255 characters as the reference allows, and
    usable as a file name, since the blob is stored under it in ``--blob-dir``."""
    if not isinstance(blob_id, str) or not blob_id:
        raise ParameterError("{blob_id} must not be empty")
    if len(blob_id) > BLOB_ID_MAX_LENGTH:
        raise InvalidArgumentError(f"blob id is limited to length {BLOB_ID_MAX_LENGTH}")
    if "/" in blob_id or "\0" in blob_id or blob_id in (".", "..") or not blob_id.isprintable():
        raise ParameterError("{blob_id} {value!r}: a blob id names a file, so it cannot contain '/', control "
                             "characters, or be '.' or '..'", value=blob_id)
    return blob_id
