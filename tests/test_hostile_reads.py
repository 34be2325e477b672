"""Declared sizes taken at their word (issue 12): a file's data is its chunks, the rest of the size it
declares is holes, read lazily and written sparse, never allocated or written as zeros.

A v5 file whose ``i_size`` says 2^40 over one real chunk, and a v6 file of 2^40 bytes with no data at
all, go through ``Image.read``, ``Image.open``, ``extractall``, ``write_tar`` and ``rafs unpack``: each
either refuses cleanly (read whole) or costs what the chunks hold (the rest), checked on disk with
``st_blocks`` and the tar's size.
"""

from __future__ import annotations

import errno
import os
import pathlib
import shutil
import subprocess
import sys
import tarfile

import pytest
from hypothesis import given, settings

import rafs
from rafs import errors
from rafs.model import Inode, Node
from rafs.testing.hostile_images import declare_size, declared_sizes, directory_chain
from rafs.testing.images import build_node
from rafs.image.unpack import write_tar

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


@pytest.fixture(params=[5, 6], ids=["v5", "v6"])
def huge(request, tmp_path):
    """(bootstrap, blob dir, expected head) of an image whose /big declares 2^40 bytes. v5: one chunk
    of DATA, then holes. v6: no data at all (made flat with a null start block): all holes."""
    boot, blobs = _build(tmp_path, request.param)
    declare_size(boot, "/big", HUGE)
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
    target = b"a/" * 32767 + b"b"                     # 65535 bytes, the most v5 can store
    root = directory_chain(0)
    root.children.append(Node(name=b"link", inode=Inode(ino=0, mode=0o120777, size=len(target), symlink=target)))
    built = build_node(root, tmp_path / "img", fs_version=5, compressor="none")
    with built.open() as image:
        assert image.readlink("/link") == target.decode()
        for how in ("data", "fully_trusted"):
            with pytest.raises(errors.RafsError) as info:
                image.extractall(tmp_path / how, filter=how)
            assert "65535 bytes" in str(info.value)


@pytest.fixture(scope="module")
def v5_built(tmp_path_factory):
    return _build(tmp_path_factory.mktemp("declared"), 5)


@settings(max_examples=10)
@given(size=declared_sizes(len(DATA)))
def test_any_declared_size_costs_only_the_chunks(v5_built, tmp_path_factory, size):
    """Whatever size the file declares past its chunk: reads of pieces work, extraction and unpacking
    write only the chunk (or refuse cleanly where the file system cannot hold the size)."""
    boot, blobs = v5_built
    work = tmp_path_factory.mktemp("size")
    copy = work / "image.boot"
    shutil.copy(boot, copy)
    declare_size(copy, "/big", size)
    with rafs.open(copy, blob_dir=blobs) as image:
        with image.open("/big") as f:
            assert f.read(len(DATA)) == DATA
            if size - 50 >= len(DATA):
                assert f.pread(100, size - 50) == b"\0" * 50
        try:
            image.extractall(work / "out")
        except errors.ExtractError as exc:
            assert exc.errno in (errno.EFBIG, errno.EINVAL), exc
        else:
            assert os.stat(work / "out" / "big").st_blocks * 512 <= len(DATA) + BOUND
        with open(work / "image.tar", "wb") as out:
            write_tar(image, out)
    assert os.path.getsize(work / "image.tar") <= len(DATA) + BOUND
