"""One reader-conformance suite, run on every kind of image rafs reads (as fsspec runs one suite on
every archive filesystem):

* ``v5``: the reference's repeatable RAFS v5 fixture (made by nydus-image 2.2);
* ``v6``: the reference's RAFS v6 2.2 fixture;
* ``erofs``: a plain EROFS image that ``mkfs.erofs`` made of the v5 fixture's tree, with xattrs added.

Each subject comes with what it must hold, known without rafs reading that image: the v5 fixture's
``.result`` listing and md5 sums (nydus-image's own), the directory ``mkfs.erofs`` was given (its
``lstat``, ``readlink`` and xattrs; the kernel mount of the image is compared too), and for the v6
fixture its two files, their digests and the kernel's view of it. The same tests then check the tree,
the stat fields, the contents, xattrs, symlinks, hardlinks and the errors for missing paths.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import pathlib
import shutil
import stat
import subprocess
from dataclasses import dataclass, field

import pytest

import rafs

from conftest import need

STAT_FIELDS = ("st_mode", "st_uid", "st_gid", "st_nlink", "st_mtime_ns", "st_rdev")
V5_HARDLINKS = [[b"/hardlink-test/foo", b"/hardlink-test/test.sh", b"/normal-file-test/test.sh"]]
# the v6 fixture's two files: md5 (their blake3 chunk digests in the bootstrap verify them too) and size
V6_FILES = {b"/lib.rs": ("4709cf8873e419ecedc7d43fdee4a75f", 16931),
            b"/sync_io.rs": ("5442bc7dc9dc5f985c7594e23866ae6f", 13400)}
ADDED_XATTRS = {b"/hardlink-test": {b"user.dir": b"on a directory"},
                b"/hardlink-test/foo": {b"user.comment": b"hello", b"user.empty": b"",
                                        b"trusted.overlay.opaque": b"y"},
                b"/symlink-test/foo": {b"trusted.link": b"on a symlink"}}


@dataclass
class Expected:
    """What an image must hold. ``kinds``: path -> "dir" | "file" | "link" | other S_IFMT names;
    ``md5``: regular file -> md5 of its content; ``targets``: symlink -> target; ``stats``: path ->
    {stat field: value} for the fields known; ``xattrs``: path -> {name: value} (every path not
    listed has none); ``hardlinks``: groups of paths of one inode."""

    kinds: dict[bytes, str]
    md5: dict[bytes, str]
    targets: dict[bytes, bytes] = field(default_factory=dict)
    stats: dict[bytes, dict] = field(default_factory=dict)
    xattrs: dict[bytes, dict] = field(default_factory=dict)
    hardlinks: list[list[bytes]] = field(default_factory=list)
    sizes: dict[bytes, int] = field(default_factory=dict)


@dataclass
class Subject:
    name: str
    open: callable
    expected: Expected
    kernel_mountable: tuple | None = None      # (image, *devices) the kernel's EROFS mounts


# -- what each image must hold ----------------------------------------------------------------------

def _result_listing(path: pathlib.Path) -> Expected:
    """The v5 fixture's ``.result``: a ``tree -J`` listing, then ``md5sum`` lines of every file."""
    text = path.read_text()
    listing, end = json.JSONDecoder().raw_decode(text)
    kinds: dict[bytes, str] = {}
    targets: dict[bytes, bytes] = {}

    def visit(node, at: bytes):
        kind = {"directory": "dir", "file": "file", "link": "link"}[node["type"]]
        kinds[at or b"/"] = kind
        if kind == "link":
            targets[at] = os.fsencode(node["target"])
        for child in node.get("contents", []):
            visit(child, at + b"/" + os.fsencode(child["name"]))

    visit(listing[0], b"")
    md5 = {}
    for line in text[end:].strip().splitlines():
        digest, name = line.split(None, 1)
        md5[os.fsencode(name) if name.startswith("/") else b"/" + os.fsencode(name)] = digest
    return Expected(kinds=kinds, md5=md5, targets=targets, hardlinks=V5_HARDLINKS)


_KIND = {stat.S_IFDIR: "dir", stat.S_IFREG: "file", stat.S_IFLNK: "link", stat.S_IFIFO: "fifo",
         stat.S_IFSOCK: "socket", stat.S_IFCHR: "char", stat.S_IFBLK: "block"}


def _directory_view(top: pathlib.Path, *, content: bool = True) -> Expected:
    """What a real directory holds, read with os (the truth for an image made of it); without
    ``content`` the files are not read (a kernel mount of a bootstrap without its blob)."""
    top_b = os.fsencode(top)
    expected = Expected(kinds={}, md5={})
    inodes: dict[int, list[bytes]] = {}
    for parent, dirs, files in os.walk(top_b):
        for name in [None] + dirs + files:
            if name is None and parent != top_b:
                continue
            full = parent if name is None else os.path.join(parent, name)
            rel = b"/" + os.path.relpath(full, top_b) if full != top_b else b"/"
            st = os.lstat(full)
            kind = _KIND[stat.S_IFMT(st.st_mode)]
            expected.kinds[rel] = kind
            expected.stats[rel] = {f: getattr(st, f) for f in STAT_FIELDS}
            if kind == "file" and content:
                expected.md5[rel] = hashlib.md5(pathlib.Path(os.fsdecode(full)).read_bytes()).hexdigest()
                expected.sizes[rel] = st.st_size
                inodes.setdefault(st.st_ino, []).append(rel)
            elif kind == "link":
                expected.targets[rel] = os.readlink(full)
            names = os.listxattr(full, follow_symlinks=False)
            if names:
                expected.xattrs[rel] = {os.fsencode(n): os.getxattr(full, n, follow_symlinks=False) for n in names}
    expected.hardlinks = [sorted(group) for group in inodes.values() if len(group) > 1]
    return expected


@pytest.fixture(scope="module")
def v5_subject(v5_fixture):
    bootstrap, blobs, result = v5_fixture
    return Subject("v5", lambda: rafs.open(bootstrap, blob_dir=blobs, validate=True), _result_listing(result))


@pytest.fixture(scope="module")
def v6_subject(v6_fixture):
    bootstrap, blobs = v6_fixture
    kinds = {b"/": "dir", **{path: "file" for path in V6_FILES}}
    expected = Expected(kinds=kinds, md5={path: md5 for path, (md5, _) in V6_FILES.items()},
                        sizes={path: size for path, (_, size) in V6_FILES.items()},
                        stats={path: {"st_mode": 0o100644, "st_nlink": 1} for path in V6_FILES})
    return Subject("v6", lambda: rafs.open(bootstrap, blob_dir=blobs, validate=True), expected, (bootstrap,))


@pytest.fixture(scope="module")
def erofs_subject(v5_fixture, tmp_path_factory):
    mkfs = shutil.which("mkfs.erofs")
    need(mkfs is not None, "mkfs.erofs is not installed (Debian package erofs-utils)")
    need(os.geteuid() == 0, "trusted.* xattrs and the fixture's owners need root")
    bootstrap, blobs, _ = v5_fixture
    base = tmp_path_factory.mktemp("conformance")
    tree = base / "tree"
    with rafs.open(bootstrap, blob_dir=blobs) as image:
        image.extractall(tree, filter="fully_trusted")
    for path, xattrs in ADDED_XATTRS.items():
        for name, value in xattrs.items():
            os.setxattr(os.fsencode(tree) + path, name, value, follow_symlinks=False)
    # the added xattrs changed the ctime only; the parents' mtimes are what extraction set
    image_path = base / "tree.erofs"
    subprocess.run([mkfs, "--quiet", str(image_path), str(tree)], check=True, capture_output=True)
    return Subject("erofs", lambda: rafs.open(image_path, validate=True), _directory_view(tree), (image_path,))


@pytest.fixture(params=["v5", "v6", "erofs"])
def subject(request):
    return request.getfixturevalue(f"{request.param}_subject")


@pytest.fixture
def image(subject):
    with subject.open() as opened:
        yield opened


def _walk(image, path=b"/"):
    yield path
    for name in sorted(image.listdir(path)):
        child = path.rstrip(b"/") + b"/" + name
        yield from _walk(image, child) if stat.S_ISDIR(image.lstat(child).st_mode) else [child]


# -- the suite --------------------------------------------------------------------------------------

def test_tree(subject, image):
    kinds = {path: _KIND[stat.S_IFMT(image.lstat(path).st_mode)] for path in _walk(image)}
    assert kinds == subject.expected.kinds
    assert sorted(image.listdir("/")) == sorted(os.fsdecode(p[1:]) for p in kinds if p.count(b"/") == 1 and p != b"/")


def test_stat_fields(subject, image):
    for path, fields in subject.expected.stats.items():
        st = image.lstat(path)
        assert {f: getattr(st, f) for f in fields} == fields, path
    for path, size in subject.expected.sizes.items():
        assert image.lstat(path).st_size == size, path
    for path in _walk(image):
        st = image.lstat(path)
        if stat.S_ISDIR(st.st_mode):      # a directory's links: its entry, its ".", each child's ".."
            subdirs = sum(stat.S_ISDIR(image.lstat(path.rstrip(b"/") + b"/" + n).st_mode)
                          for n in image.listdir(path))
            assert st.st_nlink == 2 + subdirs, path
        elif stat.S_ISLNK(st.st_mode):
            assert st.st_size == len(image.readlink(path)), path
        assert image.stat(path, follow_symlinks=False) == st


def test_content(subject, image):
    for path, kind in subject.expected.kinds.items():
        if kind != "file":
            continue
        data = image.read(path)
        assert len(data) == image.lstat(path).st_size, path
        if path in subject.expected.md5:
            assert hashlib.md5(data).hexdigest() == subject.expected.md5[path], path
        with image.open(path) as f:                  # the file object agrees with read()
            f.seek(len(data) // 2)
            assert f.read() == data[len(data) // 2:], path
    assert set(subject.expected.md5) <= {p for p, k in subject.expected.kinds.items() if k == "file"}
    assert list(image.check(verify_data=True)) == []


def test_xattrs(subject, image):
    for path in subject.expected.kinds:
        want = subject.expected.xattrs.get(path, {})
        assert sorted(image.listxattr(path, follow_symlinks=False)) == sorted(want), path
        for name, value in want.items():
            assert image.getxattr(path, name, follow_symlinks=False) == value, (path, name)
        with pytest.raises(rafs.errors.NoSuchXattrError):
            image.getxattr(path, b"user.not-there", follow_symlinks=False)


def test_symlinks(subject, image):
    for path, kind in subject.expected.kinds.items():
        if kind == "link":
            assert image.readlink(path) == subject.expected.targets[path], path
            assert image.readlink(os.fsdecode(path)) == os.fsdecode(subject.expected.targets[path])
        else:
            with pytest.raises(rafs.errors.NotASymlinkError) as info:
                image.readlink(path)
            assert info.value.errno == errno.EINVAL
    if subject.name in ("v5", "erofs"):       # a relative symlink to a directory is followed
        assert "busybox" in image.listdir("/symlink-test/foo")
        assert stat.S_ISDIR(image.stat("/symlink-test/foo").st_mode)


def test_hardlinks(subject, image):
    for group in subject.expected.hardlinks:
        stats = [image.lstat(p) for p in group]
        assert len({s.st_ino for s in stats}) == 1, group
        assert {s.st_nlink for s in stats} == {len(group)}, group
        assert len({image.read(p) for p in group}) == 1, group
    grouped = {p for g in subject.expected.hardlinks for p in g}
    others = [p for p, k in subject.expected.kinds.items() if k == "file" and p not in grouped]
    assert all(image.lstat(p).st_nlink == 1 for p in others)
    assert len({image.lstat(p).st_ino for p in others}) == len(others)


def test_errors_for_missing_paths(subject, image):
    a_file = next(p for p, k in subject.expected.kinds.items() if k == "file")
    a_dir = next(p for p, k in subject.expected.kinds.items() if k == "dir" and p != b"/") \
        if sum(k == "dir" for k in subject.expected.kinds.values()) > 1 else b"/"
    for call in (image.stat, image.lstat, image.listdir, image.readlink, image.read, image.open,
                 image.listxattr):
        for missing in ("/no-such-entry", b"/no-such-entry", "/no/such/deeper", a_dir + b"/missing"):
            with pytest.raises(FileNotFoundError) as info:
                call(missing)
            assert isinstance(info.value, rafs.errors.PathError) and info.value.errno == errno.ENOENT
    assert not image.exists("/no-such-entry") and image.exists(a_file)
    with pytest.raises(NotADirectoryError):
        image.listdir(a_file)
    with pytest.raises(NotADirectoryError):
        image.stat(a_file + b"/below-a-file")
    with pytest.raises(IsADirectoryError):
        image.open(a_dir)
    with pytest.raises(IsADirectoryError):
        image.read(a_dir)


@pytest.mark.privileged
@pytest.mark.parametrize("name", ["v6", "erofs"])          # RAFS v5 is not EROFS
def test_matches_kernel_mount(name, request, kernel_mount):
    """The kernel's EROFS mounts the EROFS images: every entry, its stat fields, content and xattrs."""
    subject = request.getfixturevalue(f"{name}_subject")
    # the v6 fixture's data is in a zstd blob the kernel cannot read: its metadata only
    with_content = subject.name != "v6"
    mountpoint = kernel_mount(*subject.kernel_mountable)
    kernel = _directory_view(mountpoint, content=with_content)
    assert subject.expected.kinds == kernel.kinds
    root = os.fsencode(mountpoint)
    with subject.open() as image:
        for path in _walk(image):
            st = image.lstat(path)
            assert {f: getattr(st, f) for f in STAT_FIELDS} == kernel.stats[path], path
            theirs = os.lstat(root + path if path != b"/" else root)    # inode numbers are the nids
            assert (st.st_ino, st.st_size, st.st_blocks) == (theirs.st_ino, theirs.st_size, theirs.st_blocks)
        assert {p: hashlib.md5(image.read(p)).hexdigest() for p in kernel.md5} == kernel.md5
    assert len(kernel.md5) == (len(kernel.sizes) if with_content else 0)
    assert kernel.xattrs == subject.expected.xattrs
    assert kernel.targets == subject.expected.targets
