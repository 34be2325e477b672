"""Chunk codecs: compressors, digesters and CRC-32C, by the names the reference uses.

Compression follows utils/src/compress/mod.rs: ``lz4_block`` is a raw LZ4 block without size prefix or
frame, ``zstd`` one standard frame with the content size and no checksum, ``gzip`` a gzip member. A
chunk whose compressed form is not smaller is stored raw. Decompression is always bounded by the size
the metadata declares, so a hostile chunk cannot allocate more than that.
"""

from __future__ import annotations

import hashlib
import io
import threading
import zlib

import blake3 as _blake3
import crc32c as _crc32c
import lz4.block
import zstandard

from ..errors import InvalidArgumentError, InvalidImageError, UnsupportedError
from ..model import COMPRESSOR_IDS, DIGESTER_IDS

ZSTD_LEVEL = 3   # the zstd crate's default level, which nydus-image uses through zstd::bulk::compress
_local = threading.local()


def _zstd_compressor() -> zstandard.ZstdCompressor:
    # zstandard's (de)compressor objects must not be shared between threads: one per thread.
    compressor = getattr(_local, "zstd_c", None)
    if compressor is None:
        compressor = _local.zstd_c = zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_content_size=True,
                                                              write_checksum=False)
    return compressor


class _ThreadLocalDecompressor:
    def decompress(self, data: bytes) -> bytes:
        decompressor = getattr(_local, "zstd_d", None)
        if decompressor is None:
            decompressor = _local.zstd_d = zstandard.ZstdDecompressor()
        return decompressor.decompress(data)


_zstd_decompressor = _ThreadLocalDecompressor()


def check_compressor(name: str) -> str:
    if name not in COMPRESSOR_IDS:
        raise InvalidArgumentError(f"unknown compressor {name!r} (expected one of {', '.join(COMPRESSOR_IDS)})")
    return name


def check_digester(name: str) -> str:
    if name not in DIGESTER_IDS:
        raise InvalidArgumentError(f"unknown digester {name!r} (expected one of {', '.join(DIGESTER_IDS)})")
    return name


def compress(algorithm: str, data: bytes) -> bytes:
    """Compress ``data`` as one unit; the caller decides whether the result is worth keeping."""
    if algorithm == "none" or not data:
        return bytes(data)
    if algorithm == "zstd":
        return _zstd_compressor().compress(data)
    if algorithm == "lz4_block":
        return lz4.block.compress(data, mode="default", store_size=False)
    if algorithm == "gzip":
        compressor = zlib.compressobj(6, zlib.DEFLATED, 31)
        return compressor.compress(data) + compressor.flush()
    raise InvalidArgumentError(f"unknown compressor {algorithm!r}")


def compress_chunk(algorithm: str, data: bytes) -> tuple[bytes, bool]:
    """(stored bytes, compressed?) following the builder: raw when compression does not help."""
    if algorithm == "none" or not data:
        return bytes(data), False
    packed = compress(algorithm, data)
    if len(packed) >= len(data):
        return bytes(data), False
    return packed, True


def decompress(algorithm: str, data: bytes, uncompressed_size: int, *, what: str = "chunk",
               offset: int | None = None) -> bytes:
    """Decompress ``data`` to exactly ``uncompressed_size`` bytes or raise InvalidImageError."""
    try:
        if algorithm == "none":
            out = bytes(data)
        elif algorithm == "zstd":
            out = _zstd_decompress(data, uncompressed_size)
        elif algorithm == "lz4_block":
            out = lz4.block.decompress(data, uncompressed_size=uncompressed_size)
        elif algorithm == "gzip":
            decoder = zlib.decompressobj(31)
            out = decoder.decompress(data, uncompressed_size)
        else:
            raise UnsupportedError(f"{what}: compressor {algorithm!r} is not supported")
    except (zstandard.ZstdError, lz4.block.LZ4BlockError, zlib.error, ValueError) as exc:
        if isinstance(exc, UnsupportedError):
            raise
        raise InvalidImageError(f"{algorithm} data does not decompress: {exc}", structure=what,
                                offset=offset) from None
    if len(out) != uncompressed_size:
        raise InvalidImageError(f"{algorithm} data decompressed to {len(out)} bytes, expected "
                                f"{uncompressed_size}", structure=what, offset=offset)
    return out


def _zstd_decompress(data: bytes, size: int) -> bytes:
    # Bounded by the declared size: a frame claiming more (a bomb) is refused before it is inflated.
    declared = zstandard.frame_content_size(data)
    if declared == size:
        return _zstd_decompressor.decompress(data)
    if declared >= 0:
        raise ValueError(f"frame declares {declared} bytes, metadata says {size}")
    reader = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data), read_across_frames=True)
    parts, total = [], 0
    while total <= size:
        part = reader.read(size + 1 - total)
        if not part:
            break
        parts.append(part)
        total += len(part)
    return b"".join(parts)


def digest(algorithm: str, data) -> bytes:
    """The 32-byte digest of ``data`` with the image's digester."""
    if algorithm == "blake3":
        return _blake3.blake3(data).digest()
    if algorithm == "sha256":
        return hashlib.sha256(data).digest()
    raise InvalidArgumentError(f"unknown digester {algorithm!r}")


def hasher(algorithm: str):
    """A streaming hasher object with ``update`` and ``digest``."""
    if algorithm == "blake3":
        return _blake3.blake3()
    if algorithm == "sha256":
        return hashlib.sha256()
    raise InvalidArgumentError(f"unknown digester {algorithm!r}")


def crc32c(data) -> int:
    """CRC-32C (Castagnoli, the reference's ``Crc32Iscsi``) of the uncompressed chunk."""
    return _crc32c.crc32c(data)
