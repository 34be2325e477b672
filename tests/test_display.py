"""How objects show themselves to people (issue 16): reprs, IPython text, notebook HTML, tables, close()."""

from __future__ import annotations

import json

import pytest
from IPython.lib.pretty import pretty

import rafs
from rafs import display
from rafs.model import Blob, Chunk, Inode, Node

SECRET_KEY = bytes(range(0xA0, 0xC0))


def _blob() -> Blob:
    return Blob(index=0, blob_id="c0" * 32, compressor="zstd", chunk_count=2, compressed_size=5000,
                uncompressed_size=9000, features=0x1, cipher="aes128xts", cipher_key=SECRET_KEY,
                cipher_iv=b"\x01" * 16)


def _views(obj) -> list[str]:
    return [repr(obj), pretty(obj), obj._repr_html_()]


def test_blob_views_never_show_the_cipher_key_or_raw_bytes():
    for view in _views(_blob()):
        assert SECRET_KEY.hex() not in view and "cipher_key" not in view
        assert "b'" not in view and "\\xa0" not in view
    assert "aes128xts" in pretty(_blob())


def test_chunk_and_inode_views_use_hex_modes_and_dates():
    chunk = Chunk(digest=bytes(range(32)), blob_index=0, compressed_offset=0, compressed_size=10,
                  uncompressed_offset=0, uncompressed_size=4096, file_offset=0x2000, index=3, flags=1)
    for view in _views(chunk):
        assert bytes(range(32)).hex() in view and "b'" not in view
    inode = Inode(ino=5, mode=0o100644, size=12, mtime=1_700_000_000, xattrs={b"user.a": b"v"})
    for view in _views(inode):
        assert "-rw-r--r--" in view and "2023-11-14T22:13:20Z" in view and "b'" not in view


def test_control_characters_are_escaped_in_text_and_html():
    inode = Inode(ino=7, mode=0o120777, symlink=b"\x1b[2J\nforged line")
    for view in _views(inode):
        assert "\x1b" not in view and "\nforged" not in view
    node = Node(name=b"/", inode=Inode(ino=1, mode=0o40755),
                children=[Node(name=b"evil\x1b]0;title\x07<b>", inode=Inode(ino=2, mode=0o100644))])
    assert "\x1b" not in str(node) and "\x07" not in str(node)
    assert "<b>" not in node._repr_html_() and "&lt;b&gt;" in node._repr_html_()


def test_image_views_stat_and_tree(v6_fixture):
    bootstrap, blobs = v6_fixture
    with rafs.open(bootstrap, blob_dir=blobs) as image:
        text = pretty(image)
        assert "RAFS v6" in text and "zstd" in text and image.blobs[0].blob_id in text
        assert "<table>" in image._repr_html_()
        stat_text = pretty(image.stat("/lib.rs"))
        assert "-rw-r--r--" in stat_text and "2023-02-19" in stat_text
        tree = str(image.tree())
        assert tree.splitlines() == ["/", "├── lib.rs", "└── sync_io.rs"]
        assert repr(image.tree()) == "<Node '/' dir, 2 children>"


def test_tables_are_records_pandas_takes_as_they_are(v5_fixture):
    pandas = pytest.importorskip("pandas")
    bootstrap, blobs, _ = v5_fixture
    with rafs.open(bootstrap, blob_dir=blobs) as image:
        inodes, chunks, blob_table = image.inodes_table(), image.chunks_table(), image.blobs_table()
        assert all(isinstance(row, dict) for row in inodes)
        assert len(inodes) == sum(1 for _ in image.iter_entries("/"))
        frame = pandas.DataFrame(chunks)
        assert list(frame.columns) == chunks.columns and len(frame) == len(chunks) > 0
        assert frame.digest.str.fullmatch("[0-9a-f]{64}").all()
        assert chunks.to_pandas().shape == frame.shape
        assert blob_table[0]["blob_id"] == image.blobs[0].blob_id
        json.dumps([inodes, chunks, blob_table])          # plain data all the way down
        listing = image.listing_table("/")
        assert [row["name"] for row in listing] == image.listdir("/")
        assert listing[0]["mode"].startswith("d")
        assert "<table>" in chunks._repr_html_()


def test_table_display_is_bounded():
    table = display.Table([{"n": i} for i in range(display.MAX_DISPLAY_ROWS + 50)])
    assert "... 50 more rows" in str(table) and "... 50 more rows" in table._repr_html_()


def test_closed_image_refuses_use(v6_fixture):
    bootstrap, blobs = v6_fixture
    image = rafs.open(bootstrap, blob_dir=blobs)
    handle = image.open("/lib.rs")
    image.close()
    assert image.closed and "closed" in repr(image)
    for use in (lambda: image.read("/lib.rs"), lambda: image.stat("/lib.rs"), lambda: image.listdir("/"),
                lambda: image.blobs, lambda: handle.read(10), lambda: list(image.iter_stats("/"))):
        with pytest.raises(ValueError, match="closed image"):
            use()
    image.close()                                          # closing twice is harmless
