"""Reading the bootstrap out of a Nydus bootstrap layer, streamed and bounded.

nydusify's last layer (annotated ``containerd.io/snapshot/nydus-bootstrap: "true"``) is a tar, gzip
compressed as a rule, holding the bootstrap at ``image/image.boot``. It is input like any other: it
is decompressed as it is read and cut off past the bytes it may hold (:data:`LAYER_SLACK` for headers,
the ``image`` directory and the end blocks, plus the bootstrap's declared size up to
:data:`~rafs.limits.MAX_BOOTSTRAP_SIZE`), so a gzip bomb is refused, never expanded; only
``image/image.boot`` is written out. Used for layouts on disk (:mod:`rafs.oci.check`) and for
registries (:mod:`rafs.oci.reference`).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import shutil
import tarfile
import zlib

from ..builder.tarstream import normalize_path, open_tar
from ..errors import InvalidImageError, RafsError
from ..limits import MAX_BOOTSTRAP_SIZE
from . import spec

# What a bootstrap layer's tar may hold besides image.boot: the headers, the image directory, the end
# blocks and any padding to a record (Go's writer pads nothing, Python's to 10 KiB).
LAYER_SLACK = 1 << 20
COPY_BUFFER = 1 << 20
GZIP_MAGIC = b"\x1f\x8b"


class _BoundedReader(io.RawIOBase):
    """The decompressed bootstrap layer, hashed as it is read and cut off past ``limit`` bytes."""

    def __init__(self, inner, limit: int):
        self._inner, self.limit, self.count = inner, limit, 0
        self.hash = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        data = self._inner.read(len(buffer))
        self.count += len(data)
        if self.count > self.limit:
            raise InvalidImageError(f"decompresses to more than the {self.limit} bytes it may hold",
                                    structure="bootstrap layer")
        self.hash.update(data)
        buffer[:len(data)] = data
        return len(data)


def extract_bootstrap(raw, dst, *, gzipped: bool | None = None) -> str:
    """Copy ``image/image.boot`` of the layer read from ``raw`` into the binary file ``dst``; return
    the layer's diff id (``sha256:`` of the whole uncompressed tar). ``gzipped`` None: told by the
    first bytes when ``raw`` can peek, else gzip as nydusify writes it."""
    if gzipped is None:
        peek = getattr(raw, "peek", None)
        gzipped = peek(2)[:2] == GZIP_MAGIC if peek is not None else True
    wanted = spec.BOOTSTRAP_NAME_IN_LAYER.encode()
    found = False
    plain = _BoundedReader(gzip.GzipFile(fileobj=raw, mode="rb") if gzipped else raw, LAYER_SLACK)
    try:
        with open_tar(plain, "r|") as tar:
            for member in tar:
                if b"/".join(normalize_path(member.name.encode("utf-8", "surrogateescape"))) != wanted:
                    continue
                if found or not member.isreg() or member.size > MAX_BOOTSTRAP_SIZE:
                    raise InvalidImageError(f"{spec.BOOTSTRAP_NAME_IN_LAYER} is not one regular file of at most "
                                            f"{MAX_BOOTSTRAP_SIZE} bytes", structure="bootstrap layer")
                plain.limit += member.size
                with tar.extractfile(member) as src:
                    shutil.copyfileobj(src, dst, COPY_BUFFER)
                found = True
        while plain.read(COPY_BUFFER):             # the diff id covers the whole tar
            pass
    except RafsError:
        raise
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        raise InvalidImageError(f"not a readable tar{'.gz' if gzipped else ''} ({exc})",
                                structure="bootstrap layer") from None
    if not found:
        raise InvalidImageError(f"no {spec.BOOTSTRAP_NAME_IN_LAYER} in it", structure="bootstrap layer")
    return "sha256:" + plain.hash.hexdigest()
