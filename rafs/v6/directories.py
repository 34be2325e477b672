"""Directories of a RAFS v6 or plain EROFS image: listings and name lookups.

A directory's data is ``i_size`` bytes of dirent blocks (decoded by :mod:`rafs.v6.dirent`), stored like a
file's: in whole blocks, with the last one inline after the inode (``FLAT_INLINE``, what nydus-image and
mkfs.erofs write), chunk-based, or compressed. Entries are sorted by name within and across blocks, so
a lookup in a large directory is a binary search over its blocks by their first and last names, as
the kernel's ``erofs_namei`` does (fs/erofs/namei.c).
"""

from __future__ import annotations

import functools
import stat as _stat
from typing import Callable, Iterator

from ..errors import InvalidImageError
from ..model import META_BLOB_INDEX
from . import dirent, extents, layout, xattr
from .inodes import Record
from .superblock import Geometry

# Directories of at most this many blocks get a name -> nid dict for lookups (at most LOOKUP_TABLES of
# them cached, the most recently used); larger ones are searched block by block.
LOOKUP_TABLE_BLOCKS = 4
LOOKUP_TABLES = 256
# Blocks of large directories kept decoded for lookups (the blocks a binary search visits).
DIR_BLOCKS = 256
_S_IFMT, _S_IFDIR = 0o170000, _stat.S_IFDIR
_FLAT_INLINE = layout.EROFS_INODE_FLAT_INLINE


class Directories:
    """Lists and searches the directories of one image held in ``data``.

    ``attributes`` and ``record`` are the image's inode decoders (:meth:`rafs.v6.inodes.InodeDecoder.
    attributes` and a cached :meth:`~rafs.v6.inodes.InodeDecoder.record`); ``read_compressed`` (nid,
    offset, length -> bytes) reads a compressed directory's data.
    """

    def __init__(self, data, geometry: Geometry, attributes: Callable[[int], tuple],
                 record: Callable[[int], Record], read_compressed: Callable[[int, int, int], bytes]):
        self.data = data
        self.geometry = geometry
        self.attributes = attributes
        self.record = record
        self.read_compressed = read_compressed
        self.block_size, self.size = geometry.block_size, geometry.size
        self._dir_blocks = functools.lru_cache(maxsize=DIR_BLOCKS)(self._parse_dir_block)
        self._lookup_tables = functools.lru_cache(maxsize=LOOKUP_TABLES)(self._lookup_table)

    def _dir_record(self, nid: int) -> Record | None:
        rec = self.record(nid)
        return rec if _stat.S_ISDIR(rec.mode) else None

    def block_count(self, rec: Record) -> int:
        """Number of blocks of directory ``rec``, whose size must fit in the image."""
        if rec.size > self.size:
            raise InvalidImageError(f"directory nid {rec.nid} size {rec.size} exceeds the image",
                                    structure="v6 inode", offset=rec.offset)
        return -(-rec.size // self.block_size)

    def _parse_dir_block(self, nid: int, index: int):
        """One decoded block of a directory (the blocks :meth:`lookup` visits are cached)."""
        rec = self.record(nid)
        return self._dir_block(rec, extents.extents(self.geometry, self.data, rec), index)

    def _dir_block(self, rec: Record, dir_extents, index: int):
        """(names, nids, file types) of block ``index`` of a directory whose extents are given."""
        bs = self.block_size
        start = index * bs
        length = min(bs, rec.size - start)
        if rec.datalayout in layout.EROFS_COMPRESSED_LAYOUTS:
            return dirent.decode_block(self.read_compressed(rec.nid, start, length), where=rec.offset)
        for file_offset, ext_len, blob, offset in dir_extents:
            if file_offset <= start and start + length <= file_offset + ext_len:
                if blob != META_BLOB_INDEX:
                    break
                at = offset + start - file_offset
                return dirent.decode_block(bytes(self.data[at:at + length]), where=at)
        raise InvalidImageError(f"directory nid {rec.nid} block {index} is a hole or outside the image",
                                structure="v6 directory block", offset=rec.offset)

    def entries(self, ino: int) -> Iterator[tuple[bytes, int]]:
        """(name, nid) of every entry but ``.`` and ``..``; the whole directory is decoded at once."""
        return zip(*self.listing(ino))

    def listing(self, ino: int) -> tuple[list[bytes], list[int]]:
        """The names and nids of a directory's entries but ``.`` and ``..``, as two lists.

        Most directories are one block stored inline after the inode (FLAT_INLINE, i_size at most a
        block): those are decoded straight from the inode's fields, without the extent machinery."""
        (mode, _, _, _, _, size, _, _, _, _, _, _, datalayout, icount, _, body, _,
         _) = self.attributes(ino)
        if mode & _S_IFMT != _S_IFDIR:
            return [], []
        if datalayout == _FLAT_INLINE and 0 < size <= self.block_size:
            at = body + xattr.body_size(icount) if icount else body
            if at % self.block_size + size <= self.block_size and at + size <= self.size:
                names, nids, _ = dirent.decode_block(bytes(self.data[at:at + size]), where=at)
                return dirent.without_dots(names, nids)
        rec = self._dir_record(ino)
        if rec is None:
            return [], []
        dir_extents = extents.extents(self.geometry, self.data, rec)      # once per listing, not per block
        count = self.block_count(rec)
        if count == 1:
            names, nids, _ = self._dir_block(rec, dir_extents, 0)
        else:
            names, nids = [], []
            for index in range(count):
                block_names, block_nids, _ = self._dir_block(rec, dir_extents, index)
                names += block_names
                nids += block_nids
        return dirent.without_dots(names, nids)

    def _lookup_table(self, nid: int):
        """What :meth:`lookup` searches in directory ``nid``: a name -> nid dict when the directory has
        at most :data:`LOOKUP_TABLE_BLOCKS` blocks, else its block count (binary search over blocks);
        None when ``nid`` is not a directory."""
        rec = self._dir_record(nid)
        if rec is None:
            return None
        count = self.block_count(rec)
        if count > LOOKUP_TABLE_BLOCKS:
            return count
        return dict(self.entries(nid))

    def lookup(self, ino: int, name: bytes) -> int | None:
        """A dict lookup in a small directory; in a large one a binary search over the directory's
        blocks by their first and last names, then inside the block."""
        table = self._lookup_tables(ino)
        if table is None or name == b"." or name == b"..":
            return None
        if type(table) is dict:
            return table.get(name)
        lo, hi = 0, table - 1
        while lo <= hi:
            mid = (lo + hi) // 2
            names, nids, _ = self._dir_blocks(ino, mid)
            if name < names[0]:
                hi = mid - 1
            elif name > names[-1]:
                lo = mid + 1
            else:
                return dirent.find(names, nids, name)
        return None
