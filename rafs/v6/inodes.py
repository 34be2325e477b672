"""The one decoder of EROFS inodes (RAFS v6 included): stat fields, records and model inodes.

An inode is addressed by its nid: it lies at ``meta_base + 32 * nid``. It is compact (32 bytes,
``struct erofs_inode_compact``) or extended (64 bytes, ``struct erofs_inode_extended``) as bit 0 of
``i_format`` says; bits 1..3 give the data layout (flat plain, flat inline, chunk-based, or the two
compressed ones). ``i_xattr_icount`` counts the inline xattr area after the inode; ``i_u`` is the start
block of flat data, the chunk format of chunk-based files, the compressed block count of compressed
ones, or the encoded device number of device files (fs/erofs/erofs_fs.h, rafs/src/metadata/layout/v6.rs).

Every decoder starts from :meth:`InodeDecoder.attributes`, one ``struct`` unpack checked against the
image; :meth:`InodeDecoder.stat_list` is its bulk form (a directory's children unpacked in one pass and
checked as a whole), which falls back to it for anything unusual.
"""

from __future__ import annotations

import itertools
import operator
import os
import stat as _stat
import struct
from typing import Callable

from .. import _records
from ..errors import InvalidImageError, UnsupportedError
from ..limits import MAX_LINUX_SYMLINK_SIZE
from ..model import DEFAULT_CHUNK_SIZE, Inode, InodeFlags
from . import layout, xattr
from .records import INODE_RECORDS
from .superblock import Geometry

_U16 = struct.Struct("<H")
# Flat data is handed out in pieces of this size (aligned in the file), so a read touches only what
# it needs and no piece exceeds the chunk reader's 16 MiB limit; a flat file's chunk count counts them.
FLAT_PIECE_SIZE = DEFAULT_CHUNK_SIZE
_FILE_TYPES = frozenset(layout.EROFS_FILE_TYPE_BY_MODE)
_COMPACT = INODE_RECORDS[layout.EROFS_INODE_LAYOUT_COMPACT]
_EXTENDED = INODE_RECORDS[layout.EROFS_INODE_LAYOUT_EXTENDED]
_COMPACT_SIZE, _EXTENDED_SIZE = _COMPACT.size, _EXTENDED.size


def _skipping_reserved(record: _records.FastRecord):
    """``unpack_from`` of the record's own struct format with the trailing reserved bytes skipped
    (``16s`` -> ``16x``), so the hot path makes no bytes object per inode."""
    fmt = record.struct.format
    assert record.fields[-1] == "i_reserved2" and fmt.endswith("s")
    return struct.Struct(fmt[:-1] + "x").unpack_from


_COMPACT_UNPACK, _EXTENDED_UNPACK = _skipping_reserved(_COMPACT), _skipping_reserved(_EXTENDED)
_COMPACT_NLINK_OFFSET = 6                # after the 16-bit i_format, i_xattr_icount and i_mode
assert _COMPACT.fields.index("i_nlink") == 3 and _COMPACT.struct.format.lstrip("<=").startswith("HHHH")
assert _COMPACT.fields[:3] == _EXTENDED.fields[:3] == ("i_format", "i_xattr_icount", "i_mode")
assert _EXTENDED.fields.index("i_size") == _COMPACT.fields.index("i_size")
_UNKNOWN_I_FORMAT = ~layout.EROFS_I_ALL
_EXTENDED_BIT = layout.EROFS_I_VERSION_MASK
_DATALAYOUT_BIT, _DATALAYOUT_MASK = layout.EROFS_I_DATALAYOUT_BIT, layout.EROFS_I_DATALAYOUT_MASK
_NLINK_1_BIT = layout.EROFS_I_NLINK_1_BIT
_NLINK_1 = 1 << _NLINK_1_BIT
# what InodeDecoder.stat_list decodes in bulk: the uncompressed layouts, compact with or without the
# nlink-is-1 bit, or extended; file types whose st_rdev is 0
_BULK_LAYOUTS = (layout.EROFS_INODE_FLAT_PLAIN, layout.EROFS_INODE_FLAT_INLINE, layout.EROFS_INODE_CHUNK_BASED)
_BULK_EXTENDED_FORMATS = frozenset(layout.EROFS_I_VERSION_MASK | d << _DATALAYOUT_BIT for d in _BULK_LAYOUTS)
_BULK_COMPACT_FORMATS = frozenset(n | d << _DATALAYOUT_BIT for d in _BULK_LAYOUTS for n in (0, _NLINK_1))
_BULK_FILE_TYPES = frozenset((_stat.S_IFREG, _stat.S_IFDIR, _stat.S_IFLNK, _stat.S_IFIFO, _stat.S_IFSOCK))
# every i_format with no unknown bit and a known data layout
_KNOWN_I_FORMATS = frozenset(f for f in range(layout.EROFS_I_ALL + 1)
                             if f >> _DATALAYOUT_BIT & _DATALAYOUT_MASK in layout.EROFS_DATALAYOUT_NAMES)
_CHUNK_BASED = layout.EROFS_INODE_CHUNK_BASED
_COMPRESSED_LAYOUTS = layout.EROFS_COMPRESSED_LAYOUTS
_S_IFMT, _S_IFDIR, _S_IFREG, _S_IFLNK = 0o170000, _stat.S_IFDIR, _stat.S_IFREG, _stat.S_IFLNK
_S_IFCHR, _S_IFBLK = _stat.S_IFCHR, _stat.S_IFBLK
_XATTR_FLAG, _SYMLINK_FLAG, _HARDLINK_FLAG = int(InodeFlags.XATTR), int(InodeFlags.SYMLINK), int(InodeFlags.HARDLINK)


def _decode_dev(raw: int) -> int:
    """st_rdev of a device inode: the kernel's new_decode_dev, re-encoded as userspace sees it."""
    major = (raw & 0xFFF00) >> 8
    minor = (raw & 0xFF) | ((raw >> 12) & 0xFFF00)
    return os.makedev(major, minor)


def chunk_format_bits(geo: Geometry, nid: int, i_u: int) -> int:
    """log2 of the chunk size a chunk-based inode's i_u declares."""
    fmt = i_u & 0xFFFF
    if fmt & ~layout.EROFS_CHUNK_FORMAT_ALL or fmt & layout.EROFS_CHUNK_FORMAT_48BIT:
        raise UnsupportedError(f"nid {nid}: chunk format {fmt:#x} is not supported")
    return geo.block_bits + (fmt & layout.EROFS_CHUNK_FORMAT_BLKBITS_MASK)


def chunk_positions(geo: Geometry, nid: int, datalayout: int, size: int, i_u: int) -> int:
    """Number of chunk positions (index entries, or flat pieces) of a regular file."""
    if datalayout == layout.EROFS_INODE_CHUNK_BASED:
        unit = geo.chunk_size if geo.is_rafs else 1 << chunk_format_bits(geo, nid, i_u)
    else:
        unit = FLAT_PIECE_SIZE
    return -(-size // unit)


class Record:
    """One decoded on-disk inode and where its parts are: ``offset`` of the inode, ``inode_size`` (32 or
    64) and ``xattr_size`` (its inline xattr area), ``i_u`` as stored and ``startblk`` (``i_u`` with
    the high bits a compact inode keeps in ``i_nlink`` when ``EROFS_I_NLINK_1_BIT`` is set)."""

    __slots__ = ("nid", "offset", "extended", "datalayout", "mode", "size", "inode_size", "xattr_size",
                 "startblk", "i_u", "format", "data")

    @property
    def raw(self):
        """The on-disk record, every field by name (unpacked on demand: most users need none)."""
        return INODE_RECORDS[self.extended].unpack_from(self.data, self.offset)

    @property
    def body_end(self) -> int:
        """First byte after the inode and its inline xattrs."""
        return self.offset + self.inode_size + self.xattr_size

    @property
    def layout_name(self) -> str:
        return layout.EROFS_DATALAYOUT_NAMES.get(self.datalayout, str(self.datalayout))


class InodeDecoder:
    """Decodes the inodes of one image held in ``data`` with the given :class:`Geometry`.

    ``read_meta`` (a :class:`Record` -> its bytes) reads a symlink's target, which may live in a data
    block, inline or compressed.
    """

    def __init__(self, data, geometry: Geometry, read_meta: Callable[[Record], bytes]):
        self.data = data
        self.geometry = geometry
        self.read_meta = read_meta
        # copied out of the geometry: the decoders below run once per inode of a walk
        self.size, self.meta_base = geometry.size, geometry.meta_base
        self.block_bits, self.block_size = geometry.block_bits, geometry.block_size
        self.is_rafs, self.chunk_size = geometry.is_rafs, geometry.chunk_size
        self.build_time, self.build_time_nsec = geometry.build_time, geometry.build_time_nsec
        self.shared_xattr_base = geometry.shared_xattr_base

    def attributes(self, nid: int) -> tuple:
        """What every decoder of inode ``nid`` starts from, checked against the image: the inode and its
        inline xattrs inside it, a known format, layout and file type, a size below 2^63, a symlink
        target of at most MAX_LINUX_SYMLINK_SIZE bytes. One ``struct`` unpack of the compact or extended record.

        The first ten values are :class:`rafs.Stat`'s fields (st_mode, st_ino, st_nlink, st_uid, st_gid,
        st_size, st_mtime_ns, st_rdev, st_blocks, st_dev), then offset, i_format, data layout, xattr
        icount, i_u, offset of the inline xattrs, mtime and mtime_nsec. Compact and extended records
        answer alike: a compact inode's mtime is the superblock's build time plus its i_mtime (kernel
        >= 6.15; 0, the former reserved field, in older images), and its nlink is 1 when
        EROFS_I_NLINK_1_BIT says so (the field then holds high bits of i_u)."""
        offset = self.meta_base + (nid << 5)
        image_size = self.size
        if nid < 0 or offset + _COMPACT_SIZE > image_size:
            raise InvalidImageError(f"nid {nid} lies outside the image", structure="v6 inode",
                                    offset=self.geometry.inode_offset(nid))
        data = self.data
        ifmt = data[offset] | data[offset + 1] << 8
        datalayout = ifmt >> _DATALAYOUT_BIT & _DATALAYOUT_MASK
        if ifmt not in _KNOWN_I_FORMATS:
            if ifmt & _UNKNOWN_I_FORMAT:
                raise InvalidImageError(f"nid {nid} has unsupported i_format {ifmt:#x}", structure="v6 inode",
                                        offset=offset)
            raise InvalidImageError(f"nid {nid} has unknown data layout {datalayout}", structure="v6 inode",
                                    offset=offset)
        if ifmt & _EXTENDED_BIT:
            body = offset + _EXTENDED_SIZE
            if body > image_size:
                raise InvalidImageError(f"nid {nid} inode runs past the image", structure="v6 inode",
                                        offset=offset)
            _, icount, mode, _, size, i_u, _, uid, gid, mtime, mtime_nsec, nlink = _EXTENDED_UNPACK(data, offset)
        else:
            body = offset + _COMPACT_SIZE
            _, icount, mode, nlink, size, reserved, i_u, _, uid, gid = _COMPACT_UNPACK(data, offset)
            mtime, mtime_nsec = self.build_time + reserved, self.build_time_nsec
            if (ifmt >> _NLINK_1_BIT) & 1 and mode & _S_IFMT != _S_IFDIR:
                nlink = 1
        if icount and body + xattr.body_size(icount) > image_size:
            raise InvalidImageError(f"nid {nid} inode and xattrs run past the image", structure="v6 inode",
                                    offset=offset)
        if size >> 63:
            raise InvalidImageError(f"nid {nid} has a negative size", structure="v6 inode", offset=offset)
        kind = mode & _S_IFMT
        if kind not in _FILE_TYPES:
            raise InvalidImageError(f"nid {nid} has unknown file type in mode {mode:#o}",
                                    structure="v6 inode", offset=offset)
        rdev = 0
        if kind == _S_IFCHR or kind == _S_IFBLK:
            rdev = _decode_dev(i_u)
        elif kind == _S_IFLNK and size > MAX_LINUX_SYMLINK_SIZE:
            raise InvalidImageError(f"nid {nid} symlink target of {size} bytes is too long",
                                    structure="v6 inode", offset=offset)
        # st_blocks, in 512-byte units: a compressed inode's i_u counts its blocks, others are rounded up
        bits = self.block_bits
        blocks = (i_u if datalayout in _COMPRESSED_LAYOUTS else (size + self.block_size - 1) >> bits) << (bits - 9)
        return (mode, nid, nlink, uid, gid, size, mtime * 1_000_000_000 + mtime_nsec, rdev, blocks, 0,
                offset, ifmt, datalayout, icount, i_u, body, mtime, mtime_nsec)

    def record(self, nid: int) -> Record:
        """The :class:`Record` of inode ``nid``: where its data and xattrs are."""
        (mode, _, _, _, _, size, _, _, _, _, offset, ifmt, datalayout, icount, i_u, body, _,
         _) = self.attributes(nid)
        rec = Record()
        rec.nid, rec.offset, rec.format, rec.datalayout, rec.mode, rec.size = nid, offset, ifmt, datalayout, mode, size
        rec.extended = ifmt & _EXTENDED_BIT
        rec.inode_size = body - offset
        rec.xattr_size = xattr.body_size(icount)
        rec.data = self.data
        rec.startblk = rec.i_u = i_u
        if not rec.extended and mode & _S_IFMT != _S_IFDIR and ifmt & _NLINK_1:
            # the compact i_nlink field then holds the high 16 bits of the start block
            rec.startblk |= _U16.unpack_from(self.data, offset + _COMPACT_NLINK_OFFSET)[0] << 32
        return rec

    def stat_list(self, inos) -> list[tuple]:
        """The stat fields (:meth:`attributes`' first ten) of every nid in ``inos`` (a directory's
        children, say), in bulk.

        When the records are all extended or all compact, of the uncompressed layouts and no device
        among them (what nydus-image and mkfs.erofs write for most directories), they are unpacked in
        one pass and checked as a whole: bounds by the highest offset, xattrs by the largest count,
        sizes by the largest, symlinks by the longest. Anything else, a failed check included, goes
        through :meth:`attributes` one by one, which names the culprit. The values are the same.
        """
        if not inos:
            return []
        data, count = self.data, len(inos)
        offsets = list(map(operator.add, itertools.repeat(self.meta_base, count),
                           map(operator.lshift, inos, itertools.repeat(5, count))))
        last = max(offsets)
        if min(inos) < 0 or last + _EXTENDED_SIZE > self.size:
            return [self.attributes(nid)[:10] for nid in inos]
        rows = list(map(_EXTENDED_UNPACK, itertools.repeat(data, count), offsets))
        columns = list(zip(*rows))
        formats = set(columns[0])
        if formats <= _BULK_EXTENDED_FORMATS:
            if self._bulk_sound(columns, last + _EXTENDED_SIZE):
                bits, mask = self.block_bits, self.block_size - 1
                return [(mode, nid, nlink, uid, gid, size, mtime * 1_000_000_000 + mtime_nsec, 0,
                         ((size + mask) >> bits) << (bits - 9), 0)
                        for nid, (_, _, mode, _, size, _, _, uid, gid, mtime, mtime_nsec, nlink) in zip(inos, rows)]
        elif formats <= _BULK_COMPACT_FORMATS:          # both records start with the 16-bit i_format
            rows = list(map(_COMPACT_UNPACK, itertools.repeat(data, count), offsets))
            columns = list(zip(*rows))
            if self._bulk_sound(columns, last + _COMPACT_SIZE):
                bits, mask = self.block_bits, self.block_size - 1
                epoch, epoch_nsec = self.build_time, self.build_time_nsec
                return [(mode, nid, 1 if ifmt & _NLINK_1 and mode & _S_IFMT != _S_IFDIR else nlink, uid, gid, size,
                         (epoch + mtime) * 1_000_000_000 + epoch_nsec, 0, ((size + mask) >> bits) << (bits - 9), 0)
                        for nid, (ifmt, _, mode, nlink, size, mtime, _, _, uid, gid) in zip(inos, rows)]
        return [self.attributes(nid)[:10] for nid in inos]

    def _bulk_sound(self, columns: list[tuple], end: int) -> bool:
        """Whether unpacked records, given column by column (compact or extended: icount, mode and size
        are columns 1, 2 and 4 of both), pass :meth:`attributes`' checks as a whole; ``end`` is where
        the last record ends."""
        _, icounts, modes, _, sizes = columns[:5]
        most_xattrs = max(icounts)
        if most_xattrs and end + xattr.body_size(most_xattrs) > self.size:
            return False
        if max(sizes) >> 63:
            return False
        kinds = {mode & _S_IFMT for mode in set(modes)}
        if not kinds <= _BULK_FILE_TYPES:
            return False
        return _S_IFLNK not in kinds or max(size for mode, size in zip(modes, sizes)
                                            if mode & _S_IFMT == _S_IFLNK) <= MAX_LINUX_SYMLINK_SIZE

    def inode(self, nid: int) -> Inode:
        """The model inode, straight from the unpacked fields (no :class:`Record` unless the inode's
        data is needed: a symlink's target)."""
        (mode, _, nlink, uid, gid, size, _, rdev, blocks, _, _, _, datalayout, icount, i_u, body, mtime,
         mtime_nsec) = self.attributes(nid)
        kind = mode & _S_IFMT
        xattrs = xattr.decode(self.data, body, icount, shared_base=self.shared_xattr_base) if icount else {}
        flags = _XATTR_FLAG if xattrs else 0
        symlink, chunk_count = None, 0
        if kind == _S_IFREG:
            if self.is_rafs and datalayout == _CHUNK_BASED:
                chunk_count = -(-size // self.chunk_size)
            else:
                chunk_count = chunk_positions(self.geometry, nid, datalayout, size, i_u)
            if nlink > 1:
                flags |= _HARDLINK_FLAG
        elif kind == _S_IFLNK:
            symlink = self.read_meta(self.record(nid))
            flags |= _SYMLINK_FLAG
        # positional, in the order of rafs.model.Inode's fields (keywords cost a microsecond an inode)
        return Inode(nid, mode, uid, gid, size, mtime, mtime_nsec, nlink, rdev, blocks, flags, symlink, xattrs,
                     None, chunk_count)
