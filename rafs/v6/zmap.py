"""The extent map of a compressed EROFS inode: which bytes of the file each pcluster holds.

Facts from the kernel's fs/erofs/zmap.c (``z_erofs_fill_inode_lazy``, ``*_load_cluster_from_disk``,
``unpack_compacted_index``, ``z_erofs_do_map_blocks``), which defines what an image means; the record
layouts are in :mod:`rafs.v6.layout`. Where the kernel walks the index lazily from the offset it is
asked for, this module decodes a file's whole index once and cuts it into extents: every HEAD or PLAIN
lcluster starts one at ``lcn * lcluster size + clusterofs``, which runs to the next one (or to
``i_size``). The last extent may instead sit inline after the index (ztailpacking) or in the packed
inode (fragments); a file may also live in the packed inode whole.

Every offset and count is checked against the image before it is used; work is bounded by the size of
the index as it really is in the image, not by what ``i_size`` claims.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from ..errors import InvalidImageError, UnsupportedError
from . import layout
from .zdecompress import INTERLACED, SHIFTED

# Extent kinds
PCLUSTER = 0        # a pcluster of whole blocks in the image
INLINE = 1          # the tail pcluster stored right after the index (ztailpacking)
FRAGMENT = 2        # bytes of the packed inode (fragments)

_PLAIN, _HEAD1 = layout.Z_EROFS_LCLUSTER_TYPE_PLAIN, layout.Z_EROFS_LCLUSTER_TYPE_HEAD1
_NONHEAD, _HEAD2 = layout.Z_EROFS_LCLUSTER_TYPE_NONHEAD, layout.Z_EROFS_LCLUSTER_TYPE_HEAD2
_CBLKCNT = layout.Z_EROFS_LI_D0_CBLKCNT
_MAP_HEADER = struct.Struct("<IHBB")
_FULL_ENTRY = struct.Struct("<HHI")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
assert _MAP_HEADER.size == layout.ZMapHeader.sizeof() and _FULL_ENTRY.size == layout.LclusterIndex.sizeof()


class ZExtent(NamedTuple):
    """One extent of a compressed file: ``length`` bytes from ``file_offset``.

    ``address`` is the image offset of the pcluster (PCLUSTER, INLINE) or the offset in the packed inode
    (FRAGMENT); ``plen`` the pcluster's stored size; ``algorithm`` a ``Z_EROFS_COMPRESSION_*`` number or
    :data:`~rafs.v6.zdecompress.SHIFTED` / :data:`~rafs.v6.zdecompress.INTERLACED`; ``partial`` that the
    extent is only a prefix of what the pcluster decodes to."""

    file_offset: int
    length: int
    kind: int
    address: int
    plen: int
    algorithm: int
    partial: bool


class _Lcluster:
    """One decoded lcluster index entry (the kernel's z_erofs_maprecorder after a load)."""

    __slots__ = ("type", "clusterofs", "pblk", "cblkcnt", "partial", "nextpackoff")

    def __init__(self, type_, clusterofs, pblk, cblkcnt, partial, nextpackoff):
        self.type, self.clusterofs, self.pblk = type_, clusterofs, pblk
        self.cblkcnt, self.partial, self.nextpackoff = cblkcnt, partial, nextpackoff


class ZMapper:
    """Maps the compressed inodes of one image; ``reader`` is the :class:`rafs.v6.reader.V6Reader`."""

    def __init__(self, reader):
        self.reader = reader
        self.data = reader.data
        self.size = reader.size
        self.block_bits = reader.block_bits
        self.block_size = reader.block_size
        sb = reader.superblock
        incompat = sb.s_feature_incompat
        self.zero_padding = bool(incompat & layout.EROFS_FEATURE_INCOMPAT_ZERO_PADDING)
        self.big_pcluster = bool(incompat & layout.EROFS_FEATURE_INCOMPAT_COMPR_CFGS)
        self.configs = self._compression_configs(sb)
        self.algorithms = frozenset(self.configs)

    # -- superblock ------------------------------------------------------------------------------

    def _compression_configs(self, sb) -> dict:
        """{algorithm: its config record or None}: with COMPR_CFGS the records after the superblock for
        each bit of available_compr_algs (``z_erofs_parse_cfgs``); without, LZ4 alone."""
        if not sb.s_feature_incompat & layout.EROFS_FEATURE_INCOMPAT_COMPR_CFGS:
            return {layout.Z_EROFS_COMPRESSION_LZ4: None}
        algs = sb.s_u
        where = layout.EROFS_SUPER_OFFSET + 84
        if algs & ~((1 << layout.Z_EROFS_COMPRESSION_MAX) - 1):
            raise UnsupportedError(f"EROFS image uses unknown compression algorithms {algs:#x}")
        offset = layout.EROFS_SUPER_OFFSET + layout.EROFS_SUPER_BLOCK_SIZE + \
            layout.EROFS_SB_EXTSLOT_SIZE * sb.s_extslots
        configs = {}
        for alg in range(layout.Z_EROFS_COMPRESSION_MAX):
            if not algs >> alg & 1:
                continue
            offset = (offset + 3) & ~3
            if offset + 2 > self.size:
                raise InvalidImageError("compression configs run past the image", structure="erofs compr cfgs",
                                        offset=offset)
            length = int.from_bytes(self.data[offset:offset + 2], "little") or 0x10000
            schema = layout.Z_EROFS_CFGS[alg]
            if length < schema.sizeof() or offset + 2 + length > self.size:
                raise InvalidImageError(f"{layout.Z_EROFS_COMPRESSION_NAMES[alg]} config of {length} bytes is "
                                        "too short or runs past the image", structure="erofs compr cfgs",
                                        offset=offset)
            configs[alg] = schema.parse(bytes(self.data[offset + 2:offset + 2 + schema.sizeof()]))
            offset += 2 + length
        if not configs:
            raise InvalidImageError("COMPR_CFGS is set but available_compr_algs names no algorithm",
                                    structure="v6 superblock", offset=where)
        return configs

    def describe(self) -> dict:
        return {"algorithms": [layout.Z_EROFS_COMPRESSION_NAMES[a] for a in sorted(self.algorithms)],
                "zero_padding": self.zero_padding}

    # -- the index -------------------------------------------------------------------------------

    def extents(self, rec) -> list[ZExtent]:
        """The extents of compressed inode ``rec`` (a reader ``_Record``), in file order, covering
        ``[0, i_size)`` exactly."""
        size = rec.size
        if size == 0:
            return []
        nid = rec.nid

        def bad(message, offset=rec.offset):
            return InvalidImageError(f"nid {nid}: {message}", structure="erofs compressed index", offset=offset)

        header_at = (rec.body_end + 7) & ~7
        if header_at + layout.Z_EROFS_MAP_HEADER_SIZE > self.size:
            raise bad("map header runs past the image", header_at)
        fragmentoff, advise, algorithmtype, clusterbits = _MAP_HEADER.unpack_from(self.data, header_at)
        if clusterbits >> layout.Z_EROFS_FRAGMENT_INODE_BIT:
            # the whole file is in the packed inode, from the 63-bit offset the header's other bits hold
            offset = _U64.unpack_from(self.data, header_at)[0] ^ (1 << 63)
            return self._checked_fragments([ZExtent(0, size, FRAGMENT, offset, 0, 0, False)], bad)
        full = rec.datalayout == layout.EROFS_INODE_COMPRESSED_FULL
        if advise & ~layout.Z_EROFS_ADVISE_ALL:
            raise UnsupportedError(f"nid {nid}: unknown compression advise bits {advise:#x}")
        if full and advise & layout.Z_EROFS_ADVISE_EXTENTS:
            raise UnsupportedError(f"nid {nid}: EROFS extent-record indexes (48-bit layout) are not supported")
        heads = (algorithmtype & 15, algorithmtype >> 4)
        for number, alg in enumerate(heads, 1):
            if alg >= layout.Z_EROFS_COMPRESSION_MAX:
                raise UnsupportedError(f"nid {nid}: unknown HEAD{number} compression algorithm {alg}")
        big = advise & (layout.Z_EROFS_ADVISE_BIG_PCLUSTER_1 | layout.Z_EROFS_ADVISE_BIG_PCLUSTER_2)
        if big and not self.big_pcluster:
            raise bad("big pclusters without the superblock's BIG_PCLUSTER feature", header_at)
        if not full and bool(advise & layout.Z_EROFS_ADVISE_BIG_PCLUSTER_1) != \
                bool(advise & layout.Z_EROFS_ADVISE_BIG_PCLUSTER_2):
            raise bad("compact indexes with big pclusters for only one of HEAD1/HEAD2", header_at)
        lbits = self.block_bits + (clusterbits & 7)
        lsize = 1 << lbits
        count = -(-size // lsize)
        if full:
            lclusters = self._full_index(header_at, count, lbits, advise, bad)
        else:
            lclusters = self._compact_index(header_at, size, count, lbits, advise, bad)
        # the extent holding the last byte: inline or in the packed inode when the file says so
        tail_lcn = (size - 1) >> lbits
        inline = advise & layout.Z_EROFS_ADVISE_INLINE_PCLUSTER
        fragment = advise & layout.Z_EROFS_ADVISE_FRAGMENT_PCLUSTER
        starts = [(lcn, lcn * lsize + lc.clusterofs) for lcn, lc in enumerate(lclusters[:count])
                  if lc.type != _NONHEAD]
        starts = [(lcn, start) for lcn, start in starts if start < size]
        if not starts or starts[0][1] != 0:
            raise bad("the first lcluster does not start an extent at offset 0")
        tail_head = starts[-1][0]
        if fragment and tail_head == 0:
            # z_erofs_map_blocks_iter: a file whose only extent is its fragment lives there whole
            return self._checked_fragments([ZExtent(0, size, FRAGMENT, self._fragment_offset(
                fragmentoff, lclusters[0], full), 0, 0, False)], bad)
        extents = []
        for i, (lcn, start) in enumerate(starts):
            end = starts[i + 1][1] if i + 1 < len(starts) else size
            lc = lclusters[lcn]
            algorithm = self._algorithm(lc.type, advise, heads, nid)
            if lcn == tail_head and inline:
                plen = fragmentoff >> 16            # h_idata_size
                address = lclusters[tail_lcn].nextpackoff
                if not plen or address % self.block_size + plen > self.block_size or address + plen > self.size:
                    raise bad(f"inline pcluster of {plen} bytes at {address:#x} crosses its block or the image")
                extents.append(ZExtent(start, end - start, INLINE, address, plen, algorithm, lc.partial))
                continue
            if lcn == tail_head and fragment:
                extents.append(ZExtent(start, end - start, FRAGMENT, self._fragment_offset(fragmentoff, lc, full),
                                       0, 0, False))
                continue
            plen = self._compressed_length(lclusters, lcn, lsize, advise, count, full, bad)
            address = lc.pblk << self.block_bits
            if address + plen > self.size:
                raise bad(f"pcluster [{address:#x}, +{plen:#x}) of the extent at {start} lies outside the image")
            extents.append(ZExtent(start, end - start, PCLUSTER, address, plen, algorithm, lc.partial))
        for ext in extents:
            if ext.kind == FRAGMENT:
                continue
            if ext.algorithm in (SHIFTED, INTERLACED):
                if ext.length > ext.plen:
                    raise bad(f"plain extent at {ext.file_offset} of {ext.length} bytes exceeds its "
                              f"{ext.plen}-byte pcluster")
            elif ext.length > layout.Z_EROFS_PCLUSTER_MAX_DSIZE or ext.plen > layout.Z_EROFS_PCLUSTER_MAX_SIZE:
                raise bad(f"extent at {ext.file_offset} of {ext.length} bytes from a {ext.plen}-byte pcluster "
                          "exceeds the kernel's limits (12 MiB decoded, 1 MiB stored)")
        return self._checked_fragments(extents, bad)

    def packed_inode(self):
        """The record of the packed inode (``s_packed_nid``), which holds the fragments."""
        sb = self.reader.superblock
        if not sb.s_feature_incompat & layout.EROFS_FEATURE_INCOMPAT_FRAGMENTS:
            raise InvalidImageError("a file refers to a fragment but the image has no FRAGMENTS feature",
                                    structure="v6 superblock", offset=layout.EROFS_SUPER_OFFSET + 80)
        return self.reader.record(sb.s_packed_nid)

    def _checked_fragments(self, extents: list[ZExtent], bad) -> list[ZExtent]:
        """``extents``, once every fragment among them lies inside the packed inode (so a file's size
        alone, which a fragment does not bound, cannot make work)."""
        for ext in extents:
            if ext.kind == FRAGMENT:
                packed = self.packed_inode()
                if ext.address + ext.length > packed.size:
                    raise bad(f"fragment [{ext.address:#x}, +{ext.length:#x}) lies outside the {packed.size}-byte "
                              "packed inode")
        return extents

    def _algorithm(self, lctype: int, advise: int, heads: tuple[int, int], nid: int) -> int:
        if lctype == _PLAIN:
            return INTERLACED if advise & layout.Z_EROFS_ADVISE_INTERLACED_PCLUSTER else SHIFTED
        alg = heads[1] if lctype == _HEAD2 else heads[0]
        if alg not in self.algorithms:
            raise InvalidImageError(f"nid {nid}: uses {layout.Z_EROFS_COMPRESSION_NAMES[alg]}, which the "
                                    "superblock does not list", structure="erofs compressed index",
                                    offset=self.reader.inode_offset(nid))
        return alg

    @staticmethod
    def _fragment_offset(fragmentoff: int, head: _Lcluster, full: bool) -> int:
        # full indexes keep the high 32 bits of the offset in the tail head's blkaddr
        return fragmentoff | (head.pblk << 32 if full and head.type != _NONHEAD else 0)

    def _compressed_length(self, lclusters, lcn, lsize, advise, count, full, bad) -> int:
        """``z_erofs_get_extent_compressedlen``: one lcluster, or the CBLKCNT of a big pcluster."""
        lc = lclusters[lcn]
        big = layout.Z_EROFS_ADVISE_BIG_PCLUSTER_2 if lc.type == _HEAD2 else layout.Z_EROFS_ADVISE_BIG_PCLUSTER_1
        if lc.type == _PLAIN or not advise & big:
            return lsize
        if lcn + 1 >= len(lclusters):
            raise bad(f"big pcluster at lcluster {lcn} has no lcluster after it to give its size")
        following = lclusters[lcn + 1]
        if following.type != _NONHEAD:
            return lsize
        if not following.cblkcnt:
            raise bad(f"big pcluster at lcluster {lcn} has no CBLKCNT after it")
        return following.cblkcnt << self.block_bits

    def _full_index(self, header_at, count, lbits, advise, bad) -> list[_Lcluster]:
        """Legacy 8-byte entries; one entry past the file is read when the image holds it (the kernel
        looks there for a last big pcluster's size)."""
        start = header_at + layout.Z_EROFS_MAP_HEADER_SIZE + layout.Z_EROFS_FULL_INDEX_SKIP
        if start + count * _FULL_ENTRY.size > self.size:
            raise bad(f"{count} lcluster indexes run past the image", start)
        available = min(count + 1, (self.size - start) // _FULL_ENTRY.size)
        big = advise & (layout.Z_EROFS_ADVISE_BIG_PCLUSTER_1 | layout.Z_EROFS_ADVISE_BIG_PCLUSTER_2)
        result = []
        at = start
        for di_advise, clusterofs, di_u in _FULL_ENTRY.iter_unpack(self.data[start:start + available * 8]):
            at += _FULL_ENTRY.size
            lctype = di_advise & layout.Z_EROFS_LI_LCLUSTER_TYPE_MASK
            # the entry past the file may be other data (an inline pcluster): it only counts when sound
            beyond = len(result) == count
            if lctype == _NONHEAD:
                delta0 = di_u & 0xFFFF
                cblkcnt = 0
                if delta0 & _CBLKCNT:
                    if not big:
                        if beyond:
                            break
                        raise bad("CBLKCNT in an inode without big pclusters", at - 8)
                    cblkcnt = delta0 & ~_CBLKCNT
                result.append(_Lcluster(lctype, 0, 0, cblkcnt, False, at))
            else:
                if clusterofs >= 1 << lbits:
                    if beyond:
                        break
                    raise bad(f"clusterofs {clusterofs} is beyond its lcluster", at - 8)
                result.append(_Lcluster(lctype, clusterofs, di_u, 0,
                                        bool(di_advise & layout.Z_EROFS_LI_PARTIAL_REF), at))
        return result

    def _compact_index(self, header_at, size, count, lbits, advise, bad) -> list[_Lcluster]:
        """Compact entries: 4B packs (2 entries in 8 bytes) up to 32-byte alignment, with COMPACTED_2B
        then 2B packs (16 entries in 32 bytes) over a multiple of 16 entries, then 4B packs again. Each
        pack ends with a u32 block address; HEAD lclusters find theirs from it (``unpack_compacted_index``)."""
        ebase = header_at + layout.Z_EROFS_MAP_HEADER_SIZE
        # the kernel sizes the regions by i_size in blocks, not in lclusters
        totalidx = -(-size // self.block_size)
        initial = (32 - ebase % 32) // 4 % 8
        if advise & layout.Z_EROFS_ADVISE_COMPACTED_2B and initial < totalidx:
            two_b = (totalidx - initial) // 16 * 16
        else:
            two_b = 0
        if two_b and lbits != 12:
            raise UnsupportedError("compact 2B indexes need 4 KiB lclusters")
        if lbits > 14:
            raise UnsupportedError(f"compact indexes with 2^{lbits}-byte lclusters are not supported")
        big = bool(advise & layout.Z_EROFS_ADVISE_BIG_PCLUSTER_1)
        # one entry past the file, when the index has it, for a last big pcluster's size
        wanted = min(count + 1, totalidx)
        regions = [(ebase, 4, min(initial, wanted)), (ebase + 4 * initial, 2, min(two_b, max(0, wanted - initial))),
                   (ebase + 4 * initial + 2 * two_b, 4, max(0, wanted - initial - two_b))]
        result: list[_Lcluster] = []
        for start, unit, entries in regions:
            vcnt = 2 if unit == 4 else 16
            pack_size = vcnt * unit
            packs = -(-entries // vcnt)
            if start + packs * pack_size > self.size:
                raise bad("compact lcluster indexes run past the image", start)
            for p in range(packs):
                pack_at = start + p * pack_size
                result.extend(self._unpack(pack_at, vcnt, pack_size, lbits, big, bad)
                              [:entries - p * vcnt])
        return result

    def _unpack(self, pack_at, vcnt, pack_size, lbits, big, bad) -> list[_Lcluster]:
        encodebits = (pack_size - 4) * 8 // vcnt
        bits = int.from_bytes(self.data[pack_at:pack_at + pack_size - 4], "little")
        base = _U32.unpack_from(self.data, pack_at + pack_size - 4)[0]
        lomask = (1 << lbits) - 1
        entries = []
        for i in range(vcnt):
            value = bits >> (encodebits * i)
            entries.append(((value >> lbits) & 3, value & lomask))
        nextpackoff = pack_at + pack_size
        result = []
        for i, (lctype, lo) in enumerate(entries):
            if lctype == _NONHEAD:
                cblkcnt = 0
                if lo & _CBLKCNT:
                    if not big:
                        raise bad("CBLKCNT in an inode without big pclusters", pack_at)
                    cblkcnt = lo & ~_CBLKCNT
                result.append(_Lcluster(lctype, 0, 0, cblkcnt, False, nextpackoff))
                continue
            result.append(_Lcluster(lctype, lo, base + self._blocks_before(entries, i, big, bad, pack_at), 0,
                                    False, nextpackoff))
        return result

    @staticmethod
    def _blocks_before(entries, i, big, bad, pack_at) -> int:
        """Blocks of the pclusters before entry ``i`` of a pack, added to the pack's base address."""
        if not big:
            nblk = 1
            while i > 0:
                i -= 1
                lctype, lo = entries[i]
                if lctype == _NONHEAD:
                    i -= lo
                if i >= 0:
                    nblk += 1
            return nblk
        nblk = 0
        while i > 0:
            i -= 1
            lctype, lo = entries[i]
            if lctype == _NONHEAD:
                if lo & _CBLKCNT:
                    i -= 1
                    nblk += lo & ~_CBLKCNT
                    continue
                if lo <= 1:
                    raise bad("big pcluster NONHEAD lcluster with delta 1 and no CBLKCNT", pack_at)
                i -= lo - 2
                continue
            nblk += 1
        return nblk
