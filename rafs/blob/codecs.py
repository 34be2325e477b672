"""Chunk codecs: compressors, digesters and CRC-32C, by the names the reference uses.

Compression follows utils/src/compress/mod.rs: ``lz4_block`` is a raw LZ4 block without size prefix or
frame, ``zstd`` one standard frame with the content size and no checksum, ``gzip`` a gzip member. A
chunk whose compressed form is not smaller is stored raw. Decompression is always bounded by the size
the metadata declares, so a hostile chunk cannot allocate more than that.

The codec libraries are imported on first use of their algorithm, not with this module: ``crc32c``
alone costs about 20 ms at import (its ``__init__`` reads its version through ``importlib.metadata``),
and a command that never touches chunk data (``rafs create --help``) should not pay for any of them.
"""

from __future__ import annotations

import functools
import hashlib
import io
import threading
import zlib

from ..errors import InvalidArgumentError, InvalidImageError, UnsupportedError
from ..model import COMPRESSOR_IDS, DIGESTER_IDS

ZSTD_LEVEL = 3   # the zstd crate's default level, which nydus-image uses through zstd::bulk::compress
_local = threading.local()


def _zstd_compressor():
    # zstandard's (de)compressor objects must not be shared between threads: one per thread.
    compressor = getattr(_local, "zstd_c", None)
    if compressor is None:
        import zstandard
        compressor = _local.zstd_c = zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_content_size=True,
                                                              write_checksum=False)
    return compressor


def _zstd_decompressor():
    decompressor = getattr(_local, "zstd_d", None)
    if decompressor is None:
        import zstandard
        decompressor = _local.zstd_d = zstandard.ZstdDecompressor()
    return decompressor


def _decode_errors(algorithm: str) -> tuple[type[BaseException], ...]:
    """The exceptions by which ``algorithm``'s library says its input does not decompress."""
    if algorithm == "zstd":
        import zstandard
        return zstandard.ZstdError, ValueError
    if algorithm == "lz4_block":
        import lz4.block
        return lz4.block.LZ4BlockError, ValueError
    return zlib.error, ValueError


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
        import lz4.block
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


def chunk_processor(compressor: str, digester: str):
    """``process(data) -> (digest, crc32c, stored bytes, compressed?)`` for one chunk of a build, the
    digester and CRC resolved once (a builder calls it for every chunk). The same results as
    :func:`digest`, :func:`crc32c` and :func:`compress_chunk`."""
    check_compressor(compressor)
    new_hash, crc = _hash_constructor(check_digester(digester)), _crc32c()

    def process(data):
        stored, compressed = compress_chunk(compressor, data)
        return new_hash(data).digest(), crc(data), stored, compressed
    return process


def decompress(algorithm: str, data: bytes, uncompressed_size: int, *, what: str = "chunk",
               offset: int | None = None) -> bytes:
    """Decompress ``data`` to exactly ``uncompressed_size`` bytes or raise InvalidImageError."""
    if algorithm not in ("none", "zstd", "lz4_block", "gzip"):
        raise UnsupportedError(f"{what}: compressor {algorithm!r} is not supported")
    try:
        if algorithm == "none":
            out = bytes(data)
        elif algorithm == "zstd":
            out = _zstd_decompress(data, uncompressed_size)
        elif algorithm == "lz4_block":
            import lz4.block
            out = lz4.block.decompress(data, uncompressed_size=uncompressed_size)
        else:
            decoder = zlib.decompressobj(31)
            out = decoder.decompress(data, uncompressed_size)
    except _decode_errors(algorithm) as exc:
        raise InvalidImageError(f"{algorithm} data does not decompress: {exc}", structure=what,
                                offset=offset) from None
    if len(out) != uncompressed_size:
        raise InvalidImageError(f"{algorithm} data decompressed to {len(out)} bytes, expected "
                                f"{uncompressed_size}", structure=what, offset=offset)
    return out


def _zstd_decompress(data: bytes, size: int) -> bytes:
    # Bounded by the declared size: a frame claiming more (a bomb) is refused before it is inflated.
    import zstandard
    declared = zstandard.frame_content_size(data)
    if declared == size:
        return _zstd_decompressor().decompress(data)
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


@functools.cache
def _hash_constructor(algorithm: str):
    """The library's hasher class for a digester name, imported on first use."""
    if algorithm == "blake3":
        from blake3 import blake3
        return blake3
    if algorithm == "sha256":
        return hashlib.sha256
    raise InvalidArgumentError(f"unknown digester {algorithm!r}")


@functools.cache
def _crc32c():
    from crc32c import crc32c
    return crc32c


def digest(algorithm: str, data) -> bytes:
    """The 32-byte digest of ``data`` with the image's digester."""
    return _hash_constructor(algorithm)(data).digest()


def hasher(algorithm: str):
    """A streaming hasher object with ``update`` and ``digest``."""
    return _hash_constructor(algorithm)()


def crc32c(data) -> int:
    """CRC-32C (Castagnoli, the reference's ``Crc32Iscsi``) of the uncompressed chunk."""
    return _crc32c()(data)
