"""Reading ZRAN chunks: file data that stays inside the original gzip layer (``targz-ref``).

A ZRAN blob (storage/src/meta/zran.rs, utils/src/compress/zlib_random.rs) is the unmodified .tar.gz
of an OCI layer. Its CI array (kept in the RAFS meta blob, see :func:`ci_blob_id`) has one record per
chunk, flagged ZRAN, whose ``data`` word names a *context* and the chunk's offset in that context's
output. A context is a restart point of the deflate stream at a block boundary: ``in_offset`` and
``in_len`` (the gzip bytes it covers), ``out_len`` (what they inflate to), the 32 KiB window that
precedes it (``dict_offset``/``dict_size`` into the dictionary table after the contexts) and, when
the block starts inside a byte, the ``ctx_bits`` high bits of the previous byte ``ctx_byte`` that
belong to it. Reading a chunk fetches its context's gzip range once, inflates it from the restart
point with the window as dictionary (the bit offset primed through :mod:`rafs.blob._libz`), keeps
the output in a small cache, and cuts the chunk out. A context may run across the end of one gzip
member into the next: the 8-byte trailer is skipped and the next member's header parsed, as the
reference's ``ZranDecoder`` does.
"""

from __future__ import annotations

import ctypes
import functools
import zlib

from ..errors import InvalidImageError
from ..lru import LRU
from ..model import BlobFeatures, Chunk, ChunkFlags, MAX_CHUNK_SIZE

GZIP_TRAILER_SIZE = 8
GZIP_MAGIC = b"\x1f\x8b\x08"
# The largest context output read into memory. The reference's generator closes a context once it
# holds 1 MiB before a chunk starts (2 MiB minus a default chunk), so a context is at most that plus
# one chunk and a few deflate blocks; a declared out_len beyond this bound is refused, not allocated.
MAX_CONTEXT_OUTPUT = 4 * MAX_CHUNK_SIZE
# Inflated contexts kept per reader (bytes; the latest one always): chunks of one context are read
# close together.
CONTEXT_CACHE_BYTES = 16 << 20
_ZRAN_BLOB = int(BlobFeatures.ZRAN)
_COMPRESSED = int(ChunkFlags.COMPRESSED)


def ci_blob_id(blob) -> str:
    """The id of the blob file that holds ``blob``'s CI array: for a SEPARATE blob (targz-ref, tar-ref)
    the RAFS meta blob, named by the sha256 the blob table keeps in ``blob_meta_digest``
    (storage/src/device.rs ``BlobInfo::get_blob_meta_id``); otherwise the blob itself."""
    if blob.features & BlobFeatures.SEPARATE and any(blob.meta_digest or b""):
        return bytes(blob.meta_digest[:32]).hex()
    return blob.blob_id


def ci_opener(locator, blob):
    """For a ChunkReader's ``meta_opener``: a callable opening ``blob``'s meta blob through the
    locator's ``open_ci`` (a meta blob is no entry of the blob table), or None when the CI is in the
    blob itself."""
    if ci_blob_id(blob) == blob.blob_id:
        return None
    return functools.partial(locator.open_ci, blob)


def check_context(ctx, index: int, source_size: int | None) -> None:
    """Refuse a context whose sizes break the bounds or whose range runs past the gzip layer."""
    def bad(message):
        raise InvalidImageError(f"ZRAN context {index}: {message}", structure="ZRAN inflate context")

    if ctx.out_len > MAX_CONTEXT_OUTPUT:
        bad(f"declares {ctx.out_len} bytes of output, over rafs's limit of {MAX_CONTEXT_OUTPUT}")
    if ctx.in_len > MAX_CONTEXT_OUTPUT or ctx.in_len == 0 and ctx.out_len:
        bad(f"covers {ctx.in_len} bytes of the gzip stream for {ctx.out_len} bytes of output")
    if ctx.ctx_bits > 7:
        bad(f"starts {ctx.ctx_bits} bits into a byte")
    if source_size is not None and ctx.in_offset + ctx.in_len > source_size:
        bad(f"[{ctx.in_offset:#x}, +{ctx.in_len:#x}) runs past the end of the layer ({source_size} bytes)")


def inflate_context(ctx, dictionary: bytes, raw: bytes, *, what: str = "ZRAN context") -> bytes:
    """The ``out_len`` bytes that context ``ctx`` inflates to from ``raw``, its ``in_len`` gzip bytes."""
    if len(raw) != ctx.in_len:
        raise InvalidImageError(f"{what}: {len(raw)} bytes read for {ctx.in_len}", structure="ZRAN inflate context")
    want = ctx.out_len
    if ctx.out_len > MAX_CONTEXT_OUTPUT:
        raise InvalidImageError(f"{what}: {want} bytes of output, over rafs's limit of {MAX_CONTEXT_OUTPUT}",
                                structure="ZRAN inflate context")
    if raw[GZIP_TRAILER_SIZE:GZIP_TRAILER_SIZE + 3] == GZIP_MAGIC:
        # A context may start where a gzip member's deflate data ends (the generator records the end of
        # a member's last block as a block boundary: a chunk starting exactly at a member boundary, as
        # eStargz and bgzip layers have). Then what follows is the trailer and the next member, which
        # nydusd's raw inflate cannot read; rafs reads it as that. A deflate block that merely has the
        # gzip magic at bytes 8..10 fails this way and is read as deflate below.
        try:
            return _inflate_members(raw[GZIP_TRAILER_SIZE:], want)
        except (zlib.error, ValueError):
            pass
    bits = ctx.ctx_bits & 7
    try:
        if bits:
            out, rest = _inflate_primed(bits, ctx.ctx_byte >> (8 - bits), dictionary, raw, want)
            decoder, raw_mode = None, False
        else:
            out, rest, raw_mode = bytearray(), raw, True
            decoder = zlib.decompressobj(-15, zdict=dictionary) if dictionary else zlib.decompressobj(-15)
        while len(out) < want and rest:
            if decoder is None:
                decoder, raw_mode = zlib.decompressobj(31), False   # a whole member: header, data, trailer
            out += decoder.decompress(rest, want - len(out))
            if len(out) >= want or not decoder.eof:
                break
            # the end of a gzip member inside the context: on to the next member
            rest = decoder.unused_data
            if raw_mode:                     # a raw decoder leaves the trailer unread
                if len(rest) < GZIP_TRAILER_SIZE:
                    raise InvalidImageError(f"{what}: the input ends inside a gzip trailer",
                                            structure="ZRAN inflate context")
                rest = rest[GZIP_TRAILER_SIZE:]
            decoder = None
    except zlib.error as exc:
        raise InvalidImageError(f"{what}: corrupt deflate data: {exc}", structure="ZRAN inflate context") from None
    if len(out) != want:
        raise InvalidImageError(f"{what}: inflates to {len(out)} bytes, the context says {want}",
                                structure="ZRAN inflate context")
    return bytes(out)


def _inflate_members(raw: bytes, want: int) -> bytes:
    """Exactly ``want`` bytes inflated from whole gzip members (ValueError when they give fewer)."""
    out, rest = bytearray(), raw
    while len(out) < want and rest:
        decoder = zlib.decompressobj(31)
        out += decoder.decompress(rest, want - len(out))
        if len(out) < want and not decoder.eof:
            break
        rest = decoder.unused_data
    if len(out) != want:
        raise ValueError("short")
    return bytes(out)


def _inflate_primed(bits: int, value: int, dictionary: bytes, raw: bytes, want: int) -> tuple[bytearray, bytes]:
    """Inflate raw deflate data that starts ``bits`` bits (``value``) before ``raw``, with the system
    zlib (inflatePrime). Returns the output (at most ``want`` bytes) and, when the deflate stream ended
    first, the input after its gzip trailer (else b"")."""
    from . import _libz
    if not raw:
        return bytearray(), b""
    with _libz.Inflater(_libz.RAW_WINDOW_BITS) as z:
        z.prime(bits, value)
        z.set_dictionary(dictionary)
        source = (ctypes.c_char * len(raw)).from_buffer_copy(raw)
        target = ctypes.create_string_buffer(max(want, 1))
        stream = z.stream
        stream.next_in, stream.avail_in = ctypes.addressof(source), len(raw)
        stream.next_out, stream.avail_out = ctypes.addressof(target), want
        ret = z.inflate(_libz.Z_NO_FLUSH)
        out = bytearray(target.raw[:want - stream.avail_out])
        if ret == _libz.Z_STREAM_END:
            rest = raw[len(raw) - stream.avail_in:]
            if len(out) < want:
                if len(rest) < GZIP_TRAILER_SIZE:
                    raise InvalidImageError("ZRAN context: the input ends inside a gzip trailer",
                                            structure="ZRAN inflate context")
                rest = rest[GZIP_TRAILER_SIZE:]
            return out, rest
        if ret in (_libz.Z_OK, _libz.Z_BUF_ERROR):
            return out, b""
        message = stream.msg.decode("ascii", "replace") if stream.msg else f"error {ret}"
        raise zlib.error(message)


class ZranChunks:
    """The ZRAN side of a :class:`rafs.blob.reader.ChunkReader`: chunk records resolved to their
    context's gzip range, contexts inflated once and cached."""

    def __init__(self, reader):
        self.reader = reader
        self._cache: LRU[bytes] = LRU(max_bytes=CONTEXT_CACHE_BYTES)
        self._checked: set[int] = set()
        self._members: dict[int, list[int]] | None = None     # context index -> its chunks' CI indexes

    def record(self, chunk: Chunk):
        """(CI record, context) of ``chunk``, checked against the bootstrap's record and the layer."""
        blob = self.reader.blob
        where = f"chunk {chunk.index} of blob {blob.blob_id}"
        meta = self.reader.blob_meta()
        if not 0 <= chunk.index < len(meta.chunks) or not meta.chunks[chunk.index].zran:
            raise InvalidImageError(f"{where} of a ZRAN blob has no ZRAN record in the CI", structure="chunk info")
        info = meta.chunks[chunk.index]
        if info.uncompressed_size != chunk.uncompressed_size:
            raise InvalidImageError(f"{where}: {chunk.uncompressed_size:#x} bytes in the bootstrap, "
                                    f"{info.uncompressed_size:#x} in the CI record", structure="chunk info")
        context = meta.zran_contexts[info.context_index]
        if info.context_index not in self._checked:
            check_context(context, info.context_index, getattr(self.reader.source, "size", None))
            self._checked.add(info.context_index)
        return info, context

    def resolve(self, chunk: Chunk) -> Chunk:
        """``chunk`` addressing its whole context's gzip range (what has to be fetched to read it)."""
        _, context = self.record(chunk)
        return Chunk(chunk.digest, chunk.blob_index, context.in_offset, context.in_len, chunk.uncompressed_offset,
                     chunk.uncompressed_size, chunk.file_offset, chunk.index, int(chunk.flags) | _COMPRESSED,
                     chunk.crc32)

    def member(self, chunk: Chunk, raw: bytes) -> bytes:
        """The bytes of ``chunk`` out of ``raw``, its context's gzip range."""
        info, context = self.record(chunk)
        data = self._context(info.context_index, context, raw)
        return data[info.context_offset:info.context_offset + info.uncompressed_size]

    def cached(self, chunk: Chunk) -> bytes | None:
        """The bytes of ``chunk`` when its context is inflated in memory already, else None."""
        if not self._cache:
            return None
        info, _ = self.record(chunk)
        data = self._cache.get(info.context_index)
        if data is None:
            return None
        return data[info.context_offset:info.context_offset + info.uncompressed_size]

    def siblings(self, decoded: list[tuple[Chunk, bytes]]) -> list[tuple[Chunk, bytes]]:
        """The other chunks of the contexts inflated for ``decoded``, with their bytes: what a blob
        cache stores along with the chunks asked for, as nydusd fills its cache with a whole context
        (a later read of any of them then inflates nothing)."""
        meta = self.reader.blob_meta()
        if self._members is None:
            members: dict[int, list[int]] = {}
            for index, info in enumerate(meta.chunks):
                if info.zran:
                    members.setdefault(info.context_index, []).append(index)
            self._members = members
        done = {chunk.index for chunk, _ in decoded}
        out = []
        inflated = {meta.chunks[i].context_index for i in done if 0 <= i < len(meta.chunks) and meta.chunks[i].zran}
        for context_index in inflated:
            data = self._cache.peek(context_index)
            if data is None:
                continue
            context = meta.zran_contexts[context_index]
            for index in self._members.get(context_index, ()):
                info = meta.chunks[index]
                if index in done:
                    continue
                chunk = Chunk(b"", self.reader.blob.index, context.in_offset, context.in_len, info.uncompressed_offset,
                              info.uncompressed_size, 0, index, _COMPRESSED)
                out.append((chunk, data[info.context_offset:info.context_offset + info.uncompressed_size]))
        return out

    def _context(self, index: int, context, raw: bytes) -> bytes:
        data = self._cache.get(index)
        if data is not None:
            return data
        meta = self.reader.blob_meta()
        data = inflate_context(context, meta.zran_dict(index), raw,
                               what=f"ZRAN context {index} of blob {self.reader.blob.blob_id}")
        self._cache.put(index, data)
        return data


def is_zran(blob) -> bool:
    return bool(int(blob.features) & _ZRAN_BLOB)
