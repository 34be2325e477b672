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
import shutil
import tarfile
import threading
from dataclasses import dataclass

from ..io.rangestream import RangeStream
from ..builder.tarstream import normalize_path, open_tar
from ..errors import InvalidArgumentError, InvalidImageError, RafsError
from ..io.source import LocalRangeReader
from .. import tempfiles
from ..tempfiles import umask
from . import documents, spec
from .documents import MAX_JSON_SIZE, digest_hex

COPY_BUFFER = 1 << 20


def _tar_members(path: str):
    """The regular files of the tar at ``path`` as (normalized name, member), headers bounded."""
    with open(path, "rb") as f, open_tar(f) as tar:
        for member in tar:
            if member.isreg():
                yield b"/".join(normalize_path(member.name.encode("utf-8", "surrogateescape"))), member


def is_oci_layout(path) -> bool:
    """Whether ``path`` is an OCI image layout: a directory with ``oci-layout``, or a tar holding one
    (a file that is no readable tar is not one)."""
    path = os.fspath(path)
    if os.path.isdir(path):
        return os.path.exists(os.path.join(path, spec.LAYOUT_FILE))
    if not os.path.isfile(path):
        return False
    try:
        return any(name == spec.LAYOUT_FILE.encode() for name, _ in _tar_members(path))
    except (tarfile.TarError, RafsError, EOFError, OSError):
        return False


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
        documents.layout_file(self.load_json(self._file(spec.LAYOUT_FILE), spec.LAYOUT_FILE))
        self.index = documents.index(self.load_json(self._file(spec.INDEX_FILE), spec.INDEX_FILE), spec.INDEX_FILE)

    def _index_tar(self) -> dict[str, BlobRef]:
        members = {}
        try:
            for name, member in _tar_members(self.path):
                members[name.decode("utf-8", "surrogateescape")] = BlobRef(self.path, member.offset_data, member.size)
        except (tarfile.TarError, EOFError) as exc:
            raise InvalidArgumentError(f"{self.path}: not a readable tar ({exc})") from None
        except RafsError as exc:                   # a header past rafs's bounds
            raise InvalidImageError(f"{self.path}: {exc}", structure="OCI layout archive") from None
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
        """The JSON object in ``ref`` (bounded in size and depth), checked against ``digest`` when given."""
        try:
            data = ref.read(MAX_JSON_SIZE)
        except InvalidImageError as exc:
            raise InvalidImageError(f"{what}: {exc}") from None
        if digest is not None and hashlib.sha256(data).hexdigest() != digest_hex(digest):
            raise InvalidImageError(f"{what}: content does not match its digest {digest}", structure="OCI blob")
        return documents.parse(data, what)

    def blob(self, desc: dict) -> BlobRef:
        """The blob a (checked) descriptor names, its size checked against the file's."""
        hexdigest = digest_hex(desc.get("digest"))
        name = f"{spec.BLOBS_DIR}/sha256/{hexdigest}"
        ref = self._file(name)
        size = desc.get("size")
        if not isinstance(size, int) or size != ref.size:
            raise InvalidImageError(f"blob {desc.get('digest')}: {name} has size {ref.size}, its descriptor "
                                    f"declares {size!r}", structure="OCI descriptor")
        return ref

    def blob_by_digest(self, digest: str) -> BlobRef:
        """The blob stored under ``digest`` whatever its size (for a blob no descriptor of the layout
        sizes, such as the original layer an OCI-ref blob layer names)."""
        return self._file(f"{spec.BLOBS_DIR}/sha256/{digest_hex(digest)}")

    def read_json(self, desc: dict) -> dict:
        """The JSON object a descriptor names, digest verified (its fields not checked)."""
        return self.load_json(self.blob(desc), self._name(desc), desc.get("digest"))

    def read_index(self, desc: dict) -> dict:
        """The image index a descriptor names, every field rafs uses checked."""
        return documents.index(self.read_json(desc), self._name(desc))

    def read_manifest(self, desc: dict) -> dict:
        """The image manifest a descriptor names, every field rafs uses checked."""
        return documents.manifest(self.read_json(desc), self._name(desc))

    def read_config(self, desc: dict) -> dict:
        """The image config a descriptor names, every field rafs uses checked."""
        return documents.config(self.read_json(desc), self._name(desc))

    @staticmethod
    def _name(desc: dict) -> str:
        return f"{spec.BLOBS_DIR}/sha256/{digest_hex(desc.get('digest'))} ({desc.get('mediaType') or 'document'})"

    def manifests(self) -> list[dict]:
        """The descriptors of index.json (checked when the layout was opened)."""
        return self.index["manifests"]

    def walk_manifests(self):
        """(descriptor, manifest) of every image manifest reachable from index.json, indexes followed
        at most :data:`~rafs.oci.documents.MAX_INDEX_DEPTH` deep and at most
        :data:`~rafs.oci.documents.MAX_MANIFESTS` descriptors visited."""
        todo = [(desc, 1) for desc in self.manifests()]
        visited = 0
        while todo:
            desc, depth = todo.pop(0)
            visited += 1
            if visited > documents.MAX_MANIFESTS:
                raise InvalidImageError(f"more than {documents.MAX_MANIFESTS} manifest descriptors",
                                        structure="OCI index")
            if desc.get("mediaType") in spec.INDEX_TYPES:
                if depth >= documents.MAX_INDEX_DEPTH:
                    raise InvalidImageError(f"indexes nested deeper than {documents.MAX_INDEX_DEPTH}",
                                            structure="OCI index")
                todo.extend((child, depth + 1) for child in self.read_index(desc)["manifests"])
                continue
            yield desc, self.read_manifest(desc)


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
