"""What a data blob holds, as a plain dict for ``rafs blob-info`` and for humans: its sections (found by
walking the trailing tar headers), its ToC, its CI header and chunk records, its inline bootstrap and
its blob id. A nydusd ``<blob id>.blob.meta`` cache file is recognised and described by its CI.
Faults in one part are reported in ``problems`` and do not hide the others.
"""

from __future__ import annotations

from ..errors import InvalidImageError, RafsError
from ..model import COMPRESSOR_NAMES, Blob, BlobFeatures, flag_words
from . import layout
from ..ranges import known_size, reads_range
from .ci import parse_ci_header, round_up_4k
from .meta import BlobMeta, load_blob_meta, load_blob_meta_file, read_blob_meta_at
from .tar_header import walk_sections
from .toc import compute_blob_id, find_inline_bootstrap, read_toc


@reads_range
def describe_blob(source, blob: Blob | None = None, *, chunks: bool = False) -> dict:
    """Describe the blob file ``source`` (bytes, a binary file object or a RangeReader; rafs.io opens paths and URLs).

    With ``blob`` (its entry from a bootstrap) the ToC digest and the CI are checked against the blob
    table; without it the blob describes itself. ``chunks=True`` lists every chunk record.
    """
    size = known_size(source)
    problems: list[str] = []
    info: dict = {"size": size, "blob_id": None, "sections": [], "toc": None, "ci_header": None,
                  "chunk_info_version": None, "chunk_count": None, "batch_contexts": 0, "zran_contexts": 0,
                  "inline_bootstrap": None, "problems": problems}

    def attempt(what, func):
        try:
            return func()
        except RafsError as exc:
            problems.append(f"{what}: {exc}")
            return None

    sections = attempt("sections", lambda: walk_sections(source)) or []
    info["sections"] = [{"name": s.name, "offset": s.offset, "size": s.size, "header_offset": s.header_offset}
                        for s in reversed(sections)]
    toc_digest = blob.toc_digest if blob is not None and blob.toc_size else None
    toc_size = blob.toc_size if blob is not None and blob.toc_size else None
    has_toc = toc_size is not None or any(s.name == layout.TOC_ENTRY_BLOB_TOC for s in sections)
    toc = attempt("ToC", lambda: read_toc(source, digest=toc_digest, size=toc_size)) if has_toc else None
    if toc is not None:
        info["toc"] = {"offset": toc.offset, "size": toc.size, "digest": toc.digest.hex(),
                       "entries": [entry.as_dict() for entry in toc]}

    meta = attempt("CI", lambda: _load_meta(source, size, blob, toc, sections))
    if meta is not None:
        header = meta.header
        info["ci_header"] = {
            "features": header.s_features, "feature_words": flag_words(BlobFeatures, header.s_features),
            "ci_compressor": COMPRESSOR_NAMES.get(header.s_ci_compressor, str(header.s_ci_compressor)),
            "ci_entries": header.s_ci_entries, "ci_offset": header.s_ci_offset,
            "ci_compressed_size": header.s_ci_compressed_size,
            "ci_uncompressed_size": header.s_ci_uncompressed_size, "ci_zran_offset": header.s_ci_zran_offset,
            "ci_zran_size": header.s_ci_zran_size, "ci_zran_count": header.s_ci_zran_count}
        info["chunk_info_version"] = meta.version
        info["chunk_count"] = len(meta.chunks)
        info["batch_contexts"] = len(meta.batch_contexts)
        info["zran_contexts"] = len(meta.zran_contexts)
        if chunks:
            info["chunks"] = [_chunk_dict(i, c) for i, c in enumerate(meta.chunks)]

    entry = attempt("inline bootstrap", lambda: find_inline_bootstrap(source))
    if entry is not None:
        boot = entry.as_dict()
        info["inline_bootstrap"] = {"offset": entry.compressed_offset, **{
            key: boot[key] for key in ("compressed_size", "uncompressed_size", "compressor")}}
    info["blob_id"] = attempt("blob id", lambda: compute_blob_id(source))
    return info


def _load_meta(src, size: int, blob: Blob | None, toc, sections) -> BlobMeta | None:
    if blob is not None and blob.ci_compressed_size and not blob.has(BlobFeatures.SEPARATE):
        return load_blob_meta(blob, src)
    header_at = None
    entry = toc.get(layout.TOC_ENTRY_BLOB_META_HEADER) if toc is not None else None
    if entry is not None:
        header_at = entry.compressed_offset
    else:
        for section in sections:
            if section.name == layout.TOC_ENTRY_BLOB_META and section.size >= layout.BLOB_CCT_HEADER_SIZE:
                header_at = section.end - layout.BLOB_CCT_HEADER_SIZE
        if header_at is None and not sections and size >= layout.BLOB_CCT_HEADER_SIZE:
            # a plain v6 blob ends with its CI header
            header_at = size - layout.BLOB_CCT_HEADER_SIZE
            try:
                header = parse_ci_header(src.read_range(header_at, layout.BLOB_CCT_HEADER_SIZE))
            except InvalidImageError:
                return None
            if header.s_ci_offset + header.s_ci_compressed_size != header_at \
                    and size == layout.BLOB_CCT_HEADER_SIZE + round_up_4k(header.s_ci_uncompressed_size):
                return load_blob_meta_file(src)    # a nydusd `<blob id>.blob.meta` cache file
    return read_blob_meta_at(src, header_at) if header_at is not None else None


def _chunk_dict(index: int, chunk) -> dict:
    out = {"index": index, "compressed_offset": chunk.compressed_offset, "compressed_size": chunk.compressed_size,
           "uncompressed_offset": chunk.uncompressed_offset, "uncompressed_size": chunk.uncompressed_size,
           "flags": int(chunk.flags), "zran": chunk.zran}
    if chunk.crc32:
        out["crc32"] = chunk.crc32
    if chunk.context is not None:
        out["context_index"], out["context_offset"] = chunk.context
    return out
