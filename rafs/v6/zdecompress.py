"""Decoding one EROFS physical cluster (pcluster) into the bytes of its extent.

Facts from the kernel's fs/erofs/decompressor*.c (which defines what an image means):

* With the ZERO_PADDING feature (every mkfs.erofs since 1.0 for LZ4; always for the other algorithms) a
  compressed stream is stored at the *end* of its pcluster: the zero bytes before it, which must lie in
  the pcluster's first block, are skipped (``z_erofs_fixup_insize``).
* LZ4 (lz4 and lz4hc alike): a raw LZ4 block. Decoding stops once the extent's bytes are out: exactly
  (``LZ4_decompress_safe``) when the stream holds just the extent, or *partially*
  (``LZ4_decompress_safe_partial``) when the extent is only a prefix of what the pcluster holds
  (``Z_EROFS_LI_PARTIAL_REF``, from ``-Ededupe``) or when legacy images (no ZERO_PADDING) leave
  garbage after the stream.
* LZMA: MicroLZMA (xz-embedded's ``xz_dec_microlzma``): an LZMA1 stream without header or end marker
  whose first range-coder byte (always 0) is replaced by the bitwise NOT of the lc/lp/pb properties byte.
* DEFLATE: a raw deflate stream (``zlib_inflateInit2(-MAX_WBITS)``).
* ZSTD: one zstd frame.

A stream holding more than its extent reads as its prefix, as the kernel reads it (it decodes partially
whenever a read does not cover the whole extent); LZ4 tries the exact decoder first, which is fast, and
falls back to the partial one.
* PLAIN lclusters hold the bytes as they are, either from the start of the pcluster (SHIFTED) or,
  with ``Z_EROFS_ADVISE_INTERLACED_PCLUSTER``, rotated: the first ``block size - extent start % block
  size`` bytes sit at the end of the pcluster and the rest at its start (INTERLACED).

Every decoder is told the exact output size and never produces more, so a hostile stream cannot make
it allocate beyond the extent the index declares.
"""

from __future__ import annotations

import lzma
import zlib

from ..errors import InvalidImageError
from . import layout

# The kernel's internal "algorithms" of PLAIN pclusters (Z_EROFS_COMPRESSION_SHIFTED/INTERLACED).
SHIFTED = layout.Z_EROFS_COMPRESSION_MAX
INTERLACED = layout.Z_EROFS_COMPRESSION_MAX + 1
ALGORITHM_NAMES = {**layout.Z_EROFS_COMPRESSION_NAMES, SHIFTED: "plain", INTERLACED: "interlaced"}
_LZMA_PROPS_MAX = 9 * 5 * 5             # (pb * 5 + lp) * 9 + lc, lc < 9, lp < 5, pb < 5


def _bad(message: str, offset: int) -> InvalidImageError:
    return InvalidImageError(message, structure="erofs pcluster", offset=offset)


def strip_zero_padding(src: bytes, first_block_room: int, offset: int) -> tuple[bytes, int]:
    """``src`` without the zero bytes in front of the stream, and how many were skipped; the stream
    must start within ``first_block_room`` bytes (the rest of the pcluster's first block)."""
    window = min(len(src), first_block_room)
    head = src[:window].lstrip(b"\0")
    if not head:
        raise _bad("compressed pcluster holds only zero padding in its first block", offset)
    skipped = window - len(head)
    return src[skipped:], skipped


def _lz4_length(src: bytes, pos: int, length: int, what: str, offset: int) -> tuple[int, int]:
    """An LZ4 length: the token's 4 bits, continued by bytes while they are 255 when those are 15."""
    if length != 15:
        return length, pos
    while True:
        if pos >= len(src):
            raise _bad(f"LZ4 {what} length runs past the pcluster", offset)
        extra = src[pos]
        pos += 1
        length += extra
        if extra != 255:
            return length, pos


def lz4_partial(src: bytes, out_len: int, offset: int) -> bytes:
    """The first ``out_len`` bytes an LZ4 block decodes to, ignoring what follows (the kernel's
    ``LZ4_decompress_safe_partial``). Pure Python: only dedupe and legacy images need it."""
    out = bytearray()
    pos, end = 0, len(src)
    while len(out) < out_len:
        if pos >= end:
            break
        token = src[pos]
        pos += 1
        literals, pos = _lz4_length(src, pos, token >> 4, "literal", offset)
        if pos + literals > end:
            raise _bad("LZ4 literals run past the pcluster", offset)
        out += src[pos:pos + min(literals, out_len - len(out))]
        pos += literals
        if len(out) >= out_len or pos >= end:
            break
        if pos + 2 > end:
            raise _bad("LZ4 match offset runs past the pcluster", offset)
        distance = src[pos] | src[pos + 1] << 8
        pos += 2
        if distance == 0 or distance > len(out):
            raise _bad(f"LZ4 match distance {distance} points before the extent", offset)
        length, pos = _lz4_length(src, pos, token & 15, "match", offset)
        length = min(length + 4, out_len - len(out))
        start = len(out) - distance
        if length <= distance:
            out += out[start:start + length]
        else:                                   # an overlapping match repeats the last `distance` bytes
            out += (out[start:] * (length // distance + 1))[:length]
    if len(out) != out_len:
        raise _bad(f"LZ4 stream decodes to {len(out)} bytes, the extent has {out_len}", offset)
    return bytes(out)


def _lz4(src: bytes, out_len: int, partial: bool, offset: int) -> bytes:
    if partial:
        return lz4_partial(src, out_len, offset)
    import lz4.block
    try:
        data = lz4.block.decompress(src, uncompressed_size=out_len)
    except (lz4.block.LZ4BlockError, ValueError):
        data = b""
    if len(data) != out_len:
        return lz4_partial(src, out_len, offset)    # says what is wrong, or reads a prefix
    return data


def _microlzma(src: bytes, out_len: int, offset: int) -> bytes:
    props = ~src[0] & 0xFF
    if props >= _LZMA_PROPS_MAX:
        raise _bad(f"MicroLZMA properties byte {props:#x} is invalid", offset)
    lc, lp, pb = props % 9, props // 9 % 5, props // 45
    # the dictionary never needs to reach further back than the extent itself
    lzma_filter = {"id": lzma.FILTER_LZMA1, "dict_size": max(4096, out_len), "lc": lc, "lp": lp, "pb": pb}
    try:
        decoder = lzma.LZMADecompressor(lzma.FORMAT_RAW, filters=[lzma_filter])
        return decoder.decompress(b"\0" + src[1:], max_length=out_len)
    except lzma.LZMAError as exc:
        raise _bad(f"MicroLZMA stream does not decode: {exc}", offset) from None


def _deflate(src: bytes, out_len: int, offset: int) -> bytes:
    try:
        return zlib.decompressobj(-15).decompress(src, out_len)
    except zlib.error as exc:
        raise _bad(f"DEFLATE stream does not decode: {exc}", offset) from None


def _zstd(src: bytes, out_len: int, offset: int) -> bytes:
    import zstandard
    out = bytearray()
    try:
        with zstandard.ZstdDecompressor().stream_reader(src, read_across_frames=False) as stream:
            while len(out) < out_len:
                piece = stream.read(out_len - len(out))
                if not piece:
                    break
                out += piece
    except zstandard.ZstdError as exc:
        raise _bad(f"zstd stream does not decode: {exc}", offset) from None
    return bytes(out)


def plain(src: bytes, out_len: int, interlaced_at: int | None, offset: int) -> bytes:
    """The bytes of a PLAIN pcluster: from its start, or rotated (``interlaced_at``: how many bytes of
    the extent sit at the pcluster's end, ``block size - start % block size``)."""
    if out_len > len(src):
        raise _bad(f"plain pcluster of {len(src)} bytes is shorter than its {out_len}-byte extent", offset)
    if interlaced_at is None:
        return src[:out_len]
    first = min(interlaced_at, out_len)
    at = len(src) - interlaced_at
    if at < 0:
        raise _bad("interlaced pcluster is shorter than a block", offset)
    return src[at:at + first] + src[:out_len - first]


def decode(algorithm: int, src: bytes, out_len: int, *, partial: bool, zero_padding: bool,
           first_block_room: int, interlaced_at: int | None = None, offset: int = 0) -> bytes:
    """The ``out_len`` bytes of an extent whose pcluster holds ``src`` (``offset``: where in the image,
    for messages). ``first_block_room``: bytes from the pcluster's start to the end of its block."""
    if algorithm == SHIFTED:
        return plain(src, out_len, None, offset)
    if algorithm == INTERLACED:
        return plain(src, out_len, interlaced_at, offset)
    if algorithm == layout.Z_EROFS_COMPRESSION_LZ4 and not zero_padding:
        # legacy images: the stream starts at the pcluster's start and garbage may follow it
        return lz4_partial(src, out_len, offset)
    src, skipped = strip_zero_padding(src, first_block_room, offset)
    offset += skipped
    if algorithm == layout.Z_EROFS_COMPRESSION_LZ4:
        data = _lz4(src, out_len, partial, offset)
    elif algorithm == layout.Z_EROFS_COMPRESSION_LZMA:
        data = _microlzma(src, out_len, offset)
    elif algorithm == layout.Z_EROFS_COMPRESSION_DEFLATE:
        data = _deflate(src, out_len, offset)
    elif algorithm == layout.Z_EROFS_COMPRESSION_ZSTD:
        data = _zstd(src, out_len, offset)
    else:
        raise _bad(f"unknown compression algorithm {algorithm}", offset)
    if len(data) != out_len:
        raise _bad(f"{ALGORITHM_NAMES[algorithm]} stream decodes to {len(data)} bytes, the extent has "
                   f"{out_len}", offset)
    return data
