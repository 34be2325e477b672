"""``rafs://``: the image as a read-only fsspec archive filesystem, registered by entry point."""

from __future__ import annotations

import fsspec
import pytest

import rafs
from rafs.fsspec import RafsFileSystem

from test_io_fetch import BUSYBOX, GROUP


@pytest.fixture
def v5fs(v5_fixture):
    bootstrap, blob_dir, _ = v5_fixture
    fs = fsspec.filesystem("rafs", fo=str(bootstrap), blob_dir=str(blob_dir), skip_instance_cache=True)
    yield fs
    fs.close()


def test_registered_by_entry_point():
    assert fsspec.get_filesystem_class("rafs") is RafsFileSystem


def test_listing_matches_the_image(v5fs, v5_fixture):
    image = rafs.open(v5_fixture[0], blob_dir=v5_fixture[1])
    expected = {p.decode().lstrip("/") for p, i in image.iter_entries() if not i.is_dir}
    assert set(v5fs.find("")) == expected
    assert v5fs.ls("", detail=False) == sorted(image.listdir("/"))
    walked = {d.lstrip("/") for d, _, _ in image.walk("/")} - {""}
    assert {d for d, _, _ in v5fs.walk("")} - {""} == walked
    info = v5fs.info(GROUP.lstrip("/"))
    assert info["type"] == "file" and info["size"] == 307
    assert v5fs.info(BUSYBOX.lstrip("/"))["type"] == "directory"
    with pytest.raises(FileNotFoundError):
        v5fs.info("no/such/file")


def test_reading(v5fs, v5_fixture):
    image = rafs.open(v5_fixture[0], blob_dir=v5_fixture[1])
    data = image.read(GROUP)
    assert v5fs.cat(GROUP.lstrip("/")) == data
    assert v5fs.cat_file(GROUP, start=10, end=20) == data[10:20]
    assert v5fs.cat_file(GROUP, start=-7) == data[-7:]
    with v5fs.open(GROUP) as f:
        f.seek(300)
        assert f.read() == data[300:]
    with pytest.raises(rafs.InvalidArgumentError):
        v5fs.open(GROUP, "wb")


def test_chained_url(v5_fixture):
    bootstrap, blob_dir, _ = v5_fixture
    memory = fsspec.filesystem("memory")
    memory.pipe("/rafs-test/image.meta", bootstrap.read_bytes())
    try:
        with fsspec.open(f"rafs:/{GROUP}::memory://rafs-test/image.meta", rafs={"blob_dir": str(blob_dir)}) as f:
            assert f.read() == rafs.open(bootstrap, blob_dir=blob_dir).read(GROUP)
    finally:
        memory.rm("/rafs-test", recursive=True)
