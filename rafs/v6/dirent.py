"""EROFS directory blocks: dirents and their names (fs/erofs/dir.c, namei.c; v6.rs ``RafsV6Dirent``).

A directory's data is a run of blocks. Each block starts with ``n`` 12-byte dirents, where ``n`` is the
first dirent's ``e_nameoff`` / 12, followed by the names. A name ends where the next dirent's name
starts; the block's last name ends at the first NUL or at the end of the block (the last block of the
directory is cut at ``i_size``). Entries are sorted by raw name bytes, ``.`` and ``..`` included, which
is what makes the kernel's (and :func:`find`'s) binary search possible.
"""

from __future__ import annotations

import bisect

from .. import _codec
from ..errors import InvalidImageError
from . import layout

DIRENT = _codec.FastRecord(layout.Dirent, "v6 dirent")
_STRUCTURE = "v6 directory block"


def parse_block(block: bytes, *, where: int) -> list[tuple[bytes, int, int]]:
    """(name, nid, file type) of every dirent in one directory block, in stored order.

    ``block`` is the block's bytes as far as the directory reaches (at most one block); ``where`` is its
    offset in the image, for error messages. Checks are those of the kernel's ``erofs_readdir`` plus
    strictly increasing name offsets, so a hostile block cannot produce negative or overlapping names.
    """
    size = len(block)
    if size < layout.EROFS_DIRENT_SIZE:
        raise InvalidImageError(f"directory block of {size} bytes cannot hold a dirent", structure=_STRUCTURE,
                                offset=where)
    first = DIRENT.unpack_from(block, 0)
    nameoff0 = first.e_nameoff
    if nameoff0 < layout.EROFS_DIRENT_SIZE or nameoff0 >= size:
        raise InvalidImageError(f"first dirent name offset {nameoff0} outside [12, {size})", structure=_STRUCTURE,
                                offset=where)
    count = nameoff0 // layout.EROFS_DIRENT_SIZE
    records = list(DIRENT.iter_unpack(block, 0, count))
    result = []
    for i, rec in enumerate(records):
        start = rec.e_nameoff
        if i + 1 < count:
            end = records[i + 1].e_nameoff
        else:
            nul = block.find(b"\0", start)
            end = size if nul < 0 else nul
        if start < nameoff0 or end <= start or end > size or end - start > layout.EROFS_NAME_LEN:
            raise InvalidImageError(f"dirent {i} name [{start}, {end}) is empty, out of order or outside the "
                                    f"{size}-byte block", structure=_STRUCTURE, offset=where + 12 * i)
        result.append((block[start:end], rec.e_nid, rec.e_file_type))
    return result


def find(entries: list[tuple[bytes, int, int]], name: bytes) -> int | None:
    """The nid of ``name`` in one parsed (sorted) block, by binary search."""
    names = [e[0] for e in entries]
    i = bisect.bisect_left(names, name)
    if i < len(entries) and entries[i][0] == name:
        return entries[i][1]
    return None
