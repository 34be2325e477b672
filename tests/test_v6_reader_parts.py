"""The v6 reader as a composition (issue 13): the chunk-info source is given when the reader is made,
and the helpers answer from the image's bytes and its Geometry alone."""

from __future__ import annotations

import dataclasses

import pytest

import rafs
from rafs.blob.meta import load_chunk_infos
from rafs.v6 import extents, inodes
from rafs.v6.chunks import RafsChunks
from rafs.v6.reader import V6Reader
from rafs.v6.superblock import Geometry
from rafs.v6.tables import read_chunk_table

FILES = (b"lib.rs", b"sync_io.rs")


@pytest.fixture(scope="module")
def v6_bytes(v6_fixture):
    return v6_fixture[0].read_bytes()


def _key(chunk):
    return (chunk.blob_index, chunk.compressed_offset, chunk.compressed_size, chunk.uncompressed_offset,
            chunk.uncompressed_size, chunk.file_offset, chunk.index)


def test_chunk_info_source_is_a_constructor_argument(v6_bytes, v6_fixture):
    """Chunks missing from the chunk info table resolve through the source the reader was made with,
    asked once per blob with that blob's record."""
    _, blob_dir = v6_fixture
    asked = []

    def source(blob):
        asked.append(blob.index)
        return load_chunk_infos(blob, (blob_dir / blob.blob_id).read_bytes())

    plain = V6Reader(v6_bytes)
    reader = V6Reader(v6_bytes, chunk_info_source=source)
    assert reader.chunk_info_source is source and plain.chunk_info_source is None
    reader._chunk_table = {}                       # as if the bootstrap had no chunk info table
    for name in FILES:
        ino = reader.lookup(reader.root_ino, name)
        from_ci = reader.chunks(ino)
        assert from_ci and [_key(c) for c in from_ci] == [_key(c) for c in plain.chunks(ino)]
    assert asked == [0]
    assert not hasattr(reader, "ci_provider")


def test_open_gives_the_reader_its_chunk_info_source(v6_fixture):
    boot, blob_dir = v6_fixture
    with rafs.open(str(boot), blob_dir=str(blob_dir)) as image:
        expected = image.read("/lib.rs")
    with rafs.open(str(boot), blob_dir=str(blob_dir)) as image:
        assert image.reader.chunk_info_source is not None
        image.reader._chunk_table = {}             # every chunk through the blob's CI array
        assert image.read("/lib.rs") == expected


def test_geometry_is_a_small_frozen_value(v6_bytes):
    geo = V6Reader(v6_bytes).geometry
    assert isinstance(geo, Geometry) and geo.is_rafs and geo.block_size == 4096
    with pytest.raises(dataclasses.FrozenInstanceError):
        geo.block_size = 512                       # type: ignore[misc]


def test_helpers_need_only_bytes_and_geometry(v6_bytes):
    """The inode decoder, extents and RAFS chunk addressing made from the bytes and the Geometry answer
    as the reader does."""
    reader = V6Reader(v6_bytes)
    geo, data = reader.geometry, v6_bytes
    decoder = inodes.InodeDecoder(data, geo, read_meta=lambda rec: extents.meta_data(geo, data, rec, None))
    table = read_chunk_table(data, reader.superblock_ext)
    chunks = RafsChunks(data, geo, reader.blobs, lambda: table)
    for name in FILES:
        ino = reader.lookup(reader.root_ino, name)
        assert decoder.inode(ino) == reader.inode(ino)
        assert decoder.stat_list([ino]) == [reader.stat_values(ino)]
        assert chunks.chunks(decoder.record(ino)) == reader.chunks(ino)
