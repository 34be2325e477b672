"""Whole-image checks and the description of a RAFS v6 or plain EROFS image.

:func:`verify_structure` walks every inode reachable from the root through the reader's public
questions (inodes, entries, chunks) and reports what does not decode or agree, as ``rafs check`` and
``nydus-image check`` do; :func:`describe_extra` is what ``rafs inspect`` shows of the superblocks and
the device table beyond the version-neutral description. Both take the
:class:`rafs.v6.reader.V6Reader` itself, whose whole image they look at.
"""

from __future__ import annotations

from typing import Iterator

from ..blob.ids import blob_table_faults
from ..errors import InvalidImageError, UnsupportedError
from . import layout


def verify_structure(reader) -> Iterator[str]:
    """Every fault of the image: unusable blob ids (RAFS), inodes, directories and chunk lists that do
    not decode, RAFS chunk indexes that disagree with their chunk info (``c_blk_addr`` = uncompressed
    offset / block size), and chunk table entries invalid for their blob."""
    rafs_chunks = reader.rafs_chunks
    if reader.is_rafs:
        yield from blob_table_faults(blob.blob_id for blob in reader.blobs)
    seen, todo = set(), [reader.root_ino]
    while todo:
        nid = todo.pop()
        if nid in seen:
            continue
        seen.add(nid)
        try:
            inode = reader.inode(nid)
            if inode.is_dir:
                todo.extend(child for _, child in reader.entries(nid))
            elif inode.is_reg:
                reader.chunks(nid)
                if reader.is_rafs:
                    yield from rafs_chunks.address_faults(reader.record(nid))
        except (InvalidImageError, UnsupportedError) as exc:
            yield f"nid {nid}: {exc}"
    yield from rafs_chunks.table_faults()


def describe_extra(reader) -> dict:
    """The superblock fields, device table and (RAFS) superblock extension or (plain EROFS) build time
    and compression settings of the image."""
    sb = reader.superblock
    info = {
        "flavour": "rafs" if reader.is_rafs else "erofs",
        "block_size": reader.block_size,
        "meta_blkaddr": sb.s_meta_blkaddr,
        "root_nid": sb.s_root_nid,
        "inos": sb.s_inos,
        "feature_compat": sb.s_feature_compat,
        "feature_incompat": [name for bit, name in layout.EROFS_FEATURE_INCOMPAT_NAMES.items()
                             if sb.s_feature_incompat & bit],
        "devices": [{"index": i + 1, "tag": dev.blob_id.rstrip(b"\0").decode("ascii", "replace"),
                     "blocks": dev.blocks, "mapped_blkaddr": dev.mapped_blkaddr}
                    for i, dev in enumerate(reader.devices)],
    }
    if reader.superblock_ext is not None:
        ext = reader.superblock_ext
        info["chunk_table_entries"] = ext.s_chunk_table_size // layout.RAFSV6_CHUNK_INFO_SIZE
        info["superblock_ext"] = {key: value for key, value in dict(ext).items()
                                  if not key.startswith("_") and key != "s_reserved"}
    else:
        info["build_time"] = sb.s_build_time
        if sb.s_feature_incompat & (layout.EROFS_FEATURE_INCOMPAT_ZERO_PADDING |
                                    layout.EROFS_FEATURE_INCOMPAT_COMPR_CFGS):
            try:
                info["compression"] = reader.zdata.mapper.describe()
            except (InvalidImageError, UnsupportedError) as exc:
                info["compression"] = {"error": str(exc)}
    return info
