"""Hypothesis strategies derived from construct schemas, so every new layout gets one for free.

:func:`from_schema` walks a construct declaration: ``FormatField`` and ``BytesInteger``/``BitsInteger``
integers become ``st.integers`` over their full range, ``Bytes(n)`` ``st.binary`` of exactly ``n``
bytes, ``Const`` its constant, ``Struct``/``Array``/``Sequence`` recurse, ``Enum``/``FlagsEnum`` take
their labels and stray values. A construct it does not know raises :class:`NotImplementedError`
naming the class, so a schema that needs a new rule fails loudly instead of being skipped.

:func:`layout_schemas` finds every schema declared in the ``layout`` modules of a package by
introspection (for rafs: ``rafs/v5/layout.py``, ``rafs/v6/layout.py``, ``rafs/blob/layout.py``, ...).
"""

from __future__ import annotations

import importlib
import pkgutil
import random
import types

import construct
from hypothesis import strategies as st

_INT_RANGES = {"B": (0, 2**8 - 1), "H": (0, 2**16 - 1), "I": (0, 2**32 - 1), "L": (0, 2**32 - 1),
               "Q": (0, 2**64 - 1), "b": (-2**7, 2**7 - 1), "h": (-2**15, 2**15 - 1),
               "i": (-2**31, 2**31 - 1), "l": (-2**31, 2**31 - 1), "q": (-2**63, 2**63 - 1)}
_FLOAT_WIDTHS = {"e": 16, "f": 32, "d": 64}
# constructs that add no value of their own in a Struct (their parse result is None or derived)
_VALUELESS = (construct.Computed, construct.Check, construct.Pass.__class__, construct.Terminated.__class__)


def integer_range(con: construct.Construct) -> tuple[int, int] | None:
    """(min, max) of an integer field (through ``Renamed``/``Const``), or None if it is not one."""
    while isinstance(con, (construct.Renamed, construct.Const)):
        con = con.subcon
    if isinstance(con, construct.FormatField):
        return _INT_RANGES.get(con.fmtstr[-1])
    if isinstance(con, (construct.BytesInteger, construct.BitsInteger)) and isinstance(con.length, int):
        bits = con.length * (1 if isinstance(con, construct.BitsInteger) else 8)
        return (-2 ** (bits - 1), 2 ** (bits - 1) - 1) if con.signed else (0, 2**bits - 1)
    return None


def _is_valueless(con: construct.Construct) -> bool:
    while isinstance(con, construct.Renamed):
        con = con.subcon
    if isinstance(con, _VALUELESS):
        return True
    # Padding(n) is Padded(n, Pass): it parses to None whatever the bytes
    return isinstance(con, construct.Padded) and isinstance(con.subcon, construct.Pass.__class__)


def from_schema(con: construct.Construct) -> st.SearchStrategy:
    """A strategy for values ``con.build`` accepts and ``con.parse`` gives back unchanged."""
    if isinstance(con, construct.Renamed):
        return from_schema(con.subcon)
    if isinstance(con, construct.Const):
        return st.just(con.value)
    if isinstance(con, construct.Struct):
        fields = {sub.name: from_schema(sub) for sub in con.subcons
                  if sub.name is not None and not _is_valueless(sub)}
        return st.fixed_dictionaries(fields).map(lambda d: construct.Container(**d))
    if isinstance(con, construct.Sequence):
        return st.tuples(*(from_schema(sub) for sub in con.subcons if not _is_valueless(sub))).map(
            lambda t: construct.ListContainer(t))
    if isinstance(con, construct.Array):
        if not isinstance(con.count, int):
            raise NotImplementedError(f"Array with a computed count ({con.count!r}) has no strategy")
        return st.lists(from_schema(con.subcon), min_size=con.count, max_size=con.count).map(
            construct.ListContainer)
    if isinstance(con, construct.FlagsEnum):
        # build from the integer, then take construct's own parsed (Container of flags) form
        return from_schema(con.subcon).map(lambda i: con.parse(con.subcon.build(i)))
    if isinstance(con, construct.Enum):
        known = sorted(con.encmapping)
        labels = st.sampled_from(known) if known else st.nothing()
        stray = from_schema(con.subcon).filter(lambda i: i not in con.decmapping)
        return st.one_of(labels, stray)
    if isinstance(con, construct.FormatField):
        code = con.fmtstr[-1]
        if code in _INT_RANGES:
            lo, hi = _INT_RANGES[code]
            return _interesting_integers(lo, hi)
        if code in _FLOAT_WIDTHS:
            return st.floats(width=_FLOAT_WIDTHS[code], allow_nan=False)
        if code == "?":
            return st.booleans()
    if isinstance(con, (construct.BytesInteger, construct.BitsInteger)):
        lo, hi = integer_range(con) or (None, None)
        if lo is not None:
            return _interesting_integers(lo, hi)
    if isinstance(con, construct.Bytes) and isinstance(con.length, int):
        return fixed_bytes(con.length)
    if con.__class__ is construct.GreedyBytes.__class__:
        return st.binary(max_size=64)
    if isinstance(con, construct.Padded) and not _is_valueless(con):
        return from_schema(con.subcon)
    if isinstance(con, (construct.Aligned, construct.Default, construct.Restreamed, construct.Transformed)):
        return from_schema(con.subcon)
    raise NotImplementedError(f"rafs.testing.from_schema has no rule for {type(con).__name__} ({con!r}); "
                              "add one in rafs/testing/schemas.py")


def fixed_bytes(size: int) -> st.SearchStrategy[bytes]:
    """Exactly ``size`` bytes. Large fields (reserved areas) are drawn as a short prefix plus zeros or
    as seeded random bytes, which keeps hypothesis within its per-example size budget."""
    if size <= 256:
        return st.binary(min_size=size, max_size=size)
    return st.one_of(st.binary(max_size=32).map(lambda b: b + bytes(size - len(b))),
                     st.integers(0, 2**32).map(lambda seed: random.Random(seed).randbytes(size)))


def _interesting_integers(lo: int, hi: int) -> st.SearchStrategy[int]:
    edges = sorted({v for v in (lo, lo + 1, 0, 1, hi - 1, hi) if lo <= v <= hi})
    return st.one_of(st.sampled_from(edges), st.integers(lo, hi))


def schema_bytes(con: construct.Construct) -> st.SearchStrategy[bytes]:
    """Encoded instances of ``con``: valid values built, and (for fixed sizes) raw random bytes."""
    built = from_schema(con).map(con.build)
    try:
        size = con.sizeof()
    except construct.SizeofError:
        return built
    return st.one_of(built, fixed_bytes(size))


def schemas_in(module: types.ModuleType) -> dict[str, construct.Construct]:
    """Every construct declared at module level in ``module`` (not the primitives it imports)."""
    found = {}
    for name, value in vars(module).items():
        if name.startswith("_") or not isinstance(value, construct.Construct):
            continue
        if getattr(construct, name, None) is value:
            continue                          # Int32ul and friends, imported from construct
        found[name] = value
    return found


def layout_modules(package: str = "rafs") -> list[types.ModuleType]:
    """Every ``*.layout`` module under ``package`` that imports cleanly."""
    root = importlib.import_module(package)
    modules = []
    for info in pkgutil.walk_packages(root.__path__, f"{package}.", onerror=lambda name: None):
        if info.name.rsplit(".", 1)[-1] == "layout":
            modules.append(importlib.import_module(info.name))
    return modules


def layout_schemas(package: str = "rafs") -> dict[str, construct.Construct]:
    """``{"rafs.v5.layout.SuperBlock": SuperBlock, ...}`` for every layout module of ``package``."""
    out = {}
    for module in layout_modules(package):
        for name, con in schemas_in(module).items():
            out[f"{module.__name__}.{name}"] = con
    return out


def flat_fields(con: construct.Construct) -> list[tuple[str, int, construct.Construct]] | None:
    """(name, byte offset, field) of each field of a fixed-size flat Struct, or None if not flat."""
    while isinstance(con, construct.Renamed):
        con = con.subcon
    if not isinstance(con, construct.Struct):
        return None
    fields, offset = [], 0
    for sub in con.subcons:
        try:
            size = sub.sizeof()
        except construct.SizeofError:
            return None
        fields.append((sub.name, offset, sub))
        offset += size
    return fields
