"""Plain EROFS images made by mkfs.erofs (erofs-utils 1.5) in every uncompressed layout: what rafs
reports equals the source tree and equals a kernel mount of the same image."""

from __future__ import annotations

import hashlib
import os
import pathlib
import random
import shutil
import socket
import stat
import subprocess
from collections import Counter

import pytest

import rafs
from conftest import need
from rafs.model import META_BLOB_INDEX, SuperFlags
from rafs.v6 import layout, xattr
from rafs.v6.inodes import chunk_format_bits
from rafs.v6.reader import V6Reader, erofs_sb_checksum

BUILD_TIME = 1_700_000_000
BIG_DIR_ENTRIES = 3000
DEEP_LEVELS = 40
LONG_NAME = "L" * 254                        # mkfs.erofs 1.5 cannot store 255-byte names
NON_UTF8 = [b"caf\xe9", b"\xff\xfe-raw"]

# layout name -> extra mkfs.erofs arguments ({blob} is replaced by the blob device path)
LAYOUTS = {
    "flat": [],                              # flat plain / flat inline, extended inodes (real mtimes)
    "compact": [f"-T{BUILD_TIME}"],          # compact inodes: mtime from the superblock build time
    "chunk4k": ["--chunksize=4096"],         # chunk-based, 4-byte block map, holes as NULL_ADDR
    "blobdev": ["--chunksize=65536", "--blobdev={blob}"],  # chunk indexes into an extra device
}


def _is_root() -> bool:
    return os.geteuid() == 0


def _write(path: pathlib.Path, data: bytes) -> None:
    path.write_bytes(data)


def build_tree(root: pathlib.Path) -> None:
    """A source tree with every entry type EROFS stores."""
    rng = random.Random(2024)
    root.mkdir(parents=True)
    _write(root / "empty", b"")
    _write(root / "one", b"x")
    sizes = root / "sizes"
    sizes.mkdir()
    for n in (1, 100, 511, 512, 4095, 4096, 4097, 8191, 8192, 12293, 65536 + 17):
        _write(sizes / f"s{n}", rng.randbytes(n))
    _write(root / "big.bin", rng.randbytes(2 * 1024 * 1024 + 500_000))
    text = b"".join(b"line %d of a compressible text file\n" % i for i in range(40_000))
    _write(root / "text.txt", text)
    with open(root / "sparse", "wb") as f:            # holes at the start, middle and end
        f.truncate(10 * 1024 * 1024)
        f.seek(3 * 1024 * 1024 + 123)
        f.write(rng.randbytes(70_000))
        f.seek(7 * 1024 * 1024)
        f.write(b"middle")
    # hardlinks, one of them in another directory
    _write(root / "orig", b"hardlinked content\n")
    (root / "links").mkdir()
    os.link(root / "orig", root / "link1")
    os.link(root / "orig", root / "links" / "link2")
    # symlinks: inline, long (plain block), dangling, absolute
    os.symlink("one", root / "sym_short")
    os.symlink("t" * 300, root / "sym_300")
    os.symlink("/".join(["seg%03d" % i for i in range(600)])[:4000], root / "sym_4000")
    os.symlink("nowhere/at/all", root / "sym_dangling")
    os.symlink("/etc/passwd", root / "sym_abs")
    big = root / "big_dir"
    big.mkdir()
    for i in range(BIG_DIR_ENTRIES):
        name = f"entry-{i:05d}" + ("-" + "n" * (i % 37) if i % 3 else "")
        _write(big / name, b"%d\n" % i if i % 50 == 0 else b"")
    # special files
    os.mkfifo(root / "fifo")
    sock = socket.socket(socket.AF_UNIX)
    cwd = os.getcwd()
    try:
        os.chdir(root)
        sock.bind("socket")
    finally:
        os.chdir(cwd)
        sock.close()
    if _is_root():
        os.mknod(root / "chr_null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
        os.mknod(root / "blk_sda1", 0o660 | stat.S_IFBLK, os.makedev(8, 1))
        os.mknod(root / "chr_big", 0o600 | stat.S_IFCHR, os.makedev(259, 70_000))
    # xattrs: user., trusted., security.; several files share one (mkfs.erofs may share it)
    xfile = root / "xattrs"
    _write(xfile, b"with xattrs")
    os.setxattr(xfile, "user.comment", b"hello")
    os.setxattr(xfile, "user.empty", b"")
    os.setxattr(xfile, "user.binary", bytes(range(256)))
    os.setxattr(xfile, "trusted.overlay.opaque", b"y")
    os.setxattr(xfile, "security.capability", b"\x01\x00\x00\x02" + bytes(16))
    os.setxattr(root / "links", "user.dir", b"on a directory")
    os.setxattr(root / "sym_short", "trusted.link", b"on a symlink", follow_symlinks=False)
    for i in range(6):
        f = root / "sizes" / f"shared{i}"
        _write(f, b"%d" % i)
        os.setxattr(f, "user.shared", b"the same value on many files")
        os.setxattr(f, "trusted.shared", b"also shared")
        os.setxattr(f, "user.own", b"%d" % i)
    # long and non-UTF-8 names
    _write(root / LONG_NAME, b"long name")
    (root / ("D" * 254)).mkdir()
    _write(root / ("D" * 254) / ("F" * 254), b"deep long")
    for name in NON_UTF8:
        _write(pathlib.Path(os.fsdecode(bytes(root) + b"/" + name)), name)
    # deep nesting
    deep = root
    for level in range(DEEP_LEVELS):
        deep = deep / f"d{level}"
    deep.mkdir(parents=True)
    _write(deep / "leaf", b"at the bottom")
    # odd modes and owners
    modes = {"setuid": 0o4755, "setgid": 0o2711, "nothing": 0o000, "everything": 0o777}
    for name, mode in modes.items():
        _write(root / name, name.encode())
        os.chmod(root / name, mode)
    (root / "sticky").mkdir()
    os.chmod(root / "sticky", 0o1777)
    if _is_root():
        os.chown(root / "one", 1000, 1000)
        os.chown(root / "setuid", 65535, 65534)
        os.chown(root / "everything", 70_000, 80_000)   # needs extended inodes
        os.lchown(root / "sym_short", 1234, 5678)
    # deterministic mtimes with nanoseconds, deepest first so parents keep theirs
    entries = sorted(_walk(root), key=lambda p: -len(p.parts))
    for i, path in enumerate(entries):
        ns = (1_600_000_000 + i * 3607) * 1_000_000_000 + (i * 7919) % 1_000_000_000
        os.utime(path, ns=(ns, ns), follow_symlinks=False)


def _walk(root: pathlib.Path):
    yield root
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            yield pathlib.Path(dirpath) / name


@pytest.fixture(scope="session")
def source_tree(tmp_path_factory) -> pathlib.Path:
    root = tmp_path_factory.mktemp("erofs-source") / "tree"
    build_tree(root)
    return root


@pytest.fixture(scope="session")
def images(source_tree, tmp_path_factory) -> dict:
    """layout -> (image path, [extra device paths])"""
    mkfs = _which("mkfs.erofs")
    out = tmp_path_factory.mktemp("erofs-images")
    result = {}
    for name, args in LAYOUTS.items():
        image, blob = out / f"{name}.erofs", out / f"{name}.blob"
        argv = [mkfs, "--quiet", *[a.format(blob=blob) for a in args], str(image), str(source_tree)]
        subprocess.run(argv, check=True, capture_output=True)
        result[name] = (image, [blob] if blob.exists() else [])
    return result


def _which(name: str) -> str:
    path = shutil.which(name)
    need(path is not None, f"{name} is not installed (Debian package erofs-utils)")
    return path


def _source_entries(root: pathlib.Path) -> dict[bytes, os.stat_result]:
    out = {}
    for path in _walk(root):
        rel = b"/" + bytes(path.relative_to(root)) if path != root else b"/"
        out[rel.replace(b"/.", b"/") if rel == b"/." else rel] = path
    return out


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _rafs_view(image) -> dict[bytes, tuple]:
    view = {}
    for path, inode in image.iter_entries("/"):
        content = None
        if inode.is_reg:
            content = _digest(image.read(path))
        elif inode.is_symlink:
            content = image.readlink(path)
        view[path] = dict(ino=inode.ino, mode=inode.mode, size=inode.size, nlink=inode.nlink, uid=inode.uid,
                          gid=inode.gid, mtime_ns=inode.mtime_ns, rdev=inode.rdev, blocks=inode.blocks,
                          xattrs=dict(inode.xattrs), content=content)
    return view


def _os_view(root: pathlib.Path) -> dict[bytes, dict]:
    view = {}
    for rel, path in _source_entries(root).items():
        st = os.lstat(path)
        content = None
        if stat.S_ISREG(st.st_mode):
            content = _digest(path.read_bytes())
        elif stat.S_ISLNK(st.st_mode):
            content = os.fsencode(os.readlink(path))
        names = os.listxattr(path, follow_symlinks=False)
        xattrs = {os.fsencode(n): os.getxattr(path, n, follow_symlinks=False) for n in names}
        view[rel] = dict(ino=st.st_ino, mode=st.st_mode, size=st.st_size, nlink=st.st_nlink, uid=st.st_uid,
                         gid=st.st_gid, mtime_ns=st.st_mtime_ns, rdev=st.st_rdev, blocks=st.st_blocks,
                         xattrs=xattrs, content=content)
    return view


def _open(images, name: str, **kwargs):
    image, blobs = images[name]
    return rafs.open(image, blobs=blobs or None, **kwargs)


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_matches_source(images, source_tree, name):
    source = _os_view(source_tree)
    with _open(images, name, validate=True) as image:
        ours = _rafs_view(image)
        assert list(image.check(verify_data=True)) == []
    assert set(ours) == set(source)
    assert len(ours) > BIG_DIR_ENTRIES + DEEP_LEVELS
    compared = ("mode", "uid", "gid", "nlink", "rdev", "xattrs", "content")
    for path, theirs in source.items():
        mine = ours[path]
        assert {k: mine[k] for k in compared} == {k: theirs[k] for k in compared}, path
        if not stat.S_ISDIR(theirs["mode"]):
            assert mine["size"] == theirs["size"], path
        expected_mtime = theirs["mtime_ns"] if name != "compact" else BUILD_TIME * 1_000_000_000
        assert mine["mtime_ns"] == expected_mtime, path
        assert mine["blocks"] == (mine["size"] + 4095) // 4096 * 8, path
    # hardlinks share one inode (the nid)
    assert ours[b"/orig"]["ino"] == ours[b"/link1"]["ino"] == ours[b"/links/link2"]["ino"]
    assert ours[b"/orig"]["nlink"] == 3


@pytest.mark.privileged
@pytest.mark.parametrize("name", list(LAYOUTS))
def test_matches_kernel_mount(images, name, kernel_mount):
    image_path, blobs = images[name]
    mountpoint = kernel_mount(image_path, *blobs)
    kernel = _os_view(mountpoint)
    with _open(images, name) as image:
        ours = _rafs_view(image)
    assert set(ours) == set(kernel)
    for path, theirs in kernel.items():
        assert ours[path] == theirs, path


def test_layouts_cover_each_data_path(images):
    """Each image really exercises the layout it is named after."""
    seen = {}
    for name in LAYOUTS:
        image_path, _ = images[name]
        reader = V6Reader(image_path.read_bytes())
        assert not reader.is_rafs
        assert reader.flags == SuperFlags.COMPRESSION_NONE | SuperFlags.HASH_SHA256
        kinds = set()
        for nid in _all_nids(reader):
            rec = reader.record(nid)
            kinds.add((rec.datalayout, bool(rec.extended)))
            if rec.datalayout == layout.EROFS_INODE_CHUNK_BASED:
                kinds.add(("indexes", bool(rec.raw.i_u & layout.EROFS_CHUNK_FORMAT_INDEXES)))
            if rec.raw.i_xattr_icount and xattr.HEADER.unpack_from(reader.data, rec.offset + rec.inode_size) \
                    .h_shared_count:
                kinds.add("shared xattrs")
        seen[name] = kinds
    flat, inline, chunked = (layout.EROFS_INODE_FLAT_PLAIN, layout.EROFS_INODE_FLAT_INLINE,
                             layout.EROFS_INODE_CHUNK_BASED)
    assert {(flat, True), (inline, True)} <= seen["flat"]
    assert {(flat, False), (inline, False), (inline, True)} <= seen["compact"]   # uid 70000: extended
    assert ("indexes", False) in seen["chunk4k"] and (chunked, True) in seen["chunk4k"]
    assert ("indexes", True) in seen["blobdev"]
    assert all("shared xattrs" in kinds for kinds in seen.values())


def _all_nids(reader) -> set[int]:
    seen, todo = set(), [reader.root_ino]
    while todo:
        nid = todo.pop()
        if nid not in seen:
            seen.add(nid)
            if reader.inode(nid).is_dir:
                todo.extend(child for _, child in reader.entries(nid))
    return seen


def test_where_the_data_lives(images):
    with _open(images, "flat") as image:
        chunks = image.chunks("/big.bin")
        assert {c.blob_index for c in chunks} == {META_BLOB_INDEX}
        assert sum(c.uncompressed_size for c in chunks) == image.stat("/big.bin").st_size
        assert all(c.uncompressed_size <= 1 << 20 for c in chunks)
    with _open(images, "chunk4k") as image:
        sparse = image.chunks("/sparse")
        assert len(sparse) == 10 * 256
        # mkfs.erofs 1.5 writes no holes: every zero chunk points at one shared zero block
        assert len({c.compressed_offset for c in sparse}) < 30
        assert image.read("/sparse")[7 * 1024 * 1024:7 * 1024 * 1024 + 6] == b"middle"
    with _open(images, "blobdev") as image:
        assert len(image.blobs) == 1 and image.blobs[0].blob_id == "erofs-device-1"
        assert {c.blob_index for c in image.chunks("/big.bin")} == {0}
        extra = image.reader.describe_extra()
        assert extra["flavour"] == "erofs" and len(extra["devices"]) == 1
        assert "device_table" in extra["feature_incompat"]


def _punch_holes(images, name: str) -> tuple[bytes, int]:
    """The image with every chunk of /sparse that points at the shared zero block made a hole
    (EROFS_NULL_ADDR), its superblock checksum recomputed; and the number of holes."""
    image_path, _ = images[name]
    data = bytearray(image_path.read_bytes())
    reader = V6Reader(bytes(data))
    with rafs.open(bytes(data)) as image:
        rec = reader.record(image.lstat("/sparse").st_ino)
    indexes = rec.raw.i_u & layout.EROFS_CHUNK_FORMAT_INDEXES
    unit = 8 if indexes else 4
    start = (rec.body_end + unit - 1) // unit * unit
    count = -(-rec.size // (1 << chunk_format_bits(reader.geometry, rec.nid, rec.i_u)))
    addr_at = [start + unit * i + (4 if indexes else 0) for i in range(count)]
    zero_block = Counter(bytes(data[a:a + 4]) for a in addr_at).most_common(1)[0][0]
    holes = 0
    for a in addr_at:
        if bytes(data[a:a + 4]) == zero_block:
            data[a:a + 4] = b"\xff\xff\xff\xff"
            holes += 1
    checksum = erofs_sb_checksum(data, reader.block_size)
    data[layout.EROFS_SUPER_OFFSET + 4:layout.EROFS_SUPER_OFFSET + 8] = checksum.to_bytes(4, "little")
    return bytes(data), holes


@pytest.mark.parametrize("name", ["chunk4k", "blobdev"])
def test_null_addr_chunks_are_holes(images, source_tree, name, tmp_path):
    data, holes = _punch_holes(images, name)
    assert holes > 100
    _, blobs = images[name]
    with rafs.open(data, blobs=blobs or None) as image:
        chunks = image.chunks("/sparse")
        assert len(chunks) == -(-10 * 1024 * 1024 // chunks[0].uncompressed_size) - holes
        assert image.read("/sparse") == (source_tree / "sparse").read_bytes()


@pytest.mark.privileged
def test_null_addr_holes_read_as_zeros_by_the_kernel(images, source_tree, tmp_path, kernel_mount):
    data, _ = _punch_holes(images, "chunk4k")
    image_path = tmp_path / "holes.erofs"
    image_path.write_bytes(data)
    mountpoint = kernel_mount(image_path)
    assert (mountpoint / "sparse").read_bytes() == (source_tree / "sparse").read_bytes()
    assert os.lstat(mountpoint / "sparse").st_blocks == rafs.open(data).lstat("/sparse").st_blocks


def test_blobdev_without_its_device(images):
    image_path, _ = images["blobdev"]
    with rafs.open(image_path) as image:
        assert image.stat("/big.bin").st_size > 0                # metadata needs no device
        with pytest.raises(rafs.BlobNotFoundError):
            image.read("/big.bin")


def test_lookup_by_binary_search(images):
    with _open(images, "compact") as image:
        reader = image.reader
        big = image.lstat("/big_dir").st_ino
        listing = list(reader.entries(big))
        assert len(listing) == BIG_DIR_ENTRIES
        assert [n for n, _ in listing] == sorted(n for n, _ in listing)
        assert reader.directories.block_count(reader.record(big)) > 10
        for name, nid in listing:
            assert reader.lookup(big, name) == nid
        for missing in (b"", b"a", b"entry-", b"entry-00001-", b"entry-02999-x", b"zzz", b"."):
            assert reader.lookup(big, missing) is None
        assert image.read("/big_dir/entry-00150") == b"150\n"


def test_names_and_paths(images):
    with _open(images, "flat") as image:
        assert image.read("/" + LONG_NAME) == b"long name"
        assert image.read(b"/" + b"D" * 254 + b"/" + b"F" * 254) == b"deep long"
        for raw in NON_UTF8:
            assert image.read(b"/" + raw) == raw
        deep = "/" + "/".join(f"d{i}" for i in range(DEEP_LEVELS)) + "/leaf"
        assert image.read(deep) == b"at the bottom"
        assert image.read("/sym_short") == b"x"                 # followed
        assert image.readlink("/sym_300") == "t" * 300
        assert len(image.readlink("/sym_4000")) == 4000


def test_superblock_checksum_is_verified(images):
    image_path, _ = images["compact"]
    data = bytearray(image_path.read_bytes())
    reader = V6Reader(bytes(data))
    assert reader.superblock.s_feature_compat & layout.EROFS_FEATURE_COMPAT_SB_CHKSUM
    data[layout.EROFS_SUPER_OFFSET + 100] ^= 1                   # a reserved byte the checksum covers
    with pytest.raises(rafs.InvalidImageError, match="checksum"):
        V6Reader(bytes(data))


def test_extract_plain_erofs(images, source_tree, tmp_path):
    with _open(images, "chunk4k") as image:
        image.extractall(tmp_path / "out", filter="tar")
    for rel in (b"/big.bin", b"/sparse", b"/" + NON_UTF8[0], b"/links/link2", b"/sizes/s4097"):
        extracted = pathlib.Path(os.fsdecode(bytes(tmp_path / "out") + rel))
        original = pathlib.Path(os.fsdecode(bytes(source_tree) + rel))
        assert extracted.read_bytes() == original.read_bytes()
    assert os.readlink(tmp_path / "out" / "sym_300") == "t" * 300
