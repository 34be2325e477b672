"""Copying images between a registry and an OCI image layout: :func:`pull` and :func:`push`.

These let every command that works on layouts (``rafs convert``, ``rafs copy``) take ``docker://``
references on either side. Transfers are streamed: a layer goes between the registry and a file in
pieces of :data:`PIECE` bytes, never whole in memory, and every blob is checked against its digest on
the way in.

Pushing follows the distribution spec: a blob the registry already has (``HEAD`` answers 200) is
skipped; otherwise ``POST /v2/<repo>/blobs/uploads/`` opens an upload and one ``PUT <location>?digest=``
sends the blob; manifests and indexes go up last (children first) with ``PUT
/v2/<repo>/manifests/<digest or tag>`` and their own media type as ``Content-Type``.
"""

from __future__ import annotations

import hashlib
import json
import os
from urllib.parse import urlencode, urljoin

from ..errors import InvalidArgumentError, InvalidImageError
from ..io.retry import RetryPolicy
from . import documents, spec
from .reference import fetch_manifest, parse_reference, registry_for

PIECE = 8 << 20                                   # bytes per ranged GET while pulling a blob
UPLOAD_TIMEOUT = 3600.0                           # seconds one blob upload may take
MAX_UPLOAD_ANSWER = 1 << 20


def retry_policy(options: dict) -> RetryPolicy:
    """The retry policy ``options`` ask for (``retry_limit``, taken out of them)."""
    limit = options.pop("retry_limit", None)
    return RetryPolicy() if limit is None else RetryPolicy(limit=limit)


def pull(source: str, target, options: dict | None = None) -> str:
    """Write the image ``source`` (a ``docker://`` reference: a manifest, or an index with every
    manifest in it) into a new OCI layout at ``target``; returns ``target``."""
    from .layout import LayoutWriter
    ref = parse_reference(source)
    options = dict(options or {})
    retry = retry_policy(options)
    registry = registry_for(ref, options)
    retry.secrets = registry.secrets()
    writer = LayoutWriter(target)
    try:
        top = _pull_document(registry, writer, ref.name, ref.digest, f"manifest {ref.name} of {ref}", retry)
        annotations = {spec.REF_NAME: ref.tag} if ref.tag else {}
        return writer.commit({"schemaVersion": 2, "mediaType": spec.OCI_INDEX,
                              "manifests": [{**top, **({"annotations": annotations} if annotations else {})}]})
    except BaseException:
        writer.discard()
        raise


def _pull_document(registry, writer, name: str, digest: str | None, what: str, retry, depth: int = 0) -> dict:
    """Pull a manifest or index (and all it refers to) into ``writer``; its descriptor."""
    if depth > documents.MAX_INDEX_DEPTH:
        raise InvalidImageError(f"indexes nested more than {documents.MAX_INDEX_DEPTH} deep", structure=what)
    body, actual, content_type = fetch_manifest(registry, name, what, digest, retry)
    document = documents.parse(body, what)
    media_type = document.get("mediaType") or content_type
    if "manifests" in document or media_type in spec.INDEX_TYPES:
        documents.index(document, what)
        if len(document["manifests"]) > documents.MAX_MANIFESTS:
            raise InvalidImageError(f"{len(document['manifests'])} manifests, more than the "
                                    f"{documents.MAX_MANIFESTS} rafs follows", structure=what)
        for entry in document["manifests"]:
            _pull_document(registry, writer, entry["digest"], entry["digest"],
                           f"manifest {entry['digest']} of {what}", retry, depth + 1)
        media_type = media_type or spec.OCI_INDEX
    else:
        documents.manifest(document, what)
        for desc in [document["config"], *document["layers"]]:
            _pull_blob(registry, writer, desc, retry)
        media_type = media_type or spec.OCI_MANIFEST
    writer.add_bytes(body)
    return {"mediaType": media_type, "digest": actual, "size": len(body)}


def _pull_blob(registry, writer, desc: dict, retry) -> None:
    from ..io.registry import RegistryBlobReader
    digest, size = desc["digest"], desc["size"]
    if os.path.exists(writer.blob_path(digest)):
        return
    reader = RegistryBlobReader(registry, documents.digest_hex(digest, "OCI descriptor"), retry)
    tmp = writer.temp_file()
    hasher = hashlib.sha256()
    with open(tmp, "wb") as out:
        for offset in range(0, size, PIECE):
            piece = reader.read_range(offset, min(PIECE, size - offset))
            hasher.update(piece)
            out.write(piece)
    if "sha256:" + hasher.hexdigest() != digest:
        os.unlink(tmp)
        raise InvalidImageError(f"content hashes to sha256:{hasher.hexdigest()}", structure=f"blob {digest}")
    writer.add_file(tmp, digest)


def push(source, target: str, options: dict | None = None, *, mount_from: str | None = None) -> str:
    """Push the OCI layout ``source`` (its one top-level manifest or index) to ``target`` (a
    ``docker://`` reference); returns the digest of what was pushed. ``mount_from`` names another
    repository of the same registry whose blobs are mounted rather than uploaded."""
    from .layout import OciLayout
    ref = parse_reference(target)
    options = dict(options or {})
    retry = retry_policy(options)
    registry = registry_for(ref, options)
    registry.auth.scope = f"repository:{ref.repo}:pull,push"
    retry.secrets = registry.secrets()
    registry.client.timeout = max(registry.client.timeout, UPLOAD_TIMEOUT)
    layout = OciLayout(source)
    tops = layout.manifests()
    if len(tops) != 1:
        raise InvalidArgumentError(f"{source}: index.json lists {len(tops)} images; push needs exactly one")
    digest = _push_document(registry, layout, tops[0], retry, mount_from=mount_from)
    if ref.digest and ref.digest != digest:
        raise InvalidArgumentError(f"{ref}: the image to push is {digest}, not the digest the reference names")
    _put_manifest(registry, layout, tops[0], ref.tag or digest, retry)
    return digest


def _push_document(registry, layout, desc: dict, retry, depth: int = 0, *, mount_from: str | None = None) -> str:
    """Push what ``desc`` (a manifest or index of ``layout``) refers to, then the children by digest."""
    if depth > documents.MAX_INDEX_DEPTH:
        raise InvalidImageError(f"indexes nested more than {documents.MAX_INDEX_DEPTH} deep", structure="index")
    document = layout.read_json(desc)
    if "manifests" in document or desc.get("mediaType") in spec.INDEX_TYPES:
        for entry in documents.index(document, desc["digest"])["manifests"]:
            _push_document(registry, layout, entry, retry, depth + 1, mount_from=mount_from)
            _put_manifest(registry, layout, entry, entry["digest"], retry)
    else:
        manifest = documents.manifest(document, desc["digest"])
        for blob in [manifest["config"], *manifest["layers"]]:
            push_blob(registry, retry, blob["digest"], blob["size"], lambda blob=blob: layout.blob(blob).open(),
                      mount_from=mount_from)
    return desc["digest"]


def push_blob(registry, retry, digest: str, size: int, open_blob, *, mount_from: str | None = None) -> None:
    """Put one blob into ``registry``'s repository: nothing when it is there already (``HEAD``), a
    cross-repository mount from ``mount_from`` (same registry) when that repository has it, else an
    upload of ``open_blob()`` (a binary stream of ``size`` bytes)."""
    what = f"blob {digest}"

    def exists() -> bool:
        try:
            registry.request("HEAD", f"blobs/{digest}", what)
            return True
        except FileNotFoundError:
            return False

    if retry.call(exists, f"{registry.describe()}: {what} (exists?)"):
        return

    def upload() -> None:
        query = "?" + urlencode({"mount": digest, "from": mount_from}) if mount_from else ""
        response, _ = registry.request("POST", f"blobs/uploads/{query}", f"upload of {what}", body=b"",
                                       headers={"Content-Length": "0"}, limit=MAX_UPLOAD_ANSWER)
        if mount_from and response.status == 201:
            return                                   # mounted: the registry shares the blob it has
        location = response.getheader("Location")
        if not location:
            raise InvalidImageError("the registry opened an upload without a Location", structure=what)
        url = urljoin(registry.base, location)
        url += ("&" if "?" in url else "?") + urlencode({"digest": digest})
        with open_blob() as body:
            registry.request_url("PUT", url, f"upload of {what}", body=body, limit=MAX_UPLOAD_ANSWER,
                                 headers={"Content-Type": "application/octet-stream", "Content-Length": str(size)})

    retry.call(upload, f"{registry.describe()}: upload of {what}")


def _put_manifest(registry, layout, desc: dict, name: str, retry) -> None:
    data = layout.blob(desc).read(documents.MAX_JSON_SIZE)
    media_type = desc.get("mediaType") or json.loads(data).get("mediaType") or spec.OCI_MANIFEST
    retry.call(lambda: registry.request("PUT", f"manifests/{name}", f"manifest {name}", body=data,
                                        headers={"Content-Type": media_type, "Content-Length": str(len(data))},
                                        limit=MAX_UPLOAD_ANSWER),
               f"{registry.describe()}: manifest {name}")
