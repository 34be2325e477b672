"""Opening an image: loading the bootstrap, telling its version from its bytes, wiring reader and blobs.

:func:`open` is :func:`rafs.open`. The version of each byte string is read once, from the magic
numbers: RAFS v5 at offset 0, EROFS (RAFS v6 and plain EROFS) at 1024. Bytes that no reader accepts
may be a data blob carrying its bootstrap inline (``--blob-inline-meta``; one without file data even
begins with it, magic and all): the bootstrap is taken out of the blob, its own version read, and the
blob itself serves the data unless the caller said where blobs are.
"""

from __future__ import annotations

import logging
import os

from ..errors import InvalidImageError
from ..io.blobs import BlobLocator as DirectoryLocator
from ..model import ImageReader
from .chunks import BlobMetaChunkInfos
from .image import Image
from .paths import fsdecode
from .protocols import BlobLocator, ChunkInfoSource

log = logging.getLogger("rafs.image")

_NEITHER = ("neither a RAFS v5 superblock (magic 0x52414653 at 0) nor an EROFS/RAFS v6 superblock (magic "
            "0xe0f5e1e2 at 1024)")


def detect_version(data) -> int | None:
    """5 or 6 from the magic numbers of a bootstrap's bytes, None when it carries neither."""
    from ..v5.reader import is_v5
    from ..v6.reader import is_erofs
    if is_v5(bytes(data[:8])):
        return 5
    if is_erofs(data):
        return 6
    return None


def detect_reader(data, *, blob_id_hint: str | None = None,
                  chunk_info_source: ChunkInfoSource | None = None) -> ImageReader:
    """The reader for a bootstrap's bytes: v5 by its magic at 0, v6/EROFS by the magic at 1024.

    ``chunk_info_source`` gives a v6 reader the blobs' CI arrays (for chunks its table lacks)."""
    return _make_reader(detect_version(data), data, blob_id_hint, chunk_info_source)


def _make_reader(version: int | None, data, blob_id_hint: str | None,
                 chunk_info_source: ChunkInfoSource | None) -> ImageReader:
    if version == 5:
        from ..v5.reader import V5Reader
        return V5Reader(data, blob_id_hint=blob_id_hint)
    if version == 6:
        from ..v6.reader import V6Reader
        return V6Reader(data, blob_id_hint=blob_id_hint, chunk_info_source=chunk_info_source)
    raise InvalidImageError(_NEITHER, structure="superblock", offset=0)


def open(source, *, blob_dir=None, blobs=None, storage_options: dict | None = None,  # noqa: A001
         validate: bool = False, config=None) -> Image:
    """Open a bootstrap (v5, v6, plain EROFS) or a blob with an inline bootstrap.

    ``source`` is a local path, an fsspec URL, an open binary file object or a Nydus image in a registry
    (``docker://HOST/REPO:TAG``, :mod:`rafs.oci.reference`; ``storage_options`` then holds its options
    such as ``platform``, ``insecure``, ``plain_http``, ``docker_config``). Blobs are found in
    ``blob_dir`` by blob id, or through ``blobs`` (a mapping of blob id to path/URL/file object, or a
    list in device order). ``config`` is a nydusd configuration (path, JSON text or dict) whose backend
    and cache are used for the blobs. With ``validate=True`` every chunk read is checked against its
    digest.
    """
    if isinstance(source, str) and source.startswith("docker://"):
        from ..oci.reference import open_reference    # an image in a registry: the bootstrap comes from there
        bootstrap, locator, name = open_reference(source, options=storage_options, config=config)
        return open_bootstrap(bootstrap, locator, validate=validate or locator.validate, name=name)
    locator: BlobLocator
    if config is not None:
        from ..io.config import locator_from_config
        locator = locator_from_config(config, storage_options=storage_options)
        validate = validate or locator.validate
    else:
        locator = DirectoryLocator(blob_dir=blob_dir, blobs=blobs, storage_options=storage_options)
    data = locator.load_bootstrap(source)
    name = describe_source(source)
    inline_blob_id = None
    try:
        reader = detect_reader(data, chunk_info_source=BlobMetaChunkInfos(locator))
    except InvalidImageError as not_a_bootstrap:
        # a data blob may carry its bootstrap, and may even begin with it (one without file data):
        # the magic alone cannot tell, so bytes a reader refuses are looked at as a blob
        bootstrap, inline_blob_id = _inline_bootstrap(data, name, not_a_bootstrap)
        if not (blob_dir or blobs or config):
            # the blob that carried the bootstrap also carries the data
            locator = DirectoryLocator(blobs={inline_blob_id: source}, storage_options=storage_options)
        reader = detect_reader(bootstrap, blob_id_hint=inline_blob_id,
                               chunk_info_source=BlobMetaChunkInfos(locator))
    log.debug("bootstrap %s: %d bytes%s, RAFS v%d, %d blobs, blobs from %s", name, len(data),
              " (inside a data blob)" if inline_blob_id is not None else "", reader.version, len(reader.blobs),
              locator.describe())
    return Image(reader, locator, validate=validate, name=name)


def open_bootstrap(bootstrap, locator: BlobLocator, *, validate: bool = False, name: str = "<image>") -> Image:
    """An :class:`Image` over a bootstrap's bytes already in hand, its blobs found by ``locator``."""
    reader = detect_reader(bootstrap, chunk_info_source=BlobMetaChunkInfos(locator))
    return Image(reader, locator, validate=validate, name=name)


def _inline_bootstrap(data, name: str, not_a_bootstrap: InvalidImageError) -> tuple[bytes, str]:
    """(bootstrap, blob id) of a data blob that carries its bootstrap inline; bytes that are neither a
    bootstrap nor such a blob raise ``not_a_bootstrap``, what the bootstrap reader said of them."""
    from ..blob.toc import extract_inline_bootstrap
    found = extract_inline_bootstrap(data, name=name)
    if found is None:
        raise not_a_bootstrap from None
    return found


def describe_source(source) -> str:
    """How logs and reprs name ``source``: a path or URL (without its userinfo), or a file object's name."""
    if isinstance(source, (str, os.PathLike)):
        from ..io.redact import redact_url        # a URL's userinfo is never part of the image's name
        return redact_url(os.fspath(source) if not isinstance(os.fspath(source), bytes)
                          else fsdecode(os.fspath(source)))
    return getattr(source, "name", None) or f"<{type(source).__name__}>"   # a file object's name, if any
