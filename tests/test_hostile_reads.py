"""Declared sizes taken at their word (issue 12): a file's data is its chunks, the rest of the size it
declares is holes, read lazily and written sparse, never allocated or written as zeros.

A v5 file whose ``i_size`` says 2^40 over one real chunk, and a v6 file of 2^40 bytes with no data at
all, go through ``Image.read``, ``Image.open``, ``extractall``, ``write_tar`` and ``rafs unpack``: each
either refuses cleanly (read whole) or costs what the chunks hold (the rest), checked on disk with
``st_blocks`` and the tar's size.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import struct
import subprocess
import sys
import tarfile

import pytest

import rafs
from rafs import errors
from rafs.unpack import write_tar
from rafs.v6 import layout as v6layout

HUGE = 1 << 40
DATA = b"real chunk data " * 320                    # 5120 bytes: one chunk
BOUND = 1 << 20                                     # what any output may cost beyond DATA


def _build(tmp_path, version: int):
    source = tmp_path / "src"
    source.mkdir()
    (source / "big").write_bytes(DATA if version == 5 else b"")
    (source / "small").write_bytes(b"small file\n")
    blobs = tmp_path / "blobs"
    blobs.mkdir()
    boot = tmp_path / "image.boot"
    rafs.Builder(str(source), fs_version=version, compressor="none").write(bootstrap=str(boot), blob_dir=str(blobs))
    return boot, blobs


def _patch(boot, offset: int, fmt: str, value: int) -> None:
    with open(boot, "r+b") as f:
        f.seek(offset)
        f.write(struct.pack(fmt, value))


@pytest.fixture(params=[5, 6], ids=["v5", "v6"])
def huge(request, tmp_path):
    """(bootstrap, blob dir, expected head) of an image whose /big declares 2^40 bytes. v5: one chunk
    of DATA, then holes (i_size patched). v6: no data at all (an empty file made flat with a null
    start block, i_size patched): all holes."""
    boot, blobs = _build(tmp_path, request.param)
    with rafs.open(boot, blob_dir=blobs) as image:
        ino = image.inode("/big").ino
        if request.param == 5:
            at = image.reader.record_offset(ino)
            patches = [(at + 64, "<Q", HUGE)]                  # RafsV5Inode.i_size
        else:
            at = image.reader.inode_offset(ino)
            fmt = struct.unpack_from("<H", image.reader.data, at)[0]
            flat = (fmt & ~(7 << 1)) | (v6layout.EROFS_INODE_FLAT_PLAIN << 1)
            patches = [(at, "<H", flat), (at + 8, "<Q", HUGE), (at + 16, "<I", v6layout.EROFS_NULL_ADDR)]
    for offset, fmt, value in patches:
        _patch(boot, offset, fmt, value)
    return boot, blobs, DATA if request.param == 5 else b""


def test_read_whole_refuses_cleanly(huge):
    boot, blobs, _ = huge
    with rafs.open(boot, blob_dir=blobs) as image:
        assert image.stat("/big").st_size == HUGE
        with pytest.raises(errors.FileTooLargeError) as info:
            image.read("/big")
        assert "in pieces" in str(info.value)
        with image.open("/big") as f, pytest.raises(errors.FileTooLargeError):
            f.read()
        assert image.read("/small") == b"small file\n"


def test_open_serves_holes_lazily(huge):
    boot, blobs, head = huge
    with rafs.open(boot, blob_dir=blobs) as image, image.open("/big") as f:
        assert f.read(len(DATA)) == head.ljust(len(DATA), b"\0")
        f.seek(HUGE - 10)
        assert f.read(100) == b"\0" * 10
        assert f.read(100) == b""
        assert f.pread(4096, HUGE // 2) == b"\0" * 4096
        assert f.data_regions() == ([(0, len(DATA))] if head else [])


def test_extract_writes_holes_sparse(huge, tmp_path):
    boot, blobs, head = huge
    dest = tmp_path / "out"
    with rafs.open(boot, blob_dir=blobs) as image:
        image.extractall(dest)
    st = os.stat(dest / "big")
    assert st.st_size == HUGE
    assert st.st_blocks * 512 <= len(head) + BOUND
    with open(dest / "big", "rb") as f:
        assert f.read(len(head)) == head


def _check_tar(tar_path, head) -> None:
    assert os.path.getsize(tar_path) <= len(head) + BOUND
    with tarfile.open(tar_path) as tar:
        member = tar.getmember("big")                   # the real name, from GNU.sparse.name
        assert member.size == HUGE and member.issparse()
        f = tar.extractfile(member)
        assert f.read(len(head)) == head
        f.seek(HUGE - 4)
        assert f.read() == b"\0" * 4
        assert tar.extractfile("small").read() == b"small file\n"


def test_write_tar_emits_a_sparse_member(huge, tmp_path):
    boot, blobs, head = huge
    out = tmp_path / "image.tar"
    with rafs.open(boot, blob_dir=blobs) as image, open(out, "wb") as f:
        write_tar(image, f)
    _check_tar(out, head)


def test_gnu_tar_restores_the_sparse_member(huge, tmp_path):
    tar_tool = shutil.which("tar")
    if tar_tool is None:
        pytest.skip("GNU tar is not installed")
    boot, blobs, head = huge
    out = tmp_path / "image.tar"
    with rafs.open(boot, blob_dir=blobs) as image, open(out, "wb") as f:
        write_tar(image, f)
    dest = tmp_path / "gnu"
    dest.mkdir()
    subprocess.run([tar_tool, "-xf", str(out), "-C", str(dest)], check=True, capture_output=True)
    st = os.stat(dest / "big")
    assert st.st_size == HUGE and st.st_blocks * 512 <= len(head) + BOUND
    with open(dest / "big", "rb") as f:
        assert f.read(len(head)) == head


def test_cli_unpack_is_bounded(huge, tmp_path):
    boot, blobs, head = huge
    out = tmp_path / "cli.tar"
    done = subprocess.run([sys.executable, "-m", "rafs", "unpack", str(boot), "-D", str(blobs), "--output", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    _check_tar(out, head)


def test_files_without_holes_stay_plain_members(tmp_path):
    boot, blobs = _build(tmp_path, 5)
    out = tmp_path / "plain.tar"
    with rafs.open(boot, blob_dir=blobs) as image, open(out, "wb") as f:
        write_tar(image, f)
    with tarfile.open(out) as tar:
        member = tar.getmember("big")
        assert not member.issparse() and not any(k.startswith("GNU.") for k in member.pax_headers)
        assert tar.extractfile(member).read() == DATA


# -- extraction targets and symlinks no system can hold: clean rafs errors, never builtins ---------------

@pytest.fixture
def small_image(tmp_path):
    boot, blobs = _build(tmp_path, 5)
    with rafs.open(boot, blob_dir=blobs) as image:
        yield image


@pytest.mark.parametrize("target", ["a-file", "nul\0name", "/proc/rafs-extract", "/proc/self/status/x"])
def test_extract_into_an_impossible_target(small_image, tmp_path, target):
    (tmp_path / "a-file").write_bytes(b"")
    dest = target if target.startswith("/") else str(tmp_path / target)
    with pytest.raises(errors.InvalidArgumentError) as info:
        small_image.extractall(dest)
    assert "extraction target" in str(info.value)


def test_an_os_refusal_mid_extraction_is_an_extract_error(small_image, tmp_path):
    """The OS refusing a write mid-extraction (here a read-only target) is an ExtractError naming it."""
    dest = tmp_path / "ro"
    dest.mkdir()
    dest.chmod(0o500)
    if os.geteuid() == 0:                              # root writes anyway: make the refusal real
        dest = pathlib.Path("/proc/self/fd")           # exists, but nothing can be created in it
    with pytest.raises(errors.ExtractError) as info:
        small_image.extractall(dest)
    assert isinstance(info.value, errors.RafsError) and info.value.errno


def test_a_64k_symlink_target_is_refused_cleanly(tmp_path):
    from rafs.model import Inode, Node
    from rafs.testing.images import build_node

    def inode(mode, **kw):
        fields = dict(ino=0, mode=mode, uid=0, gid=0, size=0, mtime=0, mtime_nsec=0, nlink=1, rdev=0, blocks=0,
                      flags=0, symlink=None, xattrs={}, digest=b"", chunk_count=0)
        fields.update(kw)
        return Inode(**fields)

    target = b"a/" * 32767 + b"b"                     # 65535 bytes, the most v5 can store
    root = Node(name=b"/", inode=inode(0o40755, nlink=2))
    root.children.append(Node(name=b"link", inode=inode(0o120777, size=len(target), symlink=target)))
    built = build_node(root, tmp_path / "img", fs_version=5, compressor="none")
    with built.open() as image:
        assert image.readlink("/link") == target.decode()
        for how in ("data", "fully_trusted"):
            with pytest.raises(errors.RafsError) as info:
                image.extractall(tmp_path / how, filter=how)
            assert not isinstance(info.value, RecursionError)
            assert "65535 bytes" in str(info.value)
