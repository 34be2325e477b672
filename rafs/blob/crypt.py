"""Chunk encryption as nydus-image does it (utils/src/crypt.rs): AES-128-XTS or AES-256-XTS.

Every chunk of an encrypted blob, and its CI array, is encrypted after compression as one XTS message
with the blob's key and IV (stored in the bootstrap's blob table). XTS needs at least one 16-byte data
unit, so a shorter input is padded to 18 bytes: the data, then bytes holding the pad length up to 16,
then the magic ``78 90``; decryption strips such a padding when it finds the magic.
"""

from __future__ import annotations

import os

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from ..errors import InvalidArgumentError, InvalidImageError, UnsupportedError

DATA_UNIT_LENGTH = 16
PADDING_MAGIC_END = b"\x78\x90"
PADDING_LENGTH = DATA_UNIT_LENGTH + len(PADDING_MAGIC_END)
IV_LENGTH = 16
KEY_LENGTHS = {"aes128xts": 32, "aes256xts": 64}


def _cipher(algorithm: str, key: bytes, iv: bytes) -> Cipher:
    expected = KEY_LENGTHS.get(algorithm)
    if expected is None:
        raise UnsupportedError(f"cipher {algorithm!r} is not supported (only AES-XTS, as nydus-image writes)")
    if len(key) != expected or len(iv) != IV_LENGTH:
        raise InvalidImageError(f"{algorithm} needs a {expected}-byte key and a {IV_LENGTH}-byte IV, the "
                                f"blob table holds {len(key)} and {len(iv)} bytes", structure="blob table")
    if key[:expected // 2] == key[expected // 2:]:
        raise InvalidImageError(f"{algorithm} key has identical halves, which XTS refuses",
                                structure="blob table")
    try:
        return Cipher(algorithms.AES(key), modes.XTS(iv))
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise InvalidImageError(f"{algorithm}: {exc}", structure="blob table") from None


def new_secrets(algorithm: str, key: bytes | None = None, iv: bytes | None = None) -> tuple[bytes, bytes]:
    """A key and IV for a new encrypted blob: random unless given (utils/src/crypt.rs
    ``generate_random_key``/``generate_random_iv``); a key with identical halves, which XTS refuses,
    gets its first half replaced by 0xa5 bytes (0x5a when it starts with 0xa5), as the reference tweaks it."""
    length = KEY_LENGTHS.get(algorithm)
    if length is None:
        raise UnsupportedError(f"cipher {algorithm!r} is not supported (only AES-XTS, as nydus-image writes)")
    key = os.urandom(length) if key is None else bytes(key)
    iv = os.urandom(IV_LENGTH) if iv is None else bytes(iv)
    if len(key) != length or len(iv) != IV_LENGTH:
        raise InvalidArgumentError(f"{algorithm} needs a {length}-byte key and a {IV_LENGTH}-byte IV")
    half = length // 2
    if key[:half] == key[half:]:
        key = (b"\x5a" if key[half] == 0xA5 else b"\xa5") * half + key[half:]
    return key, iv


def encrypt(algorithm: str, key: bytes, iv: bytes, data: bytes) -> bytes:
    """The ciphertext nydus-image stores for ``data`` (padded to 18 bytes when shorter than 16)."""
    if algorithm == "none":
        return bytes(data)
    if len(data) < DATA_UNIT_LENGTH:
        pad = DATA_UNIT_LENGTH - len(data)
        data = bytes(data) + bytes([pad]) * pad + PADDING_MAGIC_END
    if not data:
        raise InvalidArgumentError("nothing to encrypt")
    encryptor = _cipher(algorithm, key, iv).encryptor()
    return encryptor.update(data) + encryptor.finalize()


def decrypt(algorithm: str, key: bytes, iv: bytes, data: bytes, *, what: str = "chunk") -> bytes:
    """The plaintext of ``data``, with nydus-image's short-input padding removed."""
    if algorithm == "none":
        return bytes(data)
    if len(data) < DATA_UNIT_LENGTH:
        raise InvalidImageError(f"encrypted {what} of {len(data)} bytes is shorter than one XTS data unit",
                                structure=what)
    decryptor = _cipher(algorithm, key, iv).decryptor()
    plain = decryptor.update(bytes(data)) + decryptor.finalize()
    if len(plain) == PADDING_LENGTH and plain[DATA_UNIT_LENGTH:] == PADDING_MAGIC_END:
        pad = plain[DATA_UNIT_LENGTH - 1]
        if pad >= DATA_UNIT_LENGTH:
            raise InvalidImageError(f"encrypted {what} has an invalid padding value {pad}", structure=what)
        plain = plain[:DATA_UNIT_LENGTH - pad]
    return plain
