"""Reading images: :func:`open` and the :class:`Image` it returns, one job per module.

* :mod:`~rafs.image.opening`: loading a bootstrap, telling its version from its bytes (a data blob
  with an inline bootstrap included), wiring the reader and the blob locator: :func:`open`.
* :mod:`~rafs.image.image`: :class:`Image`, the os-like path API over a reader.
* :mod:`~rafs.image.paths`: ``str``/``bytes`` paths, resolving them, and the checks of names from an image.
* :mod:`~rafs.image.walks`: listing and walking the tree (``scandir``'s :class:`DirEntry`).
* :mod:`~rafs.image.stat`: :class:`Stat` and :class:`StatFs`, what ``os.stat``/``os.statvfs`` report.
* :mod:`~rafs.image.chunks`: the chunk store, reading chunks from the blobs a locator finds.
* :mod:`~rafs.image.protocols`: the interfaces those parts meet at (blob locator, chunk source, CI source).
* :mod:`~rafs.image.file`: :class:`ImageFile`, a regular file as a seekable binary file.
* :mod:`~rafs.image.check`: ``Image.check``, every fault found in an image.
* :mod:`~rafs.image.extract`, :mod:`~rafs.image.unpack`, :mod:`~rafs.image.inspect`: writing the tree
  to a directory, to a tar stream, and summarising an image.
"""

from __future__ import annotations

from .file import MAX_READ_SIZE, ImageFile
from .image import Image
from .opening import detect_reader, detect_version, open  # noqa: A004 - rafs.open, the API's entry
from .paths import MAX_SYMLINK_FOLLOWS, fsdecode, fsencode
from .stat import Stat, StatFs
from .walks import DirEntry

__all__ = ["open", "detect_reader", "detect_version", "Image", "ImageFile", "DirEntry", "Stat", "StatFs",
           "fsencode", "fsdecode", "MAX_READ_SIZE", "MAX_SYMLINK_FOLLOWS"]
