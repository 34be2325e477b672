"""The read path goes only down (issue 13): ranged reads live at the bottom (:mod:`rafs.ranges`, no I/O),
:mod:`rafs.blob` takes only range readers, bytes or open file objects and never imports :mod:`rafs.io`,
which opens paths and URLs; each format limit and record encoding has one home."""

from __future__ import annotations

import ast
import io
import pathlib

import pytest

import rafs
from rafs import limits, ranges
from rafs.blob.toc import compute_blob_id, read_toc
from rafs.errors import InvalidArgumentError, InvalidImageError
from rafs.io.source import open_range_reader

RAFS = pathlib.Path(rafs.__file__).parent


def _imported_modules(path: pathlib.Path, package: str) -> set[str]:
    """Every module ``path`` imports, at the top or inside a function, as an absolute name."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


@pytest.mark.parametrize("path", sorted((RAFS / "blob").glob("*.py")), ids=lambda p: p.name)
def test_blob_never_imports_io(path):
    imported = _imported_modules(path, "rafs.blob")
    assert not {m for m in imported if m == "rafs.io" or m.startswith("rafs.io.")}


def test_ranges_is_at_the_bottom():
    imported = _imported_modules(RAFS / "ranges.py", "rafs")
    assert {m for m in imported if m.startswith("rafs")} <= {"rafs.errors", "rafs.errors.BackendError",
                                                             "rafs.errors.InvalidArgumentError",
                                                             "rafs.errors.InvalidImageError"}


def test_blob_parsers_refuse_paths_and_take_readers(fixtures):
    blob = fixtures / "blobs" / "be7d77eeb719f70884758d1aa800ed0fb09d701aaec469964e9d54325f0d5fef"
    for path in (blob, str(blob)):
        with pytest.raises(InvalidArgumentError, match="open_range_reader opens paths"):
            compute_blob_id(path)
    data = blob.read_bytes()
    expected = compute_blob_id(data)
    assert expected == blob.name
    with open(blob, "rb") as f:
        assert compute_blob_id(f) == expected
    reader = open_range_reader(blob)
    try:
        assert compute_blob_id(reader) == expected
    finally:
        reader.close()
    assert compute_blob_id(io.BytesIO(data)) == expected


def test_one_bytes_range_reader():
    reader = open_range_reader(b"0123456789")
    assert type(reader) is ranges.BytesRangeReader
    assert reader.read_range(2, 3) == b"234"
    with pytest.raises(InvalidImageError, match="runs past the end"):
        reader.read_range(8, 3)
    with pytest.raises(InvalidArgumentError, match="expected a path, URL, bytes or a binary file object"):
        open_range_reader(12)
    with pytest.raises(InvalidImageError):
        read_toc(b"x" * 100)


def test_bootstrap_limits_have_one_home():
    from rafs.io import source
    from rafs.oci import check
    from rafs.v5 import writer
    assert source.MAX_BOOTSTRAP_SIZE is limits.MAX_BOOTSTRAP_SIZE == 0x8000_0000
    assert not hasattr(writer, "MAX_METADATA_SIZE")
    assert check.MAX_BOOTSTRAP_LAYER is limits.MAX_BOOTSTRAP_LAYER


def test_ci_v1_record_is_encoded_once():
    from rafs.blob import ci as meta, writer
    assert writer.ci_v1_entry is meta.ci_v1_entry and writer.CI_HEADER is meta.CI_HEADER
    assert not hasattr(writer, "_CI_V1") and not hasattr(writer, "_CI_V2")
    args = (0x12_3456_7890, 0x1000000, 0xABC_DEF0_1000, 0x1234)
    assert meta.ci_v1_entry(*args) == meta.CHUNK_INFO_V1.struct.pack(*meta.encode_chunk_info_v1(*args))
    # the writer's records are unchecked: an unaligned (v5) uncompressed offset loses its low 12 bits
    assert meta.ci_v1_entry(1, 2, 0x1FFF, 3) == meta.ci_v1_entry(1, 2, 0x1000, 3)
    with pytest.raises(InvalidArgumentError):
        meta.encode_chunk_info_v1(1, 2, 0x1FFF, 3)


def test_inline_placeholder_id_has_one_home():
    from rafs.blob import ids, writer
    from rafs.v5 import reader as v5_reader
    from rafs.v6 import layout as v6_layout
    assert ids.INLINE_BLOB_ID == "x" * 64
    assert writer.INLINE_BLOB_ID is ids.INLINE_BLOB_ID is v6_layout.RAFSV6_INLINE_BLOB_ID_PLACEHOLDER
    assert not hasattr(v5_reader, "INLINE_BLOB_ID_PLACEHOLDER")


def test_chunk_size_rule_has_one_home():
    from rafs.blob import batch, writer
    assert limits.CHUNK_SIZE_RULE == "a power of two in [0x1000, 0x1000000]"
    assert [limits.is_chunk_size(v) for v in (0x800, 0x1000, 0x3000, 0x1000000, 0x2000000)] == \
        [False, True, False, True, False]
    with pytest.raises(InvalidArgumentError, match=r"^invalid chunk size: 0x3000 \(a power of two in \[0x1000, "):
        writer.check_chunk_size(0x3000)
    assert not hasattr(batch, "MIN_BATCH_SIZE") and not hasattr(batch, "MAX_BATCH_SIZE")
    with pytest.raises(InvalidArgumentError, match="^invalid batch size: 12288$"):
        batch.check_batch_size(0x3000, 0x100000)
