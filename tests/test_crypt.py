"""AES-XTS chunk encryption as nydus-image does it, and reading encrypted chunks back."""

from __future__ import annotations

import pytest

from rafs.blob import codecs, crypt
from rafs.blob.reader import ChunkReader
from rafs.errors import InvalidImageError
from rafs.model import Blob, Chunk, ChunkFlags

KEY = bytes(range(32))
IV = bytes(range(100, 116))


def test_ieee_1619_vector():
    # IEEE P1619/D16 XTS-AES-128 vector 2: the same primitive OpenSSL gives nydus-image
    key = bytes([0x11] * 16 + [0x22] * 16)
    tweak = (0x3333333333).to_bytes(16, "little")
    plain = bytes([0x44] * 32)
    expected = bytes.fromhex("c454185e6a16936e39334038acef838bfb186fff7480adc4289382ecd6d394f0")
    assert crypt.encrypt("aes128xts", key, tweak, plain) == expected
    assert crypt.decrypt("aes128xts", key, tweak, expected) == plain
    with pytest.raises(InvalidImageError, match="identical halves"):
        crypt.encrypt("aes128xts", bytes(32), tweak, plain)


@pytest.mark.parametrize("size", [0, 1, 15, 16, 17, 31, 4096, 4099])
def test_round_trip_and_padding(size):
    data = bytes(i % 251 for i in range(size))
    if size == 0:
        return
    sealed = crypt.encrypt("aes128xts", KEY, IV, data)
    assert len(sealed) == (crypt.PADDING_LENGTH if size < 16 else size)
    assert crypt.decrypt("aes128xts", KEY, IV, sealed) == data


def test_wrong_key_sizes_and_short_input_are_invalid():
    with pytest.raises(InvalidImageError):
        crypt.decrypt("aes128xts", KEY[:16], IV, bytes(32))
    with pytest.raises(InvalidImageError):
        crypt.decrypt("aes128xts", KEY, IV, bytes(8))


@pytest.mark.parametrize("compressor", ["none", "zstd", "lz4_block"])
def test_chunk_reader_decrypts_then_decompresses(compressor):
    data = b"nydus " * 3000 + bytes(range(256))
    stored, compressed = codecs.compress_chunk(compressor, data)
    sealed = crypt.encrypt("aes128xts", KEY, IV, stored)
    blob = Blob(index=0, blob_id="b" * 64, compressor=compressor, digester="blake3", cipher="aes128xts",
                cipher_key=KEY, cipher_iv=IV)
    flags = ChunkFlags.ENCRYPTED | (ChunkFlags.COMPRESSED if compressed else 0)
    chunk = Chunk(codecs.digest("blake3", data), 0, 0, len(sealed), 0, len(data), 0, 0, int(flags))

    class Source:
        size = len(sealed)

        def read_range(self, offset, size):
            return sealed[offset:offset + size]

    assert ChunkReader(blob, Source(), validate=True).read(chunk) == data
