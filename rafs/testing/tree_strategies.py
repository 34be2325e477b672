"""Hypothesis strategies for source trees (:mod:`rafs.testing.trees`): names that break careless code,
hostile names, xattrs, file data around chunk boundaries, entry attributes and whole trees.
"""

from __future__ import annotations

import os
from typing import Iterable

from hypothesis import strategies as st

from .trees import KINDS, MAX_MTIME, ROOT, Entry, Extent, FileData, directory, hardlink, is_root, join


def _valid_name(name: bytes) -> bool:
    return bool(name) and b"/" not in name and b"\0" not in name and name not in (b".", b"..")


# names a filesystem accepts, chosen to break careless code: spaces, newlines, leading dashes, shell
# and tar metacharacters, look-alikes of "." and "..", non-UTF-8 bytes, the 255-byte maximum.
TRICKY_NAMES = (b"-rf", b" ", b" lead", b"trail ", b"new\nline", b"tab\t", b"\xff\xfe", b"\x80",
                b"caf\xc3\xa9", b"cafe\xcc\x81", b"...", b".hidden", b"..a", b"a..", b"\\", b"*?[]",
                b"$HOME", b"~", b"\x1b[31m", b"\xed\xa0\x80", b"x" * 255, b"\xf0\x9f\x92\xa9" * 63)


def names(*, max_size: int = 255, whiteouts: bool = False) -> st.SearchStrategy[bytes]:
    """File names a real filesystem accepts (no ``/``, no NUL, not ``.``/``..``), often hostile:
    arbitrary non-UTF-8 bytes, tricky look-alikes and the 255-byte limit. OCI whiteout names
    (``.wh.*``) are left out unless ``whiteouts`` (directory builds drop them)."""
    raw = st.binary(min_size=1, max_size=min(max_size, 24))
    text = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=12).map(
        lambda s: s.encode("utf-8"))
    simple = st.text("abcdefghijklmnopqrstuvwxyz0123456789._-", min_size=1, max_size=8).map(str.encode)
    tricky = st.sampled_from([n for n in TRICKY_NAMES if len(n) <= max_size])
    strategy = st.one_of(simple, simple, text, raw, tricky).map(lambda n: n.replace(b"/", b"_").replace(b"\0", b"_"))
    strategy = strategy.filter(lambda n: _valid_name(n) and len(n) <= max_size)
    if not whiteouts:
        strategy = strategy.filter(lambda n: not n.startswith(b".wh."))
    return strategy


HOSTILE_NAMES = (b"", b".", b"..", b"/", b"a/b", b"../x", b"../../etc/passwd", b"/etc/passwd", b"a\0b",
                 b"\0", b"x" * 256, b"x" * 4096)


def hostile_names() -> st.SearchStrategy[bytes]:
    """Names no filesystem accepts, for hand-made images: empty, ``.``, ``..``, with ``/`` or NUL,
    absolute, over 255 bytes. A reader must refuse them or keep them inside its target."""
    return st.one_of(st.sampled_from(HOSTILE_NAMES),
                     st.tuples(names(max_size=16), st.sampled_from([b"/", b"\0", b"/../", b"/./"]),
                               names(max_size=16)).map(b"".join))


def xattr_names(*, kind: str = "file") -> st.SearchStrategy[bytes]:
    """xattr names every Linux filesystem used here stores: ``trusted.*`` (needs root) anywhere,
    ``user.*`` on files and directories only (the kernel refuses it elsewhere)."""
    prefixes = [b"trusted."] + ([b"user."] if kind in ("file", "dir") else [])
    suffix = st.binary(min_size=1, max_size=20).filter(lambda s: b"\0" not in s and not s.startswith(b"overlay."))
    return st.tuples(st.sampled_from(prefixes), suffix).map(b"".join)


def xattrs(*, kind: str = "file", max_count: int = 3) -> st.SearchStrategy[dict]:
    """A strategy of xattr dicts (at most ``max_count`` names that ``kind`` of entry can carry)."""
    return st.dictionaries(xattr_names(kind=kind), st.binary(max_size=64), max_size=max_count)


def boundary_sizes(chunk_size: int = 0x1000) -> list[int]:
    """Sizes around chunk and block boundaries: where off-by-one errors live."""
    sizes = {0, 1, 511, 512, 4095, 4096, 4097}
    for k in (1, 2, 3):
        sizes.update({k * chunk_size - 1, k * chunk_size, k * chunk_size + 1})
    return sorted(sizes)


@st.composite
def file_data(draw, *, chunk_size: int = 0x1000, max_size: int = 1 << 16, sparse: bool = True) -> FileData:
    """File contents: empty, tiny literal, boundary-sized, compressible or not, sparse with islands of
    data around chunk boundaries (holes are zero runs the builder may or may not store)."""
    sizes = st.one_of(st.sampled_from([s for s in boundary_sizes(chunk_size) if s <= max_size]),
                      st.integers(0, max_size))
    size = draw(sizes)
    if size == 0:
        return FileData(0)
    style = draw(st.sampled_from(["literal", "random", "pattern", "zeros"] + (["sparse"] if sparse else [])))
    if style == "literal" or size <= 16:
        if size <= 256:
            return FileData.literal(draw(st.binary(min_size=size, max_size=size)))
        style = "random"
    if style == "random":
        return FileData(size, (Extent(0, size, draw(st.integers(0, 2**32))),))
    if style == "pattern":
        return FileData(size, (Extent(0, size, draw(st.binary(min_size=1, max_size=8))),))
    if style == "zeros":
        return FileData(size)
    # sparse: a few islands, each placed near a chunk boundary or anywhere
    extents = []
    for _ in range(draw(st.integers(1, 3))):
        anchor = draw(st.one_of(st.integers(0, size - 1),
                                st.integers(0, max(0, size // chunk_size)).map(lambda k: k * chunk_size)))
        start = max(0, min(size - 1, anchor + draw(st.integers(-8, 8))))
        length = draw(st.integers(1, min(size - start, 2 * chunk_size)))
        fill = draw(st.one_of(st.integers(0, 2**32), st.binary(min_size=1, max_size=4)))
        extents.append(Extent(start, length, fill))
    return FileData(size, tuple(sorted(extents, key=lambda e: e.offset)))


@st.composite
def entry_attrs(draw, kind: str, *, owners: bool, with_xattrs: bool, mtimes: bool = True) -> dict:
    """Drawn attributes (mode, owners, mtimes, xattrs) for an entry of ``kind``, as :func:`file` and
    the other entry makers take them."""
    attrs = {}
    if kind == "symlink":
        attrs["mode"] = 0o777
    elif kind == "dir":
        # the owner keeps rwx so the tree stays walkable and removable without root
        attrs["mode"] = draw(st.integers(0, 0o7777)) | 0o700
    else:
        attrs["mode"] = draw(st.one_of(st.sampled_from([0o644, 0o755, 0o600, 0o4755, 0o2644, 0o1777, 0o000]),
                                       st.integers(0, 0o7777)))
    if owners:
        ids = st.one_of(st.just(0), st.integers(1, 65535), st.integers(65536, 2**32 - 2))
        attrs["uid"], attrs["gid"] = draw(ids), draw(ids)
    if mtimes:
        attrs["mtime"] = draw(st.one_of(st.just(0), st.integers(0, 2**32 - 1), st.integers(2**32, MAX_MTIME)))
        attrs["mtime_nsec"] = draw(st.one_of(st.just(0), st.integers(0, 999_999_999)))
    if with_xattrs:
        attrs["xattrs"] = draw(xattrs(kind=kind))
    return attrs


def default_kinds() -> tuple[str, ...]:
    """Every entry type this process can create: devices only as root."""
    return KINDS if is_root() else tuple(k for k in KINDS if k not in ("char", "block"))


@st.composite
def trees(draw, *, max_entries: int = 16, kinds: Iterable[str] | None = None, chunk_size: int = 0x1000,
          max_file_size: int = 1 << 16, max_total_size: int = 1 << 20, max_depth: int = 6,
          names_strategy: st.SearchStrategy[bytes] | None = None, owners: bool | None = None,
          with_xattrs: bool | None = None, mtimes: bool = True, sparse: bool = True) -> dict:
    """A tree (``dict`` path -> :class:`Entry`) with every entry type, hostile but valid names,
    xattrs, hardlinks, and sparse or chunk-boundary file sizes.

    ``owners`` and ``with_xattrs`` default to whether this process is root (``trusted.*`` xattrs and
    ``chown`` need it); devices are only drawn as root unless ``kinds`` says otherwise. The total of
    file sizes stays under ``max_total_size``.
    """
    root = is_root()
    owners = root if owners is None else owners
    with_xattrs = root if with_xattrs is None else with_xattrs
    kinds = tuple(kinds or default_kinds())
    name_st = names_strategy or names()
    tree = {ROOT: directory(**draw(entry_attrs("dir", owners=owners, with_xattrs=with_xattrs, mtimes=mtimes)))}
    dirs, files, budget = [ROOT], [], max_total_size
    for _ in range(draw(st.integers(0, max_entries))):
        parent = draw(st.sampled_from(dirs))
        path = join(parent, draw(name_st))
        if path in tree or len(path) > 4000:
            continue
        kind = draw(st.sampled_from(kinds))
        if kind == "dir" and parent.count(b"/") >= max_depth:
            kind = "file"
        if kind == "hardlink":
            if not files:
                continue
            tree[path] = hardlink(draw(st.sampled_from(files)))
            continue
        attrs = draw(entry_attrs(kind, owners=owners, with_xattrs=with_xattrs, mtimes=mtimes))
        if kind == "file":
            data = draw(file_data(chunk_size=chunk_size, max_size=max(0, min(max_file_size, budget)),
                                  sparse=sparse))
            budget -= data.size
            tree[path] = Entry("file", data=data, **attrs)
            files.append(path)
        elif kind == "dir":
            tree[path] = Entry("dir", **attrs)
            dirs.append(path)
        elif kind == "symlink":
            target = draw(st.one_of(
                st.sampled_from([b".", b"..", b"/", b"/etc/passwd", b"../../../../outside", b"x" * 1024]),
                st.lists(st.one_of(name_st, st.sampled_from([b"..", b"."])), min_size=1, max_size=4).map(b"/".join),
                st.binary(min_size=1, max_size=64).filter(lambda b: b"\0" not in b)))
            tree[path] = Entry("symlink", target=target, **attrs)
        elif kind in ("char", "block"):
            rdev = os.makedev(draw(st.integers(1, 255)), draw(st.integers(0, 255)))
            tree[path] = Entry(kind, rdev=rdev, **attrs)
        else:
            tree[path] = Entry(kind, **attrs)
    return tree
