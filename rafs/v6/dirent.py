"""EROFS directory blocks: dirents and their names (fs/erofs/dir.c, namei.c; v6.rs ``RafsV6Dirent``).

A directory's data is a run of blocks. Each block starts with ``n`` 12-byte dirents, where ``n`` is the
first dirent's ``e_nameoff`` / 12, followed by the names. A name ends where the next dirent's name
starts; the block's last name ends at the first NUL or at the end of the block (the last block of the
directory is cut at ``i_size``). Entries are sorted by raw name bytes, ``.`` and ``..`` included, which
is what makes the kernel's (and :func:`find`'s) binary search possible.
"""

from __future__ import annotations

import bisect
import functools
import struct

from ..errors import InvalidImageError
from . import layout

from .records import DIRENT
_STRUCTURE = "v6 directory block"


_NAME_LEN = layout.EROFS_NAME_LEN
_DIRENT_SIZE = layout.EROFS_DIRENT_SIZE
_FIELDS = len(DIRENT.fields)
_MAX_DIRENTS = (1 << 16) // _DIRENT_SIZE + 1      # e_nameoff is 16 bits


@functools.lru_cache(maxsize=_MAX_DIRENTS)
def _heads(count: int) -> struct.Struct:
    """``count`` dirents in one unpack: the dirent format of the fast codec, repeated."""
    return struct.Struct("<" + DIRENT.struct.format.lstrip("<=") * count)


def decode_block(block: bytes, *, where: int) -> tuple[list[bytes], tuple[int, ...], tuple[int, ...]]:
    """(names, nids, file types) of the dirents in one directory block, in stored order.

    ``block`` is the block's bytes as far as the directory reaches (at most one block); ``where`` is its
    offset in the image, for error messages. Checks are those of the kernel's ``erofs_readdir`` plus
    strictly increasing name offsets, so a hostile block cannot produce negative or overlapping names.
    Every dirent is unpacked at once and the names cut and checked in bulk (no Python step per entry);
    only a block that fails is looked at entry by entry, to name the culprit.
    """
    size = len(block)
    if size < _DIRENT_SIZE:
        raise InvalidImageError(f"directory block of {size} bytes cannot hold a dirent", structure=_STRUCTURE,
                                offset=where)
    nameoff0 = block[8] | block[9] << 8
    if nameoff0 < _DIRENT_SIZE or nameoff0 >= size:
        raise InvalidImageError(f"first dirent name offset {nameoff0} outside [12, {size})", structure=_STRUCTURE,
                                offset=where)
    fields = _heads(nameoff0 // _DIRENT_SIZE).unpack_from(block)
    starts = fields[1::_FIELDS]
    nul = block.find(b"\0", starts[-1])
    ends = starts[1:] + (size if nul < 0 else nul,)
    names = [block[start:end] for start, end in zip(starts, ends)]
    # a name offset out of order or past the block leaves an empty slice somewhere
    lengths = list(map(len, names))
    if min(lengths) == 0 or max(lengths) > _NAME_LEN:
        i = next(i for i, n in enumerate(lengths) if not 0 < n <= _NAME_LEN)
        raise InvalidImageError(f"dirent {i} name [{starts[i]}, {ends[i]}) is empty, out of order or outside the "
                                f"{size}-byte block", structure=_STRUCTURE, offset=where + _DIRENT_SIZE * i)
    return names, fields[0::_FIELDS], fields[2::_FIELDS]


def parse_block(block: bytes, *, where: int) -> list[tuple[bytes, int, int]]:
    """(name, nid, file type) of every dirent in one directory block, in stored order (see
    :func:`decode_block`)."""
    return list(zip(*decode_block(block, where=where)))


def without_dots(names: list[bytes], nids) -> tuple[list[bytes], list[int]]:
    """A directory's names and nids but ``.`` and ``..``. In a sound directory each appears once and
    they sort next to each other, so they are cut out by position; anything else is filtered entry by
    entry."""
    names, nids = list(names), list(nids)
    i = names.index(b".") if b"." in names else -1
    if i >= 0 and names[i + 1:i + 2] == [b".."] and names.count(b".") == 1 and names.count(b"..") == 1:
        del names[i:i + 2], nids[i:i + 2]
        return names, nids
    kept = [i for i, name in enumerate(names) if name != b"." and name != b".."]
    return [names[i] for i in kept], [nids[i] for i in kept]


def find(names: list[bytes], nids, name: bytes) -> int | None:
    """The nid of ``name`` in one decoded (sorted) block, by binary search."""
    i = bisect.bisect_left(names, name)
    if i < len(names) and names[i] == name:
        return nids[i]
    return None
