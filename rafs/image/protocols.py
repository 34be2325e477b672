"""The interfaces an :class:`~rafs.image.Image` is assembled from, declared once.

* :class:`rafs.model.ImageReader` (an abstract base class): what a bootstrap reader answers; the v5,
  v6 and plain EROFS readers implement it.
* :class:`BlobLocator`: finds the blobs an image refers to and hands out their chunk sources
  (:class:`rafs.io.blobs.BlobLocator` and the nydusd-configured :class:`rafs.io.config.ConfigLocator`).
* :class:`ChunkSource`: fetches, decodes and verifies the chunks of one blob
  (:class:`rafs.blob.reader.ChunkReader`, :class:`rafs.io.fetch.ChunkFetcher`, and
  :class:`rafs.v6.zdata.ZDataReader` for compressed EROFS data inside the image).
* :class:`ChunkInfoSource`: the blob-meta chunk-info (CI) array of a blob, for the v6 reader to resolve
  chunks its chunk table does not hold (given to it when it is made: ``chunk_info_source=``); declared
  below the readers (in :mod:`rafs.model`, beside ``ImageReader``) and named here with the others.

These are :class:`typing.Protocol` s: implementations need not inherit from them, and this module
imports nothing that does I/O.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from ..model import Blob, Chunk, ChunkInfoSource, ImageReader

if TYPE_CHECKING:                                  # pragma: no cover - names for annotations only
    from ..io.config import NydusdConfig

__all__ = ["BlobLocator", "ChunkInfoSource", "ChunkSource", "ImageReader"]


class ChunkSource(Protocol):
    """Reads the chunks of one blob, or data kept in the image itself."""

    #: where the stored bytes come from (a :class:`rafs.io.source.RangeReader`); None when the data
    #: is decoded from the image's own bytes and no backend is ever asked
    source: object

    def read(self, chunk: Chunk, *, path: str | None = None) -> bytes:
        """The uncompressed bytes of ``chunk`` (``path`` names the file in errors)."""

    def read_many(self, chunks: list[Chunk], *, path: str | None = None) -> list[bytes]:
        """:meth:`read` of each chunk, adjacent ones fetched together where the source can."""

    def is_cached(self, chunk: Chunk) -> bool:
        """Whether ``chunk`` can be read without asking a remote backend (it is in a local cache)."""

    def fetch_raw(self, chunk: Chunk) -> bytes:
        """The stored (possibly compressed) bytes of ``chunk``."""

    def decode(self, chunk: Chunk, raw: bytes, *, path: str | None = None) -> bytes:
        """``raw`` (from :meth:`fetch_raw`) decrypted and decompressed."""

    def verify(self, chunk: Chunk, data: bytes, *, path: str | None = None) -> None:
        """Raise :class:`~rafs.errors.DigestMismatchError` unless ``data`` is what ``chunk`` records."""


class BlobLocator(Protocol):
    """Resolves the blobs of an image's blob table to their readers."""

    #: whether every chunk read is checked against its digest (a configuration may ask for it)
    validate: bool
    #: the nydusd configuration the locator was made from (its prefetch settings), or None
    config: NydusdConfig | None

    def load_bootstrap(self, source) -> bytes:
        """The bytes of the bootstrap at ``source`` (path, URL, file object), read with the locator's
        options and credentials."""

    def open(self, blob_id: str, index: int):
        """The :class:`rafs.io.source.RangeReader` of blob table entry ``index``."""

    def chunk_reader(self, blob: Blob, *, validate: bool = False) -> ChunkSource:
        """The chunk source of ``blob`` (made once per blob)."""

    def describe(self) -> str:
        """Where blobs are looked for, in words (for logs and errors; no secrets)."""

    def close(self) -> None:
        """Release every blob handle."""
