"""rafs: a pure-Python SDK for RAFS, the filesystem format of Nydus container images.

``rafs.open(bootstrap, blob_dir=...)`` reads any RAFS v5/v6 bootstrap (and plain EROFS images);
``rafs.Builder(source).write(...)`` builds one. Errors derive from :class:`rafs.RafsError`.
"""

from .errors import (BlobNotFoundError, BuildError, DigestMismatchError, InternalError,
                     InvalidArgumentError, InvalidImageError, RafsError, UnsupportedError)
from .image import Image, ImageFile, Stat, open  # noqa: A004

__version__ = "0.1.0"


def __getattr__(name):
    # The builder pulls in the writers; import it only when asked for.
    if name == "Builder":
        from .build.builder import Builder
        return Builder
    raise AttributeError(f"module 'rafs' has no attribute {name!r}")


__all__ = ["open", "Image", "ImageFile", "Stat", "Builder", "RafsError", "InvalidImageError",
           "InvalidArgumentError", "UnsupportedError", "BlobNotFoundError", "DigestMismatchError",
           "BuildError", "InternalError", "__version__"]
