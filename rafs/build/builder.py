"""``rafs.Builder``: turn a source into a RAFS bootstrap and data blob as ``nydus-image create`` does.

The steps are the reference's (builder/src/directory.rs, builder/src/lib.rs): load the source into a
:class:`~rafs.model.Node` tree, number it (:func:`rafs.build.tree.number_tree`), stream the regular
files' chunks into the blob (prefetch files first), append the blob meta (v6), then write the
bootstrap — into the blob itself with ``blob_inline_meta`` — and finish the blob. Outputs go to
temporary files in their target directories and are renamed only when everything succeeded.

Sources are pluggable: :data:`SOURCE_TYPES` maps a ``--type`` name to a loader
``loader(source, *, whiteout_spec, layer) -> Node``.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat as _stat
import time
from dataclasses import dataclass, field
from typing import Callable

from .. import __version__, tempfiles
from ..blob import codecs
from ..blob.writer import BlobWriter, check_chunk_size
from ..errors import BuildError, InvalidArgumentError, UnsupportedError
from ..model import Blob, BlobFeatures, Node, SuperFlags
from ..progress import Progress, Ticker
from ..tempfiles import umask
from . import tree
from .directory import load_directory


def load_tar(source, **options) -> Node:
    """:func:`rafs.build.tar.load_tar`, imported when a tar is built (not by every directory build)."""
    from .tar import load_tar as load
    return load(source, **options)


#: ``--type`` name -> loader returning the source's tree. Other sources register here.
# "packed": as nydus-image writes blobs; "mapped": uncompressed v6 chunks at their block addresses.
BLOB_LAYOUTS = ("packed", "mapped")

SOURCE_TYPES: dict[str, Callable[..., Node]] = {
    "dir-rafs": load_directory,
    "directory": load_directory,          # the reference's backward-compatible alias
    "tar-rafs": load_tar,                 # gzip (and zstd) detected by magic, as the reference does
    "targz-rafs": load_tar,
    "estargz-rafs": load_tar,             # an eStargz is a tar.gz; its index and landmark files are skipped
}
# The types that read a path, which ``rafs create --type`` offers; types registered later (such as
# rafs.testing's in-memory trees) are for library callers only.
PATH_SOURCE_TYPES = tuple(SOURCE_TYPES)
# Source types read from a tarball (their v5 inodes store i_rdev u32::MAX unless devices or fifos).
TAR_SOURCE_TYPES = ("tar-rafs", "targz-rafs", "estargz-rafs")
BATCH_SOURCE_TYPES = tuple(SOURCE_TYPES)  # the reference's dir/tar/targz/estargz-rafs
BLOB_ID_MAX_LENGTH = 255                  # BLOB_ID_MAXIMUM_LENGTH in src/bin/nydus-image/main.rs
FS_VERSIONS = (5, 6)
CREATE_COMPRESSORS = ("none", "lz4_block", "zstd")
FEATURES = ("blob-toc",)
PREFETCH_POLICIES = ("none", "fs", "blob")
COMPAT_MODES = (None, "2.2")


@dataclass
class BuildResult:
    """What a build produced: paths (None when written to file objects), blob ids in blob-table
    order, sizes, and ``output``, the document ``nydus-image create --output-json`` writes."""

    bootstrap: str | None
    blob: str | None
    blob_ids: list[str]
    bootstrap_size: int
    blob_size: int | None
    fs_version: int
    compressor: str
    blobs: list[Blob] = field(default_factory=list)
    output: dict = field(default_factory=dict)
    blob_id: str | None = None           # the blob this build wrote (the last one), None if none

    def to_json(self) -> str:
        """The ``--output-json`` document (:attr:`output`) as indented JSON text."""
        return json.dumps(self.output, indent=2)


class Trace:
    """The ``trace`` section of --output-json: phase times (seconds) and counted events."""

    def __init__(self):
        self.consumed_time: dict[str, float] = {}
        self.registered_events: dict[str, object] = {}

    def timed(self, name: str):
        """A context manager adding the seconds spent inside it to ``consumed_time[name]``."""
        trace = self

        class _Timer:
            def __enter__(self):
                self.start = time.perf_counter()

            def __exit__(self, *exc):
                trace.consumed_time[name] = round(time.perf_counter() - self.start, 6)

        return _Timer()

    def as_dict(self) -> dict:
        """The trace as nydus-image's output JSON holds it: ``consumed_time`` and ``registered_events``."""
        return {"consumed_time": dict(self.consumed_time), "registered_events": dict(self.registered_events)}


def output_document(blob_ids: list[str], trace: Trace, fs_version: int, compressor: str) -> dict:
    """What ``--output-json`` holds (src/bin/nydus-image/main.rs ``OutputSerializer``); the
    ``bootstrap`` path is filled in once the output is in place."""
    return {
        "version": f"rafs-{__version__}",
        "bootstrap": "",
        "blobs": blob_ids,
        "external_bootstrap": "",
        "external_blobs": [],
        "trace": trace.as_dict(),
        "fs_version": str(fs_version),
        "compressor": compressor,
    }


class Builder:
    """Build a RAFS image from ``source`` (a directory for ``source_type="dir-rafs"``).

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
        if prefetch_policy not in PREFETCH_POLICIES:
            raise InvalidArgumentError(f"invalid prefetch policy {prefetch_policy!r} (expected one of "
                                       f"{', '.join(PREFETCH_POLICIES)})")
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
        self.prefetch_patterns = (normalise_prefetch_patterns(prefetch_patterns or ())
                                  if prefetch_policy != "none" else [])
        # v6 (except tarfs) is always 4K aligned; --aligned-chunk only matters for v5
        self.aligned_chunk = True if fs_version == 6 else bool(aligned_chunk)
        self.compat = compat
        self.workers = workers
        self.parent_bootstrap = parent_bootstrap
        if blob_layout not in BLOB_LAYOUTS:
            raise InvalidArgumentError(f"unknown blob layout {blob_layout!r} (expected one of "
                                       f"{', '.join(BLOB_LAYOUTS)})")
        if blob_layout == "mapped" and (fs_version != 6 or compressor != "none"):
            raise InvalidArgumentError("--blob-layout mapped needs --fs-version 6 and --compressor none: "
                                       "only uncompressed v6 chunks can sit at their block addresses")
        self.blob_layout = blob_layout
        if blob_id is not None:
            check_blob_id(blob_id)
            if self.blob_inline_meta:
                raise InvalidArgumentError("the argument '--blob-inline-meta' cannot be used with '--blob-id'")
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
        instead (:mod:`rafs.build.blobcache`; needs ``compressor="none"`` and a ``bootstrap`` path).
        ``progress(done, total)`` (:mod:`rafs.progress`) counts the bytes of file data chunked.
        """
        self._progress = progress
        if blob_cache_dir is not None:
            return self._write_blob_cache(bootstrap, blob, blob_dir, blob_cache_dir)
        if blob is None and blob_dir is None:
            raise InvalidArgumentError("both --blob and --blob-dir are missing, please specify one to store "
                                       "the generated data blob file")
        if bootstrap is not None and self.blob_inline_meta:
            raise InvalidArgumentError("--bootstrap conflicts with --blob-inline-meta")
        if bootstrap is None and blob_dir is None and not self.blob_inline_meta:
            raise InvalidArgumentError("both --bootstrap and --blob-dir are missing, please specify one to store "
                                       "the generated metadata blob file")
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
        for given, option in ((blob, "--blob <blob>"), (blob_dir, "--blob-dir <blob-dir>")):
            if given is not None:
                raise InvalidArgumentError(f"the argument '--blob-cache-dir <blob-cache-dir>' cannot be used "
                                           f"with '{option}'")
        if self.blob_inline_meta:
            raise InvalidArgumentError("the argument '--blob-cache-dir <blob-cache-dir>' cannot be used with "
                                       "'--blob-inline-meta'")
        if self.compressor != "none":
            raise InvalidArgumentError("blob cache files hold uncompressed chunks: build with compressor 'none'")
        if bootstrap is None:
            raise InvalidArgumentError("both --bootstrap and --blob-dir are missing, please specify one to store "
                                       "the generated metadata blob file")
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
            raise InvalidArgumentError("--bootstrap conflicts with --blob-inline-meta")
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
            from .merge import layer_on_parent
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
            prefetch_nodes, dump_order, prefetch_count = self._layout(order)
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
            from .merge import load_chunk_dict
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
        write_bootstrap = self._bootstrap_writer()

        def bootstrap_for(blobs):
            return write_bootstrap(root, blobs, chunk_size=self.chunk_size, flags=flags,
                                   prefetch=prefetch_nodes if self.prefetch_policy == "fs" else None,
                                   order=order)

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

    def _bootstrap_writer(self):
        if self.fs_version == 5:
            from ..v5.writer import write_bootstrap as write_v5
            compat = self.compat is not None

            tar_layer = self.source_layer if self.source_type in TAR_SOURCE_TYPES else None

            def write(root, blobs, *, chunk_size, flags, prefetch, order):
                return write_v5(root, blobs, chunk_size=chunk_size, flags=flags, prefetch=prefetch,
                                record_order="index" if compat else "dfs", ext_blob_features=not compat,
                                order=order, tar_layer=tar_layer, count_root=not compat)
            return write
        try:
            from ..v6.writer import write_bootstrap as write_v6
        except ImportError:
            raise UnsupportedError("writing RAFS v6 bootstraps is not available in this installation") from None

        def write(root, blobs, *, chunk_size, flags, prefetch, order):
            # Contract with rafs.v6.writer: every node's inode.ino holds its index (hardlinks share the
            # first link's Inode), nlink is set, regular files' chunks are filled (4K-aligned
            # uncompressed offsets, index = position in the blob's CI array), and each Blob carries its
            # final fields (placeholder id "x"*64 for an inline bootstrap).
            return write_v6(root, blobs, chunk_size=chunk_size, flags=flags, prefetch=prefetch)
        return write

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

    def _layout(self, order):
        """(exact prefetch matches in pattern order, regular files in dump order, prefetch count).

        builder/src/core/prefetch.rs: a node matches the pattern equal to its path or to the nearest
        ancestor path; regular files (non-empty) under a pattern are dumped first, by pattern, then
        every other regular file in index order.
        """
        if not self.prefetch_patterns:
            # nothing to match, so no path to build: every regular file in index order
            return [], [node for node in order.nodes if _stat.S_ISREG(node.inode.mode)], 0
        patterns = {p: i for i, p in enumerate(self.prefetch_patterns)}
        exact: list[Node | None] = [None] * len(self.prefetch_patterns)
        prefetch_files: list[tuple[int, int, Node]] = []
        others: list[Node] = []
        paths: list[bytes] = [b"/"] * len(order.nodes)
        for position, node in enumerate(order.nodes):
            parent = order.parents[position]
            if parent:
                base = paths[parent - 1]
                paths[position] = (base if base != b"/" else b"") + b"/" + node.name
            inode = node.inode
            is_reg = _stat.S_ISREG(inode.mode)
            matched = None
            if not (is_reg and inode.size == 0):
                path = paths[position]
                probe = path
                while True:
                    if probe in patterns:
                        matched = patterns[probe]
                        if probe == path:
                            exact[matched] = node
                        break
                    if probe == b"/":
                        break
                    probe = probe.rsplit(b"/", 1)[0] or b"/"
            if is_reg:
                if matched is not None:
                    prefetch_files.append((matched, position, node))
                else:
                    others.append(node)
        prefetch_files.sort(key=lambda item: (item[0], item[1]))
        dump = [node for _, _, node in prefetch_files] + others
        return [n for n in exact if n is not None], dump, len(prefetch_files)


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
        raise InvalidArgumentError("--blob-layout mapped stores every chunk at its block address: it cannot "
                                   "be combined with --batch-size")
    return batch_size


def check_blob_id(blob_id) -> str:
    """A blob id given by the user (``--blob-id``): at most 255 characters as the reference allows, and
    usable as a file name, since the blob is stored under it in ``--blob-dir``."""
    if not isinstance(blob_id, str) or not blob_id:
        raise InvalidArgumentError("--blob-id must not be empty")
    if len(blob_id) > BLOB_ID_MAX_LENGTH:
        raise InvalidArgumentError(f"blob id is limited to length {BLOB_ID_MAX_LENGTH}")
    if "/" in blob_id or "\0" in blob_id or blob_id in (".", "..") or not blob_id.isprintable():
        raise InvalidArgumentError(f"--blob-id {blob_id!r}: a blob id names a file, so it cannot contain '/', "
                                   "control characters, or be '.' or '..'")
    return blob_id


def normalise_prefetch_patterns(patterns) -> list[bytes]:
    """Absolute paths, normalised; a pattern covered by an earlier one (itself or an ancestor) is
    dropped, relative ones are ignored (builder/src/core/prefetch.rs ``generate_patterns``)."""
    result: list[bytes] = []
    seen: set[bytes] = set()
    for raw in patterns:
        text = os.fsencode(raw).strip()
        if not text.startswith(b"/"):
            continue
        parts = [p for p in text.split(b"/") if p and p != b"."]
        path = b"/" + b"/".join(parts)
        probe, covered = path, False
        while True:
            if probe in seen:
                covered = True
                break
            if probe == b"/":
                break
            probe = probe.rsplit(b"/", 1)[0] or b"/"
        if not covered:
            seen.add(path)
            result.append(path)
    return result


class Output:
    """One output file written through a temporary file in its target directory.

    ``path`` is the final file (renamed into place on commit), or None to name it by content in
    ``directory``. The temporary file is :func:`rafs.tempfiles.mkstemp`'s (unique, never through a
    link), removed by ``discard`` when the build fails or is stopped by a signal. A symlink at
    ``path`` is followed (its target is replaced, not the link), and anything that is not a regular
    file (a FIFO, as nydus-image allows for ``--blob`` pipes, or a device such as /dev/null) is
    written directly, never replaced. An output that cannot be opened
    raises ``error`` naming it. Builds, merges and ``rafs unpack`` write through it.
    """

    def __init__(self, path, directory, *, error: type[Exception] = BuildError):
        self.path = None if path is None else os.fspath(path)
        self.directory = os.fspath(directory) if directory is not None else None
        self.tmp = None
        if self.path is not None:
            self.path = os.path.realpath(self.path)
            if _is_special(self.path):
                try:
                    self.fp = open(self.path, "wb")  # noqa: SIM115 - kept open until commit or discard
                except OSError as exc:
                    raise error(f"cannot write {self.path!r}: {exc.strerror or exc}") from None
                return
        target_dir = os.path.dirname(self.path) if self.path is not None else self.directory
        try:
            fd, self.tmp = tempfiles.mkstemp(target_dir)
        except OSError as exc:
            raise error(f"cannot write {self.path or os.path.join(target_dir, '')!r}: cannot create a file in "
                        f"{target_dir}: {exc.strerror or exc}") from None
        self.fp = os.fdopen(fd, "wb", buffering=1 << 20)

    def digest_name(self) -> str | None:
        """The sha256 hex of what was written, naming an output in a directory; None for a named path."""
        if self.path is not None or self.tmp is None:
            return None
        self.fp.flush()
        # read through our own descriptor: the name could have been swapped by someone else by now
        hasher = hashlib.sha256()
        fd, offset = self.fp.fileno(), 0
        while block := os.pread(fd, 1 << 20, offset):
            hasher.update(block)
            offset += len(block)
        return hasher.hexdigest()

    def commit(self, name: str | None) -> str | None:
        """Move the file into place: at ``path``, else as ``directory/name``; None if not kept."""
        if self.tmp is not None:
            os.fchmod(self.fp.fileno(), 0o666 & ~umask())       # the mode mkstemp withheld, on our file
        self.fp.close()
        if self.tmp is None:
            return self.path
        final = self.path
        if final is None:
            if name is None:
                os.unlink(self.tmp)
                self.tmp = None
                return None
            final = os.path.join(self.directory, name)
        os.replace(self.tmp, final)
        self.tmp = None
        return final

    def discard(self) -> None:
        """Close and remove the temporary file: nothing is left behind."""
        try:
            self.fp.close()
        except (OSError, ValueError):
            pass
        if self.tmp is not None:
            try:
                os.unlink(self.tmp)
            except FileNotFoundError:
                pass
            self.tmp = None


def _is_special(path: str) -> bool:
    """Whether ``path`` exists and is neither a regular file nor a directory (a FIFO, a device, a socket)."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return not (_stat.S_ISREG(mode) or _stat.S_ISDIR(mode))
