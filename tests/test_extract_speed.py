"""Extraction writes small files from a few threads (file creation is mostly waiting on the file
system) and still yields the same tree, with a failure reported against the file it happened to."""

from __future__ import annotations

import os
import threading

import pytest

import rafs
from rafs import errors, extract


def _image(tmp_path):
    source = tmp_path / "src"
    for d in range(4):
        (source / f"d{d}").mkdir(parents=True)
        for i in range(40):
            (source / f"d{d}" / f"f{i}").write_bytes(os.urandom(100 + 37 * i))
    (source / "d0" / "big").write_bytes(os.urandom(3 << 20))
    os.link(source / "d1" / "f1", source / "d2" / "hard")
    os.symlink("f2", source / "d3" / "link")
    blobs = tmp_path / "blobs"
    blobs.mkdir()
    rafs.Builder(str(source), fs_version=6, compressor="zstd").write(bootstrap=str(tmp_path / "boot"),
                                                                     blob_dir=str(blobs))
    return source, rafs.open(str(tmp_path / "boot"), blob_dir=str(blobs))


def test_small_files_written_by_worker_threads(tmp_path, monkeypatch):
    source, image = _image(tmp_path)
    threads = set()
    create = extract._create
    monkeypatch.setattr(extract, "_create", lambda *a: (threads.add(threading.current_thread().name), create(*a))[1])
    out = tmp_path / "out"
    with image:
        image.extractall(out)
    assert any(name.startswith("rafs-extract") for name in threads)
    for top, _, names in os.walk(source):
        for name in names:
            path = os.path.join(top, name)
            twin = out / os.path.relpath(path, source)
            if os.path.islink(path):
                assert os.readlink(twin) == os.readlink(path)
            else:
                assert twin.read_bytes() == open(path, "rb").read(), path
    assert os.stat(out / "d1" / "f1").st_ino == os.stat(out / "d2" / "hard").st_ino


def test_a_failing_small_file_is_named(tmp_path, monkeypatch):
    source, image = _image(tmp_path)
    write = extract._write_file

    def failing(image_, inode, fd, pieces=None):
        if inode.size == 100 + 37 * 5:
            raise OSError(28, "No space left on device")
        return write(image_, inode, fd, pieces)

    monkeypatch.setattr(extract, "_write_file", failing)
    with image, pytest.raises(errors.ExtractError) as info:
        image.extractall(tmp_path / "out")
    assert "/f5" in str(info.value) and "No space left" in str(info.value)
