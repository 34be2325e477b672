"""OCI image to Nydus image conversion (``rafs convert``), checked against what nydusify writes
(media types, annotations, diff ids, history, the bootstrap layer) and against the source image's
layers applied in order: read through rafs, and mounted with ``rafs mount``."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import tarfile

import pytest

import rafs
from rafs.cli.main import main as cli
from rafs.errors import InvalidArgumentError
from rafs.oci import convert
from rafs.oci.check import check_image

from conftest import need
from helpers import rafs_mount
from oci_layers import (apply_layers, directory_inodes, directory_view, hardlink_groups, image_inodes,
                        image_view, make_layers, oci_image, oci_layout)

NYDUS_BLOB = "application/vnd.oci.image.layer.nydus.blob.v1"
OCI_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """An OCI layout of the three GNU tar layers (gzip, zstd and plain), and the tree they make."""
    base = tmp_path_factory.mktemp("oci")
    gz = make_layers(str(base / "gz"), compress="gzip")
    zst = make_layers(str(base / "zst"), compress="zstd")
    plain = make_layers(str(base / "plain"))
    layers = [gz[0], zst[1], plain[2]]
    expected = apply_layers(plain, str(base / "expected"))
    layout = str(base / "layout")
    desc = oci_image(layout, layers)
    desc["annotations"] = {"org.opencontainers.image.ref.name": "v1"}
    oci_layout(layout, [desc])
    return layout, expected, layers


def blob(layout, digest: str) -> bytes:
    return open(os.path.join(layout, "blobs", "sha256", digest.split(":")[1]), "rb").read()


def document(layout, desc: dict) -> dict:
    data = blob(layout, desc["digest"])
    assert hashlib.sha256(data).hexdigest() == desc["digest"].split(":")[1] and len(data) == desc["size"]
    return json.loads(data)


def bootstrap_of(layout, manifest: dict, path) -> str:
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(blob(layout, manifest["layers"][-1]["digest"])))) as tar:
        members = tar.getmembers()
        assert [(m.name, m.type, m.mode, m.uid, m.gid, m.mtime) for m in members] == [
            ("image", tarfile.DIRTYPE, 0o755, 0, 0, 0), ("image/image.boot", tarfile.REGTYPE, 0o444, 0, 0, 0)]
        with open(path, "wb") as f:
            f.write(tar.extractfile("image/image.boot").read())
    return str(path)


@pytest.fixture(scope="module")
def converted(source, tmp_path_factory):
    layout, expected, layers = source
    target = str(tmp_path_factory.mktemp("converted") / "nydus")
    result = convert(layout, target, workers=2)
    return target, result


def test_manifest_config_and_index_are_what_nydusify_writes(source, converted, tmp_path):
    layout, _, layers = source
    target, result = converted
    index = json.load(open(os.path.join(target, "index.json")))
    assert json.load(open(os.path.join(target, "oci-layout"))) == {"imageLayoutVersion": "1.0.0"}
    (entry,) = index["manifests"]
    assert entry["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    assert entry["annotations"] == {"org.opencontainers.image.ref.name": "v1"}
    assert entry["platform"] == {"architecture": "amd64", "os": "linux"}
    manifest = document(target, entry)
    source_entry = json.load(open(os.path.join(layout, "index.json")))["manifests"][0]
    assert list(manifest) == ["schemaVersion", "mediaType", "config", "layers", "annotations"]
    assert manifest["annotations"] == {
        "containerd.io/snapshot/nydus-builder-version": f"rafs {rafs.__version__}",
        "containerd.io/snapshot/nydus-fs-version": "6",
        "containerd.io/snapshot/nydus-source-digest": source_entry["digest"],
        "containerd.io/snapshot/nydus-source-reference": "v1",
        "org.example.note": "source"}
    *blobs, boot = manifest["layers"]
    assert len(blobs) == len(layers)
    for desc in blobs:
        assert list(desc) == ["mediaType", "digest", "size", "annotations"]
        assert desc["mediaType"] == NYDUS_BLOB
        assert desc["annotations"] == {"containerd.io/snapshot/nydus-blob": "true"}
        data = blob(target, desc["digest"])
        assert len(data) == desc["size"] and "sha256:" + hashlib.sha256(data).hexdigest() == desc["digest"]
    assert boot["mediaType"] == OCI_GZIP
    assert boot["annotations"] == {"containerd.io/snapshot/nydus-bootstrap": "true",
                                   "containerd.io/snapshot/nydus-fs-version": "6"}
    config = document(target, manifest["config"])
    source_config = document(layout, document(layout, source_entry)["config"])
    uncompressed = hashlib.sha256(gzip.decompress(blob(target, boot["digest"]))).hexdigest()
    assert config["rootfs"] == {"type": "layers", "diff_ids": [d["digest"] for d in blobs] + ["sha256:" + uncompressed]}
    assert config["history"] == source_config["history"] + [
        {"created_by": "Nydus Converter", "comment": "Nydus Bootstrap Layer"}]
    assert {k: v for k, v in config.items() if k not in ("rootfs", "history")} == \
        {k: v for k, v in source_config.items() if k not in ("rootfs", "history")}
    # the layers are the merged bootstrap's blob table, in its order
    with rafs.open(bootstrap_of(target, manifest, tmp_path / "boot")) as image:
        assert [b.blob_id for b in image.blobs] == [d["digest"].split(":")[1] for d in blobs]
        assert image.reader.prefetch_inodes() == [image.reader.root_ino]
        assert all(b.has(rafs.model.BlobFeatures.HAS_TOC) for b in image.blobs)
    assert [i.target["digest"] for i in result.images] == [entry["digest"]]


def test_converted_image_is_the_flattened_source(source, converted, tmp_path):
    _, expected, _ = source
    target, _ = converted
    manifest = document(target, json.load(open(os.path.join(target, "index.json")))["manifests"][0])
    boot = bootstrap_of(target, manifest, tmp_path / "boot")
    with rafs.open(boot, blob_dir=os.path.join(target, "blobs", "sha256"), validate=True) as image:
        got, want = image_view(image), directory_view(expected)
        assert sorted(got) == sorted(want)
        for path in want:
            assert got[path] == want[path], path
        assert hardlink_groups(image_inodes(image)) == hardlink_groups(directory_inodes(expected))
    report = check_image(target, source=source[0])
    assert report.ok, report.problems
    assert report.files_compared == len(directory_view(expected)) + 1


def test_conversion_is_deterministic_in_parallel_and_alone(source, converted, tmp_path):
    target, _ = converted
    alone = tmp_path / "alone"
    convert(source[0], alone, workers=1)
    assert sorted(os.listdir(alone / "blobs" / "sha256")) == sorted(os.listdir(os.path.join(target, "blobs", "sha256")))
    assert (alone / "index.json").read_bytes() == open(os.path.join(target, "index.json"), "rb").read()


@pytest.mark.privileged
def test_converted_image_mounts_with_rafs_mount(source, converted, tmp_path):
    _, expected, _ = source
    target, _ = converted
    need(os.geteuid() == 0 and os.path.exists("/dev/fuse"), "FUSE mounts need root and /dev/fuse")
    try:
        import rafs.fuse  # noqa: F401
    except ImportError as exc:
        need(False, f"rafs mount is not available: {exc}")
    manifest = document(target, json.load(open(os.path.join(target, "index.json")))["manifests"][0])
    boot = bootstrap_of(target, manifest, tmp_path / "boot")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    with rafs_mount(["-B", boot, "-D", os.path.join(target, "blobs", "sha256")], mnt):
        got, want = directory_view(str(mnt), xattrs=False), directory_view(expected, xattrs=False)
        assert sorted(got) == sorted(want)
        for path in want:
            assert got[path] == want[path], path
        assert hardlink_groups(directory_inodes(str(mnt))) == hardlink_groups(directory_inodes(expected))


def test_check_finds_a_damaged_blob(converted, tmp_path):
    target, _ = converted
    copy = tmp_path / "copy"
    shutil.copytree(target, copy)
    manifest = document(copy, json.load(open(copy / "index.json"))["manifests"][0])
    victim = copy / "blobs" / "sha256" / manifest["layers"][1]["digest"].split(":")[1]
    data = bytearray(victim.read_bytes())
    data[100] ^= 0xFF                           # inside the chunk data
    victim.write_bytes(bytes(data))
    report = check_image(copy)
    assert not report.ok and any("hashes to" in p for p in report.problems)
    assert any("digest" in p.lower() or "decompress" in p.lower() for p in report.problems if "hashes to" not in p)
    assert cli(["check", str(copy)]) == 1
    assert cli(["check", target]) == 0


# -- variants -------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def small_layers(tmp_path_factory):
    base = tmp_path_factory.mktemp("small")
    tars = make_layers(str(base), compress="gzip")
    return tars, apply_layers(tars[:2], str(base / "two")), apply_layers(tars, str(base / "three"))


def test_multi_platform_index(small_layers, tmp_path):
    tars, two, three = small_layers
    layout = str(tmp_path / "src")
    amd = oci_image(layout, tars, platform=("linux", "amd64"))
    arm = oci_image(layout, tars[:2], platform=("linux", "arm64"))
    oci_layout(layout, [], index_of=[amd, arm])

    result = convert(layout, tmp_path / "all", all_platforms=True)
    (entry,) = result.index["manifests"]
    assert entry["mediaType"] == "application/vnd.oci.image.index.v1+json"
    assert entry["annotations"] == {"org.opencontainers.image.ref.name": "multi"}
    index = document(tmp_path / "all", entry)
    assert [m["platform"]["architecture"] for m in index["manifests"]] == ["amd64", "arm64"]
    manifests = [document(tmp_path / "all", m) for m in index["manifests"]]
    shared = ({d["digest"] for d in manifests[0]["layers"][:-1]}
              & {d["digest"] for d in manifests[1]["layers"][:-1]})
    assert shared, "a layer both platforms use is converted once, to the same blob"
    for manifest, expected in zip(manifests, (three, two)):
        with rafs.open(bootstrap_of(tmp_path / "all", manifest, tmp_path / "boot"),
                       blob_dir=tmp_path / "all" / "blobs" / "sha256") as image:
            assert image_view(image) == directory_view(expected)
    assert check_image(tmp_path / "all", source=layout).ok

    # nydusify's default platform: the index shrinks to one manifest, which then stands for the image
    single = convert(layout, tmp_path / "amd64")
    (entry,) = single.index["manifests"]
    assert entry["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    assert entry["platform"]["architecture"] == "amd64"
    with pytest.raises(InvalidArgumentError, match="no manifest"):
        convert(layout, tmp_path / "none", platforms=["linux/s390x"])

    merged = convert(layout, tmp_path / "merged", all_platforms=True, merge_platform=True)
    index = document(tmp_path / "merged", merged.index["manifests"][0])
    assert [m.get("platform", {}).get("os.features") for m in index["manifests"]] == \
        [None, None, ["nydus.remoteimage.v1"], ["nydus.remoteimage.v1"]]
    assert index["manifests"][:2] == [amd, arm]
    nydus = document(tmp_path / "merged", index["manifests"][2])
    assert nydus["config"]["mediaType"] == "application/vnd.nydus.image.config.v1+json"
    for desc in document(tmp_path / "merged", amd)["layers"]:      # the OCI image stays whole
        assert len(blob(tmp_path / "merged", desc["digest"])) == desc["size"]


def test_docker_media_types_archives_referrer_and_v5(small_layers, tmp_path):
    tars, _, three = small_layers
    layout = str(tmp_path / "docker")
    desc = oci_image(layout, tars, docker=True)
    oci_layout(layout, [desc])
    archive = tmp_path / "docker.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(layout, arcname=".")

    kept = convert(str(archive), tmp_path / "kept.tar", with_referrer=True)
    target = tmp_path / "kept"
    target.mkdir()
    with tarfile.open(tmp_path / "kept.tar") as tar:
        tar.extractall(target, filter="data")
    (entry,) = kept.index["manifests"]
    manifest = document(target, entry)
    assert entry["mediaType"] == manifest["mediaType"] == "application/vnd.docker.distribution.manifest.v2+json"
    assert manifest["config"]["mediaType"] == "application/vnd.docker.container.image.v1+json"
    assert manifest["layers"][-1]["mediaType"] == "application/vnd.docker.image.rootfs.diff.tar.gzip"
    assert manifest["subject"] == {k: v for k, v in desc.items() if k != "platform"}
    assert check_image(tmp_path / "kept.tar", source=str(archive)).ok

    oci = convert(layout, tmp_path / "oci", docker2oci=True, fs_version=5, chunk_size=0x10000)
    manifest = document(tmp_path / "oci", oci.index["manifests"][0])
    assert manifest["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    assert manifest["config"]["mediaType"] == "application/vnd.oci.image.config.v1+json"
    assert manifest["layers"][-1]["annotations"]["containerd.io/snapshot/nydus-fs-version"] == "5"
    with rafs.open(bootstrap_of(tmp_path / "oci", manifest, tmp_path / "boot5"),
                   blob_dir=tmp_path / "oci" / "blobs" / "sha256", validate=True) as image:
        assert image.version == 5 and image.chunk_size == 0x10000
        assert image_view(image) == directory_view(three)


def test_cli_convert_with_prefetch_patterns(small_layers, tmp_path, monkeypatch):
    tars, _, three = small_layers
    layout = str(tmp_path / "src")
    oci_layout(layout, [oci_image(layout, tars)])
    monkeypatch.setattr("sys.stdin", io.StringIO("/usr/bin\n/etc/passwd\n"))
    assert cli(["convert", "--source", layout, "--target", str(tmp_path / "dst"), "--prefetch-patterns",
                "--compressor", "lz4_block", "--fs-chunk-size", "0x20000", "--check"]) == 0
    index = json.load(open(tmp_path / "dst" / "index.json"))
    manifest = document(tmp_path / "dst", index["manifests"][0])
    with rafs.open(bootstrap_of(tmp_path / "dst", manifest, tmp_path / "boot")) as image:
        assert image.compressor == "lz4_block" and image.chunk_size == 0x20000
        assert image.reader.prefetch_inodes() == [image.lstat(p).st_ino for p in ["/usr/bin", "/etc/passwd"]]
    assert cli(["convert", "--source", str(tmp_path / "dst"), "--target", str(tmp_path / "again")]) == 2


@pytest.mark.parametrize("digest", ["sha256:../../../../etc/passwd", "md5:abcd", "sha256:" + "A" * 64, None])
def test_hostile_layouts_are_refused(tmp_path, digest):
    layout = tmp_path / "bad"
    oci_layout(str(layout), [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": digest,
                              "size": 10}])
    with pytest.raises(rafs.InvalidImageError, match="digest"):
        convert(layout, tmp_path / "out")
    assert sorted(os.listdir(tmp_path)) == ["bad"]          # nothing half-written is left behind


def test_layouts_that_lie_are_refused(small_layers, tmp_path):
    tars, _, _ = small_layers
    layout = tmp_path / "src"
    desc = oci_image(str(layout), tars[:1])
    oci_layout(str(layout), [dict(desc, size=desc["size"] + 1)])
    with pytest.raises(rafs.InvalidImageError, match="size"):
        convert(layout, tmp_path / "a")
    (layout / "blobs" / "sha256" / desc["digest"].split(":")[1]).write_bytes(b"{}" + b" " * (desc["size"] - 2))
    oci_layout(str(layout), [desc])
    with pytest.raises(rafs.InvalidImageError, match="does not match its digest"):
        convert(layout, tmp_path / "b")
    with pytest.raises(InvalidArgumentError, match="not an OCI image layout"):
        convert(tmp_path, tmp_path / "c")
