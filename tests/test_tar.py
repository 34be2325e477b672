"""Tar layers: reading them into build trees (rafs.builder.tar) and building RAFS from them
(``rafs create -t tar-rafs|targz-rafs``), compared with what Python's tarfile sees in the same tar."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import stat
import subprocess
import tarfile

import pytest

import rafs
from rafs.builder.builder import Builder
from rafs.builder.tar import read_tar
from rafs.builder.tarstream import normalize_path
from rafs.cli.main import main as cli
from rafs.errors import BuildError

from oci_layers import IS_ROOT

FIXTURE_TARS = ("all-entry-type.tar", "all-entry-type-macos.tar", "empty.tar")
STORABLE_XATTRS = (b"user.", b"security.", b"trusted.", b"system.posix_acl_access", b"system.posix_acl_default")
_KINDS = {tarfile.DIRTYPE: stat.S_IFDIR, tarfile.SYMTYPE: stat.S_IFLNK, tarfile.CHRTYPE: stat.S_IFCHR,
          tarfile.BLKTYPE: stat.S_IFBLK, tarfile.FIFOTYPE: stat.S_IFIFO}


def _path(name: str) -> bytes:
    return b"/" + b"/".join(normalize_path(name.encode("utf-8", "surrogateescape")))


def tarfile_view(path) -> dict[bytes, tuple]:
    """What Python's tarfile says the layer holds: path -> (type, permissions, uid, gid, mtime,
    size, content digest, symlink target, rdev, nlink, xattrs), hardlinks resolved to their target.
    Directories the tar only implies are absent; storable xattrs only."""
    if os.path.getsize(path) == 0:
        return {}
    view, links = {}, {}
    with tarfile.open(path, encoding="utf-8", errors="surrogateescape") as tar:
        for m in tar:
            p = _path(m.name)
            if m.islnk():
                links[p] = _path(m.linkname)
                continue
            kind = _KINDS.get(m.type, stat.S_IFREG)
            digest = hashlib.sha256(tar.extractfile(m).read()).hexdigest() if m.isreg() else None
            target = m.linkname.encode("utf-8", "surrogateescape") if m.issym() else None
            xattrs = {k[len("SCHILY.xattr."):].encode("utf-8", "surrogateescape"): v.encode("utf-8", "surrogateescape")
                      for k, v in m.pax_headers.items() if k.startswith("SCHILY.xattr.")}
            xattrs = {k: v for k, v in xattrs.items() if k.startswith(STORABLE_XATTRS)}
            size = 0 if kind == stat.S_IFDIR else len(target) if target is not None else m.size
            rdev = os.makedev(m.devmajor, m.devminor) if kind in (stat.S_IFCHR, stat.S_IFBLK) else 0
            view[p] = [kind, m.mode & 0o7777, m.uid, m.gid, int(m.mtime), size, digest, target, rdev, 1, xattrs]
    for p, target in links.items():
        view[p] = view[target]          # one list: a hardlink is the same inode
        if view[p][0] == stat.S_IFREG:
            view[p][9] += 1
    return {p: tuple(v) for p, v in view.items()}


def tree_view(root) -> dict[bytes, tuple]:
    view = {}
    for p, node in root.walk():
        i = node.inode
        digest = None
        if i.is_reg:
            with node.data() as f:
                digest = hashlib.sha256(f.read()).hexdigest()
        kind = stat.S_IFMT(i.mode)
        view[p] = (kind, stat.S_IMODE(i.mode), i.uid, i.gid, i.mtime, 0 if i.is_dir else i.size, digest,
                   i.symlink, i.rdev, i.nlink if i.is_reg else 1, dict(i.xattrs))
    return view


def image_view(image) -> dict[bytes, tuple]:
    view = {}
    for p, i in image.iter_entries(b"/"):
        kind = stat.S_IFMT(i.mode)
        digest = hashlib.sha256(image.read(p)).hexdigest() if i.is_reg else None
        rdev = i.rdev if kind in (stat.S_IFCHR, stat.S_IFBLK) else 0
        view[p] = (kind, stat.S_IMODE(i.mode), i.uid, i.gid, i.mtime, 0 if i.is_dir else i.size, digest,
                   i.symlink, rdev, i.nlink if i.is_reg else 1, dict(i.xattrs))
    return view


def assert_same(got: dict, want: dict) -> None:
    implied = {p for p, v in got.items() if p not in want and v[0] == stat.S_IFDIR}
    assert set(got) - implied == set(want), (sorted(set(want) - set(got)), sorted(set(got) - set(want) - implied))
    for p in want:
        assert got[p] == want[p], p


class NonSeekable(io.RawIOBase):
    """A pipe-like stream: no seek, no tell, no fileno."""

    def __init__(self, data: bytes):
        self._inner = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        data = self._inner.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)


# -- the reference's fixtures ------------------------------------------------------------------------

@pytest.mark.parametrize("name", FIXTURE_TARS)
def test_fixture_tars_read_as_tarfile_sees_them(fixtures, name):
    path = fixtures / "tar" / name
    with read_tar(path) as layer:
        assert_same(tree_view(layer.root), tarfile_view(path))
        if name == "all-entry-type.tar":
            links = [p for p, n in layer.root.walk() if n.hardlink_key is not None]
            assert len(links) == 4 and len({id(n.inode) for _, n in layer.root.walk() if n.hardlink_key}) == 1
        if name == "all-entry-type-macos.tar":
            # AppleDouble files are ordinary files; macOS's bare xattr names cannot be stored
            assert any(p.endswith(b"/._hardlink2.txt") for p, _ in layer.root.walk())
            assert {name for _, name in layer.skipped_xattrs} == {b"hardlink3", b"dir", b"symlink"}


@pytest.mark.parametrize("fs_version", [5, 6])
@pytest.mark.parametrize("name", FIXTURE_TARS)
def test_fixture_tars_build_and_read_back(fixtures, tmp_path, name, fs_version):
    path = fixtures / "tar" / name
    result = Builder(str(path), source_type="tar-rafs", fs_version=fs_version).write(
        bootstrap=tmp_path / "boot", blob_dir=tmp_path)
    with rafs.open(tmp_path / "boot", blob_dir=tmp_path, validate=True) as image:
        view = image_view(image)
        assert_same(view, tarfile_view(path))
        groups: dict[int, set] = {}
        for p, inode in image.iter_entries(b"/"):
            if inode.is_reg and inode.nlink > 1:
                groups.setdefault(inode.ino, set()).add(p)
    if name == "empty.tar":
        assert result.blob_ids == [] and list(view) == [b"/"]
    else:
        names = (b"hardlink1.txt", b"hardlink2.txt", b"hardlink3.txt", b"xfile.txt")
        assert {frozenset(g) for g in groups.values()} == {frozenset(
            p for p in view if os.path.basename(p) in names)}


# -- tars made by GNU tar --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def gnu_source(tmp_path_factory):
    """A directory with every entry type GNU tar can archive (devices when root)."""
    top = tmp_path_factory.mktemp("gnu") / "src"
    (top / "d/e").mkdir(parents=True)
    (top / "d/f").write_bytes(b"hello\n")
    os.setxattr(top / "d/f", "user.foo", b"bar")
    os.link(top / "d/f", top / "d/hl")
    os.symlink("f", top / "d/sl")
    os.symlink("t" * 300, top / "d/longlink")
    os.mkfifo(top / "d/p")
    if IS_ROOT:
        os.mknod(top / "d/c", 0o644 | stat.S_IFCHR, os.makedev(1, 3))
        os.mknod(top / "d/b", 0o600 | stat.S_IFBLK, os.makedev(259, 70000))
        os.setxattr(top / "d/e", "trusted.overlay.opaque", b"y")
    with open(top / "d/sparse", "wb") as f:
        f.truncate(3 << 20)
        f.seek(2 << 20)
        f.write(b"x" * 5000)
    (top / ("L" * 200)).write_bytes(b"long name")
    deep = top.joinpath(*(["x" * 60] * 5))
    deep.mkdir(parents=True)
    (deep / "f").write_bytes(os.urandom(300 * 1024))
    (top / "\xe9t\xe9").write_bytes(b"latin")
    return top


def _make_tar(kind: str, source, directory):
    fmt, _, sparse = kind.partition("-")
    out = directory / f"{kind}.tar"
    cmd = ["tar", f"--format={fmt}", "--xattrs", "--xattrs-include=*", "--numeric-owner", "-cf", str(out),
           "-C", str(source), "."]
    if sparse:
        cmd.insert(1, "--sparse")
    subprocess.run(cmd, check=True)
    return out


@pytest.fixture(scope="module", params=["gnu", "posix", "gnu-sparse", "posix-sparse"])
def gnu_tar(request, gnu_source, tmp_path_factory):
    return _make_tar(request.param, gnu_source, tmp_path_factory.mktemp("tars"))


def _sources(path, tmp_path):
    data = path.read_bytes()
    gz = tmp_path / "layer.tar.gz"
    gz.write_bytes(gzip.compress(data[:len(data) // 1024 * 512]) + gzip.compress(data[len(data) // 1024 * 512:]))
    zst = tmp_path / "layer.tar.zst"
    subprocess.run(["zstd", "-q", "-f", str(path), "-o", str(zst)], check=True)
    return {"path": path, "fileobj": open(path, "rb"), "pipe": NonSeekable(data), "gzip-multimember": gz,
            "gzip-pipe": NonSeekable(gz.read_bytes()), "zstd": zst}


def test_gnu_tars_read_in_every_form(gnu_tar, tmp_path):
    want = tarfile_view(gnu_tar)
    assert any(v[0] == stat.S_IFIFO for v in want.values())
    for form, source in _sources(gnu_tar, tmp_path).items():
        with read_tar(source) as layer:
            assert_same(tree_view(layer.root), want)
            assert layer.compression == ("gzip" if form.startswith("gzip") else "zstd" if form == "zstd" else "none")


def test_one_pass_callback_sees_each_file_once_in_tar_order(gnu_tar):
    seen = {}

    def on_file(node, stream):
        assert id(node.inode) not in seen
        seen[id(node.inode)] = hashlib.sha256(stream.read()).hexdigest()

    with read_tar(NonSeekable(gnu_tar.read_bytes()), on_file=on_file) as layer:
        assert [id(n.inode) for n in layer.files] == list(seen)
        assert all(n.data is None for n in layer.files)
        want = tarfile_view(gnu_tar)
        for p, node in layer.root.walk():
            if node.inode.is_reg:
                assert seen[id(node.inode)] == want[p][6], p


@pytest.mark.parametrize("fs_version", [5, 6])
def test_gnu_tar_builds_with_every_entry(gnu_source, tmp_path, fs_version):
    gnu_tar = _make_tar("posix-sparse", gnu_source, tmp_path)
    gz = tmp_path / "layer.tar.gz"
    gz.write_bytes(gzip.compress(gnu_tar.read_bytes()))
    for kind, source in (("tar-rafs", gnu_tar), ("targz-rafs", gz)):
        boot = tmp_path / f"{kind}.boot"
        Builder(str(source), source_type=kind, fs_version=fs_version, chunk_size=0x10000).write(
            bootstrap=boot, blob_dir=tmp_path)
        with rafs.open(boot, blob_dir=tmp_path, validate=True) as image:
            assert_same(image_view(image), tarfile_view(gnu_tar))


# -- layer semantics ----------------------------------------------------------------------------------

def _tar(entries) -> bytes:
    """A tar from (name, type, extra) in the given order; extra is data or a link target."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, kind, extra in entries:
            info = tarfile.TarInfo(name)
            info.type = kind
            info.mtime = 1_600_000_000
            info.mode = 0o700 if kind == tarfile.DIRTYPE else 0o640
            if kind in (tarfile.SYMTYPE, tarfile.LNKTYPE):
                info.linkname = extra
                tar.addfile(info)
            elif kind == tarfile.REGTYPE:
                info.size = len(extra)
                tar.addfile(info, io.BytesIO(extra))
            else:
                tar.addfile(info)
    return out.getvalue()


def test_any_order_missing_parents_and_replacements():
    data = _tar([
        ("a/b/c/file", tarfile.REGTYPE, b"deep"),                 # parents created (0755, mtime 0)
        ("a/b", tarfile.DIRTYPE, None),                            # later metadata for a made dir
        ("x", tarfile.REGTYPE, b"first"),
        ("x", tarfile.REGTYPE, b"second"),                         # a later entry wins
        ("y/old", tarfile.REGTYPE, b"gone with its dir"),
        ("y", tarfile.SYMTYPE, "a"),                               # replaces the directory y/
        ("./", tarfile.DIRTYPE, None),                             # the root's own entry
        ("../../escape", tarfile.REGTYPE, b"stays inside"),
        (".wh.deleted", tarfile.REGTYPE, b""),                     # whiteouts stay in tar layers
        ("stargz.index.json", tarfile.REGTYPE, b"{}"),            # eStargz markers are skipped
    ])
    with read_tar(io.BytesIO(data)) as layer:
        root = layer.root
        a = root.child(b"a")
        assert stat.S_IMODE(a.inode.mode) == 0o755 and a.inode.mtime == 0
        b = a.child(b"b")
        assert stat.S_IMODE(b.inode.mode) == 0o700 and b.inode.mtime == 1_600_000_000
        assert b.child(b"c").child(b"file").data().read() == b"deep"
        assert root.child(b"x").data().read() == b"second"
        assert root.child(b"y").inode.is_symlink and root.child(b"y").children == []
        assert stat.S_IMODE(root.inode.mode) == 0o700
        assert root.child(b"escape").data().read() == b"stays inside"
        assert root.child(b".wh.deleted") is not None and root.child(b"stargz.index.json") is None
        assert [n.name for n in layer.files] == [b"file", b"x", b"escape", b".wh.deleted"]


@pytest.mark.parametrize("fs_version", [5, 6])
def test_device_entries_need_no_root(tmp_path, fs_version):
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name, kind, major, minor in (("dev/null", tarfile.CHRTYPE, 1, 3), ("dev/loop9", tarfile.BLKTYPE, 7, 9),
                                         ("dev/big", tarfile.BLKTYPE, 259, 70000), ("run/fifo", tarfile.FIFOTYPE, 0, 0),
                                         ("dev/whiteout", tarfile.CHRTYPE, 0, 0)):
            info = tarfile.TarInfo(name)
            info.type, info.devmajor, info.devminor, info.mode, info.uid = kind, major, minor, 0o620, 5
            tar.addfile(info)
    (tmp_path / "devices.tar").write_bytes(out.getvalue())
    Builder(str(tmp_path / "devices.tar"), source_type="tar-rafs", fs_version=fs_version).write(
        bootstrap=tmp_path / "boot", blob_dir=tmp_path)
    with rafs.open(tmp_path / "boot") as image:
        assert image.lstat("/dev/null").st_rdev == os.makedev(1, 3)
        big = image.lstat("/dev/big")
        assert stat.S_ISBLK(big.st_mode) and big.st_rdev == os.makedev(259, 70000)
        assert stat.S_ISFIFO(image.lstat("/run/fifo").st_mode) and image.lstat("/run/fifo").st_uid == 5
        assert stat.S_ISCHR(image.lstat("/dev/whiteout").st_mode)   # kept: merge applies whiteouts later


def test_v5_tar_builds_store_rdev_max_for_what_is_no_device(tmp_path, source_tree):
    """builder/src/tarball.rs writes i_rdev u32::MAX for every tar inode but devices and fifos (the root
    and implied directories included); directory builds store st_rdev. Readers report 0 for both."""
    from rafs.v5.reader import V5Reader
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name, kind, extra in (("implied/dir/file", tarfile.REGTYPE, b"x"), ("link", tarfile.SYMTYPE, "x"),
                                  ("dev/null", tarfile.CHRTYPE, (1, 3)), ("fifo", tarfile.FIFOTYPE, (0, 0))):
            info = tarfile.TarInfo(name)
            info.type = kind
            if kind == tarfile.REGTYPE:
                info.size = len(extra)
                tar.addfile(info, io.BytesIO(extra))
                continue
            if kind == tarfile.SYMTYPE:
                info.linkname = extra
            else:
                info.devmajor, info.devminor = extra
            tar.addfile(info)
    (tmp_path / "layer.tar").write_bytes(out.getvalue())
    expected = {"/": 0xFFFF_FFFF, "/implied": 0xFFFF_FFFF, "/implied/dir": 0xFFFF_FFFF,
                "/implied/dir/file": 0xFFFF_FFFF, "/link": 0xFFFF_FFFF, "/dev": 0xFFFF_FFFF,
                "/dev/null": os.makedev(1, 3), "/fifo": 0}
    for source, source_type, want in ((tmp_path / "layer.tar", "tar-rafs", expected), (source_tree, "dir-rafs", None)):
        boot = tmp_path / f"{source_type}.boot"
        Builder(str(source), source_type=source_type, fs_version=5).write(bootstrap=boot, blob_dir=tmp_path)
        with rafs.open(boot) as image:
            reader = V5Reader(boot.read_bytes())
            on_disk = {path.decode(errors="surrogateescape") or "/": reader.record(inode.ino)[0].i_rdev
                       for path, inode in image.iter_entries()}
            assert all(inode.rdev == 0 for _, inode in image.iter_entries()
                       if inode.mode & 0o170000 not in (stat.S_IFCHR, stat.S_IFBLK))
        if want is not None:
            assert on_disk == want
        else:
            tops = os.fsencode(source)
            assert on_disk == {p: os.lstat(tops + os.fsencode(p) if p != "/" else tops).st_rdev for p in on_disk}


def test_hardlinks_to_symlinks_copy_and_to_files_share():
    data = _tar([
        ("f", tarfile.REGTYPE, b"content"),
        ("s", tarfile.SYMTYPE, "f"),
        ("dir/hf", tarfile.LNKTYPE, "f"),
        ("dir/hs", tarfile.LNKTYPE, "./s"),
    ])
    with read_tar(io.BytesIO(data)) as layer:
        f, hf = layer.root.child(b"f"), layer.root.child(b"dir").child(b"hf")
        assert f.inode is hf.inode and f.inode.nlink == 2 and f.hardlink_key == hf.hardlink_key
        s, hs = layer.root.child(b"s"), layer.root.child(b"dir").child(b"hs")
        assert hs.inode is not s.inode and hs.inode.symlink == b"f" and hs.inode.nlink == 1


@pytest.mark.parametrize("entries, message", [
    ([("a", tarfile.LNKTYPE, "missing")], "not in this layer"),
    ([("d", tarfile.DIRTYPE, None), ("h", tarfile.LNKTYPE, "d")], "hardlink to directory"),
    ([("f", tarfile.REGTYPE, b"x"), ("f/child", tarfile.REGTYPE, b"y")], "not a directory"),
    ([("n" * 256, tarfile.REGTYPE, b"x")], "longer than 255"),
])
def test_invalid_layers_are_refused(entries, message):
    with pytest.raises(BuildError, match=message):
        read_tar(io.BytesIO(_tar(entries)))


def test_damaged_tars_are_refused_not_truncated():
    data = _tar([("a", tarfile.REGTYPE, b"A" * 3000), ("b", tarfile.REGTYPE, b"B" * 3000)])
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        second_header = tar.getmembers()[1].offset
    corrupt = bytearray(data)
    corrupt[second_header + 150] ^= 0xFF            # checksum field of the next header
    with pytest.raises(BuildError, match="invalid tar header"):
        read_tar(io.BytesIO(bytes(corrupt)))
    with pytest.raises(BuildError, match="ends inside"):
        read_tar(io.BytesIO(data[:second_header - 1000]))
    with pytest.raises(BuildError, match="ends inside|unexpected end of data"):
        read_tar(NonSeekable(data[:second_header - 1000]))
    with pytest.raises(BuildError, match="invalid gzip"):
        read_tar(io.BytesIO(gzip.compress(data)[:-40]))
    # zero blocks between archives are skipped (tar -i), garbage after the end is ignored
    with read_tar(io.BytesIO(data + _tar([("c", tarfile.REGTYPE, b"C")]) + b"trailing junk" * 100)) as layer:
        assert [c.name for c in layer.root.children] == [b"a", b"b", b"c"]


def test_build_from_a_fifo(fixtures, tmp_path):
    """nydusify feeds layers to the builder through a FIFO: a stream that cannot seek."""
    import threading
    fifo = tmp_path / "layer.fifo"
    os.mkfifo(fifo)
    data = gzip.compress((fixtures / "tar" / "all-entry-type.tar").read_bytes())
    feeder = threading.Thread(target=lambda: fifo.write_bytes(data))
    feeder.start()
    try:
        Builder(str(fifo), source_type="targz-rafs").write(bootstrap=tmp_path / "boot", blob_dir=tmp_path)
    finally:
        feeder.join(timeout=30)
    with rafs.open(tmp_path / "boot", blob_dir=tmp_path) as image:
        assert_same(image_view(image), tarfile_view(fixtures / "tar" / "all-entry-type.tar"))


def test_cli_create_from_tar(fixtures, tmp_path):
    tar = fixtures / "tar" / "all-entry-type.tar"
    assert cli(["create", "-t", "tar-rafs", "-B", str(tmp_path / "boot"), "-D", str(tmp_path), str(tar)]) == 0
    assert cli(["create", "-t", "targz-rafs", "--blob-inline-meta", "--features", "blob-toc",
                "-b", str(tmp_path / "inline.blob"), str(tar)]) == 0
    for source, kwargs in ((tmp_path / "boot", {"blob_dir": tmp_path}), (tmp_path / "inline.blob", {})):
        with rafs.open(source, **kwargs) as image:
            assert image.read("/tar/dir2/hardlink3.txt") == b"This is a test\n"
            assert image.readlink("/tar/dir2/symlink1.txt") == "../dir1/dir3/file1.txt"
