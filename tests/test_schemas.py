"""Every construct schema of every layout module round-trips, decodes hostile bytes safely, and agrees
with its fast struct codec. Schemas are discovered by introspection, so new ones are covered."""

from __future__ import annotations

import construct
import pytest
from hypothesis import given, strategies as st

from rafs import _records
from rafs.errors import InternalError, InvalidImageError
from rafs.testing import from_schema, layout_schemas, schema_bytes
from rafs.testing.schemas import fixed_bytes, flat_fields, integer_range

SCHEMAS = layout_schemas()


def test_discovery_finds_every_layout_module():
    modules = {name.rsplit(".", 1)[0] for name in SCHEMAS}
    assert {"rafs.v5.layout", "rafs.v6.layout", "rafs.blob.layout"} <= modules
    for expected in ("rafs.v5.layout.SuperBlock", "rafs.v5.layout.Inode", "rafs.v6.layout.SuperBlock",
                     "rafs.v6.layout.InodeExtended", "rafs.blob.layout.TocEntry",
                     "rafs.blob.layout.BlobCompressionContextHeader"):
        assert expected in SCHEMAS


def _subset(value, parsed) -> bool:
    """Every generated field is in ``parsed`` with the same value (parse may add computed fields)."""
    if isinstance(value, dict):
        return all(k in parsed and _subset(v, parsed[k]) for k, v in value.items())
    if isinstance(value, list):
        return len(value) == len(parsed) and all(_subset(a, b) for a, b in zip(value, parsed))
    return value == parsed


@pytest.mark.parametrize("name", sorted(SCHEMAS))
@given(data=st.data())
def test_schema_decodes_any_bytes_or_raises_a_rafs_error(name, data):
    schema = SCHEMAS[name]
    raw = data.draw(st.one_of(schema_bytes(schema), st.binary(max_size=64)), label="raw")
    try:
        _records.parse(schema, raw, structure=name)
    except InvalidImageError:
        pass


def _fast_record(schema):
    try:
        return _records.FastRecord(schema, "under test")
    except InternalError:
        return None


FLAT = sorted(name for name, schema in SCHEMAS.items() if _fast_record(schema) is not None)


def test_most_schemas_have_a_fast_codec():
    assert len(FLAT) >= len(SCHEMAS) // 2, FLAT


@pytest.mark.parametrize("name", sorted(SCHEMAS))
@given(data=st.data())
def test_schema_builds_and_parses_back(name, data):
    """build(value) parses back to value and rebuilds to the same bytes; the fast struct codec (for
    flat schemas) packs and unpacks the same."""
    schema = SCHEMAS[name]
    value = data.draw(from_schema(schema), label="value")
    encoded = schema.build(value)
    parsed = schema.parse(encoded)
    assert _subset(value, parsed), (value, parsed)
    assert schema.build(parsed) == encoded
    fast = _fast_record(schema)
    if fast is not None:
        assert fast.pack(*(value[f] for f in fast.fields)) == encoded
        assert tuple(fast.unpack_from(encoded)) == tuple(parsed[f] for f in fast.fields)


def test_strategies_cover_edges_and_unknown_constructs():
    assert integer_range(construct.Int16sl) == (-2**15, 2**15 - 1)
    assert integer_range(construct.BytesInteger(3)) == (0, 2**24 - 1)
    assert integer_range(construct.Bytes(4)) is None
    assert [f[:2] for f in flat_fields(construct.Struct("a" / construct.Int8ul, "b" / construct.Int32ul))] == \
        [("a", 0), ("b", 1)]
    with pytest.raises(NotImplementedError, match="no rule for"):
        from_schema(construct.Struct("s" / construct.CString("utf8")))


OTHER_TYPES = construct.Struct(
    "kind" / construct.Enum(construct.Int8ul, a=1, b=2),
    "flags" / construct.FlagsEnum(construct.Int16ul, x=1, y=4),
    "pad" / construct.Padding(3),
    "items" / construct.Array(3, construct.Int16sb),
    "magic" / construct.Const(b"RAFS"),
)


@given(from_schema(OTHER_TYPES), fixed_bytes(5000))
def test_strategies_for_other_construct_types(value, reserved):
    encoded = OTHER_TYPES.build(value)
    assert OTHER_TYPES.build(OTHER_TYPES.parse(encoded)) == encoded
    assert len(reserved) == 5000
