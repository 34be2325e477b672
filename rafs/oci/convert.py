"""OCI image to Nydus image, the local part of ``nydusify convert``.

For every manifest of the source layout (an index is converted per platform) each layer becomes a
Nydus blob layer, as nydus-snapshotter's ``LayerConvertFunc`` makes it with
``nydus-image create --type tar-rafs --blob-inline-meta --features blob-toc --whiteout-spec none
--prefetch-policy fs`` (prefetch patterns ``/`` unless given); then the layers' bootstraps are merged
(``nydus-image merge --prefetch-policy fs``, bootstraps named by blob digest so the merged blob table
names blobs by the digests the registry knows them by) and the merged bootstrap goes into a tar.gz
layer at ``image/image.boot``. The manifest lists the blobs the merged bootstrap references, in its
blob-table order, then the bootstrap layer; the config's ``rootfs.diff_ids`` and history follow
(pkg/converter/convert_unix.go ``convertManifest``, ``MergeLayers``), and the manifest gets the
annotations the acceleration-service nydus driver appends. An index left with a single manifest
becomes that manifest (``convertIndex``).

Layers are converted in parallel worker processes, each streaming its layer (a compressed layer is
spooled to the work directory, never held in memory), and a layer shared by several manifests is
converted once.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import gzip
import multiprocessing
import os
import shutil
import tarfile
import tempfile
from dataclasses import dataclass, field

from .. import __version__, tempfiles
from ..blob.toc import extract_entry, find_inline_bootstrap
from ..builder.builder import Builder
from ..builder.merge import Merger
from ..builder.tar import TarSource
from ..errors import BuildError, InvalidArgumentError, InvalidImageError, ParameterError, UnsupportedError
from ..io.source import LocalRangeReader
from ..limits import DEFAULT_CHUNK_SIZE
from ..options import FS_VERSIONS
from ..progress import Progress, Ticker
from . import spec
from .documents import MAX_INDEX_DEPTH
from .layout import BlobRef, HashingWriter, LayoutWriter, OciLayout, descriptor, digest_hex

DEFAULT_PLATFORM = "linux/amd64"       # nydusify's --platform default


@dataclass
class ConvertOptions:
    """``nydusify convert`` options that shape the result.

    ``prefetch_patterns`` are absolute paths (``/``, every file, when not given, as the snapshotter
    passes); ``platforms`` are ``os/arch[/variant]`` strings (nydusify's default ``linux/amd64``) unless
    ``all_platforms``; ``docker2oci`` is ``--oci``; ``merge_platform`` puts the Nydus manifests next to
    the source ones in one index; ``with_referrer`` sets the manifest ``subject`` to the source
    manifest. ``workers`` bounds the layer conversions run at once (processes); ``work_dir`` holds
    spools and per-layer bootstraps.
    """

    fs_version: int = 6
    compressor: str = "zstd"
    chunk_size: int = DEFAULT_CHUNK_SIZE
    aligned_chunk: bool = False
    batch_size: int = 0
    prefetch_patterns: list[str] | None = None
    platforms: list[str] = field(default_factory=lambda: [DEFAULT_PLATFORM])
    all_platforms: bool = False
    docker2oci: bool = False
    merge_platform: bool = False
    with_referrer: bool = False
    source_reference: str | None = None
    workers: int | None = None
    work_dir: str | None = None

    def check(self) -> None:
        """Refuse impossible options (:class:`~rafs.errors.InvalidArgumentError` naming the option) before any work."""
        if int(self.fs_version) not in FS_VERSIONS:
            raise InvalidArgumentError(f"invalid fs version {self.fs_version!r} (5 or 6)")
        self.fs_version = int(self.fs_version)
        from ..builder.builder import check_batch_options
        check_batch_options(self.batch_size, fs_version=self.fs_version, source_type="tar-rafs",
                            chunk_size=self.chunk_size, blob_layout="packed")
        for platform in self.platforms:
            parse_platform(platform)


@dataclass
class ConvertedImage:
    """One converted manifest: the source and target descriptors and the blobs it references."""

    source: dict
    target: dict
    blob_digests: list[str]
    bootstrap_digest: str


@dataclass
class ConvertResult:
    target: str
    index: dict
    images: list[ConvertedImage]


def parse_platform(text: str) -> tuple[str, str, str | None]:
    """``os/arch[/variant]`` (``--platform``) as (os, arch, variant or None)."""
    parts = text.strip().split("/")
    if len(parts) not in (2, 3) or not all(parts):
        raise InvalidArgumentError(f"invalid platform {text!r} (expected os/arch[/variant])")
    return parts[0], parts[1], parts[2] if len(parts) == 3 else None


def platform_matches(platform: dict | None, wanted: list[str]) -> bool:
    """containerd's platform matching, simplified: os and architecture equal, variant when asked."""
    if not platform:
        return True                      # the converter keeps manifests that carry no platform
    for text in wanted:
        os_name, arch, variant = parse_platform(text)
        if platform.get("os") != os_name or platform.get("architecture") != arch:
            continue
        if variant is None or platform.get("variant", "v8" if arch == "arm64" else None) == variant:
            return True
    return False


# -- one layer (runs in a worker process) -----------------------------------------------------------------

@dataclass(frozen=True)
class LayerJob:
    source_digest: str
    source: BlobRef
    blob_dir: str
    work_dir: str
    fs_version: int
    compressor: str
    chunk_size: int
    aligned_chunk: bool
    prefetch_patterns: tuple[str, ...]
    threads: int
    batch_size: int = 0
    push_to: object = None          # a RegistryEndpoint the worker pushes the converted blob to


@dataclass(frozen=True)
class LayerResult:
    source_digest: str
    digest: str
    size: int
    bootstrap: str


def convert_layer(job: LayerJob) -> LayerResult:
    """One OCI layer to one Nydus blob (bootstrap inline) in ``job.blob_dir``, named by its sha256;
    the layer's bootstrap is also left in ``job.work_dir`` under the blob's hex digest."""
    fd, tmp = tempfiles.mkstemp(job.blob_dir)
    try:
        with os.fdopen(fd, "wb", buffering=1 << 20) as out, job.source.open() as layer, \
                HashingWriter(out, background=True) as hashing:
            builder = Builder(TarSource(layer, spool_dir=job.work_dir), source_type="tar-rafs",
                              fs_version=job.fs_version, compressor=job.compressor, chunk_size=job.chunk_size,
                              aligned_chunk=job.aligned_chunk, whiteout_spec="none", blob_inline_meta=True,
                              features=("blob-toc",) if job.fs_version == 6 else (), prefetch_policy="fs",
                              prefetch_patterns=list(job.prefetch_patterns), workers=job.threads,
                              batch_size=job.batch_size)
            builder.write_fp(hashing)
            digest, size = hashing.digest, hashing.size
        final = os.path.join(job.blob_dir, digest_hex(digest))
        os.replace(tmp, final)
    except BaseException:
        tempfiles.remove(tmp)
        raise
    if job.push_to is not None:
        from .registry_source import push_layer_blob
        push_layer_blob(job.push_to, final, digest, size)
    reader = LocalRangeReader(final)
    try:
        entry = find_inline_bootstrap(reader)
        if entry is None:
            raise BuildError(f"layer {job.source_digest}: converted blob carries no bootstrap")
        bootstrap = extract_entry(reader, entry)
    finally:
        reader.close()
    boot_path = os.path.join(job.work_dir, digest_hex(digest))
    with open(boot_path, "wb") as f:
        f.write(bootstrap)
    return LayerResult(job.source_digest, digest, size, boot_path)


# -- the image ----------------------------------------------------------------------------------------------

class Converter:
    """Convert the OCI image layout ``source`` into a Nydus image in the layout ``target`` (a
    directory, or a tar archive when it ends in ``.tar``).

    ``source`` may also be an opened layout (a :class:`~rafs.oci.registry_source.RegistryLayout`
    reads a registry image in place). ``push_to`` (a
    :class:`~rafs.oci.registry_source.RegistryEndpoint`) has each converted blob pushed by the worker
    that made it; ``layer_runner(jobs, ticker)`` replaces the local worker processes (for example
    with a Dask cluster, :mod:`rafs.oci.distributed`) and returns a :class:`LayerResult` per source
    digest, bootstraps in the work directory."""

    def __init__(self, source, target, options: ConvertOptions | None = None, *, push_to=None,
                 layer_runner=None):
        self.options = options or ConvertOptions()
        self.options.check()
        self.source = source if isinstance(source, OciLayout) else OciLayout(source)
        self.push_to = push_to
        self.layer_runner = layer_runner
        self.target_path = os.fspath(target)
        if os.path.abspath(self.target_path) == os.path.abspath(self.source.path):
            raise InvalidArgumentError("the target layout must differ from the source")
        self.patterns = tuple(self.options.prefetch_patterns or ["/"])
        self._progress: Progress | None = None          # set by run()

    def run(self, *, progress: Progress | None = None) -> ConvertResult:
        """Convert; ``progress(done, total)`` (:mod:`rafs.progress`) counts the bytes of source layers
        converted, layer by layer."""
        self._progress = progress
        writer = LayoutWriter(self.target_path)
        work = tempfile.mkdtemp(prefix="rafs-convert-", dir=self.options.work_dir)
        try:
            plan = [(entry, self._plan(entry)) for entry in self.source.manifests()]
            layers = self._convert_layers(writer, work, plan)
            images: list[ConvertedImage] = []
            manifests = [self._finish(writer, work, entry, tree, layers, images) for entry, tree in plan]
            index = {"schemaVersion": 2, "mediaType": spec.OCI_INDEX, "manifests": manifests}
            for key in ("annotations",):
                if self.source.index.get(key):
                    index[key] = self.source.index[key]
            target = writer.commit(index)
        except BaseException:
            writer.discard()
            raise
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return ConvertResult(target=target, index=index, images=images)

    # planning: which manifests are converted, which layers they need

    def _plan(self, entry: dict, depth: int = 1):
        media_type = entry.get("mediaType")
        if media_type in spec.INDEX_TYPES:
            if depth >= MAX_INDEX_DEPTH:
                raise InvalidImageError(f"indexes nested deeper than {MAX_INDEX_DEPTH}", structure="OCI index")
            index = self.source.read_index(entry)
            children = []
            for child in index["manifests"]:
                wanted = self.options.all_platforms or platform_matches(child.get("platform"), self.options.platforms)
                if wanted:
                    children.append((child, self._plan(child, depth + 1)))
            if not children:
                raise ParameterError("no manifest of {digest} matches the platforms {platforms} (use "
                                     "{all_platforms}?)", digest=entry.get("digest"),
                                     platforms=", ".join(self.options.platforms))
            return ("index", index, children)
        if media_type in spec.MANIFEST_TYPES:
            manifest = self.source.read_manifest(entry)
            layers = manifest["layers"]
            if not layers:
                raise InvalidImageError(f"manifest {entry.get('digest')} has no layers", structure="OCI manifest")
            for layer in layers:
                annotations = layer.get("annotations") or {}
                if spec.LAYER_NYDUS_BLOB in annotations or spec.LAYER_NYDUS_BOOTSTRAP in annotations:
                    raise InvalidArgumentError(f"{entry.get('digest')} is already a Nydus image")
                if layer.get("mediaType") not in spec.LAYER_TYPES:
                    raise UnsupportedError(f"layer {layer.get('digest')}: media type {layer.get('mediaType')!r} "
                                           "is not an image layer")
            return ("manifest", manifest, None)
        raise UnsupportedError(f"index.json entry of media type {media_type!r} cannot be converted")

    def _layer_jobs(self, plan, blob_dir: str, work: str, jobs: dict) -> None:
        kind, document, children = plan
        if kind == "index":
            for _, child in children:
                self._layer_jobs(child, blob_dir, work, jobs)
            return
        for layer in document["layers"]:
            digest = layer["digest"]
            if digest not in jobs:
                jobs[digest] = LayerJob(digest, self.source.blob(layer), blob_dir, work, self.options.fs_version,
                                        self.options.compressor, self.options.chunk_size,
                                        self.options.aligned_chunk, self.patterns, 1, self.options.batch_size,
                                        self.push_to)

    def _convert_layers(self, writer: LayoutWriter, work: str, plan) -> dict[str, LayerResult]:
        jobs: dict[str, LayerJob] = {}
        for _, tree in plan:
            self._layer_jobs(tree, writer.blob_dir, work, jobs)
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        workers = max(1, min(self.options.workers or cpus, len(jobs)))
        # every worker may use every CPU for compression: layers differ in size, and a big one
        # finishing last should not be left with one thread; biggest first shortens the tail
        jobs = {d: _with_threads(job, cpus) for d, job in
                sorted(jobs.items(), key=lambda item: -item[1].source.size)}
        ticker = Ticker(self._progress, sum(job.source.size for job in jobs.values())).start()
        if self.layer_runner is not None:
            results = self.layer_runner(jobs, ticker, work)
            ticker.finish()
            return results
        if workers == 1:
            results = {}
            for d, job in jobs.items():
                results[d] = convert_layer(job)
                ticker.advance(job.source.size)
            ticker.finish()
            return results
        context = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods()
                                              else "spawn")
        with concurrent.futures.ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
            futures = {d: pool.submit(convert_layer, job) for d, job in jobs.items()}
            try:
                sizes = {future: jobs[d].source.size for d, future in futures.items()}
                for future in concurrent.futures.as_completed(futures.values()):
                    future.result()
                    ticker.advance(sizes[future])
                ticker.finish()
                return {d: future.result() for d, future in futures.items()}
            except BaseException as exc:
                for future in futures.values():
                    future.cancel()
                if isinstance(exc, KeyboardInterrupt):
                    # stopped by a signal: end the layers under way rather than wait for them (their
                    # temporary files lie inside the layout that is about to be discarded)
                    for process in list((getattr(pool, "_processes", None) or {}).values()):
                        process.terminate()
                raise

    # assembling the new documents

    def _finish(self, writer, work, entry, plan, layers, images) -> dict:
        kind, document, children = plan
        if kind == "manifest":
            return self._manifest(writer, work, entry, document, layers, images)
        converted = [self._finish(writer, work, child, sub, layers, images) for child, sub in children]
        if self.options.merge_platform:
            originals = [self._copy_source(writer, child, sub) for child, sub in children]
            for desc in converted:
                desc["platform"] = dict(desc.get("platform") or {})
                desc["platform"]["os.features"] = [spec.NYDUS_OS_FEATURE]
            converted = originals + converted
        elif len(converted) == 1:
            return converted[0]           # convertIndex: a single manifest stands for the image
        index = dict(document)
        index["manifests"] = converted
        if self.options.docker2oci and index.get("mediaType") == spec.DOCKER_MANIFEST_LIST:
            index["mediaType"] = spec.OCI_INDEX
        digest, size = writer.add_json(index)
        media_type = spec.OCI_INDEX if self.options.docker2oci else entry.get("mediaType", spec.OCI_INDEX)
        return _replace_desc(entry, media_type, digest, size)

    def _copy_source(self, writer: LayoutWriter, entry: dict, plan) -> dict:
        """Copy a source manifest, its config and layers as they are (for --merge-platform)."""
        _, manifest, _ = plan
        for desc in [manifest.get("config")] + manifest["layers"]:
            writer.copy_blob(self.source.blob(desc), desc["digest"])
        writer.copy_blob(self.source.blob(entry), entry["digest"])
        return dict(entry)

    def _manifest(self, writer: LayoutWriter, work: str, entry: dict, manifest: dict, layers, images) -> dict:
        opts = self.options
        docker = entry.get("mediaType") == spec.DOCKER_MANIFEST and not opts.docker2oci
        results = [layers[layer["digest"]] for layer in manifest["layers"]]
        merged_path = os.path.join(work, f"merged-{digest_hex(entry['digest'])}.boot")
        merge = Merger([r.bootstrap for r in results], prefetch_policy="fs",
                       prefetch_patterns=list(self.patterns)).write(bootstrap=merged_path)
        sizes = {digest_hex(r.digest): r.size for r in results}
        blob_descs = [descriptor(spec.NYDUS_BLOB, "sha256:" + blob_id, sizes[blob_id],
                                 annotations={spec.LAYER_NYDUS_BLOB: "true"}) for blob_id in merge.blob_ids]
        boot_digest, boot_size, boot_diff_id = _bootstrap_layer(writer, merged_path)
        boot_type = spec.DOCKER_LAYER_GZIP if docker else spec.OCI_LAYER_GZIP
        boot_desc = descriptor(boot_type, boot_digest, boot_size,
                               annotations={spec.LAYER_NYDUS_BOOTSTRAP: "true",
                                            spec.LAYER_FS_VERSION: str(opts.fs_version)})

        config = self.source.read_config(manifest["config"])
        rootfs = dict(config.get("rootfs") or {"type": "layers"})
        rootfs["diff_ids"] = [d["digest"] for d in blob_descs] + [boot_diff_id]
        config["rootfs"] = rootfs
        config["history"] = list(config.get("history") or []) + [dict(spec.BOOTSTRAP_HISTORY)]
        config_digest, config_size = writer.add_json(config)
        config_type = manifest["config"].get("mediaType", spec.OCI_CONFIG)
        if opts.docker2oci and config_type == spec.DOCKER_CONFIG:
            config_type = spec.OCI_CONFIG
        if opts.merge_platform:
            config_type = spec.NYDUS_CONFIG
        config_desc = _replace_desc(manifest["config"], config_type, config_digest, config_size)

        target = {"schemaVersion": manifest.get("schemaVersion", 2)}
        media_type = manifest.get("mediaType")
        if opts.docker2oci and media_type == spec.DOCKER_MANIFEST:
            media_type = spec.OCI_MANIFEST
        if media_type:
            target["mediaType"] = media_type
        if manifest.get("artifactType"):
            target["artifactType"] = manifest["artifactType"]
        target["config"] = config_desc
        target["layers"] = blob_descs + [boot_desc]
        if opts.with_referrer:
            subject = {k: v for k, v in entry.items() if k != "platform"}
            target["subject"] = subject
        annotations = dict(manifest.get("annotations") or {})
        annotations.update({
            spec.MANIFEST_SOURCE_DIGEST: entry["digest"],
            spec.MANIFEST_SOURCE_REFERENCE: opts.source_reference or _reference(entry, self.source.path),
            spec.MANIFEST_FS_VERSION: str(opts.fs_version),
            spec.MANIFEST_BUILDER_VERSION: f"rafs {__version__}",
        })
        target["annotations"] = dict(sorted(annotations.items()))
        digest, size = writer.add_json(target)
        manifest_type = spec.OCI_MANIFEST if opts.docker2oci or not docker else entry.get("mediaType")
        desc = _replace_desc(entry, manifest_type, digest, size)
        images.append(ConvertedImage(source=entry, target=desc, blob_digests=[d["digest"] for d in blob_descs],
                                     bootstrap_digest=boot_digest))
        return desc


def _with_threads(job: LayerJob, threads: int) -> LayerJob:
    return dataclasses.replace(job, threads=threads)


def _replace_desc(old: dict, media_type: str, digest: str, size: int) -> dict:
    """The descriptor ``old`` for new content (``writeJSON`` keeps everything else of it)."""
    rest = {k: v for k, v in old.items() if k not in ("mediaType", "digest", "size", "annotations", "platform",
                                                      "artifactType")}
    desc = descriptor(media_type, digest, size, annotations=old.get("annotations"), platform=old.get("platform"),
                      artifact_type=old.get("artifactType"))
    return desc | rest


def _reference(entry: dict, source_path: str) -> str:
    annotations = entry.get("annotations") or {}
    return annotations.get(spec.CONTAINERD_IMAGE_NAME) or annotations.get(spec.REF_NAME) or source_path


def bootstrap_tar(bootstrap_path: str, out) -> None:
    """The bootstrap layer's tar (nydus-snapshotter ``packToTar``): a directory ``image`` (0755)
    and ``image/image.boot`` (0444), owner 0, mtime 0."""
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.USTAR_FORMAT) as tar:
        directory = tarfile.TarInfo(spec.BOOTSTRAP_DIR_IN_LAYER)
        directory.type, directory.mode, directory.mtime = tarfile.DIRTYPE, 0o755, 0
        tar.addfile(directory)
        info = tarfile.TarInfo(spec.BOOTSTRAP_NAME_IN_LAYER)
        info.mode, info.mtime, info.size = 0o444, 0, os.path.getsize(bootstrap_path)
        with open(bootstrap_path, "rb") as f:
            tar.addfile(info, f)


def _bootstrap_layer(writer: LayoutWriter, bootstrap_path: str) -> tuple[str, int, str]:
    """Write the tar.gz bootstrap layer; (digest, size, diff id = digest of the uncompressed tar)."""
    tmp = writer.temp_file()
    try:
        with open(tmp, "wb") as raw:
            compressed = HashingWriter(raw)
            with gzip.GzipFile(fileobj=compressed, mode="wb", mtime=0) as gz:
                plain = HashingWriter(gz)
                bootstrap_tar(bootstrap_path, plain)
        writer.add_file(tmp, compressed.digest)
    except BaseException:
        tempfiles.remove(tmp)
        raise
    return compressed.digest, compressed.size, plain.digest


def convert(source, target, *, progress: Progress | None = None, **options) -> ConvertResult:
    """Convert the OCI image layout ``source`` to a Nydus image layout ``target``; keyword options
    are those of :class:`ConvertOptions`, ``progress`` that of :meth:`Converter.run`."""
    return Converter(source, target, ConvertOptions(**options)).run(progress=progress)
