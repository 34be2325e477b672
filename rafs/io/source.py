"""Byte sources: a bootstrap's bytes and ranged reads of blobs, from a path, any fsspec URL, or a file
object. This module knows nothing of inodes or chunks; it moves bytes.
"""

from __future__ import annotations

import errno
import os
import stat

from ..errors import BackendError, InvalidArgumentError, RafsError
# nydusd mmaps a bootstrap; rafs reads a private copy of at most MAX_BOOTSTRAP_SIZE bytes (see load_bytes)
from ..limits import MAX_BOOTSTRAP_SIZE
# FileObjectRangeReader is also imported from here
from ..ranges import FileObjectRangeReader, RangeReader, as_range_reader  # noqa: F401
from .redact import redact_url
from .retry import RetryPolicy, ShortReadError


def is_url(source) -> bool:
    return isinstance(source, str) and "://" in source


def is_http_url(source) -> bool:
    """A plain http(s) URL (not an fsspec chain): read by rafs's own client (:mod:`rafs.io.http`)."""
    return isinstance(source, str) and source.startswith(("http://", "https://")) and "::" not in source


class LocalRangeReader:
    """Ranged reads of a local file through ``os.pread``: thread safe without a lock."""

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        self._fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        self.size = os.fstat(self._fd).st_size

    def read_range(self, offset: int, size: int) -> bytes:
        data = os.pread(self._fd, size, offset)
        if len(data) != size:
            raise BackendError(f"{self.path}: short read of {size} bytes at {offset} (got {len(data)})")
        return data

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __repr__(self) -> str:
        return f"LocalRangeReader({self.path!r}, size={self.size})"


class FsspecRangeReader:
    """Ranged reads through an fsspec filesystem's ``cat_file(path, start, end)``: one ranged request
    per call, no read-ahead buffer (an fsspec file object would fetch whole blocks), transient faults
    retried by ``retry``. Thread safe: fsspec filesystems serve concurrent calls.
    """

    def __init__(self, fs, path: str, *, name: str | None = None, size: int | None = None,
                 retry: RetryPolicy | None = None):
        self.fs = fs
        self.path = path
        self.name = redact_url(name or path)
        self.size = size
        self.retry = retry or RetryPolicy()

    def read_range(self, offset: int, size: int) -> bytes:
        if size <= 0:
            return b""

        def fetch() -> bytes:
            data = self.fs.cat_file(self.path, start=offset, end=offset + size)
            if len(data) > size:
                # the store ignored the range (fsspec has buffered the whole answer by now): asking
                # again would only buffer it again
                raise BackendError(f"{self.name}: answered {len(data)} bytes for a range of {size} bytes at "
                                   f"{offset} (the Range header ignored?)")
            if len(data) != size:
                raise ShortReadError(f"{self.name}: short read of {size} bytes at {offset} (got {len(data)})")
            return data

        return self.retry.call(fetch, f"{self.name} [{offset:#x}, +{size:#x})")

    def read_all(self, limit: int | None = None) -> bytes:
        """The whole object in one request (for bootstraps), refusing more than ``limit`` bytes
        (:data:`MAX_BOOTSTRAP_SIZE`): the size the store declares is checked before reading."""
        limit = MAX_BOOTSTRAP_SIZE if limit is None else limit
        info = self.retry.call(lambda: self.fs.info(self.path), f"{self.name} (size)")
        declared = info.get("size") if isinstance(info, dict) else None
        if isinstance(declared, int) and declared > limit:
            raise InvalidArgumentError(f"{self.name}: larger than the 2 GiB RAFS metadata limit")
        data = self.retry.call(lambda: self.fs.cat_file(self.path), f"{self.name} (whole object)")
        if len(data) > limit:
            raise InvalidArgumentError(f"{self.name}: larger than the 2 GiB RAFS metadata limit")
        return data

    def close(self) -> None:
        pass

    def __repr__(self) -> str:
        return f"FsspecRangeReader({self.name!r})"


def url_to_fs(url: str, storage_options: dict | None = None):
    """(filesystem, path) for an fsspec URL, chained URLs (``a::b://...``) included. fsspec (and
    asyncio, aiohttp, s3fs behind it) is imported here, when a URL is first used, not with rafs."""
    import fsspec.core
    try:
        fs, path = fsspec.core.url_to_fs(url, **(storage_options or {}))
    except (ImportError, ValueError) as exc:
        raise InvalidArgumentError(f"cannot open {redact_url(url)}: {exc}") from None
    if not path.strip("/"):
        raise InvalidArgumentError(f"cannot open {redact_url(url)}: the URL names no bucket or file")
    return fs, path


class HttpRangeReader:
    """Ranged reads of an http(s) URL through :class:`rafs.io.http.HttpClient`: one ranged GET per
    call, each within the client's whole-request deadline, never reading more than asked for;
    transient faults retried by ``retry``. Thread safe.
    """

    def __init__(self, url: str, *, client=None, name: str | None = None, size: int | None = None,
                 retry: RetryPolicy | None = None):
        from .http import HttpClient
        self.url = url
        self.client = client if client is not None else HttpClient()
        self.name = redact_url(name or url)
        self.size = size
        self.retry = retry or RetryPolicy()

    def stat_size(self) -> int | None:
        """The object's size from a HEAD request (None if the server does not say, or refuses HEAD as
        servers of presigned GET URLs do); FileNotFoundError if it is not there."""
        from .http import HEAD_REFUSED, HTTPStatusError

        def head():
            try:
                response, _ = self.client.request("HEAD", self.url)
            except HTTPStatusError as exc:
                if exc.status in HEAD_REFUSED:
                    return None
                raise
            length = response.getheader("Content-Length")
            return int(length) if length and length.isdigit() else None

        return self.retry.call(head, f"{self.name} (size)")

    def read_range(self, offset: int, size: int) -> bytes:
        if size <= 0:
            return b""

        def fetch() -> bytes:
            _, data = self.client.request("GET", self.url, offset=offset, size=size)
            if len(data) != size:
                raise ShortReadError(f"{self.name}: short read of {size} bytes at {offset} (got {len(data)})")
            return data

        return self.retry.call(fetch, f"{self.name} [{offset:#x}, +{size:#x})")

    def read_all(self, limit: int | None = None) -> bytes:
        """The whole object in one GET (for bootstraps), cut off past ``limit`` bytes
        (:data:`MAX_BOOTSTRAP_SIZE`)."""
        limit = MAX_BOOTSTRAP_SIZE if limit is None else limit
        return self.retry.call(lambda: self.client.request("GET", self.url, limit=limit)[1],
                               f"{self.name} (whole object)")

    def close(self) -> None:
        self.client.close()

    def __repr__(self) -> str:
        return f"HttpRangeReader({self.name!r}, size={self.size})"


def open_http(url: str, storage_options: dict | None = None, *, retry: RetryPolicy | None = None,
              client=None) -> HttpRangeReader:
    """An :class:`HttpRangeReader` over ``url`` with its size (HEAD); FileNotFoundError if absent."""
    from .http import HttpClient
    if client is None:
        client = HttpClient.from_options(storage_options)
    reader = HttpRangeReader(url, client=client, retry=retry)
    reader.size = reader.stat_size()
    return reader


def open_range_reader(source, storage_options: dict | None = None, *,
                      retry: RetryPolicy | None = None) -> RangeReader:
    """A RangeReader over a local path, an fsspec URL, an open binary file object or bytes (the last
    two through :func:`rafs.ranges.as_range_reader`)."""
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if is_http_url(path):
            return open_http(path, storage_options, retry=retry)
        if is_url(path) and not path.startswith("file://"):
            fs, fs_path = url_to_fs(path, storage_options)
            if getattr(fs, "protocol", None) in ("file", ("file", "local")) or type(fs).__name__ == "LocalFileSystem":
                return LocalRangeReader(fs_path)
            # info(), not exists(): fsspec's http exists() is an unranged GET, info() a HEAD
            try:
                info = (retry or RetryPolicy()).call(lambda: fs.info(fs_path), f"{path} (size)")
            except FileNotFoundError as exc:
                # fsspec's http says only the URL, also when the host cannot be reached
                cause = exc.__cause__ or exc.__context__
                reason = f"not found or unreachable ({type(cause).__name__}: {cause})" if cause else "not found"
                raise FileNotFoundError(errno.ENOENT, redact_url(reason), redact_url(path)) from None
            if isinstance(info, dict) and info.get("type") == "directory":
                raise InvalidArgumentError(f"{redact_url(path)}: a directory, not a file")
            size = info.get("size") if isinstance(info, dict) else None
            return FsspecRangeReader(fs, fs_path, name=path, retry=retry,
                                     size=size if isinstance(size, int) else None)
        if path.startswith("file://"):
            path = path[len("file://"):]
        return LocalRangeReader(path)
    try:
        return as_range_reader(source)
    except InvalidArgumentError:
        raise InvalidArgumentError(f"cannot read from {type(source).__name__}: expected a path, URL, bytes "
                                   "or a binary file object") from None


def load_bytes(source, storage_options: dict | None = None):
    """The whole content of a bootstrap, as bytes read once (a snapshot).

    Never an mmap: a mapped file truncated while open (a new image copied over a mounted one) turns
    the next access past its new end into SIGBUS, which kills the process (a ``rafs mount`` daemon
    with it). A private copy keeps serving the bootstrap that was opened, whatever happens to the
    file, and costs one read of at most MAX_BOOTSTRAP_SIZE bytes.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        return source
    if hasattr(source, "read"):
        data = source.read(MAX_BOOTSTRAP_SIZE + 1)
        if len(data) > MAX_BOOTSTRAP_SIZE:
            raise InvalidArgumentError("bootstrap larger than the 2 GiB RAFS metadata limit")
        return bytes(data)
    if not isinstance(source, (str, os.PathLike)):
        raise InvalidArgumentError(f"cannot read a bootstrap from {type(source).__name__}")
    path = os.fspath(source)
    if path.startswith("file://"):
        path = path[len("file://"):]
    if is_http_url(path):
        from .http import HttpClient
        return HttpRangeReader(path, client=HttpClient.from_options(storage_options)).read_all()
    if is_url(path):
        fs, fs_path = url_to_fs(path, storage_options)
        try:
            return FsspecRangeReader(fs, fs_path, name=path).read_all()
        except (FileNotFoundError, RafsError):
            raise
        except Exception as exc:  # noqa: BLE001 - fsspec backends raise many types
            raise BackendError(f"cannot read {redact_url(path)}: {exc}") from None
    with open(path, "rb") as f:
        st = os.fstat(f.fileno())
        if stat.S_ISCHR(st.st_mode):           # a terminal or /dev/zero: no end, or none soon
            raise InvalidArgumentError(f"{path}: a character device, not a bootstrap file")
        if not (stat.S_ISREG(st.st_mode) or stat.S_ISBLK(st.st_mode)) or st.st_size == 0:
            # a pipe (``<(...)``, /dev/stdin) or a file whose size stat does not tell (/proc): read it
            data = f.read(MAX_BOOTSTRAP_SIZE + 1)
            if len(data) > MAX_BOOTSTRAP_SIZE:
                raise InvalidArgumentError(f"{path}: larger than the 2 GiB RAFS metadata limit")
            return data
        size = st.st_size if stat.S_ISREG(st.st_mode) else os.lseek(f.fileno(), 0, os.SEEK_END)
        if size > MAX_BOOTSTRAP_SIZE:
            raise InvalidArgumentError(f"{path}: larger than the 2 GiB RAFS metadata limit")
        if size == 0:
            return b""
        # a file truncated meanwhile gives a shorter snapshot, which the reader then refuses as such
        f.seek(0)
        return f.read(size)
