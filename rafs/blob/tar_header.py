"""The 512-byte GNU tar headers nydus-image writes *after* each section of a data blob.

The builder (builder/src/core/context.rs ``ArtifactWriter::write_tar_header``) uses the Rust ``tar``
crate's ``Header::new_gnu``, sets the name, type ``0`` and size, and the checksum so that Go's tar reader
accepts it. Because the header follows its payload, a blob reads as a tar archive walked from the end:
the last header names the last section, its size says where that section starts, and the header before
it ends there. :func:`walk_sections` does that walk.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from .._records import build, parse
from ..errors import InvalidArgumentError, InvalidImageError
from . import layout

_MAX_OCTAL_SIZE = 8 ** 11                 # 11 octal digits; bigger sizes use GNU base-256
# A blob has at most six sections (image.blob, blob.meta, blob.digest, image.boot, rafs.blob.toc), so
# a longer chain is not a blob: the walk stops there instead of looping over a hostile file.
MAX_SECTIONS = 16


class TarEntry(NamedTuple):
    """What a section header says: the section's name and payload size."""

    name: str
    size: int


@dataclass(frozen=True, slots=True)
class Section:
    """A section of a blob found by walking its tar headers: payload at [offset, offset + size)."""

    name: str
    offset: int
    size: int
    header_offset: int

    @property
    def end(self) -> int:
        return self.offset + self.size


def _checksum(header: bytes) -> int:
    start, end = layout.TAR_CHECKSUM_OFFSET, layout.TAR_CHECKSUM_OFFSET + layout.TAR_CHECKSUM_SIZE
    return sum(header[:start]) + 8 * 0x20 + sum(header[end:])


def _encode_size(size: int) -> bytes:
    if size < _MAX_OCTAL_SIZE:
        return b"%011o\0" % size
    if size >= 1 << 88:
        raise InvalidArgumentError(f"tar entry size {size} does not fit a GNU header")
    return bytes([0x80]) + size.to_bytes(11, "big")


def _decode_number(field: bytes, what: str, offset: int | None) -> int:
    if field and field[0] & 0x80:         # GNU base-256: the remaining bytes are big-endian
        return int.from_bytes(bytes([field[0] & 0x7F]) + field[1:], "big")
    text = field.split(b"\0", 1)[0].strip(b" ")
    if not text:
        return 0
    try:
        return int(text, 8)
    except ValueError:
        raise InvalidImageError(f"{what} field {field!r} is not an octal number", structure="tar header",
                                offset=offset) from None


def build_tar_header(name: str, size: int) -> bytes:
    """The header nydus-image writes after a section ``name`` of ``size`` bytes (byte-identical)."""
    encoded = name.encode()
    if not encoded or len(encoded) > 100 or b"\0" in encoded:
        raise InvalidArgumentError(f"tar entry name {name!r} must be 1..100 bytes without NUL")
    if size < 0:
        raise InvalidArgumentError(f"tar entry size {size} is negative")
    fields = dict(name=encoded.ljust(100, b"\0"), mode=bytes(8), uid=bytes(8), gid=bytes(8),
                  size=_encode_size(size), mtime=b"%011o\0" % 0, chksum=b" " * 8,
                  typeflag=layout.TAR_TYPE_REGULAR, linkname=bytes(100), magic=layout.TAR_GNU_MAGIC,
                  version=layout.TAR_GNU_VERSION, uname=bytes(32), gname=bytes(32), devmajor=bytes(8),
                  devminor=bytes(8), gnu_extra=bytes(167))
    header = bytearray(build(layout.TarHeader, fields, structure="tar header"))
    header[layout.TAR_CHECKSUM_OFFSET:layout.TAR_CHECKSUM_OFFSET + 8] = b"%07o\0" % _checksum(header)
    return bytes(header)


def parse_tar_header(data, offset: int = 0) -> TarEntry:
    """Decode the GNU header at ``data[offset:offset + 512]``; InvalidImageError unless it is one
    nydus-image could have written (GNU magic, regular file, correct checksum)."""
    header = bytes(data[offset:offset + layout.TAR_BLOCK_SIZE])
    fields = parse(layout.TarHeader, header, structure="tar header")
    if fields.typeflag not in (layout.TAR_TYPE_REGULAR, b"\0"):
        raise InvalidImageError(f"entry type {fields.typeflag!r} is not a regular file",
                                structure="tar header", offset=offset)
    stored = _decode_number(fields.chksum, "checksum", offset)
    if stored != _checksum(header):
        raise InvalidImageError(f"checksum {stored:#o} does not match the header ({_checksum(header):#o})",
                                structure="tar header", offset=offset)
    raw_name = fields.name.split(b"\0", 1)[0]
    try:
        name = raw_name.decode()
    except UnicodeDecodeError:
        raise InvalidImageError(f"entry name {raw_name!r} is not UTF-8", structure="tar header",
                                offset=offset) from None
    return TarEntry(name, _decode_number(fields.size, "size", offset))


def is_tar_header(data, offset: int = 0, name: str | None = None) -> bool:
    """Whether a valid section header (named ``name`` when given) sits at ``offset``."""
    try:
        entry = parse_tar_header(data, offset)
    except InvalidImageError:
        return False
    return name is None or entry.name == name


def walk_sections(source) -> list[Section]:
    """The blob's sections, last first, as far as valid tar headers chain back from its end.

    ``source`` is a RangeReader with a known ``size``. An empty list means the blob has no trailing
    section header (a plain v6 or v5 blob). A header whose size points before the start of the file
    is an InvalidImageError.
    """
    pos = source.size
    sections: list[Section] = []
    while pos >= layout.TAR_BLOCK_SIZE and len(sections) < MAX_SECTIONS:
        header_offset = pos - layout.TAR_BLOCK_SIZE
        try:
            entry = parse_tar_header(source.read_range(header_offset, layout.TAR_BLOCK_SIZE))
        except InvalidImageError:
            break
        if entry.size > header_offset:
            raise InvalidImageError(f"section {entry.name!r} of {entry.size} bytes would start before the "
                                    "beginning of the blob", structure="tar header", offset=header_offset)
        start = header_offset - entry.size
        sections.append(Section(entry.name, start, entry.size, header_offset))
        pos = start
    return sections
