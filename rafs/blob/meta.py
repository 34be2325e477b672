"""Blob meta: the per-chunk compression-context (CI) array of a RAFS v6 data blob (storage/src/meta/mod.rs).

RAFS v6 bootstraps address file data by (blob, chunk index); the CI array says where chunk ``i`` lies in
the blob file (compressed offset/size) and in the blob's decompressed address space (uncompressed
offset/size), and how it is stored. The array (v1 records of 16 bytes, or v2 records of 24 bytes
followed by batch or ZRAN inflate contexts and ZRAN dictionaries) is compressed as a unit at
``ci_offset`` and followed by its 4096-byte header. nydusd keeps a decompressed copy in its cache as
``<blob id>.blob.meta``: the CI data zero-padded to 4 KiB, then the header.

Everything read here is checked against the blob table and against sizes before it is allocated;
every fault is an InvalidImageError. Encrypted CI arrays and their headers (AES-128-XTS, with the key
and IV of the blob table) are decrypted when read with the blob's table entry; without it (a bare
blob) they are refused (UnsupportedError), but their records decode from a nydusd cache file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

from ..errors import InvalidImageError, UnsupportedError
from ..model import (COMPRESSOR_IDS, COMPRESSOR_NAMES, MAX_CHUNK_SIZE, MAX_CHUNKS_PER_BLOB, Blob, BlobFeatures,
                     ChunkFlags)
from . import codecs, crypt
from . import layout as L  # noqa: N812 - the layout module, short in long field expressions
from ..ranges import known_size, opened, read_checked, reads_range
# the records and their encoders, also imported from here
from .ci import (BATCH_CONTEXT, CHUNK_INFO_V1, CHUNK_INFO_V2, CI_HEADER, CI_PAGE, ZRAN_CONTEXT,  # noqa: F401
                 blob_meta_file_bytes, build_ci_header, ci_v1_entry, encode_chunk_info_v1, encode_chunk_info_v2,
                 pack_chunk_infos, parse_ci_header, round_up_4k, write_blob_meta_file)


# Features that change how the CI is laid out or read: they must agree between blob table and header.
_LAYOUT_FEATURES = (BlobFeatures.CHUNK_INFO_V2 | BlobFeatures.ZRAN | BlobFeatures.BATCH
                    | BlobFeatures.ENCRYPTED)
_CONTEXT_FEATURES = BlobFeatures.ZRAN | BlobFeatures.BATCH
# v2 flag byte -> the model's ChunkFlags, for all 32 valid flag bytes (ZRAN has no ChunkFlags bit).
_V2_TO_CHUNK_FLAGS = tuple(
    ChunkFlags((ChunkFlags.COMPRESSED if b & L.CI_V2_FLAG_COMPRESSED else 0)
               | (ChunkFlags.ENCRYPTED if b & L.CI_V2_FLAG_ENCRYPTED else 0)
               | (ChunkFlags.BATCH if b & L.CI_V2_FLAG_BATCH else 0)
               | (ChunkFlags.HAS_CRC32 if b & L.CI_V2_FLAG_HAS_CRC32 and not b & (L.CI_V2_FLAG_BATCH
                                                                                   | L.CI_V2_FLAG_ZRAN) else 0))
    for b in range(L.CI_V2_FLAGS_VALID + 1))
_V1_PLAIN, _V1_COMPRESSED = ChunkFlags(0), ChunkFlags.COMPRESSED
_UNBOUNDED = 1 << 64


class ChunkInfo(NamedTuple):
    """One decoded CI record. ``flags`` are :class:`rafs.model.ChunkFlags`; ZRAN chunks (ranges of a
    gzip stream) set ``zran``; batch and ZRAN chunks carry (``context_index``, ``context_offset``):
    which inflate context holds them and where inside its output they start."""

    compressed_offset: int
    compressed_size: int
    uncompressed_offset: int
    uncompressed_size: int
    flags: ChunkFlags
    crc32: int = 0
    zran: bool = False
    context_index: int = 0
    context_offset: int = 0

    @property
    def is_compressed(self) -> bool:
        return bool(self.flags & ChunkFlags.COMPRESSED)

    @property
    def is_batch(self) -> bool:
        return bool(self.flags & ChunkFlags.BATCH)

    @property
    def context(self) -> tuple[int, int] | None:
        """(context index, offset) of batch and ZRAN chunks, else None."""
        return (self.context_index, self.context_offset) if self.zran or self.is_batch else None


# -- decoding ----------------------------------------------------------------------------------------

@dataclass
class BlobMeta:
    """A decoded CI: its header, the uncompressed CI bytes, the records and the inflate contexts."""

    header: object                      # construct Container of BlobCompressionContextHeader
    header_bytes: bytes
    ci_data: bytes
    chunks: list[ChunkInfo]
    batch_contexts: list = field(default_factory=list)
    zran_contexts: list = field(default_factory=list)
    zran_dicts: bytes = b""

    @property
    def version(self) -> int:
        return 2 if self.header.s_features & BlobFeatures.CHUNK_INFO_V2 else 1

    def zran_dict(self, index: int) -> bytes:
        ctx = self.zran_contexts[index]
        return self.zran_dicts[ctx.dict_offset:ctx.dict_offset + ctx.dict_size]

    def file_bytes(self) -> bytes:
        """This CI as a nydusd ``.blob.meta`` cache file."""
        return blob_meta_file_bytes(self.ci_data, self.header_bytes)


def check_ci_layout(features: int, entries: int, compressed_size: int, uncompressed_size: int,
                    compressor: int, *, zran_offset: int = 0, zran_size: int = 0, zran_count: int = 0,
                    with_contexts: bool = True, where: str = "CI header") -> None:
    """The format's rules on a CI's sizes (storage/src/meta/mod.rs ``validate_header``, tightened):
    v1 records are 16 bytes, v2 24; BATCH/ZRAN/ENCRYPTED need v2 and may add contexts (ZRAN also
    dictionaries of at most 32 KiB per context) after the records, nothing else may."""
    def bad(message):
        raise InvalidImageError(message, structure=where)

    if not 0 < entries <= MAX_CHUNKS_PER_BLOB:
        bad(f"{entries} chunk records (expected 1..{MAX_CHUNKS_PER_BLOB})")
    if compressor not in COMPRESSOR_NAMES:
        bad(f"unknown CI compressor id {compressor}")
    v2 = bool(features & BlobFeatures.CHUNK_INFO_V2)
    extra = features & (_CONTEXT_FEATURES | BlobFeatures.ENCRYPTED)
    if extra and not v2:
        bad(f"features {features:#x}: BATCH, ZRAN and ENCRYPTED need CHUNK_INFO_V2")
    records = entries * (L.ChunkInfoV2Ondisk.sizeof() if v2 else L.ChunkInfoV1Ondisk.sizeof())
    if features & BlobFeatures.ZRAN:
        most = records + entries * (L.INFLATE_CONTEXT_SIZE + L.ZRAN_MAX_DICT_SIZE)
    elif extra:
        most = records + entries * L.INFLATE_CONTEXT_SIZE
    elif not v2 and features & (BlobFeatures.IS_CHUNKDICT_GENERATED | BlobFeatures.TARFS):
        most = max(records, L.BLOB_CCT_V1_MAX_SIZE)
    else:
        most = records
    if not records <= uncompressed_size <= most:
        bad(f"CI of {uncompressed_size} bytes for {entries} v{2 if v2 else 1} records (expected "
            f"{records}{f'..{most}' if most != records else ''})")
    if compressor == COMPRESSOR_IDS["none"] and not features & BlobFeatures.ENCRYPTED:
        if compressed_size != uncompressed_size:
            bad(f"uncompressed CI stored in {compressed_size} bytes, not {uncompressed_size}")
    elif not 0 < compressed_size <= uncompressed_size + (64 if features & BlobFeatures.ENCRYPTED else 0):
        bad(f"compressed CI of {compressed_size} bytes for {uncompressed_size} uncompressed")
    if with_contexts and features & _CONTEXT_FEATURES:
        kind = "ZRAN" if features & BlobFeatures.ZRAN else "batch"
        if zran_offset != records:
            bad(f"{kind} contexts at {zran_offset:#x}, expected right after the records ({records:#x})")
        if zran_offset + zran_size > uncompressed_size:
            bad(f"{kind} contexts [{zran_offset:#x}, +{zran_size:#x}) run past the CI ({uncompressed_size:#x})")
        if zran_count > entries or zran_count * L.INFLATE_CONTEXT_SIZE > zran_size:
            bad(f"{zran_count} {kind} contexts do not fit {zran_size} bytes / {entries} chunks")


def _check_against_blob(header, blob: Blob) -> None:
    """The CI header must describe what the blob table says (the reference's ``validate_header``)."""
    where = f"CI header of blob {blob.blob_id}"
    expected = {"s_ci_entries": blob.chunk_count, "s_ci_offset": blob.ci_offset,
                "s_ci_compressed_size": blob.ci_compressed_size,
                "s_ci_uncompressed_size": blob.ci_uncompressed_size,
                "s_ci_compressor": COMPRESSOR_IDS.get(blob.ci_compressor, -1)}
    for name, value in expected.items():
        if header[name] != value:
            raise InvalidImageError(f"{name} is {header[name]:#x}, the blob table says {value:#x}",
                                    structure=where)
    if (header.s_features ^ blob.features) & _LAYOUT_FEATURES:
        raise InvalidImageError(f"features {header.s_features:#x} disagree with the blob table's "
                                f"{blob.features:#x}", structure=where)


def _check_header(header, where: str) -> None:
    check_ci_layout(header.s_features, header.s_ci_entries, header.s_ci_compressed_size,
                    header.s_ci_uncompressed_size, header.s_ci_compressor, zran_offset=header.s_ci_zran_offset,
                    zran_size=header.s_ci_zran_size, zran_count=header.s_ci_zran_count, where=where)


def _refuse_encrypted(features: int, what: str) -> None:
    if features & BlobFeatures.ENCRYPTED:
        raise UnsupportedError(f"{what} is encrypted (AES-128-XTS): rafs does not decrypt CI arrays; a nydusd "
                               "'.blob.meta' cache file of it can be read with load_blob_meta_file")


def decode_blob_meta(header_bytes: bytes, ci_data, *, compressed_limit: int | None = None,
                     uncompressed_limit: int | None = None) -> BlobMeta:
    """Decode and check the records and contexts of an uncompressed CI.

    Every record must lie within ``compressed_limit`` bytes of the blob file and
    ``uncompressed_limit`` bytes of its decompressed space (when given), use only known flags, and
    point at an existing batch/ZRAN context with a range inside that context's output.
    """
    header = parse_ci_header(header_bytes)
    where = "CI header"
    _check_header(header, where)
    if len(ci_data) != header.s_ci_uncompressed_size:
        raise InvalidImageError(f"CI data of {len(ci_data)} bytes, header says {header.s_ci_uncompressed_size}",
                                structure=where)
    features, count = header.s_features, header.s_ci_entries
    batch_contexts, zran_contexts, zran_dicts = [], [], b""
    if features & _CONTEXT_FEATURES:
        start, n = header.s_ci_zran_offset, header.s_ci_zran_count
        if features & BlobFeatures.ZRAN:
            zran_contexts = list(ZRAN_CONTEXT.iter_unpack(ci_data, start, n))
            dict_start = start + n * L.INFLATE_CONTEXT_SIZE
            zran_dicts = bytes(ci_data[dict_start:start + header.s_ci_zran_size])
            for i, ctx in enumerate(zran_contexts):
                if ctx.dict_size > L.ZRAN_MAX_DICT_SIZE or ctx.dict_offset + ctx.dict_size > len(zran_dicts):
                    raise InvalidImageError(f"ZRAN context {i}: dictionary [{ctx.dict_offset:#x}, "
                                            f"+{ctx.dict_size:#x}) outside the {len(zran_dicts)}-byte table",
                                            structure="ZRAN inflate context")
        else:
            batch_contexts = list(BATCH_CONTEXT.iter_unpack(ci_data, start, n))
    climit = _UNBOUNDED if compressed_limit is None else compressed_limit
    ulimit = _UNBOUNDED if uncompressed_limit is None else uncompressed_limit
    if features & BlobFeatures.CHUNK_INFO_V2:
        chunks = _decode_v2(ci_data, count, features, climit, ulimit, batch_contexts, zran_contexts)
    else:
        chunks = _decode_v1(ci_data, count, climit, ulimit)
    if batch_contexts:
        _check_batches(chunks, batch_contexts)
    return BlobMeta(header, bytes(header_bytes), bytes(ci_data), chunks, batch_contexts, zran_contexts, zran_dicts)


def _check_batches(chunks: list[ChunkInfo], contexts) -> None:
    """Every batch within the chunk size limit, its members at one compressed offset (where the
    batch starts) and not overlapping inside its uncompressed buffer."""
    for i, ctx in enumerate(contexts):
        if not 0 < ctx.compressed_size <= 2 * MAX_CHUNK_SIZE or ctx.uncompressed_batch_size > MAX_CHUNK_SIZE:
            raise InvalidImageError(f"batch {i}: {ctx.compressed_size} compressed / {ctx.uncompressed_batch_size} "
                                    "uncompressed bytes, outside the 16 MiB chunk limit",
                                    structure="batch inflate context")
    members: dict[int, list] = {}
    for index, info in enumerate(chunks):
        if info.is_batch:
            members.setdefault(info.context_index, []).append((info.context_offset, info.uncompressed_size,
                                                              info.compressed_offset, index))
    for batch, entries in members.items():
        entries.sort()
        start = entries[0][2]
        end = 0
        for offset, size, compressed_offset, index in entries:
            if compressed_offset != start:
                raise _bad_chunk(index, f"batch {batch} starts at {compressed_offset:#x} for this member, at "
                                 f"{start:#x} for another")
            if offset < end:
                raise _bad_chunk(index, f"its range [{offset:#x}, +{size:#x}) overlaps another member of "
                                 f"batch {batch}")
            end = offset + size


def _bad_chunk(index: int, message: str) -> InvalidImageError:
    return InvalidImageError(f"chunk {index}: {message}", structure="CI record")


def _decode_v1(ci_data, count: int, climit: int, ulimit: int) -> list[ChunkInfo]:
    mask, shift = L.BLOB_CCT_CHUNK_SIZE_MASK, L.CI_V1_SIZE_LOW_SHIFT
    coff_mask, uoff_mask = L.CI_V1_COMP_OFFSET_MASK, L.CI_V1_UNCOMP_OFFSET_MASK
    chigh, uhigh = L.CI_V1_COMP_SIZE_HIGH_BITS, L.CI_V1_UNCOMP_SIZE_HIGH_BITS
    cshift, ushift = L.CI_V1_COMP_SIZE_HIGH_SHIFT, L.CI_V1_UNCOMP_SIZE_HIGH_SHIFT
    view = memoryview(ci_data)[:count * CHUNK_INFO_V1.size]
    chunks = []
    append = chunks.append
    for uncomp, comp in CHUNK_INFO_V1.struct.iter_unpack(view):
        usize = ((uncomp >> shift | (uncomp & uhigh) << ushift) & mask) + 1
        csize = ((comp >> shift | (comp & chigh) >> cshift) & mask) + 1
        coff, uoff = comp & coff_mask, uncomp & uoff_mask
        if coff + csize > climit or uoff + usize > ulimit:
            raise _bad_chunk(len(chunks), f"[{coff:#x}, +{csize:#x}) / [{uoff:#x}, +{usize:#x}) runs past the "
                             f"blob ({climit:#x} compressed / {ulimit:#x} uncompressed bytes)")
        append(ChunkInfo(coff, csize, uoff, usize, _V1_COMPRESSED if csize != usize else _V1_PLAIN))
    return chunks


def _decode_v2(ci_data, count: int, features: int, climit: int, ulimit: int, batch_contexts,
               zran_contexts) -> list[ChunkInfo]:
    separate = bool(features & BlobFeatures.SEPARATE)
    zran_blob = bool(features & BlobFeatures.ZRAN)
    batch_blob = bool(features & BlobFeatures.BATCH)
    size_mask = L.BLOB_CCT_CHUNK_SIZE_MASK
    f_compressed, f_zran, f_batch = L.CI_V2_FLAG_COMPRESSED, L.CI_V2_FLAG_ZRAN, L.CI_V2_FLAG_BATCH
    f_encrypted, f_crc = L.CI_V2_FLAG_ENCRYPTED, L.CI_V2_FLAG_HAS_CRC32
    view = memoryview(ci_data)[:count * CHUNK_INFO_V2.size]
    chunks = []
    append = chunks.append
    for uncomp, comp, data in CHUNK_INFO_V2.struct.iter_unpack(view):
        index = len(chunks)
        bits = uncomp >> L.CI_V2_FLAGS_SHIFT
        if bits & ~L.CI_V2_FLAGS_VALID:
            raise _bad_chunk(index, f"unknown flags {bits:#x}")
        uoff = (uncomp & L.CI_V2_UNCOMP_OFFSET_MASK) << L.CI_V2_UNCOMP_OFFSET_SHIFT
        usize = ((uncomp >> L.CI_V2_UNCOMP_SIZE_SHIFT) & size_mask) + 1
        coff, csize = comp & L.CI_V2_COMP_OFFSET_MASK, comp >> L.CI_V2_COMP_SIZE_SHIFT
        is_batch, is_zran = bits & f_batch, bits & f_zran
        if uoff + usize > ulimit:
            raise _bad_chunk(index, f"uncompressed [{uoff:#x}, +{usize:#x}) runs past the blob ({ulimit:#x})")
        if coff + csize > climit:
            raise _bad_chunk(index, f"compressed [{coff:#x}, +{csize:#x}) runs past the blob data ({climit:#x})")
        if not separate and not is_batch and csize == 0:
            raise _bad_chunk(index, "compressed size 0 outside a batch")
        if not bits & (f_encrypted | f_compressed) and csize != usize and not is_batch:
            raise _bad_chunk(index, f"stored uncompressed but sizes differ ({csize} != {usize})")
        context_index = context_offset = crc = 0
        if is_zran or is_batch:
            context_index, context_offset = data >> L.CI_V2_DATA_INDEX_SHIFT, data & L.CI_V2_DATA_LOW_MASK
            if is_zran and is_batch:
                raise _bad_chunk(index, "both BATCH and ZRAN")
            if is_zran:
                if not zran_blob or context_index >= len(zran_contexts):
                    raise _bad_chunk(index, f"ZRAN context {context_index} does not exist")
                out_len = zran_contexts[context_index].out_len
            else:
                if not batch_blob or context_index >= len(batch_contexts):
                    raise _bad_chunk(index, f"batch {context_index} does not exist")
                ctx = batch_contexts[context_index]
                out_len = ctx.uncompressed_batch_size
                if coff + ctx.compressed_size > climit:
                    raise _bad_chunk(index, f"batch at {coff:#x} of {ctx.compressed_size} bytes runs past the "
                                     f"blob data ({climit:#x})")
            if context_offset + usize > out_len:
                raise _bad_chunk(index, f"range [{context_offset:#x}, +{usize:#x}) outside its context's "
                                 f"{out_len:#x} bytes")
        elif bits & f_crc:
            crc = data & L.CI_V2_DATA_LOW_MASK
        append(ChunkInfo(coff, csize, uoff, usize, _V2_TO_CHUNK_FLAGS[bits], crc, bool(is_zran),
                         context_index, context_offset))
    return chunks


# -- loading from a blob, a blob's tail, or a nydusd cache file --------------------------------------

def _compressed_limit(features: int, ci_offset: int, compressed_size: int | None) -> int | None:
    # Native blobs keep chunk data in front of the CI (and within the blob's compressed size);
    # SEPARATE/ZRAN chunks address the original (tar.gz) layer, bounded only by its size.
    if features & (BlobFeatures.SEPARATE | BlobFeatures.ZRAN):
        return compressed_size or None
    return min(ci_offset, compressed_size) if compressed_size else ci_offset


def _read_ci(header, header_bytes: bytes, raw_ci: bytes, *, what: str, compressed_limit,
             uncompressed_limit) -> BlobMeta:
    compressor = COMPRESSOR_NAMES[header.s_ci_compressor]
    ci_data = codecs.decompress(compressor, raw_ci, header.s_ci_uncompressed_size, what=what,
                                offset=header.s_ci_offset)
    return decode_blob_meta(header_bytes, ci_data, compressed_limit=compressed_limit,
                            uncompressed_limit=uncompressed_limit)


def load_blob_meta(blob: Blob, source) -> BlobMeta:
    """Read, check and decode the CI of ``blob`` from ``source`` (the data blob, or the RAFS meta blob
    for SEPARATE blobs: whichever file ``blob.ci_offset`` refers to)."""
    what = f"CI of blob {blob.blob_id}"
    encrypted = blob.cipher not in ("none", "")
    if bool(blob.features & BlobFeatures.ENCRYPTED) != encrypted:
        raise InvalidImageError(f"blob {blob.blob_id}: the ENCRYPTED feature and the cipher "
                                f"{blob.cipher!r} disagree", structure="blob table")
    check_ci_layout(blob.features, blob.chunk_count, blob.ci_compressed_size, blob.ci_uncompressed_size,
                    COMPRESSOR_IDS.get(blob.ci_compressor, -1), with_contexts=False,
                    where=f"blob table entry of {blob.blob_id}")
    with opened(source) as reader:
        raw = read_checked(reader, blob.ci_offset, blob.ci_compressed_size + L.BLOB_CCT_HEADER_SIZE, what)
    raw_ci, header_bytes = raw[:blob.ci_compressed_size], raw[blob.ci_compressed_size:]
    if encrypted:
        # the builder encrypts the compressed CI and the header, each as one XTS message (rafs.blob.crypt)
        raw_ci = crypt.decrypt(blob.cipher, blob.cipher_key, blob.cipher_iv, raw_ci, what=what)
        header_bytes = crypt.decrypt(blob.cipher, blob.cipher_key, blob.cipher_iv, header_bytes,
                                     what=f"CI header of blob {blob.blob_id}")
    header = parse_ci_header(header_bytes)
    _check_against_blob(header, blob)
    _check_header(header, f"CI header of blob {blob.blob_id}")
    return _read_ci(header, header_bytes, raw_ci, what=what,
                    compressed_limit=_compressed_limit(blob.features, blob.ci_offset, blob.compressed_size),
                    uncompressed_limit=round_up_4k(blob.uncompressed_size) if blob.uncompressed_size else None)


def load_chunk_infos(blob: Blob, source) -> list[ChunkInfo]:
    """The decoded CI records of ``blob`` (empty for a blob without chunks); see :func:`load_blob_meta`."""
    if blob.chunk_count == 0 and blob.ci_compressed_size == 0 and blob.ci_uncompressed_size == 0:
        return []
    return load_blob_meta(blob, source).chunks


@reads_range
def read_blob_meta_at(source, header_offset: int) -> BlobMeta:
    """Decode the CI whose header sits at ``header_offset`` of a blob file, trusting only the header
    (for inspecting a blob without its bootstrap): the CI must end exactly where the header starts."""
    header_bytes = read_checked(source, header_offset, L.BLOB_CCT_HEADER_SIZE, "CI header")
    header = parse_ci_header(header_bytes)
    if header.s_ci_offset + header.s_ci_compressed_size != header_offset:
        raise InvalidImageError(f"CI [{header.s_ci_offset:#x}, +{header.s_ci_compressed_size:#x}) does not end "
                                f"at its header ({header_offset:#x})", structure="CI header", offset=header_offset)
    _refuse_encrypted(header.s_features, "the blob's CI")
    _check_header(header, "CI header")
    raw = read_checked(source, header.s_ci_offset, header.s_ci_compressed_size, "CI")
    return _read_ci(header, header_bytes, raw, what="CI",
                    compressed_limit=_compressed_limit(header.s_features, header.s_ci_offset, None),
                    uncompressed_limit=None)


@reads_range
def load_blob_meta_file(source, blob: Blob | None = None) -> BlobMeta:
    """Decode a nydusd ``<blob id>.blob.meta`` cache file (bytes, a file object or a RangeReader).

    With ``blob`` the header must match the blob table, as nydusd requires before trusting the file;
    without it the header alone describes the data.
    """
    size = known_size(source)
    if size < L.BLOB_CCT_HEADER_SIZE or size % CI_PAGE:
        raise InvalidImageError(f"blob.meta file of {size} bytes is not 4 KiB aligned data + header",
                                structure="blob.meta file")
    header_bytes = source.read_range(size - L.BLOB_CCT_HEADER_SIZE, L.BLOB_CCT_HEADER_SIZE)
    header = parse_ci_header(header_bytes)
    if blob is not None:
        _check_against_blob(header, blob)
    _check_header(header, "blob.meta file header")
    expected = L.BLOB_CCT_HEADER_SIZE + round_up_4k(header.s_ci_uncompressed_size)
    if size != expected:
        raise InvalidImageError(f"blob.meta file of {size} bytes, its header implies {expected}",
                                structure="blob.meta file")
    ci_data = source.read_range(0, header.s_ci_uncompressed_size)
    features = header.s_features
    if blob is not None:
        climit = _compressed_limit(blob.features, blob.ci_offset, blob.compressed_size)
        ulimit = round_up_4k(blob.uncompressed_size) if blob.uncompressed_size else None
    else:
        climit, ulimit = _compressed_limit(features, header.s_ci_offset, None), None
    return decode_blob_meta(header_bytes, ci_data, compressed_limit=climit, uncompressed_limit=ulimit)
