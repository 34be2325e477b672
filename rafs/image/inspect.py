"""Summaries of an image for people and machines: superblock, flags in words, blobs, counts.

``describe(image)`` returns plain data (dicts and lists) that ``rafs inspect --json`` prints as is and
the text form renders as tables. Credentials never appear here: only what the image itself holds.
"""

from __future__ import annotations

import stat as _stat

from ..model import BlobFeatures, SuperFlags, flag_words


def _container_dict(container) -> dict:
    out = {}
    for key, value in dict(container).items():
        if key.startswith("_"):
            continue
        if isinstance(value, (bytes, bytearray)):
            value = value.hex() if any(value) else f"<{len(value)} zero bytes>"
        elif hasattr(value, "items"):
            value = _container_dict(value)
        out[key] = value
    return out


def blob_info(blob) -> dict:
    info = {
        "index": blob.index, "blob_id": blob.blob_id, "compressor": blob.compressor,
        "digester": blob.digester, "chunk_size": blob.chunk_size, "chunk_count": blob.chunk_count,
        "compressed_size": blob.compressed_size, "uncompressed_size": blob.uncompressed_size,
        "features": blob.features, "feature_words": flag_words(BlobFeatures, blob.features),
    }
    if blob.readahead_size:
        info.update(readahead_offset=blob.readahead_offset, readahead_size=blob.readahead_size)
    if blob.ci_offset or blob.ci_uncompressed_size:
        info.update(ci_compressor=blob.ci_compressor, ci_offset=blob.ci_offset,
                    ci_compressed_size=blob.ci_compressed_size, ci_uncompressed_size=blob.ci_uncompressed_size)
    if blob.toc_size:
        info.update(toc_size=blob.toc_size, toc_digest=blob.toc_digest.hex())
    if blob.meta_size:
        info.update(meta_size=blob.meta_size, meta_digest=blob.meta_digest.hex())
    if blob.mapped_blkaddr:
        info["mapped_blkaddr"] = blob.mapped_blkaddr
    if blob.cipher != "none":
        info["cipher"] = blob.cipher          # the key and IV are secrets: never shown
    return info


def stats(image) -> dict:
    """Counts over the whole tree (walks every inode)."""
    counts = {"entries": 0, "inodes": 0, "directories": 0, "files": 0, "symlinks": 0, "hardlinks": 0,
              "devices": 0, "fifos": 0, "sockets": 0, "xattr_inodes": 0, "chunks": 0, "file_bytes": 0}
    seen = set()
    for _, inode in image.iter_entries("/"):
        counts["entries"] += 1
        if inode.ino in seen:
            counts["hardlinks"] += 1
            continue
        seen.add(inode.ino)
        counts["inodes"] += 1
        kind = _stat.S_IFMT(inode.mode)
        if kind == _stat.S_IFDIR:
            counts["directories"] += 1
        elif kind == _stat.S_IFREG:
            counts["files"] += 1
            counts["chunks"] += inode.chunk_count
            counts["file_bytes"] += inode.size
        elif kind == _stat.S_IFLNK:
            counts["symlinks"] += 1
        elif kind in (_stat.S_IFCHR, _stat.S_IFBLK):
            counts["devices"] += 1
        elif kind == _stat.S_IFIFO:
            counts["fifos"] += 1
        elif kind == _stat.S_IFSOCK:
            counts["sockets"] += 1
        if inode.xattrs:
            counts["xattr_inodes"] += 1
    return counts


def describe(image, *, with_stats: bool = True) -> dict:
    reader = image.reader
    info = {
        "version": image.version,
        "bootstrap_size": reader.size,
        "flags": int(reader.flags),
        "flag_words": flag_words(SuperFlags, int(reader.flags)),
        "compressor": image.compressor,
        "digester": image.digester,
        "chunk_size": image.chunk_size,
        "root_ino": reader.root_ino,
        "superblock": _container_dict(image.superblock),
        "blobs": [blob_info(b) for b in image.blobs],
        "prefetch": reader.prefetch_inodes(),
    }
    info.update(reader.describe_extra())
    if with_stats:
        info["stats"] = stats(image)
    return info
