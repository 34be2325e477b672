"""The rafs exception tree.

Every error rafs raises derives from :class:`RafsError`. The classes also say whose fault it is, in the
manner of pycdlib: :class:`InvalidArgumentError` is the caller's (a wrong option or path),
:class:`InvalidImageError` is the image's (bytes that break the format), :class:`InternalError` is a bug
in rafs. Path errors mix in the matching builtin so ``except FileNotFoundError`` keeps working, and carry
an ``errno`` the FUSE adapter can hand to the kernel.
"""

from __future__ import annotations

import builtins
import errno as _errno


class RafsError(Exception):
    """Root of every rafs exception."""


class InvalidArgumentError(RafsError, ValueError):
    """The caller passed an option, path or value that rafs cannot use."""


class ParameterError(InvalidArgumentError):
    """A wrong value or combination of the caller's parameters, which the message names as fields of
    ``template`` (``"{output} is required unless {localfs_dir} is given"``).

    The message says the library's parameter names (``output is required unless localfs_dir is
    given``); a front end with its own names for them words the same message with :meth:`worded` (the
    ``rafs`` command says its flags: ``--output``, ``--localfs-dir``). ``values`` fill the template's
    other fields, with their conversions (``{blob_id!r}``).
    """

    def __init__(self, template: str, **values):
        self.template = template
        self.values = values
        super().__init__(self.worded(str))

    def worded(self, name) -> str:
        """The message with each parameter ``p`` of the template called ``name(p)`` (a function from a
        parameter name to the words for it)."""
        return self.template.format_map(_Fields(name, self.values))


class _Fields(dict):
    """Fills a :class:`ParameterError` template: its values where given, a parameter's name elsewhere."""

    def __init__(self, name, values: dict):
        super().__init__(values)
        self.name = name

    def __missing__(self, key: str) -> str:
        return self.name(key)


class InvalidImageError(RafsError, ValueError):
    """The bytes of a bootstrap or blob break the format.

    ``structure`` names the on-disk structure at fault (``"v5 superblock"``, ``"v6 inode"``) and
    ``offset`` the byte offset where it starts, when known.
    """

    def __init__(self, message: str, *, structure: str | None = None, offset: int | None = None):
        self.structure = structure
        self.offset = offset
        where = []
        if structure:
            where.append(structure)
        if offset is not None:
            where.append(f"at offset {offset:#x}")
        super().__init__(f"{' '.join(where)}: {message}" if where else message)


class DigestMismatchError(InvalidImageError):
    """Data whose digest differs from the one the image records (a chunk, an inode, a ToC)."""

    def __init__(self, message: str, *, expected: bytes | None = None, actual: bytes | None = None,
                 path: str | None = None, chunk_index: int | None = None, **kwargs):
        self.expected = expected
        self.actual = actual
        self.path = path
        self.chunk_index = chunk_index
        super().__init__(message, **kwargs)


class UnsupportedError(RafsError, NotImplementedError):
    """A valid image or option that uses a feature rafs does not implement (yet)."""


class BlobNotFoundError(RafsError, builtins.FileNotFoundError):
    """A data blob the image needs could not be found where rafs was told to look."""

    def __init__(self, blob_id: str, searched: str):
        from .io.redact import redact_urls
        self.blob_id = blob_id
        self.searched = searched = redact_urls(str(searched))
        super().__init__(_errno.ENOENT, f"blob {blob_id} not found (looked in {searched})")


class BackendError(RafsError, OSError):
    """Storage failed to deliver bytes (after retries): names the blob or object and the range.

    A message never carries a URL's userinfo: whoever builds one, credentials written in a URL are
    replaced by ``***`` here (:func:`rafs.io.redact.redact_urls`).
    """

    def __init__(self, *args):
        from .io.redact import redact_urls
        super().__init__(*(redact_urls(a) if isinstance(a, str) else a for a in args))


class BuildError(RafsError):
    """A build could not be completed; nothing was left half-written."""


class InternalError(RafsError):
    """An internal invariant broke: a bug in rafs, please report it."""


class PathError(RafsError, OSError):
    """Base of errors about a path inside an image; ``errno`` is set like the matching OS error."""

    errno_value = _errno.EIO

    def __init__(self, path, message: str | None = None):
        super().__init__(self.errno_value, message or _errno.errorcode.get(self.errno_value, "error"), path)


class FileNotFoundError(PathError, builtins.FileNotFoundError):  # noqa: A001 - mirrors the builtin
    """No entry of that path in the image (ENOENT); also a :class:`builtins.FileNotFoundError`."""

    errno_value = _errno.ENOENT

    def __init__(self, path, message: str = "No such file or directory in image"):
        super().__init__(path, message)


class NotADirectoryError(PathError, builtins.NotADirectoryError):  # noqa: A001
    """A path component, or the path given to a directory call, is no directory (ENOTDIR)."""

    errno_value = _errno.ENOTDIR

    def __init__(self, path, message: str = "Not a directory"):
        super().__init__(path, message)


class IsADirectoryError(PathError, builtins.IsADirectoryError):  # noqa: A001
    """A file operation on a directory (EISDIR); also a :class:`builtins.IsADirectoryError`."""

    errno_value = _errno.EISDIR

    def __init__(self, path, message: str = "Is a directory"):
        super().__init__(path, message)


class NotASymlinkError(PathError):
    """``readlink`` of something that is not a symbolic link (``EINVAL``, as ``os.readlink``)."""

    errno_value = _errno.EINVAL

    def __init__(self, path, message: str = "Not a symbolic link"):
        super().__init__(path, message)


class NoSuchXattrError(PathError):
    """``getxattr`` of a name the inode does not carry (``ENODATA``)."""

    errno_value = _errno.ENODATA

    def __init__(self, path, message: str = "No such extended attribute"):
        super().__init__(path, message)


class UnsafePathError(PathError):
    """An entry would be written outside the extraction target, or is refused by the filter."""

    errno_value = _errno.EPERM

    def __init__(self, path, message: str = "Refusing to extract outside the target"):
        super().__init__(path, message)


class FileTooLargeError(PathError):
    """A read of one piece larger than rafs hands out whole (``EFBIG``): a file's size is what its image
    declares, so reading it whole would allocate what the image says. Read such a file in pieces."""

    errno_value = _errno.EFBIG

    def __init__(self, path, message: str = "File too large to read whole"):
        super().__init__(path, message)


class ExtractError(PathError):
    """Extraction could not write an entry (the target is a file, not writable, under /proc, a name or
    link too long for the file system); ``errno`` is the operating system's."""

    def __init__(self, path, cause: OSError | str):
        if isinstance(cause, OSError):
            self.errno_value = cause.errno or _errno.EIO
            cause = cause.strerror or str(cause)
        super().__init__(path, f"cannot extract: {cause}")
