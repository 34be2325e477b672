"""Glue between construct schemas and fast ``struct`` record packers, and the one place where
construct and ``struct`` errors become rafs errors. (Compressors are codecs: :mod:`rafs.blob.codecs`.)

construct declares every structure (see ``rafs/*/layout.py``) and is used for headers, validation and
inspection. Tables that may hold millions of records go through a :class:`FastRecord`, a
``struct.Struct`` derived at import from the same flat construct schema, so the layout is written once.
"""

from __future__ import annotations

import collections
import contextlib
import struct
from typing import Iterator

import construct

from .errors import InternalError, InvalidArgumentError, InvalidImageError

_DECODE_ERRORS = (construct.ConstructError, struct.error, UnicodeDecodeError, OverflowError, IndexError)


@contextlib.contextmanager
def decoding(structure: str, offset: int | None = None):
    """Turn any construct/struct decode error raised inside the block into an InvalidImageError."""
    try:
        yield
    except InvalidImageError:
        raise
    except _DECODE_ERRORS as exc:
        raise InvalidImageError(_describe(exc), structure=structure, offset=offset) from None


def _describe(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[-1] if text else type(exc).__name__


def parse(schema: construct.Construct, data, offset: int = 0, *, structure: str) -> construct.Container:
    """Parse ``schema`` from ``data[offset:]`` with bounds checks; errors name ``structure``."""
    size = _static_size(schema)
    if size is not None and offset + size > len(data):
        raise InvalidImageError(f"needs {size} bytes but only {max(0, len(data) - offset)} remain",
                                structure=structure, offset=offset)
    with decoding(structure, offset):
        view = memoryview(data)[offset:offset + size] if size is not None else memoryview(data)[offset:]
        return schema.parse(bytes(view))


def build(schema: construct.Construct, value, *, structure: str) -> bytes:
    """Build ``value`` with ``schema``; a value that does not fit is the caller's error."""
    try:
        return schema.build(value)
    except _DECODE_ERRORS as exc:
        raise InvalidArgumentError(f"cannot encode {structure}: {_describe(exc)}") from None


def _static_size(schema: construct.Construct) -> int | None:
    try:
        return schema.sizeof()
    except construct.SizeofError:
        return None


def _format_of(subcon: construct.Construct) -> str:
    """The ``struct`` format character(s) of one fixed-size construct field."""
    while True:
        if isinstance(subcon, construct.FormatField):
            return subcon.fmtstr[1:]
        if isinstance(subcon, construct.BytesInteger) and subcon.length in (1, 2, 4, 8):
            raise InternalError("use FormatField integers in fast-path schemas")
        if isinstance(subcon, construct.Bytes) and isinstance(subcon.length, int):
            return f"{subcon.length}s"
        if isinstance(subcon, (construct.Subconstruct, construct.Const)):
            subcon = subcon.subcon
            continue
        raise InternalError(f"field type {type(subcon).__name__} has no struct equivalent")


class FastRecord:
    """A ``struct`` packer and unpacker for a flat, fixed-size little-endian construct ``Struct``.

    ``unpack_from`` returns a named tuple with the schema's field names; ``iter_unpack`` walks a whole
    table; ``pack`` encodes from field values. A test checks it agrees with construct.
    """

    def __init__(self, schema: construct.Struct, name: str):
        names, fmt = [], "<"
        for sub in schema.subcons:
            if sub.name is None:
                raise InternalError(f"{name}: unnamed field in a fast-path schema")
            names.append(sub.name)
            fmt += _format_of(sub)
        self.schema = schema
        self.name = name
        self.struct = struct.Struct(fmt)
        self.size = self.struct.size
        if self.size != schema.sizeof():
            raise InternalError(f"{name}: struct size {self.size} != construct size {schema.sizeof()}")
        self.fields = tuple(names)
        self.record = collections.namedtuple(name.replace(" ", "_").replace("-", "_"), names)

    def unpack_from(self, data, offset: int = 0):
        if offset < 0 or offset + self.size > len(data):
            raise InvalidImageError(f"record of {self.size} bytes runs past the end ({len(data)} bytes)",
                                    structure=self.name, offset=offset)
        return self.record._make(self.struct.unpack_from(data, offset))

    def iter_unpack(self, data, offset: int = 0, count: int | None = None) -> Iterator:
        """Records ``count`` times from ``offset`` (all that fit when count is None), bounds-checked."""
        if count is None:
            count = (len(data) - offset) // self.size
        end = offset + count * self.size
        if offset < 0 or count < 0 or end > len(data):
            raise InvalidImageError(f"table of {count} records of {self.size} bytes runs past the end",
                                    structure=self.name, offset=offset)
        make = self.record._make
        for values in self.struct.iter_unpack(memoryview(data)[offset:end]):
            yield make(values)

    def pack(self, *args, **kwargs) -> bytes:
        if kwargs:
            args = self.record(*args, **kwargs)
        try:
            return self.struct.pack(*args)
        except struct.error as exc:
            raise InvalidArgumentError(f"cannot encode {self.name}: {exc}") from None
