"""Generating ZRAN contexts: restart points into a gzip layer, as nydus-image makes them for targz-ref.

The reference (utils/src/compress/zlib_random.rs ``ZranReader``/``ZranGenerator``, wrapped by
storage/src/meta/zran.rs ``ZranContextGenerator``) inflates the layer with ``inflate(Z_BLOCK)``, so
zlib stops at every deflate block boundary; at each stop it remembers the position (bytes of gzip
consumed, bytes produced, the unread bits of the last byte and that byte) and the 32 KiB window.
Before each chunk of file data is read (:meth:`ZranGenerator.begin_read`) it decides whether the
chunk joins the current context or a new context starts at the last block boundary:

* a new context when the current one already spans half the maximum compressed size (512 KiB) or
  its output plus a chunk size reaches the maximum output (2 MiB), unless no block boundary has been
  passed since the context began;
* a new one too when the gzip consumed since the context began is more than twice the context's
  recorded input and that input exceeds the minimum (512 KiB) - a long gap with no chunk in it;
* otherwise (and for the very first chunk: a first context) the current one.

After the chunk (:meth:`ZranGenerator.end_read`) its record is the gzip range consumed while reading
it, its offset and size in the context's output, and the context grows to cover it. Positions are
zlib's own counters, which include the bits zlib has pulled in ahead of the output, so this module
drives the system zlib (:mod:`rafs.blob._libz`) through the same calls in the same 64 KiB input
steps as the reference; every stop position only depends on where the data reads end, which are the
chunk boundaries, so the contexts come out as nydus-image's.
"""

from __future__ import annotations

import ctypes
import hashlib
import struct
from dataclasses import dataclass

from ..blob import _libz
from ..errors import BuildError

READER_BUFFER_SIZE = 64 * 1024        # ZRAN_READER_BUF_SIZE: the gzip input is read in these steps
DEFAULT_CHUNK_SIZE = 0x100000         # RAFS_DEFAULT_CHUNK_SIZE: the generator's sizes derive from it
MIN_COMPRESSED_SIZE = DEFAULT_CHUNK_SIZE // 2
MAX_COMPRESSED_SIZE = DEFAULT_CHUNK_SIZE
MAX_UNCOMPRESSED_SIZE = DEFAULT_CHUNK_SIZE * 2
MAX_CONTEXTS = 1 << 24                # ZRAN_MAX_CI_ENTRIES
_BLOCK_BOUNDARY = 0x80                # z_stream.data_type: stopped at a block boundary (or header end)
# ZranInflateContext (storage/src/meta/zran.rs): in/out/dict offsets, in/out/dict sizes, byte, bits.
_CONTEXT = struct.Struct("<QQQIIIBBxx")


@dataclass
class _Position:
    """``ZranCompInfo``: where the inflater stands."""

    in_pos: int = 0
    out_pos: int = 0
    flags: int = 0
    previous_byte: int = 0
    pending_bits: int = 0
    stream_switched: int = 0


@dataclass
class ZranContext:
    in_offset: int
    out_offset: int
    ctx_byte: int
    ctx_bits: int
    dictionary: bytes
    in_len: int = 0
    out_len: int = 0


@dataclass(frozen=True)
class ZranChunk:
    """Where one chunk's bytes are: its context, offset and size in the context's output, and the
    gzip range consumed while they were inflated."""

    context_index: int
    context_offset: int
    size: int
    in_offset: int
    in_size: int


class ZranGenerator:
    """Inflates a gzip layer from a binary file object, recording contexts around the chunks read.

    Use :meth:`read_to` to move to the start of a chunk, then :meth:`begin_read`, :meth:`read` of the
    chunk's bytes and :meth:`end_read`; :meth:`contexts_bytes` gives the contexts and dictionaries
    as the CI stores them. ``digest``/``size`` cover the gzip bytes read so far.
    """

    def __init__(self, f, *, min_compressed: int = MIN_COMPRESSED_SIZE, max_compressed: int = MAX_COMPRESSED_SIZE,
                 max_uncompressed: int = MAX_UNCOMPRESSED_SIZE):
        self._file = f
        # the sizes ZranContextGenerator sets (the reference's own tests use smaller ones)
        self.min_compressed, self.max_compressed = min_compressed, max_compressed
        self.max_uncompressed = max_uncompressed
        self._z = _libz.Inflater(_libz.GZIP_WINDOW_BITS)
        self._input = ctypes.create_string_buffer(READER_BUFFER_SIZE)
        self._input_view = memoryview(self._input).cast("B")
        self._input_at = ctypes.addressof(self._input)
        self._window = ctypes.create_string_buffer(_libz.WINDOW_SIZE)
        stream = self._z.stream
        stream.next_in, stream.avail_in = self._input_at, 0
        self._total_in = self._total_out = 0
        self._last_byte = 0
        self._switched = 0
        self._hash = hashlib.sha256()
        self.size = 0
        self._block = _Position()
        self._block_dict = b""
        self._out = ctypes.create_string_buffer(1)
        self.contexts: list[ZranContext] = []
        self._current: int | None = None
        self._block_start = 0
        self._chunk_out = self._chunk_in = 0

    def close(self) -> None:
        self._z.close()

    @property
    def position(self) -> int:
        """Bytes of uncompressed tar produced so far."""
        return self._total_out

    def digest(self) -> str:
        return self._hash.hexdigest()

    # -- inflating, as ZranReaderState::read does ------------------------------------------------------

    def _info(self) -> _Position:
        stream = self._z.stream
        data_type = stream.data_type
        previous = 0
        if data_type & 7:
            at = stream.next_in - self._input_at
            previous = self._last_byte if at == 0 else self._input_view[at - 1]
        switched, self._switched = self._switched, 0
        return _Position(self._total_in, self._total_out, data_type, previous, data_type & 7, switched)

    def _inflate_some(self, target_at: int, size: int) -> int:
        """One ``read`` of at most ``size`` bytes to address ``target_at``; 0 at the end of the input."""
        z, stream = self._z, self._z.stream
        stream.next_out, stream.avail_out = target_at, size
        while True:
            if stream.avail_in == 0:
                if stream.next_in > self._input_at:
                    self._last_byte = self._input_view[stream.next_in - self._input_at - 1]
                got = self._file.readinto(self._input_view)
                if not got:
                    return 0
                self._hash.update(self._input_view[:got])
                self.size += got
                stream.next_in, stream.avail_in = self._input_at, got
            self._total_in += stream.avail_in
            self._total_out += stream.avail_out
            ret = z.inflate(_libz.Z_BLOCK)
            self._total_in -= stream.avail_in
            self._total_out -= stream.avail_out
            if ret == _libz.Z_STREAM_END:
                z.reset()                       # the next gzip member, if any
                self._switched = 1
                continue
            if ret == _libz.Z_OK:
                count = stream.next_out - target_at
                info = self._info()
                if info.flags & _BLOCK_BOUNDARY:
                    length = z.dictionary(self._window)
                    self._block_dict = self._window.raw[:length]
                    self._block = info
                if count:
                    return count
                continue
            if ret == _libz.Z_BUF_ERROR and stream.avail_in == 0:
                continue
            message = stream.msg.decode("ascii", "replace") if stream.msg else f"error {ret}"
            raise BuildError(f"invalid gzip stream at offset {self._total_in:#x}: {message}")

    def _buffer(self, size: int):
        if len(self._out) < size:
            self._out = ctypes.create_string_buffer(size)
        return self._out

    def read_some(self, size: int) -> bytes:
        """One read of at most ``size`` bytes, as one ``Read::read`` call of the reference returns them
        (it stops at deflate block boundaries); b"" at the end of the layer."""
        out = self._buffer(size)
        return out.raw[:self._inflate_some(ctypes.addressof(out), size)]

    def read(self, size: int) -> bytes:
        """Exactly the next ``size`` uncompressed bytes (BuildError if the layer ends first)."""
        out = self._buffer(size)
        base, done = ctypes.addressof(out), 0
        while done < size:
            got = self._inflate_some(base + done, size - done)
            if not got:
                raise BuildError(f"the gzip layer ends at {self._total_out} bytes of tar, inside file data")
            done += got
        return out.raw[:size]

    def read_to(self, position: int) -> None:
        """Inflate and discard up to uncompressed offset ``position``."""
        out = self._buffer(min(max(position - self._total_out, 1), 1 << 20))
        base = ctypes.addressof(out)
        while self._total_out < position:
            if not self._inflate_some(base, min(len(out), position - self._total_out)):
                raise BuildError(f"the gzip layer ends at {self._total_out} bytes of tar, before {position}")

    def read_all(self) -> None:
        """Inflate the rest of the layer (so that ``digest`` and ``size`` cover all of it)."""
        out = self._buffer(1 << 16)
        while self._inflate_some(ctypes.addressof(out), len(out)):
            pass

    # -- contexts, as ZranGenerator does ----------------------------------------------------------------

    def _new_context(self) -> int:
        block = self._block
        self.contexts.append(ZranContext(block.in_pos, block.out_pos, block.previous_byte, block.pending_bits,
                                         self._block_dict))
        self._block_start = block.in_pos
        if len(self.contexts) - 1 > MAX_CONTEXTS:
            raise BuildError("too many compression information entries")
        return len(self.contexts) - 1

    def begin_read(self, chunk_size: int) -> int:
        """Before a chunk is read: pick (or start) its context. ``chunk_size`` is the build's chunk size
        (the reference passes that, not the chunk's own length)."""
        info = self._info()
        index = self._current
        if index is None:
            index = self._new_context()
        else:
            ctx = self.contexts[index]
            comp_size = info.in_pos - ctx.in_offset
            uncomp_size = info.out_pos - ctx.out_offset
            first = self._block.in_pos == self._block_start
            enough = not first and (comp_size >= self.max_compressed // 2
                                    or uncomp_size + chunk_size >= self.max_uncompressed)
            if info.stream_switched or enough:
                index = self._new_context()
            elif not first and comp_size > 2 * ctx.in_len and ctx.in_len > self.min_compressed:
                index = self._new_context()
        self._current = index
        self._chunk_out, self._chunk_in = info.out_pos, info.in_pos
        return index

    def end_read(self) -> ZranChunk:
        """After the chunk is read: its record, and its context grown to cover it."""
        info = self._info()
        if self._current is None:
            raise BuildError("invalid compression state")
        ctx = self.contexts[self._current]
        chunk = ZranChunk(self._current, self._chunk_out - ctx.out_offset, info.out_pos - self._chunk_out,
                          self._chunk_in, info.in_pos - self._chunk_in)
        ctx.out_len = info.out_pos - ctx.out_offset
        ctx.in_len = info.in_pos - ctx.in_offset
        return chunk

    def contexts_bytes(self) -> bytes:
        """The contexts (40 bytes each) followed by their dictionaries, as the CI stores them."""
        out, dict_offset = bytearray(), 0
        for ctx in self.contexts:
            out += _CONTEXT.pack(ctx.in_offset, ctx.out_offset, dict_offset, ctx.in_len, ctx.out_len,
                                 len(ctx.dictionary), ctx.ctx_byte, ctx.ctx_bits)
            dict_offset += len(ctx.dictionary)
        for ctx in self.contexts:
            out += ctx.dictionary
        return bytes(out)
