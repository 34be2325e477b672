"""rafs: a pure-Python SDK for RAFS, the filesystem format of Nydus container images.

``rafs.open(bootstrap, blob_dir=...)`` reads any RAFS v5/v6 bootstrap (and plain EROFS images);
``rafs.Builder(source).write(...)`` builds one. Errors derive from :class:`rafs.RafsError`.

The public face is this package's names (``__all__``) and the modules in :data:`PUBLIC_MODULES`:

* :mod:`rafs.errors` - the exception tree; :mod:`rafs.options` - every named choice (compressors,
  source types, whiteout specs, prefetch policies, backends...);
* :mod:`rafs.text` - ``printable()`` for showing names; :mod:`rafs.progress` - progress callbacks;
  :mod:`rafs.tempfiles` - temporary files and their cleanup on a signal;
* :mod:`rafs.fsspec` - the ``rafs://`` filesystem; :mod:`rafs.testing` - property-based fuzzing;
* serving: :mod:`rafs.fuse` (FUSE mounts), :mod:`rafs.serve.ondemand` (on-demand EROFS),
  :mod:`rafs.serve.api` (nydusd's HTTP API), :mod:`rafs.serve.trace` (access traces, pattern files);
* tools: :mod:`rafs.stat` (dedup statistics), :mod:`rafs.export` (block images), :mod:`rafs.cachetool`
  (the blob cache's report, verify, prune), :mod:`rafs.io.config` (nydusd configuration files).

Every other module is internal: it may move or change between releases (the ``rafs`` command itself
imports only the public face).
"""

from .errors import (BackendError, BlobNotFoundError, BuildError, DigestMismatchError, ExtractError,
                     FileTooLargeError, InternalError, InvalidArgumentError, InvalidImageError, NoSuchXattrError,
                     NotASymlinkError, ParameterError, PathError, RafsError, UnsafePathError, UnsupportedError)
# rafs.FileNotFoundError and the others named like builtins: attributes, kept out of __all__ (below)
from .errors import FileNotFoundError, IsADirectoryError, NotADirectoryError  # noqa: F401, A004

__version__ = "0.1.0"

PUBLIC_MODULES = ("rafs.errors", "rafs.options", "rafs.text", "rafs.progress", "rafs.tempfiles", "rafs.fsspec",
                  "rafs.testing", "rafs.fuse", "rafs.serve.ondemand", "rafs.serve.api", "rafs.serve.trace",
                  "rafs.stat", "rafs.export", "rafs.cachetool", "rafs.io.config")

# Imported on first use, so ``import rafs`` (and every ``rafs`` command) loads only what it needs:
# the reader side pulls in the codecs, the builder the writers. name -> (module, its name there). The
# one table of where each public name lives: a module that moves is updated here only.
_LAZY = {
    # reading
    "open": ("image", "open"), "Image": ("image", "Image"), "ImageFile": ("image", "ImageFile"),
    "Stat": ("image", "Stat"), "StatFs": ("image", "StatFs"),
    "describe_blob": ("blob.describe", "describe_blob"), "open_range_reader": ("io.source", "open_range_reader"),
    "missing_blobs": ("io.preflight", "missing_blobs"), "redact_urls": ("io.redact", "redact_urls"),
    # building and merging
    "Builder": ("builder.builder", "Builder"), "BuildResult": ("builder.report", "BuildResult"),
    "BuildTrace": ("builder.report", "Trace"), "output_document": ("builder.report", "output_document"),
    "Merger": ("builder.merge", "Merger"), "MergeResult": ("builder.report", "MergeResult"),
    "InconsistentFilesystemError": ("builder.merge", "InconsistentFilesystemError"),
    "generate_chunk_dict": ("builder.chunkdict", "generate"),
    # rewriting an image's blobs (nydus-image compact, optimize)
    "compact": ("builder.compact", "compact"), "CompactConfig": ("builder.compact", "CompactConfig"),
    "compact_output": ("builder.compact", "default_output"), "optimize": ("builder.optimize", "optimize"),
    "PrefetchFile": ("builder.optimize", "PrefetchFile"),
    "read_prefetch_files": ("builder.optimize", "read_prefetch_files"),
    "OPTIMIZED_BOOTSTRAP": ("builder.optimize", "DEFAULT_OUTPUT_BOOTSTRAP"),
    # OCI images and registries
    "Converter": ("oci.convert", "Converter"), "ConvertOptions": ("oci.convert", "ConvertOptions"),
    "ConvertResult": ("oci.convert", "ConvertResult"), "check_oci_image": ("oci.check", "check_image"),
    "OciCheckReport": ("oci.check", "CheckReport"), "is_oci_layout": ("oci.layout", "is_oci_layout"),
    "is_reference": ("oci.reference", "is_reference"), "pull_image": ("oci.registry_transfer", "pull"),
    "push_image": ("oci.registry_transfer", "push"),
    "RegistryLayout": ("oci.registry_source", "RegistryLayout"),
    "RegistryEndpoint": ("oci.registry_source", "RegistryEndpoint"),
    "same_registry_repo": ("oci.distributed", "same_registry_repo"),
    "convert_many": ("oci.distributed", "convert_many"), "read_convert_list": ("oci.distributed", "read_pairs"),
    # pushing a build to a storage backend (nydusify build --backend-push)
    "Pusher": ("io.push", "Pusher"), "PushResult": ("io.push", "PushResult"),
    "load_backend_config": ("io.push", "load_backend_config"),
    # serving
    "mount_erofs": ("serve.ondemand", "mount_erofs"),
}


def __getattr__(name):
    where = _LAZY.get(name)
    if where is None:
        raise AttributeError(f"module 'rafs' has no attribute {name!r}")
    import importlib
    value = getattr(importlib.import_module(f"{__name__}.{where[0]}"), where[1])
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))


# The path errors named like builtins stay out of ``__all__``: a star import would shadow the builtins.
__all__ = ["open", "mount_erofs", "Image", "ImageFile", "Stat", "StatFs", "Builder", "BuildResult", "BuildTrace",
           "output_document", "Merger", "MergeResult", "generate_chunk_dict", "compact", "CompactConfig",
           "compact_output", "optimize", "PrefetchFile", "read_prefetch_files", "OPTIMIZED_BOOTSTRAP", "Converter",
           "ConvertOptions",
           "ConvertResult", "check_oci_image", "OciCheckReport", "is_oci_layout", "is_reference", "pull_image",
           "RegistryLayout", "RegistryEndpoint", "same_registry_repo", "convert_many", "read_convert_list",
           "push_image", "Pusher", "PushResult", "load_backend_config", "describe_blob", "open_range_reader",
           "missing_blobs", "redact_urls", "RafsError", "InvalidImageError", "InvalidArgumentError", "ParameterError",
           "UnsupportedError",
           "BlobNotFoundError", "DigestMismatchError", "BackendError", "BuildError", "InternalError",
           "InconsistentFilesystemError", "PathError", "NotASymlinkError", "NoSuchXattrError", "UnsafePathError",
           "FileTooLargeError", "ExtractError", "PUBLIC_MODULES", "__version__"]
