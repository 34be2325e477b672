"""What a blob id may be, and the only way one becomes a file name, a URL or an object key.

A blob id names a data blob wherever blobs are kept: a file in a blob directory (``-D``, localfs
``dir`` and ``alt_dirs``), a URL under an http-proxy address or a blob directory URL, an S3 object key
after ``object_prefix``, and the nydusd cache files ``<id>.blob.data*`` in ``work_dir``. Ids reach rafs
from input it does not control: v5 and v6 blob tables and v6 device slots, merge options and bootstrap
file names, OCI manifests. So an id is held to an allow-list before it names anything, and the path or
URL made from it is checked to stay where it was meant to be.

The rule:

* The reference's own ids are sha256 digests written as 64 lowercase hex digits: the builder's blob
  id, tarfs and ZRAN ids (sha256 of the tar or tar.gz), ``--blob-digests``, an OCI layer digest's hex
  part (:data:`SHA256_ID`).
* The reference also writes and accepts other forms, so they are allowed too, but only as one plain
  name (:data:`BLOB_ID`): the inline-meta placeholder ``"x" * 64``, a merge layer's id taken from its
  bootstrap's file name up to the first dot, ``--original-blob-ids``, ``nydus-image optimize``'s
  ``prefetch-blob``, a user's ``--blob-id`` (v5 and tarfs/estargz builds), rafs's ``erofs-device-N``
  for untagged EROFS devices. Such an id is 1 to :data:`MAX_BLOB_ID_LENGTH` characters from
  ``[A-Za-z0-9._-]`` and starts with a letter or digit. That makes it a single path segment that is
  never ``.`` or ``..``, never absolute, never an option (``-x``) or a hidden file, holds no separator,
  percent escape, query, fragment, NUL or control character, and needs no quoting in a URL or key.

The length limit is twice what a v6 blob-table or device slot holds (64 bytes): room for any id a
v5 table has been seen to carry, while ``<id>.blob.data.chunk_map`` and a temporary name beside it
stay within a file system's 255-byte name limit. The reference's ``--blob-id`` allows up to 255
bytes, which nydusd's own cache could not name; rafs refuses ids that long.

A bootstrap whose table holds an id outside the rule still opens and can be inspected and checked
(:func:`blob_table_faults` reports it); only making a location from it is refused, with an
:class:`~rafs.errors.InvalidImageError` naming the table entry (:func:`image_blob_id`). An id given
by the caller is an :class:`~rafs.errors.InvalidArgumentError` (:func:`check_blob_id`).
"""

from __future__ import annotations

import os
import re
from typing import Iterable, Iterator

from ..errors import InternalError, InvalidArgumentError, InvalidImageError

MAX_BLOB_ID_LENGTH = 128
# The id a bootstrap carried inside its own blob (--blob-inline-meta) records for that blob: the builder
# cannot know the blob's digest while writing it, so readers substitute the id the blob was found under
# (builder/src/lib.rs dump_bootstrap; RAFSV6_INLINE_BLOB_ID_PLACEHOLDER, storage/src/device.rs).
INLINE_BLOB_ID = "x" * 64
SHA256_ID = re.compile(r"[0-9a-f]{64}")
BLOB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,%d}" % (MAX_BLOB_ID_LENGTH - 1))
_SHOWN = 80          # characters of a refused id shown in a message


def blob_id_problem(blob_id) -> str | None:
    """Why ``blob_id`` cannot name a blob, in words for a message; None when it can."""
    if not isinstance(blob_id, str):
        return f"is a {type(blob_id).__name__}, not text"
    if not blob_id:
        return "is empty"
    if len(blob_id) > MAX_BLOB_ID_LENGTH:
        return f"is {len(blob_id)} characters long, over the limit of {MAX_BLOB_ID_LENGTH}"
    if BLOB_ID.fullmatch(blob_id) is None:
        return "is not a plain name of letters, digits, '.', '_' and '-' that starts with a letter or digit"
    return None


def is_blob_id(blob_id) -> bool:
    """Whether ``blob_id`` may name a blob (file, URL segment, object key, cache file)."""
    return blob_id_problem(blob_id) is None


def is_sha256_id(blob_id) -> bool:
    """Whether ``blob_id`` is a sha256 digest as the reference writes ids: 64 lowercase hex digits."""
    return isinstance(blob_id, str) and SHA256_ID.fullmatch(blob_id) is not None


def shown(blob_id) -> str:
    """``blob_id`` for a message: quoted and escaped (no control character reaches a terminal or a
    log line), cut short when long."""
    if not isinstance(blob_id, str):
        return repr(blob_id)[:_SHOWN]
    if len(blob_id) > _SHOWN:
        return repr(blob_id[:_SHOWN]) + f"... ({len(blob_id)} characters)"
    return repr(blob_id)


def check_blob_id(blob_id, what: str = "blob id") -> str:
    """``blob_id`` itself if it may name a blob, else an InvalidArgumentError naming ``what`` (the
    option or source it came from, in the user's words)."""
    problem = blob_id_problem(blob_id)
    if problem is not None:
        raise InvalidArgumentError(f"{what} {shown(blob_id)} {problem}")
    return blob_id


def image_blob_id(blob_id, index: int) -> str:
    """``blob_id`` of blob table entry ``index`` if it may name a blob, else an InvalidImageError: the
    image is at fault, and no file name, URL or key is made from its id."""
    problem = blob_id_problem(blob_id)
    if problem is not None:
        raise InvalidImageError(f"blob id {shown(blob_id)} {problem}; rafs makes no file name, URL or object "
                                "key from it", structure=f"blob table entry {index}")
    return blob_id


def blob_table_faults(blob_ids: Iterable[str]) -> Iterator[str]:
    """One message per id in a blob table (in table order) that cannot name a blob, for ``check``."""
    for index, blob_id in enumerate(blob_ids):
        problem = blob_id_problem(blob_id)
        if problem is not None:
            yield f"blob table entry {index}: blob id {shown(blob_id)} {problem}"


def blob_path(directory, blob_id, what: str = "blob id") -> str:
    """The path of blob ``blob_id`` in ``directory``: the id checked, then the path checked to be a
    direct child of ``directory``.

    The check is on the name, not the resolved path: a symlink the directory's owner put there (blobs
    kept elsewhere) is followed as before, but the image can no longer choose a name that leaves.
    """
    name = check_blob_id(blob_id, what)
    directory = os.fspath(directory)
    path = os.path.join(directory, name)
    if (os.path.dirname(os.path.normpath(path)) or ".") != os.path.normpath(directory):
        raise InternalError(f"blob path {path!r} is not inside {directory!r}")
    return path


def blob_url(prefix: str, blob_id, what: str = "blob id") -> str:
    """``prefix`` (a URL naming a directory; a ``/`` is added if missing) joined with ``blob_id`` as
    one path segment; the result is checked to start with the prefix and to add only that segment."""
    name = check_blob_id(blob_id, what)
    base = prefix if prefix.endswith("/") else prefix + "/"
    url = base + name
    if not url.startswith(base) or "/" in url[len(base):]:
        raise InternalError(f"blob URL {url!r} is not directly under {base!r}")
    return url


def blob_key(prefix: str, blob_id, what: str = "blob id") -> str:
    """The object key of ``blob_id`` under ``prefix`` (nydusd's ``object_prefix + blob_id``, a plain
    concatenation: the prefix need not end in ``/``)."""
    return prefix + check_blob_id(blob_id, what)
