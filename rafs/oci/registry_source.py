"""Registry images as the converter's source and target, read and written layer by layer.

``rafs convert docker://A docker://B`` does not pull the source image into a local layout first:
:class:`RegistryLayout` answers the converter's questions (index, manifests, configs) from the
registry, and each source layer is a :class:`RegistryLayer` that the worker converting it opens as a
stream of ranged GETs (:data:`PIECE` bytes each, checked against the layer's digest at its end). A
converted blob is pushed by the worker that made it (:func:`push_layer_blob`), so layers are fetched,
converted and uploaded in parallel and no layer passes through the process that plans the conversion.

Both classes are picklable (a :class:`RegistryEndpoint` is a reference and its options, from which a
worker process or a Dask worker builds its own client). Options can hold credentials: no repr shows
them.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass, field

from ..errors import InvalidImageError
from .reference import Reference, fetch_manifest, parse_reference, registry_for
from .registry_transfer import PIECE, UPLOAD_TIMEOUT, push_blob, retry_policy
from . import documents, spec
from .layout import OciLayout, digest_hex


@dataclass(frozen=True)
class RegistryEndpoint:
    """A repository of a registry (``docker://HOST/REPO[:TAG]``) and the options that reach it (those
    of :func:`rafs.oci.reference.registry_for`: ``insecure``, ``plain_http``, credentials...)."""

    reference: str
    options: dict = field(default_factory=dict, hash=False, compare=False)

    @property
    def parsed(self) -> Reference:
        """``reference`` checked and split (:func:`rafs.oci.reference.parse_reference`)."""
        return parse_reference(self.reference)

    def connect(self, *, push: bool = False):
        """(client, retry policy) for this repository, with push scope when ``push``."""
        options = dict(self.options)
        retry = retry_policy(options)
        ref = self.parsed
        registry = registry_for(ref, options)
        if push:
            registry.auth.scope = f"repository:{ref.repo}:pull,push"
            registry.client.timeout = max(registry.client.timeout, UPLOAD_TIMEOUT)
        retry.secrets = registry.secrets()
        return registry, retry

    def __repr__(self) -> str:
        return f"RegistryEndpoint({self.reference!r})"


class _LayerStream(io.RawIOBase):
    """A blob of a registry as a forward-only stream, read in :data:`PIECE`-byte ranged GETs and
    checked against its digest when the last byte has been read."""

    def __init__(self, layer: "RegistryLayer"):
        from ..io.registry import RegistryBlobReader
        registry, retry = layer.endpoint.connect()
        self._reader = RegistryBlobReader(registry, digest_hex(layer.digest, "OCI descriptor"), retry)
        self._layer = layer
        self._offset = 0
        self._hash = hashlib.sha256()
        self._buffer = b""

    def readable(self) -> bool:
        return True

    def readinto(self, view) -> int:
        if not self._buffer:
            left = self._layer.size - self._offset
            if left <= 0:
                return 0
            self._buffer = self._reader.read_range(self._offset, min(PIECE, left))
            self._offset += len(self._buffer)
            self._hash.update(self._buffer)
            if self._offset == self._layer.size and "sha256:" + self._hash.hexdigest() != self._layer.digest:
                raise InvalidImageError(f"content hashes to sha256:{self._hash.hexdigest()}",
                                        structure=f"blob {self._layer.digest} of {self._layer.endpoint.reference}")
        n = min(len(view), len(self._buffer))
        view[:n] = self._buffer[:n]
        self._buffer = self._buffer[n:]
        return n


@dataclass(frozen=True)
class RegistryLayer:
    """A blob of a registry image, as :class:`rafs.oci.layout.BlobRef` is one of a layout."""

    endpoint: RegistryEndpoint
    digest: str
    size: int

    def open(self):
        """A forward-only binary stream of the blob, its digest checked at the end."""
        return io.BufferedReader(_LayerStream(self), buffer_size=1 << 20)

    def read(self, limit: int) -> bytes:
        if self.size > limit:
            raise InvalidImageError(f"{self.size} bytes, over the {limit}-byte limit", structure="OCI blob")
        with self.open() as f:
            data = f.read()
        if len(data) != self.size:
            raise InvalidImageError(f"short blob: {len(data)} of {self.size} bytes", structure="OCI blob")
        return data


class RegistryLayout(OciLayout):
    """An image in a registry, read as an OCI layout whose index.json lists the one image the
    reference names (a manifest or an index): documents come from the registry when asked for,
    digest-checked, and blobs are :class:`RegistryLayer` streams."""

    def __init__(self, reference: str, options: dict | None = None):       # noqa: D107 - see class
        self.endpoint = RegistryEndpoint(reference, dict(options or {}))
        ref = self.endpoint.parsed
        self.path = str(ref)
        self._members = None
        self._registry, self._retry = self.endpoint.connect()
        body, media_type = self._fetch_manifest(ref.name, ref.digest, f"manifest {ref.name} of {ref}")
        document = documents.parse(body, f"manifest {ref.name} of {ref}")
        media_type = document.get("mediaType") or media_type or (
            spec.OCI_INDEX if "manifests" in document else spec.OCI_MANIFEST)
        top = {"mediaType": media_type, "digest": "sha256:" + hashlib.sha256(body).hexdigest(), "size": len(body)}
        self._documents = {top["digest"]: body}
        if ref.tag:
            top["annotations"] = {spec.REF_NAME: ref.tag}
        self.index = {"schemaVersion": 2, "mediaType": spec.OCI_INDEX, "manifests": [top]}

    def _fetch_manifest(self, name: str, digest: str | None, what: str) -> tuple[bytes, str]:
        body, _, media_type = fetch_manifest(self._registry, name, what, digest, self._retry)
        return body, media_type

    def blob(self, desc: dict) -> RegistryLayer:
        """The blob a descriptor names (its size is the descriptor's, checked as it is read)."""
        digest, size = desc.get("digest"), desc.get("size")
        digest_hex(digest)
        if not isinstance(size, int) or size < 0:
            raise InvalidImageError(f"blob {digest}: size {size!r}", structure="OCI descriptor")
        return RegistryLayer(self.endpoint, digest, size)

    def read_json(self, desc: dict) -> dict:
        """A manifest, index or config a descriptor names, from the registry, digest checked."""
        digest = desc.get("digest")
        what = self._name(desc)
        body = self._documents.get(digest)
        if body is None:
            if desc.get("mediaType") in spec.INDEX_TYPES or desc.get("mediaType") in spec.MANIFEST_TYPES:
                body, _ = self._fetch_manifest(digest, digest, what)
            else:
                body = self.blob(desc).read(documents.MAX_JSON_SIZE)
            self._documents[digest] = body
        return documents.parse(body, what)

    def __repr__(self) -> str:
        return f"RegistryLayout({self.path!r})"


def push_layer_blob(endpoint: RegistryEndpoint, path: str, digest: str, size: int) -> None:
    """Push a converted blob file to the target repository, unless it is there already."""
    registry, retry = endpoint.connect(push=True)
    push_blob(registry, retry, digest, size, lambda: open(path, "rb"))  # noqa: SIM115 - push_blob closes it
