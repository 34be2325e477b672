"""tarfs (``rafs create -t tar-tarfs``): the tar itself is the data blob, addressed in 512-byte blocks.

Builds of the reference's tar fixtures and of a generated tar with multi-chunk files read back equal
to ``tarfile``'s view, pass ``check -D`` with the tar as the blob, leave no blob file behind, and the
kernel's EROFS mounts the bootstrap with the tar as its device and reads the same bytes. The
reference's option conflicts give its messages.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import stat
import subprocess
import sys
import tarfile

import pytest

import rafs
from rafs.errors import BuildError, InvalidArgumentError
from rafs.model import BlobFeatures, SuperFlags


def _sha256(path) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def _view(layer) -> dict[str, tarfile.TarInfo]:
    if not os.path.getsize(layer):
        return {}                               # an empty file is an empty tar to the builders
    with tarfile.open(layer, ignore_zeros=True) as tar:
        return {"/" + os.path.normpath(m.name).lstrip("/"): (m, tar.extractfile(m).read() if m.isreg() else None)
                for m in tar}


def build_tarfs(layer, tmp_path, **options):
    blobs = tmp_path / "blobs"
    blobs.mkdir(exist_ok=True)
    boot = tmp_path / "bootstrap"
    result = rafs.Builder(os.fspath(layer), source_type="tar-tarfs", **options).write(
        bootstrap=os.fspath(boot), blob_dir=os.fspath(blobs))
    assert os.listdir(blobs) == []             # nothing written: the tar is the blob
    shutil.copyfile(layer, blobs / _sha256(layer))
    return boot, blobs, result


@pytest.fixture
def big_tar(tmp_path):
    """A tar with files of several chunks (4 KiB chunks), an empty file, a hardlink and a symlink."""
    path = tmp_path / "big.tar"
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, size in (("a/one", 10000), ("a/two", 4096), ("b/empty", 0), ("b/odd", 513)):
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = size, 1700000000, 0o640
            tar.addfile(info, io.BytesIO(bytes((i * 7 + len(name)) & 0xFF for i in range(size))))
        link = tarfile.TarInfo("b/link")
        link.type, link.linkname = tarfile.LNKTYPE, "a/one"
        tar.addfile(link)
        sym = tarfile.TarInfo("b/sym")
        sym.type, sym.linkname = tarfile.SYMTYPE, "../a/two"
        tar.addfile(sym)
    return path


def assert_reads_back(boot, blobs, layer):
    view = _view(layer)
    with rafs.open(os.fspath(boot), blob_dir=os.fspath(blobs), validate=True) as image:
        for path, (member, data) in view.items():
            if data is not None or member.islnk():
                want = data if data is not None else view["/" + member.linkname][1]
                assert image.read(path) == want, path
        assert list(image.check(verify_data=True)) == []


@pytest.mark.parametrize("name", ["all-entry-type.tar", "all-entry-type-macos.tar", "empty.tar"])
def test_tarfs_fixtures(fixtures, tmp_path, name):
    layer = fixtures / "tar" / name
    boot, blobs, result = build_tarfs(layer, tmp_path)
    with rafs.open(os.fspath(boot), blob_dir=os.fspath(blobs)) as image:
        assert image.superblock.s_blkszbits == 9
        assert image.reader.flags & SuperFlags.TARTFS_MODE and image.compressor == "none"
        for blob in image.blobs:
            assert blob.blob_id == _sha256(layer) and result.blob_ids == [blob.blob_id]
            assert int(blob.features) == int(BlobFeatures.TARFS | BlobFeatures.CAP_TAR_TOC)
            assert blob.compressed_size == blob.uncompressed_size == layer.stat().st_size
    assert_reads_back(boot, blobs, layer)


def test_tarfs_chunks_address_the_tar(big_tar, tmp_path):
    boot, blobs, _ = build_tarfs(big_tar, tmp_path, chunk_size=0x1000)
    raw = big_tar.read_bytes()
    with rafs.open(os.fspath(boot), blob_dir=os.fspath(blobs)) as image:
        chunks = image.chunks("/a/one")
        assert [c.uncompressed_size for c in chunks] == [4096, 4096, 1808]
        for chunk in chunks:
            assert chunk.compressed_offset % 512 == 0 and chunk.compressed_offset == chunk.uncompressed_offset
            data = raw[chunk.compressed_offset:chunk.compressed_offset + chunk.compressed_size]
            assert data == image.read("/a/one")[chunk.file_offset:chunk.file_offset + chunk.uncompressed_size]
        assert image.stat("/b/link").st_ino == image.stat("/a/one").st_ino
    assert_reads_back(boot, blobs, big_tar)


@pytest.mark.privileged
def test_kernel_mounts_tarfs_with_the_tar_as_device(big_tar, tmp_path, kernel_mount):
    boot, blobs, _ = build_tarfs(big_tar, tmp_path, chunk_size=0x1000)
    mountpoint = kernel_mount(boot, blobs / _sha256(big_tar))
    for path, (member, data) in _view(big_tar).items():
        where = mountpoint / path.lstrip("/")
        st = os.lstat(where)
        if member.isreg():
            assert where.read_bytes() == data, path
            assert stat.S_IMODE(st.st_mode) == member.mode and st.st_mtime == member.mtime
        elif member.issym():
            assert os.readlink(where) == member.linkname
    assert os.lstat(mountpoint / "b/link").st_ino == os.lstat(mountpoint / "a/one").st_ino


def test_compressed_input_is_refused(fixtures, tmp_path):
    with pytest.raises(BuildError, match="plain tar"):
        build_tarfs(fixtures / "zran" / "zran-single-stream.tar.gz", tmp_path)


def test_blob_id_names_the_tar(big_tar, tmp_path):
    boot, blobs, result = build_tarfs(big_tar, tmp_path, blob_id="my-layer")
    with rafs.open(os.fspath(boot)) as image:
        assert [b.blob_id for b in image.blobs] == ["my-layer"]


def _rafs(*args):
    return subprocess.run([sys.executable, "-m", "rafs", *args], capture_output=True, text=True, timeout=120,
                          input="")


@pytest.mark.parametrize("flags,message", [
    (["--blob-inline-meta"], "conversion type 'tar-tarfs' conflicts with '--blob-inline-meta'"),
    (["--features", "blob-toc"], "conversion type 'tar-tarfs' conflicts with '--features blob-toc'"),
    (["--aligned-chunk"], "conversion type 'tar-tarfs' conflicts with '--aligned-chunk'"),
    (["--encrypt"], "conversion type 'tar-tarfs' conflicts with '--encrypt'"),
    (["--prefetch-policy", "blob"], "conversion type tar-tarfs conflicts with '--prefetch-policy blob'"),
    (["-v", "5"], "'--fs-version 5' conflicts with conversion type 'tar-tarfs', only V6 is supported"),
    (["-b", "BLOB"], "conversion type `tar-tarfs` conflicts with `--blob`"),
])
def test_reference_conflicts(fixtures, tmp_path, flags, message):
    flags = [os.fspath(tmp_path / "blob") if f == "BLOB" else f for f in flags]
    outputs = ["-D", os.fspath(tmp_path)]
    if "--blob-inline-meta" not in flags:       # else the option parser's own conflict comes first
        outputs += ["-B", os.fspath(tmp_path / "boot")]
    done = _rafs("create", "-t", "tar-tarfs", os.fspath(fixtures / "tar" / "all-entry-type.tar"), *outputs, *flags)
    assert done.returncode != 0
    assert message in done.stderr and "Traceback" not in done.stderr


def test_tarfs_with_a_parent_or_dictionary_is_refused(big_tar, tmp_path):
    for option, words in (({"parent_bootstrap": "x"}, "--parent-bootstrap"), ({"chunk_dict": "x"}, "--chunk-dict")):
        with pytest.raises(InvalidArgumentError, match=words):
            rafs.Builder(os.fspath(big_tar), source_type="tar-tarfs", **option)
