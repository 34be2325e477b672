"""Checking a converted Nydus image as a whole, as ``nydusify check`` does (pkg/checker/rule/*.go):
its manifest (media types and annotations of blob and bootstrap layers, one diff id per layer), every
blob against its digest, the bootstrap in ``image/image.boot`` (sound structure, its blob table
naming exactly the manifest's blob layers, every chunk read and verified), and, given the source
image, that the Nydus filesystem equals the source layers applied in order.
"""

from __future__ import annotations

import hashlib
import os
import stat as _stat
import tempfile
from dataclasses import dataclass, field

from .. import image as _image
from ..builder.overlay import merge_overlay
from ..builder.tar import read_tar
from ..errors import InvalidImageError, RafsError
from ..limits import MAX_BOOTSTRAP_LAYER
from . import spec
from .bootstrap_layer import LAYER_SLACK, extract_bootstrap  # noqa: F401 - LAYER_SLACK also from here
from .layout import COPY_BUFFER, OciLayout, digest_hex


@dataclass
class CheckReport:
    """What was checked and every problem found (the image is sound when ``problems`` is empty)."""

    manifests: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    files_compared: int = 0

    @property
    def ok(self) -> bool:
        """True when no problem was found."""
        return not self.problems


def nydus_manifests(layout: OciLayout) -> list[tuple[dict, dict]]:
    """(descriptor, manifest) of every Nydus manifest of the layout (index entries followed)."""
    found = []
    for desc, manifest in layout.walk_manifests():
        layers = manifest["layers"]
        if layers and (layers[-1].get("annotations") or {}).get(spec.LAYER_NYDUS_BOOTSTRAP) == "true":
            found.append((desc, manifest))
    return found


def check_image(target, *, source=None, verify_data: bool = True) -> CheckReport:
    """Check every Nydus manifest of the layout ``target``; compare with ``source`` (the OCI layout
    it was converted from) when given."""
    report = CheckReport()
    layout = OciLayout(target)
    source_layout = source if source is None or isinstance(source, OciLayout) else OciLayout(source)
    manifests = nydus_manifests(layout)
    if not manifests:
        report.problems.append("no Nydus manifest (one whose last layer is a nydus-bootstrap layer) found")
    for desc, manifest in manifests:
        report.manifests.append(desc["digest"])
        where = f"manifest {desc['digest']}"
        try:
            _check_manifest(layout, desc, manifest, report, where, source_layout, verify_data)
        except RafsError as exc:
            report.problems.append(f"{where}: {exc}")
    return report


def _check_manifest(layout, desc, manifest, report, where, source_layout, verify_data) -> None:
    problems = report.problems
    layers = manifest["layers"]
    blobs, boot = layers[:-1], layers[-1]
    if boot.get("mediaType") not in (spec.OCI_LAYER_GZIP, spec.DOCKER_LAYER_GZIP):
        problems.append(f"{where}: bootstrap layer has media type {boot.get('mediaType')!r}")
    fs_version = (boot.get("annotations") or {}).get(spec.LAYER_FS_VERSION)
    if fs_version not in ("5", "6"):
        problems.append(f"{where}: bootstrap layer fs version annotation is {fs_version!r}")
    for blob in blobs:
        if blob.get("mediaType") != spec.NYDUS_BLOB:
            problems.append(f"{where}: blob layer {blob.get('digest')} has media type {blob.get('mediaType')!r}")
        if (blob.get("annotations") or {}).get(spec.LAYER_NYDUS_BLOB) != "true":
            problems.append(f"{where}: blob layer {blob.get('digest')} lacks {spec.LAYER_NYDUS_BLOB}=true")
        if spec.UNCOMPRESSED in (blob.get("annotations") or {}):
            problems.append(f"{where}: blob layer {blob.get('digest')} still carries {spec.UNCOMPRESSED}")
        _check_digest(layout, blob, problems)

    config = layout.read_config(manifest["config"])
    diff_ids = (config.get("rootfs") or {}).get("diff_ids") or []
    if len(diff_ids) != len(layers):
        problems.append(f"{where}: {len(diff_ids)} diff ids for {len(layers)} layers")
    elif diff_ids[:-1] != [b.get("digest") for b in blobs]:
        problems.append(f"{where}: diff ids of blob layers differ from their digests")

    with tempfile.TemporaryDirectory(prefix="rafs-check-") as tmp:
        bootstrap, diff_id = _extract_bootstrap(layout, boot, tmp)
        if diff_ids and diff_id != diff_ids[-1]:
            problems.append(f"{where}: bootstrap layer diff id {diff_ids[-1]} != sha256 of its tar {diff_id}")
        blob_files = {digest_hex(b["digest"]): layout.blob(b).open() for b in blobs}
        try:
            with _image.open(bootstrap, blobs=blob_files, validate=verify_data) as image:
                if fs_version in ("5", "6") and image.version != int(fs_version):
                    problems.append(f"{where}: bootstrap is RAFS v{image.version}, annotated {fs_version}")
                table = [b.blob_id for b in image.blobs]
                if table != [digest_hex(b["digest"]) for b in blobs]:
                    problems.append(f"{where}: bootstrap blob table {table} differs from the manifest's blob layers")
                problems.extend(f"{where}: {fault}" for fault in image.check(verify_data=verify_data))
                if source_layout is not None:
                    report.files_compared += _compare_with_source(image, source_layout, manifest, where, problems)
        finally:
            for f in blob_files.values():
                f.close()


def _check_digest(layout: OciLayout, desc: dict, problems: list[str]) -> None:
    digest = _sha256(layout.blob(desc))
    if digest != desc["digest"]:
        problems.append(f"blob {desc['digest']}: content hashes to {digest}")


def _sha256(ref) -> str:
    hasher = hashlib.sha256()
    with ref.open() as f:
        for block in iter(lambda: f.read(COPY_BUFFER), b""):
            hasher.update(block)
    return "sha256:" + hasher.hexdigest()


def _extract_bootstrap(layout: OciLayout, desc: dict, directory: str) -> tuple[str, str]:
    """(path of the extracted ``image/image.boot``, diff id of the layer) — the layer's digest checked.

    The layer is streamed: decompressed at most :data:`~rafs.limits.MAX_BOOTSTRAP_SIZE` bytes for the bootstrap
    and :data:`LAYER_SLACK` for everything else (headers, the ``image`` directory, end blocks), and
    only ``image/image.boot`` is written out."""
    ref = layout.blob(desc)
    if ref.size > MAX_BOOTSTRAP_LAYER:
        raise InvalidImageError(f"{ref.size} bytes, over the {MAX_BOOTSTRAP_LAYER}-byte limit",
                                structure="bootstrap layer")
    digest = _sha256(ref)
    if digest != desc["digest"]:
        raise InvalidImageError(f"content hashes to {digest}", structure="bootstrap layer")
    path = os.path.join(directory, "image.boot")
    with ref.open() as raw, open(path, "wb") as dst:
        diff_id = extract_bootstrap(raw, dst, gzipped=True)
    return path, diff_id


# -- comparing with the source image ---------------------------------------------------------------------

def flattened_source(layout: OciLayout, manifest: dict):
    """(root, opened layers) of the source image's layers laid over each other with OCI whiteouts,
    the first layer taken as it is (as ``nydus-image merge`` takes its first source)."""
    layers = [read_tar(layout.blob(desc).open()) for desc in manifest["layers"]]
    root = layers[0].root
    for layer in layers[1:]:
        root = merge_overlay(root, layer.root, "oci")
    return root, layers


def _source_manifest(layout: OciLayout, manifest: dict) -> dict | None:
    digest = (manifest.get("annotations") or {}).get(spec.MANIFEST_SOURCE_DIGEST)
    if not digest:
        return None
    for desc, found in layout.walk_manifests():
        if desc["digest"] == digest:
            return found
    return None


def _compare_with_source(image, layout: OciLayout, manifest: dict, where: str, problems: list[str]) -> int:
    source_manifest = _source_manifest(layout, manifest)
    if source_manifest is None:
        problems.append(f"{where}: its source manifest is not in the source layout")
        return 0
    root, layers = flattened_source(layout, source_manifest)
    try:
        want = {path: node for path, node in root.walk()}
        got = dict(image.iter_entries("/"))
        for path in sorted(set(want) ^ set(got)):
            problems.append(f"{where}: {os.fsdecode(path)} only in the {'source' if path in want else 'Nydus'} image")
        compared = 0
        for path in sorted(set(want) & set(got)):
            difference = _difference(image, path, want[path], got[path])
            if difference:
                problems.append(f"{where}: {os.fsdecode(path)}: {difference}")
            compared += 1
        return compared
    finally:
        for layer in layers:
            layer.close()


def _difference(image, path: bytes, node, inode) -> str | None:
    expected = node.inode
    fields = (("mode", expected.mode, inode.mode), ("uid", expected.uid, inode.uid), ("gid", expected.gid, inode.gid),
              ("mtime", expected.mtime, inode.mtime), ("symlink", expected.symlink, inode.symlink),
              ("xattrs", dict(expected.xattrs), dict(inode.xattrs)))
    for name, want, got in fields:
        if want != got:
            return f"{name} {got!r} != source {want!r}"
    kind = _stat.S_IFMT(expected.mode)
    if kind in (_stat.S_IFCHR, _stat.S_IFBLK) and expected.rdev != inode.rdev:
        return f"rdev {inode.rdev:#x} != source {expected.rdev:#x}"
    if kind == _stat.S_IFREG:
        if expected.size != inode.size:
            return f"size {inode.size} != source {expected.size}"
        want, got = hashlib.sha256(), hashlib.sha256()
        with node.data() as f:
            for block in iter(lambda: f.read(COPY_BUFFER), b""):
                want.update(block)
        with image.open_inode(inode.ino) as f:
            for block in iter(lambda: f.read(COPY_BUFFER), b""):
                got.update(block)
        if want.digest() != got.digest():
            return "content differs from the source"
    return None
