"""The kernel's EROFS as the strictest reader of our v6 builds.

Every build of the every-entry-type tree (tests/helpers.py ``make_source_tree``) is loop-mounted and
the mount is compared with the source directly, ``os.lstat`` against ``os.lstat``: names, modes,
uid/gid, sizes, mtimes to the nanosecond (the root's is 0: directory builds drop it, as
builder/src/core/node.rs does), nlink, rdev, symlink targets, xattrs and hardlink groups. An
uncompressed build's blob is given to the kernel as the extra device, and then every file's bytes must
be the source's.
"""

from __future__ import annotations

import os
import stat

import pytest

import rafs
from rafs.blob.toc import extract_inline_bootstrap
from rafs.cli.main import main as cli_main

from helpers import _file_digest, _xattrs, source_entries

pytestmark = pytest.mark.privileged


def assert_mount_matches(mountpoint, source, *, repeatable: bool = False, contents: bool = False) -> None:
    """The kernel's view of ``mountpoint`` is exactly the tree under ``source``."""
    mnt, src = os.fsencode(os.fspath(mountpoint)), os.fsencode(os.fspath(source))
    want, got = source_entries(src), source_entries(mnt)
    missing, extra = sorted(set(want) - set(got)), sorted(set(got) - set(want))
    assert not missing and not extra, f"missing from the mount: {missing[:5]}, unexpected: {extra[:5]}"
    subdirs: dict[bytes, int] = {}
    links: dict[tuple[int, int], list[bytes]] = {}
    for rel, st in want.items():
        if rel and stat.S_ISDIR(st.st_mode):
            parent = rel.rpartition(b"/")[0]
            subdirs[parent] = subdirs.get(parent, 0) + 1
        elif stat.S_ISREG(st.st_mode):
            links.setdefault((st.st_dev, st.st_ino), []).append(rel)
    for rel, st in want.items():
        m = got[rel]
        where = os.fsdecode(b"/" + rel)
        theirs, ours = (src + b"/" + rel if rel else src), (mnt + b"/" + rel if rel else mnt)
        assert m.st_mode == st.st_mode, f"{where}: mode {m.st_mode:o} != {st.st_mode:o}"
        uid, gid = (0, 0) if repeatable else (st.st_uid, st.st_gid)
        assert (m.st_uid, m.st_gid) == (uid, gid), f"{where}: uid/gid {m.st_uid}/{m.st_gid} != {uid}/{gid}"
        mtime = 0 if rel == b"" else st.st_mtime_ns
        assert m.st_mtime_ns == mtime, f"{where}: mtime {m.st_mtime_ns} != {mtime}"
        assert _xattrs(ours) == _xattrs(theirs), f"{where}: xattrs {_xattrs(ours)} != {_xattrs(theirs)}"
        kind = stat.S_IFMT(st.st_mode)
        if kind == stat.S_IFDIR:
            assert m.st_nlink == 2 + subdirs.get(rel, 0), f"{where}: nlink {m.st_nlink}"
            continue
        assert m.st_size == st.st_size, f"{where}: size {m.st_size} != {st.st_size}"
        if kind == stat.S_IFREG:
            group = links[(st.st_dev, st.st_ino)]
            assert m.st_nlink == len(group), f"{where}: nlink {m.st_nlink} != {len(group)}"
            assert m.st_ino == got[group[0]].st_ino, f"{where}: not the same inode as {group[0]!r}"
            if contents:
                with open(ours, "rb") as mine, open(theirs, "rb") as original:
                    assert _file_digest(mine.read) == _file_digest(original.read), f"{where}: content differs"
            continue
        assert m.st_nlink == 1, f"{where}: nlink {m.st_nlink}"
        if kind == stat.S_IFLNK:
            assert os.readlink(ours) == os.readlink(theirs), f"{where}: target {os.readlink(ours)!r}"
        elif kind in (stat.S_IFCHR, stat.S_IFBLK):
            assert m.st_rdev == st.st_rdev, f"{where}: rdev {m.st_rdev:#x} != {st.st_rdev:#x}"


@pytest.mark.parametrize("compressor", ["none", "lz4_block", "zstd"])
def test_kernel_mounts_the_bootstrap_alone(source_tree, tmp_path, kernel_mount, compressor):
    result = rafs.Builder(source_tree, fs_version=6, compressor=compressor).write(
        bootstrap=tmp_path / "boot", blob_dir=tmp_path)
    assert_mount_matches(kernel_mount(result.bootstrap), source_tree)


def test_kernel_reads_an_uncompressed_blob_as_its_device(source_tree, tmp_path, kernel_mount):
    """With blob_layout="mapped" the chunks of an uncompressed v6 blob sit at their uncompressed
    offsets, so the blob is the device."""
    result = rafs.Builder(source_tree, fs_version=6, compressor="none", chunk_size=0x4000,
                          blob_layout="mapped").write(bootstrap=tmp_path / "boot", blob_dir=tmp_path)
    blob = tmp_path / result.blob_id
    with rafs.open(result.bootstrap, blob_dir=tmp_path) as image:
        chunks = [c for _, i in image.iter_entries() if i.is_reg for c in image.reader.chunks(i.ino)]
        assert chunks and all(c.compressed_offset == c.uncompressed_offset for c in chunks)
        assert blob.stat().st_size >= image.blobs[0].uncompressed_size
    assert_mount_matches(kernel_mount(result.bootstrap, blob), source_tree, contents=True)


CLI_VARIANTS = {
    "repeatable": ["--repeatable"],
    "inline-meta": ["--blob-inline-meta"],
    "blob-toc": ["--features", "blob-toc"],
    "inline-meta-blob-toc-none": ["--blob-inline-meta", "--features", "blob-toc", "--compressor", "none",
                                  "--repeatable", "--blob-layout", "mapped"],
    "none-packed": ["--compressor", "none"],
}


@pytest.mark.parametrize("variant", list(CLI_VARIANTS))
def test_kernel_mounts_rafs_create_output(source_tree, tmp_path, kernel_mount, variant):
    flags = CLI_VARIANTS[variant]
    out = tmp_path / "out"
    out.mkdir()
    inline = "--blob-inline-meta" in flags
    argv = ["create", source_tree, "-D", str(out), "-J", str(tmp_path / "output.json")] + flags
    if not inline:
        argv += ["-B", str(tmp_path / "boot")]
    assert cli_main(argv) == 0
    (blob_id,) = [name for name in os.listdir(out) if len(name) == 64]
    blob = out / blob_id
    boot = tmp_path / "boot"
    if inline:
        found = extract_inline_bootstrap(blob.read_bytes(), name=blob_id)
        assert found is not None and found[1] == blob_id
        boot.write_bytes(found[0])
    uncompressed = "mapped" in flags
    mountpoint = kernel_mount(boot, blob) if uncompressed else kernel_mount(boot)
    assert_mount_matches(mountpoint, source_tree, repeatable="--repeatable" in flags, contents=uncompressed)


def test_default_uncompressed_blob_is_packed_like_nydus_image(source_tree, tmp_path):
    """By default chunks sit back to back, as nydus-image writes them (compressed_offset packed)."""
    result = rafs.Builder(source_tree, fs_version=6, compressor="none", chunk_size=0x4000).write(
        bootstrap=tmp_path / "boot", blob_dir=tmp_path)
    with rafs.open(result.bootstrap, blob_dir=tmp_path, validate=True) as image:
        chunks = sorted({(c.compressed_offset, c.compressed_size)
                         for _, i in image.iter_entries() if i.is_reg for c in image.reader.chunks(i.ino)})
        assert chunks[0][0] == 0
        assert all(a + size == b for (a, size), (b, _) in zip(chunks, chunks[1:]))
        assert list(image.check(verify_data=True)) == []


def test_mapped_layout_needs_uncompressed_v6(source_tree):
    with pytest.raises(rafs.InvalidArgumentError, match="mapped"):
        rafs.Builder(source_tree, fs_version=6, compressor="zstd", blob_layout="mapped")
    with pytest.raises(rafs.InvalidArgumentError, match="mapped"):
        rafs.Builder(source_tree, fs_version=5, compressor="none", blob_layout="mapped")
