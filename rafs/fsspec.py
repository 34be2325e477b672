"""``rafs://``: a RAFS image as a read-only fsspec archive filesystem (like ``zip://`` and ``tar://``).

Registered through the ``fsspec.specs`` entry point, so ``fsspec.open("rafs://etc/passwd::s3://bucket/
meta/image", rafs={"config": "nydusd.json"})`` reads one file of an image stored in S3 lazily, and
``fsspec.filesystem("rafs", fo="image.meta", blob_dir="blobs").ls("/")`` lists it. The constructor takes
``fo`` (bootstrap path, URL or open file), ``target_protocol`` / ``target_options`` (how to reach ``fo``
when it is chained) and the keyword arguments of :func:`rafs.open` (``blob_dir``, ``blobs``, ``config``,
``validate``).

This module only adapts :class:`rafs.Image` to fsspec; it imports the image layer when an instance is
made. It lives at the top of the package, beside the public face it adapts, so that ``rafs.io`` stays
free of inodes and directories.
"""

from __future__ import annotations

import io

from fsspec.archive import AbstractArchiveFileSystem

from .errors import InvalidArgumentError


class RafsFileSystem(AbstractArchiveFileSystem):
    """Read-only view of a RAFS (v5/v6) or EROFS image."""

    protocol = "rafs"
    root_marker = ""

    def __init__(self, fo="", *, target_protocol=None, target_options=None, blob_dir=None, blobs=None,
                 config=None, validate: bool = False, **kwargs):
        super().__init__(**kwargs)
        import rafs
        source = fo
        options = dict(target_options or {})
        if target_protocol and isinstance(fo, str) and "://" not in fo:
            source = f"{target_protocol}://{fo}"
        self.fo = fo
        self.image = rafs.open(source, blob_dir=blob_dir, blobs=blobs, config=config, validate=validate,
                               storage_options=options or None)
        self.dir_cache = None

    @classmethod
    def _strip_protocol(cls, path):
        return super()._strip_protocol(path).lstrip("/")

    def _get_dirs(self):
        if self.dir_cache is not None:
            return
        from .image import fsdecode
        cache = {}
        for raw_path, inode in self.image.iter_entries("/"):
            name = fsdecode(raw_path).lstrip("/")
            if not name:
                continue
            info = {"name": name, "size": inode.size, "mode": inode.mode, "uid": inode.uid, "gid": inode.gid,
                    "mtime": inode.mtime_ns / 1e9, "nlink": inode.nlink, "ino": inode.ino,
                    "type": "directory" if inode.is_dir else "file"}
            if inode.is_dir:
                info["size"] = 0
            elif inode.is_symlink:
                info["islink"] = True
                info["destination"] = fsdecode(inode.symlink or b"")
            cache[name] = info
        self.dir_cache = cache

    def _open(self, path, mode="rb", block_size=None, autocommit=True, cache_options=None, **kwargs):
        if mode != "rb":
            raise InvalidArgumentError(f"rafs:// is read-only: mode {mode!r} is not supported")
        path = self._strip_protocol(path)
        raw = self.image.open("/" + path)
        return io.BufferedReader(raw, buffer_size=block_size or io.DEFAULT_BUFFER_SIZE)

    def cat_file(self, path, start=None, end=None, **kwargs):
        """Bytes ``start``..``end`` of the file ``path`` (all of it by default), as fsspec defines them."""
        path = self._strip_protocol(path)
        with self.image.open("/" + path) as f:
            size = f.size
            start = 0 if start is None else (start if start >= 0 else max(0, size + start))
            end = size if end is None else (end if end >= 0 else max(0, size + end))
            return f.pread(max(0, end - start), start)

    def close(self):
        """Close the image this filesystem serves."""
        self.image.close()
