"""Layers and merge: whiteouts on build trees, ``rafs merge`` of per-layer bootstraps, and
``rafs create --parent-bootstrap``, checked against the tree a container sees when the same GNU tar
layers are applied in order (and, for v6, against a kernel mount of the merged bootstrap)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat
import subprocess
import tarfile

import pytest

import rafs
from rafs.builder.builder import Builder
from rafs.builder.merge import InconsistentFilesystemError, Merger, file_prefix
from rafs.builder.overlay import merge_overlay, tag_layer
from rafs.cli.main import main as cli
from rafs.errors import InvalidArgumentError
from rafs.model import Inode, Node, index_order

from oci_layers import (apply_layers, blob_devices, directory_inodes, directory_view, hardlink_groups,
                        image_inodes, image_view, make_layers)

CHUNK = 0x10000


# -- overlay on build trees ----------------------------------------------------------------------------

def tree(spec: dict) -> Node:
    """A tree from {name: None (file) | dict (directory) | ("chr", rdev) | ("dir", xattrs, dict)}."""
    def make(name: bytes, value) -> Node:
        if isinstance(value, dict):
            node = Node(name=name, inode=Inode(ino=0, mode=stat.S_IFDIR | 0o755))
            node.children = [make(k.encode(), v) for k, v in sorted(value.items())]
            return node
        if isinstance(value, tuple) and value[0] == "chr":
            return Node(name=name, inode=Inode(ino=0, mode=stat.S_IFCHR | 0o600, rdev=value[1]))
        if isinstance(value, tuple) and value[0] == "dir":
            node = make(name, value[2])
            node.inode.xattrs = dict(value[1])
            return node
        return Node(name=name, inode=Inode(ino=0, mode=stat.S_IFREG | 0o644, size=len(value or b"")),
                    data=value)
    return make(b"/", spec)


def paths(root: Node) -> dict[str, object]:
    return {p.decode(): n.data if n.inode.is_reg else stat.S_IFMT(n.inode.mode) for p, n in root.walk()}


LOWER = {"a": b"lower a", "d": {"x": b"x", "y": {"z": b"z"}}, "o": {"old": b"old"}, "f": b"file", "g": {"k": b"k"}}


def test_oci_whiteouts_remove_and_make_opaque():
    upper = tree({"a": b"upper a", ".wh.f": b"", "d": {".wh.y": b"", "new": b"n"},
                  "o": {".wh..wh..opq": b"", "mine": b"m"}, "g": b"now a file", "n": {".wh.nothing": b""}})
    merged = paths(merge_overlay(tree(LOWER), upper, "oci"))
    assert merged == {"/": stat.S_IFDIR, "/a": b"upper a", "/d": stat.S_IFDIR, "/d/new": b"n", "/d/x": b"x",
                      "/o": stat.S_IFDIR, "/o/mine": b"m", "/g": b"now a file", "/n": stat.S_IFDIR}


def test_whiteouts_only_hide_lower_layers():
    upper = tree({".wh.a": b"", "a": b"re-added in the same layer"})
    assert paths(merge_overlay(tree(LOWER), upper, "oci"))["/a"] == b"re-added in the same layer"


def test_overlayfs_whiteouts():
    opaque = {b"trusted.overlay.opaque": b"y", b"user.keep": b"1"}
    upper = tree({"a": ("chr", 0), "f": ("chr", os.makedev(1, 3)), "o": ("dir", opaque, {"mine": b"m"}),
                  ".wh.d": b""})
    root = merge_overlay(tree(LOWER), upper, "overlayfs")
    merged = paths(root)
    assert "/a" not in merged and merged["/f"] == stat.S_IFCHR and merged["/.wh.d"] == b""
    assert "/d/x" in merged and "/o/old" not in merged and merged["/o/mine"] == b"m"
    assert root.child(b"o").inode.xattrs == {b"user.keep": b"1"}


def test_whiteout_spec_none_keeps_everything():
    upper = tree({".wh.a": b"", "o": {".wh..wh..opq": b""}})
    merged = paths(merge_overlay(tree(LOWER), upper, "none"))
    assert merged["/a"] == b"lower a" and merged["/.wh.a"] == b"" and merged["/o/old"] == b"old"
    with pytest.raises(InvalidArgumentError):
        merge_overlay(tree(LOWER), tree({}), "aufs")


def test_layers_keep_their_hardlink_groups_apart():
    lower, upper = tag_layer(tree({"a": b"1"}), 0), tag_layer(tree({"b": b"2"}), 1)
    lower.child(b"a").hardlink_key = (0, 5)
    upper.child(b"b").hardlink_key = (1, 5)
    assert lower.child(b"a").hardlink_key != upper.child(b"b").hardlink_key


# -- a three-layer image made with GNU tar -------------------------------------------------------------

@pytest.fixture(scope="module")
def layers(tmp_path_factory):
    base = tmp_path_factory.mktemp("layers")
    tars = make_layers(str(base))
    expected = apply_layers(tars, str(base / "expected"))
    return tars, expected


def build_layers(tars, out, fs_version: int) -> list[tuple[str, str]]:
    """Per-layer builds as nydusify runs them (v6: inline meta, blob-toc, whiteout spec none);
    returns (bootstrap, blob file) pairs, the blob file named by the sha256 of its bytes."""
    blobs = os.path.join(out, "blobs")
    os.makedirs(blobs, exist_ok=True)
    built = []
    for i, tar in enumerate(tars):
        if fs_version == 6:
            blob = os.path.join(out, f"layer{i}.blob")
            Builder(tar, source_type="tar-rafs", fs_version=6, chunk_size=CHUNK, whiteout_spec="none",
                    blob_inline_meta=True, features=("blob-toc",)).write(blob=blob)
            digest = hashlib.sha256(open(blob, "rb").read()).hexdigest()
            named = os.path.join(blobs, digest)
            os.replace(blob, named)
            built.append((named, named))
        else:
            result = Builder(tar, source_type="tar-rafs", fs_version=5, chunk_size=CHUNK, whiteout_spec="none").write(
                bootstrap=os.path.join(out, f"layer{i}.boot"), blob_dir=blobs)
            built.append((result.bootstrap, result.blob))
    return built


def assert_image_is(image, expected: str) -> None:
    got, want = image_view(image), directory_view(expected)
    assert sorted(got) == sorted(want)
    for path in want:
        assert got[path] == want[path], path
    assert hardlink_groups(image_inodes(image)) == hardlink_groups(directory_inodes(expected))


@pytest.fixture(scope="module", params=[5, 6])
def merged(request, layers, tmp_path_factory):
    tars, expected = layers
    out = tmp_path_factory.mktemp(f"merged-v{request.param}")
    built = build_layers(tars, str(out), request.param)
    digests = [hashlib.sha256(open(blob, "rb").read()).hexdigest() for _, blob in built]
    boot = out / "merged.boot"
    result = Merger([b for b, _ in built], blob_digests=digests).write(bootstrap=boot)
    return request.param, boot, out / "blobs", result, built, expected


def test_merged_image_is_the_applied_layers(merged):
    fs_version, boot, blob_dir, result, built, expected = merged
    with rafs.open(boot, blob_dir=blob_dir, validate=True) as image:
        assert image.version == fs_version
        assert_image_is(image, expected)
        assert [b.blob_id for b in image.blobs] == result.blob_ids
        # only blobs still referenced, each once, in the order the merged tree first uses them
        first_use = []
        for node in index_order(image.tree()).nodes:
            for chunk in node.chunks:
                if chunk.blob_index not in first_use:
                    first_use.append(chunk.blob_index)
        assert first_use == list(range(len(image.blobs)))


def test_unpack_of_the_merged_image_is_the_flattened_filesystem(merged, tmp_path):
    _, boot, blob_dir, _, _, expected = merged
    out = tmp_path / "flat.tar"
    assert cli(["unpack", str(boot), "-D", str(blob_dir), "--output", str(out)]) == 0
    (tmp_path / "flat").mkdir()
    subprocess.run(["tar", "--xattrs", "--xattrs-include=*", "--numeric-owner", "--same-owner", "-xf", str(out),
                    "-C", str(tmp_path / "flat")], check=True)
    got, want = directory_view(str(tmp_path / "flat")), directory_view(expected)
    assert sorted(got) == sorted(want)
    for path in want:
        assert got[path] == want[path], path
    assert hardlink_groups(directory_inodes(str(tmp_path / "flat"))) == hardlink_groups(directory_inodes(expected))


@pytest.mark.privileged
@pytest.mark.parametrize("merged", [6], indirect=True)
def test_merged_v6_bootstrap_mounts_in_the_kernel(merged, kernel_mount, tmp_path):
    _, boot, blob_dir, _, _, expected = merged
    with rafs.open(boot, blob_dir=blob_dir) as image:
        devices = blob_devices(image, str(tmp_path / "devices"))
    mnt = kernel_mount(boot, *devices)
    got, want = directory_view(str(mnt)), directory_view(expected)
    assert sorted(got) == sorted(want)
    for path in want:
        assert got[path] == want[path], path
    assert hardlink_groups(directory_inodes(str(mnt))) == hardlink_groups(directory_inodes(expected))


@pytest.mark.parametrize("fs_version", [5, 6])
def test_layered_create_on_parent_bootstraps(layers, tmp_path, fs_version):
    tars, expected = layers
    parent, results = None, []
    for i, tar in enumerate(tars):
        result = Builder(tar, source_type="tar-rafs", fs_version=fs_version, chunk_size=CHUNK,
                         parent_bootstrap=parent).write(bootstrap=tmp_path / f"chain{i}.boot", blob_dir=tmp_path)
        parent = result.bootstrap
        results.append(result)
    # the parent's blob table is kept and the new blob appended
    assert results[1].blob_ids[:1] == results[0].blob_ids and len(results[2].blob_ids) == 3
    # layer 3 repeats the base's data/big: its chunks are the parent's, not written again
    assert results[2].output["trace"]["registered_events"]["dedup_chunks"] >= 1
    with rafs.open(parent, blob_dir=tmp_path, validate=True) as image:
        assert_image_is(image, expected)
        big = image.chunks("/data/big")
        assert {c.blob_index for c in big} == {0}


def test_parent_must_be_consistent(layers, tmp_path):
    tars, _ = layers
    Builder(tars[0], source_type="tar-rafs", fs_version=6, chunk_size=CHUNK).write(
        bootstrap=tmp_path / "base.boot", blob_dir=tmp_path)
    for kwargs, message in (({"chunk_size": CHUNK * 2}, "chunk_size"), ({"fs_version": 5}, "RAFS version"),
                            ({"repeatable": True}, "explicit_uidgid")):
        options = dict(source_type="tar-rafs", fs_version=6, chunk_size=CHUNK) | kwargs
        with pytest.raises(InconsistentFilesystemError, match=message):
            Builder(tars[1], parent_bootstrap=tmp_path / "base.boot", **options).write(
                bootstrap=tmp_path / "upper.boot", blob_dir=tmp_path)


def _overlayfs_tar() -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        whiteout = tarfile.TarInfo("etc/passwd")
        whiteout.type, whiteout.devmajor, whiteout.devminor = tarfile.CHRTYPE, 0, 0
        tar.addfile(whiteout)
        opaque = tarfile.TarInfo("opq")
        opaque.type, opaque.mode = tarfile.DIRTYPE, 0o755
        opaque.pax_headers = {"SCHILY.xattr.trusted.overlay.opaque": "y"}
        tar.addfile(opaque)
    return out.getvalue()


def test_layered_create_with_overlayfs_whiteouts(layers, tmp_path):
    tars, _ = layers
    Builder(tars[0], source_type="tar-rafs", chunk_size=CHUNK).write(bootstrap=tmp_path / "base.boot",
                                                                     blob_dir=tmp_path)
    upper = tmp_path / "upper.tar"
    upper.write_bytes(_overlayfs_tar())
    Builder(str(upper), source_type="tar-rafs", chunk_size=CHUNK, whiteout_spec="overlayfs",
            parent_bootstrap=tmp_path / "base.boot").write(bootstrap=tmp_path / "top.boot", blob_dir=tmp_path)
    with rafs.open(tmp_path / "top.boot", blob_dir=tmp_path) as image:
        assert not image.exists("/etc/passwd") and image.exists("/etc/hosts")
        assert image.listdir("/opq") == [] and image.listxattr("/opq") == []


# -- merge options -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def v6_layers(layers, tmp_path_factory):
    out = tmp_path_factory.mktemp("v6-layers")
    return build_layers(layers[0], str(out), 6), out


def test_blob_ids_sizes_and_tocs_come_from_the_options(v6_layers, tmp_path):
    built, _ = v6_layers
    sources = [boot for boot, _ in built]
    plain = Merger(sources).merge()
    # without options, a layer's own blob takes the name of the file it came from
    assert sorted(b.blob_id for b in plain.blobs) == sorted(file_prefix(s) for s in sources)
    ids = [f"{i:064x}" for i in range(1, 4)]
    sizes = [111, 222, 333]
    tocs = [bytes([i]) * 32 for i in range(1, 4)]
    merged = Merger(sources, original_blob_ids=["a", "b", "c"], blob_digests=",".join(ids),
                    blob_sizes=sizes, blob_toc_digests=[t.hex() for t in tocs], blob_toc_sizes="7,8,9").merge()
    by_id = {b.blob_id: b for b in merged.blobs}
    for i in range(3):
        blob = by_id[ids[i]]
        assert (blob.compressed_size, blob.toc_digest, blob.toc_size) == (sizes[i], tocs[i], 7 + i)
    assert Merger(sources, original_blob_ids=["a", "b", "c"]).merge().blobs[0].blob_id in {"a", "b", "c"}
    with pytest.raises(InvalidArgumentError, match="doesn't match number of sources"):
        Merger(sources, blob_digests=ids[:2])


def test_unreferenced_blobs_leave_the_table(tmp_path):
    def layer(name: str, files: dict) -> str:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            for path, data in files.items():
                info = tarfile.TarInfo(path)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        src = tmp_path / f"{name}.tar"
        src.write_bytes(buf.getvalue())
        result = Builder(str(src), source_type="tar-rafs", chunk_size=CHUNK).write(
            bootstrap=tmp_path / f"{name}.boot", blob_dir=tmp_path)
        return result.bootstrap, result.blob_id

    bottom = layer("bottom", {"dir/only-here": b"bottom data"})
    middle = layer("middle", {"keep": b"middle data"})
    top = layer("top", {".wh.dir": b"", "zzz": b"top data"})
    merged = Merger([bottom[0], middle[0], top[0]], original_blob_ids=[bottom[1], middle[1], top[1]]).merge()
    assert [b.blob_id for b in merged.blobs] == [middle[1], top[1]]
    assert [b.index for b in merged.blobs] == [0, 1]


def test_inconsistent_layers_are_refused(v6_layers, layers, tmp_path):
    built, _ = v6_layers
    other = Builder(layers[0][0], source_type="tar-rafs", chunk_size=CHUNK * 4, whiteout_spec="none").write(
        bootstrap=tmp_path / "other.boot", blob_dir=tmp_path)
    with pytest.raises(InconsistentFilesystemError, match="chunk_size"):
        Merger([built[0][0], other.bootstrap]).merge()
    # a source that already owns two blobs (a merged bootstrap) cannot be one layer
    Merger([b for b, _ in built[:2]]).write(bootstrap=tmp_path / "two.boot")
    with pytest.raises(InconsistentFilesystemError, match="multiple associated data blobs"):
        Merger([tmp_path / "two.boot"]).merge()
    # the command exits with 2, as MergeError::InconsistentFilesystem does
    assert cli(["merge", "-B", str(tmp_path / "x.boot"), built[0][0], str(other.bootstrap)]) == 2


def test_chunk_dict_blobs_are_shared_not_owned(layers, tmp_path):
    tars, _ = layers
    base = Builder(tars[0], source_type="tar-rafs", chunk_size=CHUNK).write(bootstrap=tmp_path / "base.boot",
                                                                            blob_dir=tmp_path)
    upper = Builder(tars[1], source_type="tar-rafs", chunk_size=CHUNK, parent_bootstrap=base.bootstrap).write(
        bootstrap=tmp_path / "upper.boot", blob_dir=tmp_path)
    with pytest.raises(InconsistentFilesystemError, match="multiple associated data blobs"):
        Merger([upper.bootstrap]).merge()
    merged = Merger([upper.bootstrap], chunk_dict=f"{base.bootstrap}", blob_accessible=True).merge()
    assert sorted(b.blob_id for b in merged.blobs) == sorted(upper.blob_ids)


def test_cli_merge_with_parent_prefetch_and_json(v6_layers, layers, tmp_path, monkeypatch):
    built, out = v6_layers
    sources = [boot for boot, _ in built]
    Merger(sources[:2]).write(bootstrap=tmp_path / "parent.boot")
    monkeypatch.setattr("sys.stdin", io.StringIO("/usr/bin\n/etc/passwd\nrelative\n"))
    assert cli(["merge", "--parent-bootstrap", str(tmp_path / "parent.boot"), "--prefetch-policy", "fs",
                "-D", str(tmp_path), "-J", str(tmp_path / "out.json"), sources[2]]) == 0
    output = json.loads((tmp_path / "out.json").read_text())
    boot = output["bootstrap"]
    assert os.path.basename(boot) == hashlib.sha256(open(boot, "rb").read()).hexdigest()
    assert output["fs_version"] == "6" and len(output["blobs"]) == 3
    blobs = {file_prefix(s): s for s in sources}
    with rafs.open(boot, blobs={b: blobs[b] for b in output["blobs"]}) as image:
        assert_image_is(image, layers[1])
        assert image.reader.prefetch_inodes() == [image.lstat(p).st_ino for p in ["/usr/bin", "/etc/passwd"]]


def test_merge_needs_sources_and_an_output(tmp_path):
    with pytest.raises(InvalidArgumentError, match="at least one bootstrap"):
        Merger([])
    with pytest.raises(InvalidArgumentError, match="--bootstrap and --blob-dir"):
        Merger([tmp_path / "x"]).write()
