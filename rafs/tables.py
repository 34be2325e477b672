"""Table views of an image: one record (a plain ``dict``) per inode, chunk, blob or directory entry.

Each function returns a :class:`rafs.display.Table`, a ``list`` of dicts that ``pandas.DataFrame``,
``json.dumps`` and ``csv.DictWriter`` take as they are, and that notebooks show as an HTML table.
Values are for analysis: sizes and offsets stay integers, modes are given both as ``ls -l`` strings
and as numbers, times as ISO dates, digests as hex, paths as ``str``.
"""

from __future__ import annotations

from .display import Table, digest, file_type, filemode, timestamp
from .model import flag_words, ChunkFlags

INODE_COLUMNS = ["path", "ino", "type", "mode", "mode_bits", "nlink", "uid", "gid", "size", "mtime", "chunks",
                 "xattrs", "target"]
CHUNK_COLUMNS = ["path", "file_offset", "blob_index", "blob_id", "chunk_index", "compressed_offset",
                 "compressed_size", "uncompressed_offset", "uncompressed_size", "compressed", "digest", "flags"]
BLOB_COLUMNS = ["index", "blob_id", "compressor", "digester", "chunk_size", "chunk_count", "compressed_size",
                "uncompressed_size", "features", "cipher"]
LISTING_COLUMNS = ["mode", "nlink", "uid", "gid", "size", "mtime", "name"]


def _text_path(path: bytes) -> str:
    return path.decode("utf-8", "surrogateescape")


def inodes(image, top="/") -> Table:
    """One record per path under ``top`` (pre-order): its inode's type, mode, owner, size, time, chunk
    count, number of xattrs and symlink target. Hardlinks appear once per path with the same ``ino``."""
    rows = []
    for path, inode in image.iter_entries(top):
        rows.append({
            "path": _text_path(path), "ino": inode.ino, "type": file_type(inode.mode),
            "mode": filemode(inode.mode), "mode_bits": inode.mode, "nlink": inode.nlink, "uid": inode.uid,
            "gid": inode.gid, "size": inode.size, "mtime": timestamp(inode.mtime_ns),
            "chunks": inode.chunk_count if inode.is_reg else 0, "xattrs": len(inode.xattrs),
            "target": _text_path(inode.symlink) if inode.symlink is not None else None,
        })
    return Table(rows, columns=INODE_COLUMNS, title=f"inodes under {top}")


def chunks(image, top="/") -> Table:
    """One record per chunk of every regular file under ``top``, in path then file order; a hardlinked
    file's chunks are listed once, under its first path. Dedup shows as equal ``digest`` values."""
    blob_ids = {blob.index: blob.blob_id for blob in image.blobs}
    rows, seen = [], set()
    for path, inode in image.iter_entries(top):
        if not inode.is_reg or inode.ino in seen:
            continue
        seen.add(inode.ino)
        name = _text_path(path)
        for chunk in image.chunks(name):
            rows.append({
                "path": name, "file_offset": chunk.file_offset, "blob_index": chunk.blob_index,
                "blob_id": blob_ids.get(chunk.blob_index, ""), "chunk_index": chunk.index,
                "compressed_offset": chunk.compressed_offset, "compressed_size": chunk.compressed_size,
                "uncompressed_offset": chunk.uncompressed_offset, "uncompressed_size": chunk.uncompressed_size,
                "compressed": chunk.is_compressed, "digest": digest(chunk.digest),
                "flags": flag_words(ChunkFlags, chunk.flags),
            })
    return Table(rows, columns=CHUNK_COLUMNS, title=f"chunks under {top}")


def blobs(image) -> Table:
    """One record per blob of the image's blob table (never its cipher key or IV)."""
    rows = [{"index": blob.index, "blob_id": blob.blob_id, "compressor": blob.compressor,
             "digester": blob.digester, "chunk_size": blob.chunk_size, "chunk_count": blob.chunk_count,
             "compressed_size": blob.compressed_size, "uncompressed_size": blob.uncompressed_size,
             "features": blob.feature_words, "cipher": blob.cipher} for blob in image.blobs]
    return Table(rows, columns=BLOB_COLUMNS, title="blobs")


def listing(image, path="/") -> Table:
    """The entries of the directory ``path`` as ``ls -l`` shows them, one record each."""
    rows = []
    base = path.rstrip("/") if isinstance(path, str) else _text_path(path).rstrip("/")
    for name in image.listdir(base or "/"):
        text_name = name if isinstance(name, str) else _text_path(name)
        st = image.lstat(f"{base}/{text_name}")
        rows.append({"mode": filemode(st.st_mode), "nlink": st.st_nlink, "uid": st.st_uid, "gid": st.st_gid,
                     "size": st.st_size, "mtime": timestamp(st.st_mtime_ns), "name": text_name})
    return Table(rows, columns=LISTING_COLUMNS, title=f"{base or '/'}")
