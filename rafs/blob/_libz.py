"""A small ctypes binding of the system's zlib inflater, for ZRAN (random access into .tar.gz).

Why ctypes and not Python's ``zlib`` module: ZRAN needs four things ``zlib.decompressobj`` does not
expose. Building the contexts (:mod:`rafs.builder.zran_context`) needs ``inflate(Z_BLOCK)``, which stops at
every deflate block boundary, the ``data_type`` field that says a stop is one and how many bits of
the last byte are still unread, and ``inflateGetDictionary`` for the 32 KiB window there. Reading a
checkpoint that starts in the middle of a byte needs ``inflatePrime`` to feed those leftover bits
first. Re-aligning the bit stream by hand instead (prepending a synthetic deflate block whose length
in bits makes the checkpoint byte aligned) would mean crafting blocks per bit offset and faking one
byte of the window; binding the library that every Python build links anyway is smaller and is what
the reference calls (utils/src/compress/zlib_random.rs through libz-sys). It also lets the builder
drive inflate exactly as the reference does, so the contexts come out the same.

Checkpoints that start on a byte boundary (``ctx_bits == 0``) are decoded with Python's ``zlib`` by
:mod:`rafs.blob.zran` and never load this module.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import threading

from ..errors import UnsupportedError

Z_OK, Z_STREAM_END, Z_NEED_DICT, Z_BUF_ERROR = 0, 1, 2, -5
Z_NO_FLUSH, Z_BLOCK = 0, 5
WINDOW_SIZE = 1 << 15
GZIP_WINDOW_BITS = 31        # 15 + 16: a gzip header and trailer around the deflate data
RAW_WINDOW_BITS = -15        # bare deflate data


class ZStream(ctypes.Structure):
    """``z_stream`` of zlib.h (the layout is part of zlib's ABI)."""

    _fields_ = [
        ("next_in", ctypes.c_void_p), ("avail_in", ctypes.c_uint), ("total_in", ctypes.c_ulong),
        ("next_out", ctypes.c_void_p), ("avail_out", ctypes.c_uint), ("total_out", ctypes.c_ulong),
        ("msg", ctypes.c_char_p), ("state", ctypes.c_void_p),
        ("zalloc", ctypes.c_void_p), ("zfree", ctypes.c_void_p), ("opaque", ctypes.c_void_p),
        ("data_type", ctypes.c_int), ("adler", ctypes.c_ulong), ("reserved", ctypes.c_ulong),
    ]


_lib = None
_lib_lock = threading.Lock()


def libz():
    """The loaded system zlib, with argument types declared; UnsupportedError when there is none."""
    global _lib
    with _lib_lock:
        if _lib is None:
            name = ctypes.util.find_library("z") or "libz.so.1"
            try:
                lib = ctypes.CDLL(name)
                lib.inflatePrime               # noqa: B018 - present since zlib 1.2.2.4
                lib.inflateGetDictionary       # noqa: B018 - present since zlib 1.2.7.1
            except (OSError, AttributeError) as exc:
                raise UnsupportedError(f"ZRAN needs the system's zlib (libz.so.1 with inflatePrime and "
                                       f"inflateGetDictionary): {exc}") from None
            stream = ctypes.POINTER(ZStream)
            lib.zlibVersion.restype = ctypes.c_char_p
            lib.inflateInit2_.argtypes = [stream, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
            lib.inflate.argtypes = [stream, ctypes.c_int]
            lib.inflateEnd.argtypes = [stream]
            lib.inflateReset.argtypes = [stream]
            lib.inflateReset2.argtypes = [stream, ctypes.c_int]
            lib.inflatePrime.argtypes = [stream, ctypes.c_int, ctypes.c_int]
            lib.inflateSetDictionary.argtypes = [stream, ctypes.c_char_p, ctypes.c_uint]
            lib.inflateGetDictionary.argtypes = [stream, ctypes.c_void_p, ctypes.POINTER(ctypes.c_uint)]
            _lib = lib
        return _lib


class Inflater:
    """One zlib inflate stream. Not thread safe; :meth:`close` (or the context manager) frees it."""

    def __init__(self, window_bits: int):
        self.lib = libz()
        self.stream = ZStream()
        self._ref = ctypes.byref(self.stream)
        ret = self.lib.inflateInit2_(self._ref, window_bits, self.lib.zlibVersion(), ctypes.sizeof(ZStream))
        if ret != Z_OK:
            raise MemoryError(f"inflateInit2 failed ({ret})")
        self._open = True

    def close(self) -> None:
        if self._open:
            self._open = False
            self.lib.inflateEnd(self._ref)

    def __enter__(self) -> "Inflater":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        # at interpreter shutdown the library may be gone already: nothing left to free then
        if getattr(self, "_open", False) and self.lib is not None:
            self.close()

    def reset(self, window_bits: int | None = None) -> None:
        ret = self.lib.inflateReset(self._ref) if window_bits is None \
            else self.lib.inflateReset2(self._ref, window_bits)
        if ret != Z_OK:
            raise ValueError(f"inflateReset failed ({ret})")

    def prime(self, bits: int, value: int) -> None:
        """Feed the ``bits`` low bits of ``value`` before the next input byte."""
        if self.lib.inflatePrime(self._ref, bits, value) != Z_OK:
            raise ValueError("inflatePrime failed")

    def set_dictionary(self, data: bytes) -> None:
        if self.lib.inflateSetDictionary(self._ref, data, len(data)) != Z_OK:
            raise ValueError("inflateSetDictionary failed")

    def dictionary(self, buffer) -> int:
        """Copy the current window (at most 32 KiB) into ``buffer`` (a ctypes buffer of WINDOW_SIZE
        bytes); returns its length."""
        length = ctypes.c_uint(0)
        if self.lib.inflateGetDictionary(self._ref, buffer, ctypes.byref(length)) != Z_OK:
            raise ValueError("inflateGetDictionary failed")
        return length.value

    def inflate(self, flush: int) -> int:
        return self.lib.inflate(self._ref, flush)
