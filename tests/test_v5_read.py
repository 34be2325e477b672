"""RAFS v5 reading against the reference's own fixture (made by nydus-image): what the reader-conformance
suite (tests/test_reader_conformance.py: tree, stat, content, xattrs, links, path errors) does not cover."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import sys
import tarfile

import pytest

import rafs
from rafs import _records
from rafs.v5 import layout
from rafs.v5.reader import CHUNK, EXT_BLOB, INODE, V5Reader

BUSYBOX = "/normal-file-test/busybox/1f777dbdd68d1c4d554bc0d20e027bfef9ed2dfe2d8d5f029e958552a0e12475"


@pytest.fixture(scope="module")
def image(v5_fixture):
    bootstrap, blobs, _ = v5_fixture
    with rafs.open(bootstrap, blob_dir=blobs, validate=True) as im:
        yield im


def test_superblock_and_blob(image):
    sb = image.superblock
    assert image.version == 5
    assert sb.s_magic == layout.RAFSV5_SUPER_MAGIC
    assert sb.s_inodes_count == 51 and sb.s_inode_table_entries == 54
    assert image.compressor == "none" and image.digester == "sha256"
    [blob] = image.blobs
    assert blob.blob_id == "7334a2594e133cf8ae364189c2276b090fc490c627bcc3fb1077f0419a538e00"
    assert blob.chunk_count == 23 and blob.compressed_size == 3508766


def test_holefile_contents_match_their_checksums(image):
    listing = image.read("/normal-file-test/holefiles/chsum").decode().split("\n")
    sums = dict(reversed(line.split()) for line in listing if line.strip())
    assert len(sums) == 9
    for name, md5 in sums.items():
        assert hashlib.md5(image.read(f"/normal-file-test/holefiles/{name}")).hexdigest() == md5, name


def test_partial_reads_fetch_only_needed_chunks(v5_fixture):
    bootstrap, blobs, _ = v5_fixture
    reads = []

    class Counting:
        def __init__(self, path):
            self.f = open(path, "rb")
            self.size = os.path.getsize(path)

        def read_range(self, offset, size):
            reads.append((offset, size))
            self.f.seek(offset)
            return self.f.read(size)

        def close(self):
            self.f.close()

    blob_id = "7334a2594e133cf8ae364189c2276b090fc490c627bcc3fb1077f0419a538e00"
    with rafs.open(bootstrap, blobs={blob_id: Counting(blobs / blob_id)}) as im:
        with im.open(f"{BUSYBOX}/layer.tar") as f:
            assert im.stat(f.name).st_size == 1415680
            f.seek(1_100_000)
            assert len(f.read(10)) == 10
    assert len(reads) == 1 and reads[0][1] <= 0x100000


def test_unpack_matches_image(tmp_path, v5_fixture, image):
    bootstrap, blobs, _ = v5_fixture
    out = tmp_path / "out.tar"
    subprocess.run([sys.executable, "-m", "rafs", "unpack", str(bootstrap), "-D", str(blobs), "--output", str(out)],
                   check=True)
    with tarfile.open(out) as tar:
        members = {m.name: m for m in tar.getmembers()}
        entries = {os.fsdecode(p.lstrip(b"/")): inode for p, inode in image.iter_entries() if p != b"/"}
        assert set(members) == set(entries)
        first_links = {}
        for name, inode in entries.items():
            m = members[name]
            assert m.mode == stat.S_IMODE(inode.mode), name
            assert (m.uid, m.gid, int(m.mtime)) == (inode.uid, inode.gid, inode.mtime), name
            if inode.is_dir:
                assert m.isdir()
            elif inode.is_symlink:
                assert m.issym() and m.linkname == os.fsdecode(inode.symlink)
            elif m.islnk():
                assert first_links[inode.ino] == m.linkname
            else:
                assert m.isfile() and m.size == inode.size
                assert tar.extractfile(m).read() == image.read("/" + name)
                first_links.setdefault(inode.ino, name)


def test_check_and_inspect_cli(v5_fixture, tmp_path):
    bootstrap, blobs, _ = v5_fixture
    out = subprocess.run([sys.executable, "-m", "rafs", "inspect", "--json", str(bootstrap)],
                         check=True, capture_output=True, text=True).stdout
    info = json.loads(out)
    assert info["version"] == 5 and info["flag_words"] == ["COMPRESSION_NONE", "HASH_SHA256"]
    assert info["stats"]["hardlinks"] == 2
    report = tmp_path / "check.json"
    done = subprocess.run([sys.executable, "-m", "rafs", "check", str(bootstrap), "-D", str(blobs),
                           "-J", str(report)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert json.loads(report.read_text())["faults"] == []


def test_extractall_data_filter_refuses_escaping_symlink(image, tmp_path):
    with pytest.raises(rafs.errors.UnsafePathError):
        image.extractall(tmp_path / "x")
    image.extractall(tmp_path / "y", filter="tar")
    assert (tmp_path / "y/hardlink-test/foo").stat().st_nlink == 3
    assert os.readlink(tmp_path / "y/symlink-test/root-2") == "/foobar"


def test_fast_records_agree_with_construct(v5_fixture):
    data = v5_fixture[0].read_bytes()
    reader = V5Reader(data)
    for index in range(1, reader.inode_count + 1):
        offset = reader.record_offset(index)
        fast = INODE.unpack_from(data, offset)
        slow = _records.parse(layout.Inode, data, offset, structure="v5 inode")
        assert fast._asdict() == {k: v for k, v in slow.items() if not k.startswith("_")}
        raw, _ = reader.record(index)
        if stat.S_ISREG(raw.i_mode) and raw.i_ino == index:
            _, _, at = reader.record_sections(raw, offset)
            for i in range(raw.i_child_count):
                f = CHUNK.unpack_from(data, at + 80 * i)
                s = _records.parse(layout.ChunkInfo, data, at + 80 * i, structure="chunk")
                assert f._asdict() == {k: v for k, v in s.items() if not k.startswith("_")}
                assert CHUNK.pack(*f) == layout.ChunkInfo.build(s)
    sb = reader.superblock
    f = EXT_BLOB.unpack_from(data, sb.s_extended_blob_table_offset)
    assert f.chunk_count == 23


def test_open_from_file_object_and_memory_url(v5_fixture):
    import fsspec
    bootstrap, blobs, _ = v5_fixture
    with open(bootstrap, "rb") as f, rafs.open(f, blob_dir=blobs) as im:
        assert im.read(f"{BUSYBOX}/VERSION") == b"1.0"
    fs = fsspec.filesystem("memory")
    fs.pipe("/rafs-test/boot", bootstrap.read_bytes())
    with rafs.open("memory://rafs-test/boot", blob_dir=blobs) as im:
        assert im.stat("/hardlink-test/foo").st_size == 944


def test_missing_blob_names_id_and_place(v5_fixture, tmp_path):
    bootstrap, _, _ = v5_fixture
    with rafs.open(bootstrap, blob_dir=tmp_path) as im:
        with pytest.raises(rafs.BlobNotFoundError) as info:
            im.read("/hardlink-test/foo")
    assert "7334a2594e133cf8ae364189c2276b090fc490c627bcc3fb1077f0419a538e00" in str(info.value)
    assert str(tmp_path) in str(info.value)


def test_corrupt_chunk_names_file_and_chunk(v5_fixture, tmp_path):
    bootstrap, blobs, _ = v5_fixture
    blob_id = "7334a2594e133cf8ae364189c2276b090fc490c627bcc3fb1077f0419a538e00"
    data = bytearray((blobs / blob_id).read_bytes())
    with rafs.open(bootstrap, blob_dir=blobs) as im:
        chunk = im.chunks("/hardlink-test/foo")[0]
    data[chunk.compressed_offset + 10] ^= 0xFF
    (tmp_path / blob_id).write_bytes(data)
    with rafs.open(bootstrap, blob_dir=tmp_path, validate=True) as im:
        with pytest.raises(rafs.DigestMismatchError) as info:
            im.read("/hardlink-test/foo")
    message = str(info.value)
    assert "/hardlink-test/foo" in message and f"chunk {chunk.index}" in message
    # without validation the bytes come back as they are
    with rafs.open(bootstrap, blob_dir=tmp_path) as im:
        assert len(im.read("/hardlink-test/foo")) == 944
