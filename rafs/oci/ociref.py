"""``nydusify convert --oci-ref``: a Nydus image whose file data stays in the original OCI layers.

What nydusify does with ``--oci-ref`` (contrib/nydusify, through nydus-snapshotter's
pkg/converter/convert_unix.go and tool/builder.go ``packRef``): it forces ``--oci``; each layer is
built, still compressed, with ``nydus-image create --type targz-ref --blob-inline-meta --features
blob-toc`` (:mod:`rafs.builder.reftar`: a RAFS meta blob with the layer's bootstrap and ZRAN contexts;
an uncompressed layer becomes tar-ref). That meta blob is the Nydus blob layer
(``application/vnd.oci.image.layer.nydus.blob.v1``, annotated ``containerd.io/snapshot/nydus-blob:
"true"`` and ``containerd.io/snapshot/nydus-ref: <original layer digest>``). The per-layer bootstraps,
named by the *original* layer digests, are merged with ``--blob-digests``/``--blob-sizes``/
``--blob-toc-digests`` of the meta blobs, so the merged blob table names each blob by its original
layer (the data) and keeps the meta blob's digest, size and ToC digest (where its CI is). The manifest
lists every meta blob layer in layer order, then the bootstrap layer.

The target layout also receives the original layers, unchanged, so that the image reads from it
(a registry serves them from the source repository, where nydusd fetches them by digest).
"""

from __future__ import annotations

import os
import shutil

from .. import tempfiles
from ..errors import InvalidArgumentError
from . import spec
from .layout import BlobRef, descriptor, digest_hex


def check_oci_ref(fs_version: int) -> None:
    if int(fs_version) != 6:
        raise InvalidArgumentError("oci ref can only be supported by fs version 6")


def _layer_path(job) -> tuple[str, bool]:
    """A plain file holding the layer (the ref builders read a path): the layout's own file when the
    layer is all of it, else a copy in the work directory (a layer inside a layout archive, or
    streamed from a registry). (path, whether it is a copy)."""
    source = job.source
    if isinstance(source, BlobRef) and source.offset == 0 and os.path.getsize(source.path) == source.size:
        return source.path, False
    fd, tmp = tempfiles.mkstemp(job.work_dir)
    with os.fdopen(fd, "wb") as dst, source.open() as src:
        shutil.copyfileobj(src, dst, 1 << 20)
    return tmp, True


def convert_ref_layer(job):
    """One OCI layer to its RAFS meta blob (bootstrap inline) in ``job.blob_dir``, named by its sha256;
    the layer's bootstrap is left in ``job.work_dir`` under the *original* layer's hex digest."""
    from ..builder.builder import Builder
    from .convert import store_layer_blob
    path, copied = _layer_path(job)
    try:
        return store_layer_blob(job, lambda out: Builder(path, source_type="targz-ref", chunk_size=job.chunk_size,
                                                         blob_inline_meta=True, features=("blob-toc",)).write_fp(out),
                                boot_name=digest_hex(job.source_digest), toc=True)
    finally:
        if copied:
            tempfiles.remove(path)


def merge_options(results) -> dict:
    """The Merger options nydus-snapshotter's ``Merge`` passes for OCI-ref layers."""
    return {"blob_digests": [r.digest for r in results], "blob_sizes": [r.size for r in results],
            "blob_toc_digests": [r.toc_digest.hex() for r in results]}


def blob_descriptors(results) -> list[dict]:
    """One Nydus blob layer per source layer, in layer order, naming the original layer."""
    return [descriptor(spec.NYDUS_BLOB, r.digest, r.size,
                       annotations={spec.LAYER_NYDUS_BLOB: "true", spec.LAYER_NYDUS_REF: r.source_digest})
            for r in results]


def referenced_layer(desc: dict) -> str | None:
    """The original layer digest an OCI-ref blob layer names, else None."""
    return (desc.get("annotations") or {}).get(spec.LAYER_NYDUS_REF)
