"""rafs.image as a package (issue 13): declared interfaces instead of probes, the chunk-info source given
to the v6 reader when it is made, one LRU helper, os's listing verbs, and one job per module."""

from __future__ import annotations

import ast
import inspect
import os
import pathlib
import stat

import pytest

import rafs
from rafs.blob.reader import ChunkReader
from rafs.image import DirEntry, opening
from rafs.image.chunks import BlobMetaChunkInfos, ChunkStore
from rafs.image.protocols import BlobLocator, ChunkSource
from rafs.io.blobs import BlobLocator as DirectoryLocator
from rafs.io.config import ConfigLocator
from rafs.io.fetch import ChunkFetcher
from rafs.io.source import load_bytes
from rafs.lru import LRU
from rafs.model import ImageReader
from rafs.testing import build_tree, directory, file, symlink
from rafs.v5.reader import V5Reader
from rafs.v6.reader import V6Reader
from rafs.v6.zdata import ZDataReader

PACKAGE = pathlib.Path(rafs.image.__file__).parent
TOC_BLOB_ID = "2fa78cad554b75ac91a4a125ed148d0ddeb25efa4aaa8bd80e5dc292690a4dca"


def _members(protocol) -> set[str]:
    return {name for name in vars(protocol) if not name.startswith("_")} | set(protocol.__annotations__)


@pytest.mark.parametrize("implementation", [ChunkReader, ChunkFetcher, ZDataReader])
def test_every_chunk_source_has_the_whole_interface(implementation):
    missing = {name for name in _members(ChunkSource) if not hasattr(implementation, name)
               and name not in inspect.signature(implementation.__init__).parameters}
    assert not missing


@pytest.mark.parametrize("implementation", [DirectoryLocator, ConfigLocator])
def test_every_locator_has_the_whole_interface(implementation):
    assert {name for name in _members(BlobLocator) if not hasattr(implementation, name)} == set()


@pytest.mark.parametrize("reader", [V5Reader, V6Reader])
def test_readers_answer_what_image_used_to_probe(reader):
    for name in ("inode_count", "describe_extra", "zdata_chunk_reader"):
        assert hasattr(reader, name) and hasattr(ImageReader, name)


def test_no_getattr_probes_left_in_the_image_package():
    probes = []
    for path in PACKAGE.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) in ("getattr", "hasattr") \
                    and isinstance(node.args[0], ast.Attribute) and node.args[0].attr in ("reader", "locator"):
                probes.append(f"{path.name}:{node.lineno}")
    assert probes == []


def test_modules_are_small_and_say_what_they_do():
    for path in PACKAGE.glob("*.py"):
        text = path.read_text()
        assert len(text.splitlines()) <= 500, path.name
        assert ast.get_docstring(ast.parse(text)), path.name


def test_the_chunk_store_never_knows_the_image():
    imported = {node.module for node in ast.walk(ast.parse((PACKAGE / "chunks.py").read_text()))
                if isinstance(node, ast.ImportFrom)}
    assert "image" not in imported and "opening" not in imported


def test_v6_reader_takes_its_chunk_info_source_when_made(v6_fixture):
    boot, blob_dir = v6_fixture
    asked = []
    source = BlobMetaChunkInfos(DirectoryLocator(blob_dir=blob_dir))

    def chunk_infos(blob):
        asked.append(blob)
        return source(blob)

    reader = V6Reader(load_bytes(boot), chunk_info_source=chunk_infos)
    with rafs.Image(V6Reader(load_bytes(boot)), DirectoryLocator(blob_dir=blob_dir)) as plain:
        ino = plain.lstat("/lib.rs").st_ino
        from_table = plain.reader.chunks(ino)
    reader._chunk_table = {}                        # as if the bootstrap had no chunk info table
    from_ci = reader.chunks(ino)
    assert asked == [reader.blobs[0]]               # given the blob record, once: the reader keeps the array
    assert [(c.compressed_offset, c.uncompressed_size) for c in from_ci] == \
        [(c.compressed_offset, c.uncompressed_size) for c in from_table]
    with rafs.open(boot, blob_dir=blob_dir) as image:
        assert isinstance(image.reader.chunk_info_source, BlobMetaChunkInfos)


def test_inline_bootstrap_version_read_once_per_bytes(fixtures, monkeypatch):
    seen = []
    detect = opening.detect_version
    monkeypatch.setattr(opening, "detect_version", lambda data: seen.append(len(data)) or detect(data))
    blob = fixtures / "toc" / TOC_BLOB_ID
    with rafs.open(blob) as image:
        assert image.version == 6 and image.blobs[0].blob_id == TOC_BLOB_ID
        assert image.read("/lib.rs").startswith(b"// Copyright 2020 Ant Group")
    assert seen == [blob.stat().st_size, 20480]     # the blob, then the bootstrap taken out of it


def test_lru_bounds_items_and_bytes():
    cache = LRU(3)
    for key in "abcd":
        cache.put(key, key.encode())
    assert [k for k, _ in cache.items()] == ["b", "c", "d"]
    assert cache.get("b") == b"b" and [k for k, _ in cache.items()] == ["c", "d", "b"]
    assert cache.peek("c") == b"c" and [k for k, _ in cache.items()] == ["c", "d", "b"]
    assert cache.get("a", "gone") == "gone" and "a" not in cache
    sized = LRU(max_bytes=10)
    sized.put(1, b"x" * 4)
    sized.put(1, b"x" * 4)                          # replaced, not counted twice
    sized.put(2, b"y" * 6)
    assert len(sized) == 2
    sized.put(3, b"z" * 20)                         # the newest stays even when larger than the bound
    assert [k for k, _ in sized.items()] == [3]
    sized.clear()
    assert not sized


def test_chunk_store_keeps_cache_size_chunks(tmp_path):
    built = build_tree({b"/a": file(b"a" * 5000), b"/b": file(b"b" * 5000)}, tmp_path, fs_version=6,
                       compressor="none", chunk_size=0x1000)
    with rafs.open(built.source, **built.open_kwargs) as image:
        chunks = image.chunks("/a") + image.chunks("/b")
        store = ChunkStore(image.blobs, image.locator, cache_size=2)
        assert b"".join(store.read_chunks(chunks)) == b"a" * 5000 + b"b" * 5000
        assert len(store._cache) == 2 and not store.needs_backend(chunks[2:])
        assert store.opened() == [store.chunk_reader(0)]


def test_scandir_is_os_scandir(tmp_path):
    tree = {b"/d": directory(), b"/d/f": file(b"data"), b"/d/link": symlink(b"f"), b"/d/sub": directory(),
            b"/d/dangling": symlink(b"nowhere"), b"/d/\xff": file(b"")}
    built = build_tree(tree, tmp_path, fs_version=6, compressor="none")
    with rafs.open(built.source, **built.open_kwargs) as image:
        entries = {entry.name: entry for entry in image.scandir("/d")}
        assert all(isinstance(entry, DirEntry) for entry in entries.values())
        assert list(entries) == image.listdir("/d")
        f, link, sub, dangling = entries["f"], entries["link"], entries["sub"], entries["dangling"]
        assert f.path == "/d/f" and os.fspath(f) == "/d/f" and f.inode() == image.lstat("/d/f").st_ino
        assert f.is_file() and not f.is_dir() and not f.is_symlink()
        assert link.is_symlink() and link.is_file() and not link.is_file(follow_symlinks=False)
        assert link.stat() == image.stat("/d/f") and stat.S_ISLNK(link.stat(follow_symlinks=False).st_mode)
        assert sub.is_dir() and dangling.is_symlink() and not dangling.is_file() and not dangling.is_dir()
        assert "\udcff" in entries
        raw = {entry.name: entry.path for entry in image.scandir(b"/d")}
        assert raw[b"\xff"] == b"/d/\xff"
        with pytest.raises(rafs.errors.NotADirectoryError):
            list(image.scandir("/d/f"))
        assert not hasattr(image, "iterdir")        # pathlib's verb: os's family is listdir, scandir, walk
