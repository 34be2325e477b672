"""Reading and writing OCI image layouts (image-spec image-layout.md): a directory with
``oci-layout``, ``index.json`` and ``blobs/<algorithm>/<hex>``, or a tar of one.

Everything read is checked: digests are ``sha256:`` + 64 hex digits before they become paths, JSON
documents are size-bounded and verified against their digest, blobs must exist with the size their
descriptor declares. JSON is written the way Go's ``encoding/json`` writes it (what nydusify
produces): compact, keys in the order given, ``<``, ``>`` and ``&`` escaped.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import queue
import re
import shutil
import tarfile
import threading
from dataclasses import dataclass

from ..build.tar import RangeStream, normalize_path
from ..errors import InvalidArgumentError, InvalidImageError
from ..io.source import LocalRangeReader
from . import spec
from .. import tempfiles
from ..tempfiles import umask

MAX_JSON_SIZE = 8 << 20               # manifests, indexes and configs are small; refuse giants
COPY_BUFFER = 1 << 20
_DIGEST = re.compile(r"sha256:([0-9a-f]{64})")


def is_oci_layout(path) -> bool:
    """Whether ``path`` is an OCI image layout: a directory with ``oci-layout``, or a tar holding one."""
    path = os.fspath(path)
    if os.path.isdir(path):
        return os.path.exists(os.path.join(path, spec.LAYOUT_FILE))
    if not os.path.isfile(path) or not tarfile.is_tarfile(path):
        return False
    with tarfile.open(path) as tar:
        return any(b"/".join(normalize_path(m.name.encode("utf-8", "surrogateescape"))) == spec.LAYOUT_FILE.encode()
                   for m in tar)


def digest_hex(digest: str) -> str:
    """The hex part of a ``sha256:`` digest, refusing anything else (it becomes a file name)."""
    match = _DIGEST.fullmatch(str(digest))
    if match is None:
        raise InvalidImageError(f"unsupported or malformed digest {digest!r}", structure="OCI descriptor")
    return match.group(1)


def dump_json(document) -> bytes:
    """``document`` as Go's ``json.Marshal`` writes it."""
    text = json.dumps(document, separators=(",", ":"), ensure_ascii=False)
    for char, escape in (("&", "\\u0026"), ("<", "\\u003c"), (">", "\\u003e"), ("\u2028", "\\u2028"),
                         ("\u2029", "\\u2029")):
        text = text.replace(char, escape)
    return text.encode("utf-8")


def descriptor(media_type: str, digest: str, size: int, *, annotations: dict | None = None,
               platform: dict | None = None, artifact_type: str | None = None) -> dict:
    """An OCI descriptor with its fields in ``ocispec.Descriptor`` order, empty ones left out and
    annotations sorted (Go marshals maps by key)."""
    desc = {"mediaType": media_type, "digest": digest, "size": size}
    if annotations:
        desc["annotations"] = dict(sorted(annotations.items()))
    if platform:
        desc["platform"] = platform
    if artifact_type:
        desc["artifactType"] = artifact_type
    return desc


@dataclass(frozen=True)
class BlobRef:
    """Where a blob's bytes are: ``size`` bytes at ``offset`` of the file ``path`` (picklable, so a
    worker process can open it)."""

    path: str
    offset: int
    size: int

    def open(self):
        """A seekable binary stream of the blob."""
        if self.offset == 0 and os.path.getsize(self.path) == self.size:
            return open(self.path, "rb")                     # noqa: SIM115 - the caller closes it
        return RangeStream(LocalRangeReader(self.path), self.offset, self.size, close_reader=True)

    def read(self, limit: int) -> bytes:
        if self.size > limit:
            raise InvalidImageError(f"{self.size} bytes, over the {limit}-byte limit", structure="OCI blob")
        with self.open() as f:
            data = f.read(self.size)
        if len(data) != self.size:
            raise InvalidImageError(f"short blob: {len(data)} of {self.size} bytes", structure="OCI blob")
        return data


class OciLayout:
    """An OCI image layout to read from: a directory, or a tar archive of one (read in place)."""

    def __init__(self, path):
        self.path = os.fspath(path)
        self._members: dict[str, BlobRef] | None = None
        if os.path.isdir(self.path):
            if not os.path.exists(os.path.join(self.path, spec.LAYOUT_FILE)):
                raise InvalidArgumentError(f"{self.path}: not an OCI image layout (no {spec.LAYOUT_FILE})")
        elif os.path.isfile(self.path):
            self._members = self._index_tar()
            if spec.LAYOUT_FILE not in self._members:
                raise InvalidArgumentError(f"{self.path}: not an OCI image layout archive (no {spec.LAYOUT_FILE})")
        else:
            raise InvalidArgumentError(f"{self.path}: no such OCI image layout")
        layout = json.loads(self._file(spec.LAYOUT_FILE).read(MAX_JSON_SIZE))
        if not isinstance(layout, dict) or "imageLayoutVersion" not in layout:
            raise InvalidImageError("oci-layout without imageLayoutVersion", structure="OCI layout")
        self.index = self.load_json(self._file(spec.INDEX_FILE), "index.json")

    def _index_tar(self) -> dict[str, BlobRef]:
        members = {}
        try:
            with tarfile.open(self.path, mode="r:") as tar:
                for member in tar:
                    if member.isreg():
                        name = b"/".join(normalize_path(member.name.encode("utf-8", "surrogateescape")))
                        members[name.decode("utf-8", "surrogateescape")] = BlobRef(self.path, member.offset_data,
                                                                                  member.size)
        except tarfile.TarError as exc:
            raise InvalidArgumentError(f"{self.path}: not a readable tar ({exc})") from None
        return members

    def _file(self, name: str) -> BlobRef:
        if self._members is not None:
            ref = self._members.get(name)
            if ref is None:
                raise InvalidImageError(f"{name} missing", structure="OCI layout")
            return ref
        path = os.path.join(self.path, name)
        if not os.path.isfile(path):
            raise InvalidImageError(f"{name} missing", structure="OCI layout")
        return BlobRef(path, 0, os.path.getsize(path))

    @staticmethod
    def load_json(ref: BlobRef, what: str, digest: str | None = None) -> dict:
        data = ref.read(MAX_JSON_SIZE)
        if digest is not None and hashlib.sha256(data).hexdigest() != digest_hex(digest):
            raise InvalidImageError(f"{what}: content does not match its digest {digest}", structure="OCI blob")
        try:
            document = json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InvalidImageError(f"{what}: invalid JSON ({exc})", structure="OCI blob") from None
        if not isinstance(document, dict):
            raise InvalidImageError(f"{what}: not a JSON object", structure="OCI blob")
        return document

    def blob(self, desc: dict) -> BlobRef:
        """The blob a descriptor names, its size checked."""
        hexdigest = digest_hex(desc.get("digest"))
        ref = self._file(f"{spec.BLOBS_DIR}/sha256/{hexdigest}")
        size = desc.get("size")
        if not isinstance(size, int) or size != ref.size:
            raise InvalidImageError(f"blob {desc.get('digest')}: size {ref.size} != declared {size!r}",
                                    structure="OCI descriptor")
        return ref

    def read_json(self, desc: dict) -> dict:
        """The JSON document (manifest, index, config) a descriptor names, digest verified."""
        return self.load_json(self.blob(desc), desc.get("mediaType", "document"), desc.get("digest"))

    def manifests(self) -> list[dict]:
        entries = self.index.get("manifests")
        if not isinstance(entries, list):
            raise InvalidImageError("index.json has no manifests list", structure="OCI index")
        return entries


class LayoutWriter:
    """Builds an OCI image layout in a temporary directory beside ``target``; ``commit`` writes
    ``index.json`` and ``oci-layout`` and moves it into place (a directory, which must not exist or
    be empty, or for a target ending in ``.tar`` an archive of it), so a failed conversion leaves
    nothing half-written."""

    def __init__(self, target):
        self.target = os.fspath(target)
        self.as_tar = self.target.endswith(".tar")
        if not self.as_tar and os.path.exists(self.target) and \
                (not os.path.isdir(self.target) or os.listdir(self.target)):
            raise InvalidArgumentError(f"target {self.target} exists and is not an empty directory")
        parent = os.path.dirname(os.path.abspath(self.target))
        os.makedirs(parent, exist_ok=True)
        self.root = tempfiles.mkdtemp(parent, suffix=".oci")
        self.blob_dir = os.path.join(self.root, spec.BLOBS_DIR, "sha256")
        os.makedirs(self.blob_dir, exist_ok=True)

    def blob_path(self, digest: str) -> str:
        return os.path.join(self.blob_dir, digest_hex(digest))

    def temp_file(self) -> str:
        fd, path = tempfiles.mkstemp(self.blob_dir)
        os.close(fd)
        return path

    def add_file(self, path: str, digest: str) -> str:
        """Move a finished blob file into place under its digest."""
        os.replace(path, self.blob_path(digest))
        return digest

    def add_bytes(self, data: bytes) -> tuple[str, int]:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        path = self.blob_path(digest)
        if not os.path.exists(path):
            tmp = self.temp_file()
            with open(tmp, "wb") as f:
                f.write(data)
            self.add_file(tmp, digest)
        return digest, len(data)

    def add_json(self, document) -> tuple[str, int]:
        return self.add_bytes(dump_json(document))

    def copy_blob(self, ref: BlobRef, digest: str) -> None:
        """Copy a source blob in (streamed), unless it is already there."""
        path = self.blob_path(digest)
        if os.path.exists(path):
            return
        tmp = self.temp_file()
        with ref.open() as src, open(tmp, "wb") as dst:
            shutil.copyfileobj(src, dst, COPY_BUFFER)
        self.add_file(tmp, digest)

    def commit(self, index: dict) -> str:
        with open(os.path.join(self.root, spec.LAYOUT_FILE), "wb") as f:
            f.write(dump_json({"imageLayoutVersion": spec.LAYOUT_VERSION}))
        with open(os.path.join(self.root, spec.INDEX_FILE), "wb") as f:
            f.write(dump_json(index))
        if not self.as_tar:
            if os.path.isdir(self.target):
                os.rmdir(self.target)              # empty, as checked at the start
            os.chmod(self.root, 0o755)
            os.rename(self.root, self.target)
            return self.target
        # a unique name beside the target (two conversions to one target never share it, and a link
        # planted there is not followed); the rename then replaces the target whole
        fd, tmp = tempfiles.mkstemp(os.path.dirname(os.path.abspath(self.target)), suffix=".tar")
        try:
            with os.fdopen(fd, "wb") as raw:
                with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
                    for name in (spec.LAYOUT_FILE, spec.INDEX_FILE):
                        tar.add(os.path.join(self.root, name), arcname=name)
                    for name in sorted(os.listdir(self.blob_dir)):
                        if not name.startswith(tempfiles.TEMP_PREFIX):
                            tar.add(os.path.join(self.blob_dir, name), arcname=f"{spec.BLOBS_DIR}/sha256/{name}")
                os.fchmod(raw.fileno(), 0o666 & ~umask())       # what tarfile.open(path) would have made
            os.replace(tmp, self.target)
        except BaseException:
            tempfiles.remove(tmp)
            raise
        shutil.rmtree(self.root)
        return self.target

    def discard(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def sha256_file(path: str) -> str:
    hasher = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(COPY_BUFFER), b""):
            hasher.update(block)
    return "sha256:" + hasher.hexdigest()


class HashingWriter(io.RawIOBase):
    """A write-only file that hashes (sha256) and counts what goes through it.

    With ``background`` the hashing runs on a helper thread (hashlib releases the GIL), overlapping
    with whatever produces the data; ``digest`` waits for it to catch up.
    """

    def __init__(self, out, *, background: bool = False):
        self._out = out
        self._hash = hashlib.sha256()
        self.size = 0
        self._queue = None
        if background:
            self._queue = queue.Queue(maxsize=64)
            self._thread = threading.Thread(target=self._drain, name="rafs-sha256", daemon=True)
            self._thread.start()

    def _drain(self) -> None:
        while True:
            data = self._queue.get()
            if data is None:
                return
            self._hash.update(data)

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        self._out.write(data)
        if self._queue is not None:
            self._queue.put(bytes(data))
        else:
            self._hash.update(data)
        self.size += len(data)
        return len(data)

    def close(self) -> None:
        if self._queue is not None and self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()
        super().close()

    @property
    def digest(self) -> str:
        if self._queue is not None and self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()
        return "sha256:" + self._hash.hexdigest()
