"""Sources whose file data stays where it is: ``targz-ref``/``tar-ref``/``estargz-ref``
(:mod:`rafs.builder.reftar`) and ``tar-tarfs`` (:mod:`rafs.builder.tarfs`).

The one place :class:`rafs.builder.builder.Builder` asks about them: the reference's refusals for the
type, the compressor and digester it forces, and the writer of the RAFS meta blob (or, for tarfs, of
nothing) that replaces the data blob writer.
"""

from __future__ import annotations

from ..model import Node
from ..options import REF_SOURCE_TYPES, TARFS_SOURCE_TYPE
from .reftar import RefBlobWriter, RefLayer, check_ref_options
from .tarfs import TarfsBlobWriter, check_tarfs_options, check_tarfs_outputs

IN_PLACE_TYPES = REF_SOURCE_TYPES + (TARFS_SOURCE_TYPE,)


def load_in_place(source, **options) -> Node:
    """The tree of an in-place source, for library callers of ``SOURCE_TYPES`` (a Builder also makes
    the chunk records)."""
    return RefLayer(source, "targz-ref").load(**options)


def open_in_place(source, source_type: str, *, fs_version: int, prefetch_policy: str, blob_id, encrypt: bool,
                  compressor: str, digester: str, chunk_dict, parent_bootstrap, blob_inline_meta: bool,
                  blob_toc: bool, aligned_chunk: bool) -> RefLayer | None:
    """The :class:`RefLayer` of an in-place source type after the reference's checks, else None."""
    if source_type in REF_SOURCE_TYPES:
        check_ref_options(source_type, fs_version=fs_version, prefetch_policy=prefetch_policy, blob_id=blob_id,
                          encrypt=encrypt, compressor=compressor, digester=digester)
    elif source_type == TARFS_SOURCE_TYPE:
        check_tarfs_options(fs_version=fs_version, prefetch_policy=prefetch_policy, chunk_dict=chunk_dict,
                            parent_bootstrap=parent_bootstrap, blob_inline_meta=blob_inline_meta, blob_toc=blob_toc,
                            aligned_chunk=aligned_chunk, encrypt=encrypt)
    else:
        return None
    return RefLayer(source, source_type)


def forced_algorithms(layer: RefLayer) -> tuple[str, str]:
    """(compressor, digester) the reference forces: gzip/sha256 for *-ref, none/sha256 for tarfs."""
    return ("none" if layer.tarfs else "gzip"), "sha256"


def check_outputs(layer: RefLayer, blob) -> None:
    if layer.tarfs:
        check_tarfs_outputs(blob)


def in_place_writer(layer: RefLayer, out, **options) -> RefBlobWriter:
    return (TarfsBlobWriter if layer.tarfs else RefBlobWriter)(out, layer, **options)
