"""rafs: a pure-Python SDK for RAFS, the filesystem format of Nydus container images.

``rafs.open(bootstrap, blob_dir=...)`` reads any RAFS v5/v6 bootstrap (and plain EROFS images);
``rafs.Builder(source).write(...)`` builds one. Errors derive from :class:`rafs.RafsError`.
"""

from .errors import (BlobNotFoundError, BuildError, DigestMismatchError, InternalError,
                     InvalidArgumentError, InvalidImageError, RafsError, UnsupportedError)

__version__ = "0.1.0"

# Imported on first use, so ``import rafs`` (and every ``rafs`` command) loads only what it needs:
# the reader side pulls in the codecs, the builder the writers.
_LAZY = {"open": "image", "Image": "image", "ImageFile": "image", "Stat": "image", "Builder": "builder.builder",
         "mount_erofs": "serve.ondemand"}


def __getattr__(name):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'rafs' has no attribute {name!r}")
    import importlib
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))


__all__ = ["open", "mount_erofs", "Image", "ImageFile", "Stat", "Builder", "RafsError", "InvalidImageError",
           "InvalidArgumentError", "UnsupportedError", "BlobNotFoundError", "DigestMismatchError",
           "BuildError", "InternalError", "__version__"]
