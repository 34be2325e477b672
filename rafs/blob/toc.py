"""A blob's table of contents (ToC), its inline bootstrap, and its blob id (storage/src/meta/toc.rs).

The ToC is the blob's last section: 128-byte entries followed by a tar header named ``rafs.blob.toc``.
Its sha256 (entries and header) and size are recorded in the bootstrap's blob table
(``blob_toc_digest``, ``blob_toc_size``). Entries locate the other sections (``image.blob``,
``blob.meta``, ``blob.meta.header``, ``blob.digest``, ``image.boot``), how they are compressed and
the sha256 of their uncompressed content.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

from .._records import FastRecord
from ..errors import DigestMismatchError, InvalidArgumentError, InvalidImageError
from ..limits import MAX_BOOTSTRAP_SIZE
from ..model import MAX_CHUNKS_PER_BLOB
from . import codecs, layout
from ..ranges import known_size, read_checked, reads_range
from .ids import is_sha256_id
from .tar_header import build_tar_header, parse_tar_header, walk_sections

TOC_ENTRY = FastRecord(layout.TocEntry, "ToC entry")
_ZERO_DIGEST = bytes(32)
# Largest uncompressed size an entry may declare, by name: the format's own limits (a bootstrap is at
# most RAFS_MAX_METADATA_SIZE, a digest array 32 bytes per chunk). Unknown names get the bootstrap's.
_MAX_ENTRY_SIZE = {
    layout.TOC_ENTRY_BOOTSTRAP: MAX_BOOTSTRAP_SIZE,
    layout.TOC_ENTRY_BLOB_DIGEST: layout.CHUNK_DIGEST_SIZE * MAX_CHUNKS_PER_BLOB,
    layout.TOC_ENTRY_BLOB_META_HEADER: layout.BLOB_CCT_HEADER_SIZE,
}
_HASH_BLOCK = 4 << 20


@dataclass(frozen=True, slots=True)
class TocEntry:
    """One ToC entry. ``reserved1``/``reserved2`` keep whatever the builder left there, so that
    :meth:`pack` reproduces the entry byte for byte."""

    name: str
    flags: int
    uncompressed_digest: bytes
    compressed_offset: int
    compressed_size: int
    uncompressed_size: int
    reserved1: int = 0
    reserved2: bytes = bytes(48)

    @classmethod
    def new(cls, name: str, compressor: str, uncompressed_digest: bytes, compressed_offset: int,
            compressed_size: int, uncompressed_size: int) -> "TocEntry":
        """An entry as the builder adds it (``TocEntryList::add``)."""
        if len(name.encode()) > layout.TOC_ENTRY_NAME_SIZE:
            raise InvalidArgumentError(f"ToC entry name {name!r} is longer than 16 bytes")
        if compressor not in layout.TOC_FLAGS_BY_COMPRESSOR:
            raise InvalidArgumentError(f"ToC entries cannot be compressed with {compressor!r}")
        if len(uncompressed_digest) != 32:
            raise InvalidArgumentError("a ToC entry digest is a 32-byte sha256")
        return cls(name, layout.TOC_FLAGS_BY_COMPRESSOR[compressor], bytes(uncompressed_digest),
                   compressed_offset, compressed_size, uncompressed_size)

    @classmethod
    def unpack_from(cls, data, offset: int = 0) -> "TocEntry":
        record = TOC_ENTRY.unpack_from(data, offset)
        raw_name = record.name.rstrip(b"\0")
        try:
            name = raw_name.decode()
        except UnicodeDecodeError:
            raise InvalidImageError(f"entry name {raw_name!r} is not UTF-8", structure="ToC entry",
                                    offset=offset) from None
        return cls(name, record.flags, record.uncompressed_digest, record.compressed_offset,
                   record.compressed_size, record.uncompressed_size, record.reserved1, record.reserved2)

    def pack(self) -> bytes:
        return TOC_ENTRY.pack(self.flags, self.reserved1, self.name.encode().ljust(16, b"\0"),
                              self.uncompressed_digest, self.compressed_offset, self.compressed_size,
                              self.uncompressed_size, self.reserved2)

    @property
    def compressor(self) -> str:
        """The compressor of the stored bytes; InvalidImageError for flags the reference refuses."""
        if self.flags & ~layout.TOC_ENTRY_COMPRESSION_MASK:
            raise InvalidImageError(f"entry {self.name!r} has unknown flags {self.flags:#x}",
                                    structure="ToC entry")
        name = layout.TOC_COMPRESSOR_BY_FLAGS.get(self.flags & layout.TOC_ENTRY_COMPRESSION_MASK)
        if name is None:
            raise InvalidImageError(f"entry {self.name!r} names no single compressor (flags {self.flags:#x})",
                                    structure="ToC entry")
        return name

    def as_dict(self) -> dict:
        try:
            compressor = self.compressor
        except InvalidImageError:
            compressor = None
        return {"name": self.name, "flags": self.flags, "compressor": compressor,
                "compressed_offset": self.compressed_offset, "compressed_size": self.compressed_size,
                "uncompressed_size": self.uncompressed_size,
                "uncompressed_digest": self.uncompressed_digest.hex()}


class Toc(list):
    """The list of :class:`TocEntry` read from a blob, with where it was and what it hashes to."""

    def __init__(self, entries, *, offset: int, size: int, digest: bytes):
        super().__init__(entries)
        self.offset = offset      # where the entries start in the blob
        self.size = size          # entries + tar header: the blob table's blob_toc_size
        self.digest = digest      # sha256(entries + tar header): the blob table's blob_toc_digest

    def get(self, name: str) -> TocEntry | None:
        for entry in self:
            if entry.name == name:
                return entry
        return None


def toc_bytes(entries) -> bytes:
    """The ToC section as the builder writes it: the packed entries, then their tar header."""
    body = b"".join(entry.pack() for entry in entries)
    return body + build_tar_header(layout.TOC_ENTRY_BLOB_TOC, len(body))


def parse_toc(buf, *, digest: bytes | None = None, base_offset: int = 0) -> Toc:
    """Decode a ToC from ``buf``, a tail of the blob that ends with the ``rafs.blob.toc`` header.

    ``base_offset`` is where ``buf`` starts in the blob. With a non-zero ``digest`` the sha256 of the
    entries and header must match it (DigestMismatchError otherwise).
    """
    if len(buf) < layout.TAR_BLOCK_SIZE:
        raise InvalidImageError(f"ToC area of {len(buf)} bytes is smaller than its tar header",
                                structure="blob ToC", offset=base_offset)
    header_at = len(buf) - layout.TAR_BLOCK_SIZE
    header = parse_tar_header(buf, header_at)
    if header.name != layout.TOC_ENTRY_BLOB_TOC:
        raise InvalidImageError(f"last tar header names {header.name!r}, not {layout.TOC_ENTRY_BLOB_TOC!r}",
                                structure="blob ToC", offset=base_offset + header_at)
    if header.size > header_at or header.size % layout.TOC_ENTRY_SIZE:
        raise InvalidImageError(f"ToC of {header.size} bytes is not a whole number of 128-byte entries "
                                f"within the {header_at} bytes before its header", structure="blob ToC",
                                offset=base_offset + header_at)
    start = header_at - header.size
    actual = hashlib.sha256(memoryview(buf)[start:]).digest()
    if digest is not None and bytes(digest) != _ZERO_DIGEST and actual != bytes(digest):
        raise DigestMismatchError(f"ToC sha256 {actual.hex()} != recorded {bytes(digest).hex()}",
                                  expected=bytes(digest), actual=actual, structure="blob ToC",
                                  offset=base_offset + start)
    entries = [TocEntry.unpack_from(buf, pos) for pos in range(start, header_at, layout.TOC_ENTRY_SIZE)]
    return Toc(entries, offset=base_offset + start, size=header.size + layout.TAR_BLOCK_SIZE, digest=actual)


@reads_range
def read_toc(source, *, digest: bytes | None = None, size: int | None = None,
             offset: int | None = None) -> Toc:
    """Read the ToC at the tail of a blob.

    Without ``size`` the last 4 KiB are searched (the reference's auto-detection). With ``size`` (the
    blob table's ``blob_toc_size``: 512..64 KiB, a multiple of 128) exactly that many bytes are read,
    ending at the end of the blob or starting at ``offset``. A non-zero ``digest`` (``blob_toc_digest``)
    is verified. Any fault is an InvalidImageError.
    """
    blob_size = known_size(source)
    if size is None:
        if offset is not None:
            raise InvalidArgumentError("a ToC offset needs its size")
        size = layout.TOC_AUTO_DETECT_SIZE if blob_size > layout.TOC_AUTO_DETECT_SIZE else blob_size & ~0x7F
    elif not layout.TOC_MIN_SIZE <= size <= layout.TOC_MAX_SIZE or size % layout.TOC_ENTRY_SIZE:
        raise InvalidImageError(f"ToC size {size} is not a multiple of 128 in 512..65536", structure="blob ToC")
    if offset is None:
        offset = blob_size - size
    buf = read_checked(source, offset, size, "blob ToC")
    return parse_toc(buf, digest=digest, base_offset=offset)


@reads_range
def extract_entry(source, entry: TocEntry, *, max_size: int | None = None) -> bytes:
    """The uncompressed content of ``entry``, size- and sha256-checked (a zero digest is not checked,
    as in the reference). Decompression is bounded by the declared size, itself bounded by the format's
    limit for the entry (or ``max_size``)."""
    what = f"ToC entry {entry.name!r}"
    compressor = entry.compressor
    limit = max_size if max_size is not None else _MAX_ENTRY_SIZE.get(entry.name, MAX_BOOTSTRAP_SIZE)
    if entry.uncompressed_size > limit:
        raise InvalidImageError(f"declares {entry.uncompressed_size} bytes, over the {limit}-byte limit",
                                structure=what)
    if compressor == "none" and entry.compressed_size != entry.uncompressed_size:
        raise InvalidImageError(f"stored uncompressed but sizes differ ({entry.compressed_size} != "
                                f"{entry.uncompressed_size})", structure=what)
    raw = read_checked(source, entry.compressed_offset, entry.compressed_size, what)
    data = codecs.decompress(compressor, raw, entry.uncompressed_size, what=what, offset=entry.compressed_offset)
    actual = hashlib.sha256(data).digest()
    if entry.uncompressed_digest != _ZERO_DIGEST and actual != entry.uncompressed_digest:
        raise DigestMismatchError(f"sha256 {actual.hex()} != recorded {entry.uncompressed_digest.hex()}",
                                  expected=entry.uncompressed_digest, actual=actual, structure=what,
                                  offset=entry.compressed_offset)
    return data


@reads_range
def find_inline_bootstrap(source) -> TocEntry | None:
    """The ``image.boot`` entry of a blob: from its ToC, or (blobs built with ``--blob-inline-meta``
    without blob-toc) from a trailing ``image.boot`` tar header. None when the blob has neither."""
    blob_size = known_size(source)
    try:
        toc = read_toc(source)
    except InvalidImageError:
        toc = None
    if toc is not None:
        return toc.get(layout.TOC_ENTRY_BOOTSTRAP)
    if blob_size < layout.TAR_BLOCK_SIZE:
        return None
    header_at = blob_size - layout.TAR_BLOCK_SIZE
    try:
        header = parse_tar_header(source.read_range(header_at, layout.TAR_BLOCK_SIZE))
    except InvalidImageError:
        return None
    if header.name != layout.TOC_ENTRY_BOOTSTRAP:
        return None
    if header.size > header_at:
        raise InvalidImageError(f"image.boot of {header.size} bytes would start before the blob",
                                structure="tar header", offset=header_at)
    return TocEntry.new(layout.TOC_ENTRY_BOOTSTRAP, "none", _ZERO_DIGEST, header_at - header.size,
                        header.size, header.size)


@reads_range
def extract_inline_bootstrap(data, name: str | None = None) -> tuple[bytes, str] | None:
    """(bootstrap bytes, blob id) of a data blob carrying its bootstrap, or None if ``data`` is not one.

    ``data`` is the whole blob (bytes, an mmap or a RangeReader); ``name`` its file name or URL. The
    blob id is the file name when that is 64 hex digits (what nydusd does: it knows blobs by id),
    otherwise it is computed as the builder does (:func:`compute_blob_id`). A blob that announces a
    bootstrap which then fails to decompress or verify is an InvalidImageError, not None.
    """
    entry = find_inline_bootstrap(data)
    if entry is None:
        return None
    bootstrap = extract_entry(data, entry)
    base = os.path.basename(str(name).rstrip("/")) if name else ""
    blob_id = base if is_sha256_id(base) else compute_blob_id(data)
    return bootstrap, blob_id


@reads_range
def compute_blob_id(source) -> str:
    """The blob id nydus-image gives a native blob: sha256 of every byte it wrote through its hasher,
    which is the whole file except the chunk-digest array (the ``blob.digest`` payload; its tar
    header is hashed). Without such a section this is simply sha256 of the file."""
    blob_size = known_size(source)
    skipped = sorted((s.offset, s.end) for s in walk_sections(source) if s.name == layout.TOC_ENTRY_BLOB_DIGEST)
    hasher = hashlib.sha256()
    pos = 0
    for start, end in skipped + [(blob_size, blob_size)]:
        while pos < start:
            step = min(_HASH_BLOCK, start - pos)
            hasher.update(source.read_range(pos, step))
            pos += step
        pos = max(pos, end)
    return hasher.hexdigest()
