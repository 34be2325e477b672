"""The short cuts of the mount's read path answer exactly what the general paths answer.

``V6Reader.chunks`` of an ordinary RAFS file (one pass over the chunk indexes), ``ChunkFetcher`` over a
local blob without a cache (no in-flight bookkeeping), ``Image.read_chunks`` of one chunk and
``ImageFile.pread`` inside one chunk (a slice, no assembly buffer).
"""

from __future__ import annotations

import os
import random

import pytest

import rafs
from rafs.blob.reader import ChunkReader
from rafs.io.fetch import ChunkFetcher
from rafs.io.source import LocalRangeReader

CHUNK = 0x4000


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    """A v6 zstd image with files of zero to five chunks (holes, a shared chunk, an exact chunk)."""
    top = tmp_path_factory.mktemp("fastpaths")
    src = top / "src"
    src.mkdir()
    rng = random.Random(3)
    for i, size in enumerate((0, 1, 100, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK + 77, 5 * CHUNK)):
        data = rng.randbytes(size // 2) + b"rafs" * (size // 8 + 1)       # half incompressible
        (src / f"f{i}").write_bytes(data[:size])
    (src / "same").write_bytes((src / "f6").read_bytes())                     # deduplicated chunks
    with open(src / "sparse", "wb") as f:                                    # a hole in the middle
        f.write(b"x" * CHUNK)
        f.seek(3 * CHUNK)
        f.write(b"y" * 10)
    (top / "blobs").mkdir()
    rafs.Builder(str(src), fs_version=6, compressor="zstd", chunk_size=CHUNK).write(
        bootstrap=str(top / "boot"), blob_dir=str(top / "blobs"))
    return top


def test_v6_chunks_of_ordinary_files_take_one_pass(image_dir, monkeypatch):
    with rafs.open(str(image_dir / "boot"), blob_dir=str(image_dir / "blobs")) as image:
        reader = image.reader
        expect = {name: reader.chunks(image.inode("/" + name).ino) for name in image.listdir("/")}
        long_way = []
        monkeypatch.setattr(reader.rafs_chunks, "long_way", lambda rec: long_way.append(rec) or [])
        assert {name: reader.chunks(image.inode("/" + name).ino) for name in image.listdir("/")} == expect
        assert not long_way
        assert sum(len(chunks) for chunks in expect.values()) > 10


def test_v6_chunks_match_the_long_way(image_dir, v6_fixture):
    for boot, blobs in ((image_dir / "boot", image_dir / "blobs"), v6_fixture):
        with rafs.open(str(boot), blob_dir=str(blobs)) as image:
            reader = image.reader
            assert reader.chunk_table(), "the fast path needs the bootstrap's chunk table"
            seen = 0
            for top, _, files in image.walk("/"):
                for name in files:
                    inode = image.inode(os.path.join(top, name))
                    if not inode.is_reg:
                        continue
                    ino = inode.ino
                    assert reader.chunks(ino) == reader.rafs_chunks.long_way(reader.record(ino)), name
                    seen += 1
            assert seen


def test_direct_fetch_of_a_local_blob(image_dir):
    with rafs.open(str(image_dir / "boot"), blob_dir=str(image_dir / "blobs")) as image:
        fetcher = image.chunk_reader(0)
        assert isinstance(fetcher, ChunkFetcher) and isinstance(fetcher.source, LocalRangeReader)
        assert fetcher._direct
        plain = ChunkReader(fetcher.blob, fetcher.source)
        chunks = [c for n in ("/f6", "/f7", "/same", "/f2") for c in image.chunks(n)]
        want = [plain.read(c) for c in chunks]
        assert fetcher.read_many(chunks) == want                      # merged runs, a duplicate
        assert fetcher.read_many(list(reversed(chunks))) == want[::-1]
        assert [fetcher.read_many([c])[0] for c in chunks] == want    # one at a time
        assert fetcher.read_many(chunks, keep=False) == []
        assert fetcher.stats.requests > 0


def test_pread_inside_one_chunk(image_dir):
    src = image_dir / "src"
    with rafs.open(str(image_dir / "boot"), blob_dir=str(image_dir / "blobs")) as image:
        for name in sorted(os.listdir(src)):
            expect = (src / name).read_bytes()
            with image.open("/" + name) as f:
                for offset, size in ((0, len(expect)), (0, 4096), (1, 10), (CHUNK - 5, 10), (CHUNK, CHUNK),
                                     (CHUNK + 3, 7), (2 * CHUNK, 3 * CHUNK), (max(0, len(expect) - 1), 100),
                                     (len(expect), 5), (0, len(expect) + 100)):
                    got = f.pread(size, offset)
                    assert type(got) is bytes
                    assert got == expect[offset:offset + size], (name, offset, size)
                    assert f.pread(size, offset, local_only=True) == got
