"""Image layers for the layering, merge and OCI tests: a three-layer image made with GNU tar, the
tree a container sees once the layers are applied in order (computed by extracting them with
whiteout processing), and views of image trees, mounts and directories that can be compared.

Layer 1 is a base tree (files of several chunks, duplicated data, a hardlink pair, symlinks, a fifo,
devices when root); layer 2 modifies files, deletes a file and a directory with ``.wh.`` entries,
makes a directory opaque with ``.wh..wh..opq``, turns a file into a directory and back, and replaces
one name of the lower hardlink pair; layer 3 adds hardlinks and xattrs (GNU tar ``--xattrs``).
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import stat
import subprocess
import tarfile
from rafs.testing.images import blob_devices as testing_blob_devices

IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
MTIME = 1_650_000_000


def _put(top: str, rel: str, data: bytes, mode: int = 0o644) -> None:
    path = os.path.join(top, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    os.chmod(path, mode)


def _stamp(top: str, seconds: int) -> None:
    """Fixed mtimes (whole seconds; tar builds keep seconds only), deepest entries first."""
    entries = []
    for dirpath, dirnames, filenames in os.walk(top):
        for name in dirnames + filenames:
            entries.append(os.path.join(dirpath, name))
    for i, path in enumerate(sorted(entries, key=lambda p: -p.count("/"))):
        os.utime(path, (seconds + i, seconds + i), follow_symlinks=False)
    os.utime(top, (seconds, seconds))


def layer_trees(base: str) -> list[str]:
    """Create the three layer directories under ``base``; returns their paths, lower first."""
    rng = random.Random(7)
    big = b"".join(rng.randbytes(4096) if i % 3 else b"pattern %05d\n" % i * 300 for i in range(180))
    shared = rng.randbytes(150 * 1024)
    l1, l2, l3 = (os.path.join(base, f"l{i}") for i in (1, 2, 3))

    os.makedirs(l1)
    _put(l1, "etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n")
    _put(l1, "etc/hosts", b"127.0.0.1 localhost\n")
    _put(l1, "etc/keep.conf", b"keep=1\n", 0o600)
    _put(l1, "usr/bin/tool", b"#!/bin/sh\necho tool\n", 0o755)
    _put(l1, "usr/lib/libx.so.1.0", shared)
    os.symlink("libx.so.1.0", os.path.join(l1, "usr/lib/libx.so.1"))
    os.symlink("/usr/lib/libx.so.1", os.path.join(l1, "usr/lib/libx.so"))
    _put(l1, "data/big", big)
    _put(l1, "data/copy-of-shared", shared)
    _put(l1, "data/empty", b"")
    _put(l1, "opq/a", b"lower a\n")
    _put(l1, "opq/sub/b", b"lower b\n")
    _put(l1, "gone/x", b"x\n")
    _put(l1, "gone/y/z", b"z\n")
    _put(l1, "victim", b"to be deleted\n")
    _put(l1, "hl/one", b"linked in the base\n")
    os.link(os.path.join(l1, "hl/one"), os.path.join(l1, "hl/two"))
    _put(l1, "file-then-dir", b"a file first\n")
    _put(l1, "dir-then-file/inner", b"inner\n")
    os.mkfifo(os.path.join(l1, "fifo"))
    if IS_ROOT:
        os.mknod(os.path.join(l1, "chr"), 0o620 | stat.S_IFCHR, os.makedev(1, 3))
        os.mknod(os.path.join(l1, "blk"), 0o660 | stat.S_IFBLK, os.makedev(7, 9))
        os.lchown(os.path.join(l1, "etc/keep.conf"), 1000, 1001)
    _stamp(l1, MTIME)

    os.makedirs(l2)
    _put(l2, "etc/passwd", b"root:x:0:0:root:/root:/bin/bash\nuser:x:1000:1000::/home/user:/bin/sh\n")
    _put(l2, "etc/.wh.hosts", b"")
    _put(l2, ".wh.gone", b"")
    _put(l2, ".wh.victim", b"")
    _put(l2, "opq/.wh..wh..opq", b"")
    _put(l2, "opq/c", b"upper c\n")
    _put(l2, "file-then-dir/now-inside", b"inside\n")
    _put(l2, "dir-then-file", b"now a file\n")
    _put(l2, "hl/two", b"replaced: no longer linked\n")
    _put(l2, "usr/bin/new-tool", big[: 70 * 1024], 0o755)
    _stamp(l2, MTIME + 10_000)

    os.makedirs(l3)
    _put(l3, "x/file", b"linked with xattrs\n" * 100)
    os.link(os.path.join(l3, "x/file"), os.path.join(l3, "x/link1"))
    os.makedirs(os.path.join(l3, "x/sub"))
    os.link(os.path.join(l3, "x/file"), os.path.join(l3, "x/sub/link2"))
    _put(l3, "x/plain", b"plain\n")
    os.link(os.path.join(l3, "x/plain"), os.path.join(l3, "plain-link"))
    _put(l3, "data/big", big)          # same bytes as the base: deduplicated against the parent
    os.setxattr(os.path.join(l3, "x/file"), "user.origin", b"layer3")
    os.setxattr(os.path.join(l3, "x/file"), "user.bin", b"\x00\x01\xfe")
    os.setxattr(os.path.join(l3, "x/sub"), "user.dir", b"yes")
    if IS_ROOT:
        os.setxattr(os.path.join(l3, "x/plain"), "trusted.note", b"root only")
    _stamp(l3, MTIME + 20_000)
    return [l1, l2, l3]


def gnu_tar(source: str, output: str, *, compress: str | None = None) -> str:
    """``tar --xattrs`` of a directory (sorted, numeric owners); ``compress``: gzip or zstd."""
    subprocess.run(["tar", "--xattrs", "--xattrs-include=*", "--numeric-owner", "--sort=name", "-cf", output,
                    "-C", source, "."], check=True)
    if compress == "gzip":
        subprocess.run(["gzip", "-n", "-f", output], check=True)
        return output + ".gz"
    if compress == "zstd":
        subprocess.run(["zstd", "-q", "-f", "--rm", output, "-o", output + ".zst"], check=True)
        return output + ".zst"
    return output


def make_layers(base: str, *, compress: str | None = None) -> list[str]:
    """The three layer tars (made with GNU tar) under ``base``."""
    trees = layer_trees(os.path.join(base, "trees"))
    return [gnu_tar(tree, os.path.join(base, f"layer{i}.tar"), compress=compress)
            for i, tree in enumerate(trees, start=1)]


def apply_layers(tars: list[str], target: str) -> str:
    """Extract ``tars`` in order into ``target`` the way a container runtime applies layers: a
    layer's whiteouts first remove what the layers below put there, then its other entries are
    extracted (GNU tar, xattrs and owners kept), a new entry replacing an old one of another type."""
    os.makedirs(target, exist_ok=True)
    for path in tars:
        with tarfile.open(path) as tar:
            members = tar.getmembers()
        for member in members:
            rel = os.path.normpath(member.name)
            parent, name = os.path.split(rel)
            if name == ".wh..wh..opq":
                directory = os.path.join(target, parent)
                if os.path.isdir(directory) and not os.path.islink(directory):
                    for child in os.listdir(directory):
                        _remove(os.path.join(directory, child))
            elif name.startswith(".wh."):
                _remove(os.path.join(target, parent, name[4:]))
        for member in members:
            rel = os.path.normpath(member.name)
            if rel == "." or os.path.basename(rel).startswith(".wh."):
                continue
            existing = os.path.join(target, rel)
            if os.path.lexists(existing):
                is_dir = os.path.isdir(existing) and not os.path.islink(existing)
                if not (is_dir and member.isdir()):
                    _remove(existing)
        subprocess.run(["tar", "--xattrs", "--xattrs-include=*", "--numeric-owner", "--same-owner",
                        "--same-permissions", "--exclude=.wh.*", "-xf", path, "-C", target], check=True)
    return target


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.unlink(path)


# -- comparable views ------------------------------------------------------------------------------

def _digest_file(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def directory_view(top: str, *, xattrs: bool = True) -> dict[str, tuple]:
    """path -> (type, permissions, uid, gid, size, mtime s, content digest or target, rdev, nlink,
    xattrs) for everything under ``top`` (a directory or a mount); directories report no mtime, size
    or nlink (their mtimes move as entries are removed below them)."""
    view = {}
    for dirpath, dirnames, filenames in os.walk(top):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            rel = "/" + os.path.relpath(full, top)
            st = os.lstat(full)
            kind = stat.S_IFMT(st.st_mode)
            names = {}
            if xattrs:
                names = {n: os.getxattr(full, n, follow_symlinks=False)
                         for n in os.listxattr(full, follow_symlinks=False)}
            if kind == stat.S_IFREG:
                extra = _digest_file(full)
            elif kind == stat.S_IFLNK:
                extra = os.readlink(full)
            else:
                extra = None
            is_dir = kind == stat.S_IFDIR
            view[rel] = (kind, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, None if is_dir else st.st_size,
                         None if is_dir else int(st.st_mtime), extra,
                         st.st_rdev if kind in (stat.S_IFCHR, stat.S_IFBLK) else 0,
                         None if is_dir else st.st_nlink, names)
    return view


def image_view(image, *, xattrs: bool = True) -> dict[str, tuple]:
    """The same view of an opened :class:`rafs.Image`."""
    view = {}
    for raw, inode in image.iter_entries("/"):
        if raw == b"/":
            continue
        rel = os.fsdecode(raw)
        kind = stat.S_IFMT(inode.mode)
        if kind == stat.S_IFREG:
            extra = hashlib.sha256(image.read(raw)).hexdigest()
        elif kind == stat.S_IFLNK:
            extra = os.fsdecode(inode.symlink)
        else:
            extra = None
        is_dir = kind == stat.S_IFDIR
        names = {os.fsdecode(k): v for k, v in inode.xattrs.items()} if xattrs else {}
        view[rel] = (kind, stat.S_IMODE(inode.mode), inode.uid, inode.gid, None if is_dir else inode.size,
                     None if is_dir else inode.mtime, extra,
                     inode.rdev if kind in (stat.S_IFCHR, stat.S_IFBLK) else 0,
                     None if is_dir else inode.nlink, names)
    return view


def hardlink_groups(view_paths: dict[str, int]) -> set[frozenset]:
    """Sets of paths sharing an inode number (groups of two or more)."""
    groups: dict[int, set] = {}
    for path, ino in view_paths.items():
        groups.setdefault(ino, set()).add(path)
    return {frozenset(g) for g in groups.values() if len(g) > 1}


def directory_inodes(top: str) -> dict[str, int]:
    inodes = {}
    for dirpath, _, filenames in os.walk(top):
        for name in filenames:
            full = os.path.join(dirpath, name)
            st = os.lstat(full)
            if stat.S_ISREG(st.st_mode):
                inodes["/" + os.path.relpath(full, top)] = st.st_ino
    return inodes


def image_inodes(image) -> dict[str, int]:
    return {os.fsdecode(raw): inode.ino for raw, inode in image.iter_entries("/") if inode.is_reg}


def blob_devices(image, directory: str) -> list[str]:
    """Each blob of ``image`` as the kernel reads it (nydusd's ``.blob.data``), for ``mount -o device=``."""
    os.makedirs(directory, exist_ok=True)
    return testing_blob_devices(image, directory)


# -- OCI image layouts -------------------------------------------------------------------------------

def _add_blob(layout: str, data: bytes) -> tuple[str, int]:
    digest = hashlib.sha256(data).hexdigest()
    os.makedirs(os.path.join(layout, "blobs", "sha256"), exist_ok=True)
    with open(os.path.join(layout, "blobs", "sha256", digest), "wb") as f:
        f.write(data)
    return "sha256:" + digest, len(data)


def _json(document) -> bytes:
    import json
    return json.dumps(document, separators=(",", ":")).encode()


def oci_image(layout: str, layers: list[str], *, platform=("linux", "amd64"), docker: bool = False) -> dict:
    """Add an image of ``layers`` (tar, tar.gz or tar.zst files) to the layout; returns its
    manifest descriptor (not yet listed in index.json)."""
    import gzip as _gzip
    types = ({"gz": "application/vnd.docker.image.rootfs.diff.tar.gzip",
              "tar": "application/vnd.docker.image.rootfs.diff.tar"}
             if docker else
             {"gz": "application/vnd.oci.image.layer.v1.tar+gzip", "tar": "application/vnd.oci.image.layer.v1.tar",
              "zst": "application/vnd.oci.image.layer.v1.tar+zstd"})
    descs, diff_ids = [], []
    for path in layers:
        data = open(path, "rb").read()
        kind = path.rsplit(".", 1)[-1]
        if kind == "gz":
            plain = _gzip.decompress(data)
        elif kind == "zst":
            plain = subprocess.run(["zstd", "-dc", path], check=True, capture_output=True).stdout
        else:
            plain = data
        digest, size = _add_blob(layout, data)
        descs.append({"mediaType": types[kind], "digest": digest, "size": size})
        diff_ids.append("sha256:" + hashlib.sha256(plain).hexdigest())
    config = {"architecture": platform[1], "os": platform[0],
              "config": {"Env": ["PATH=/usr/bin"], "Cmd": ["/usr/bin/tool"]},
              "rootfs": {"type": "layers", "diff_ids": diff_ids},
              "history": [{"created_by": f"layer {i}"} for i in range(len(layers))]}
    config_digest, config_size = _add_blob(layout, _json(config))
    manifest_type = ("application/vnd.docker.distribution.manifest.v2+json" if docker
                     else "application/vnd.oci.image.manifest.v1+json")
    manifest = {"schemaVersion": 2, "mediaType": manifest_type,
                "config": {"mediaType": "application/vnd.docker.container.image.v1+json" if docker
                           else "application/vnd.oci.image.config.v1+json",
                           "digest": config_digest, "size": config_size},
                "layers": descs, "annotations": {"org.example.note": "source"}}
    digest, size = _add_blob(layout, _json(manifest))
    return {"mediaType": manifest_type, "digest": digest, "size": size,
            "platform": {"architecture": platform[1], "os": platform[0]}}


def oci_layout(layout: str, entries: list[dict], *, index_of: list[dict] | None = None) -> str:
    """Write ``oci-layout`` and ``index.json`` listing ``entries`` (descriptors); with ``index_of`` an
    image index of those manifests is the single entry."""
    os.makedirs(layout, exist_ok=True)
    with open(os.path.join(layout, "oci-layout"), "wb") as f:
        f.write(_json({"imageLayoutVersion": "1.0.0"}))
    if index_of is not None:
        digest, size = _add_blob(layout, _json({"schemaVersion": 2,
                                                "mediaType": "application/vnd.oci.image.index.v1+json",
                                                "manifests": index_of}))
        entries = [{"mediaType": "application/vnd.oci.image.index.v1+json", "digest": digest, "size": size,
                    "annotations": {"org.opencontainers.image.ref.name": "multi"}}]
    with open(os.path.join(layout, "index.json"), "wb") as f:
        f.write(_json({"schemaVersion": 2, "manifests": entries}))
    return layout
