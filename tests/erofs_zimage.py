"""A small writer of compressed EROFS images, for the layouts and algorithms mkfs.erofs 1.5 cannot make.

It writes what the kernel's fs/erofs reads (checked in tests/test_erofs_compressed.py by mounting the
result): 4 KiB blocks, one root directory, regular files with full (8-byte) lcluster indexes whose
extents are laid out by the caller, and optionally a packed inode for fragments. Compressors:

* lz4: python-lz4's raw block; deflate: raw zlib stream; zstd: one zstandard frame;
* lzma: MicroLZMA from the system liblzma (``lzma_microlzma_encoder``, xz >= 5.4) through ctypes, as
  erofs-utils makes it; Python's lzma module cannot write LZMA1 without an end marker.

Compressed streams go at the end of their pcluster (ZERO_PADDING), as mkfs.erofs writes them.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import dataclasses
import zlib

from rafs.v6 import layout

BS = 4096
BLKBITS = 12
ALGS = {"lz4": 0, "lzma": 1, "deflate": 2, "zstd": 3}
_LZMA_PRESET = 6


def _microlzma(data: bytes, capacity: int) -> tuple[bytes, int]:
    """(MicroLZMA stream of at most ``capacity`` bytes, input bytes it holds)."""
    lib = ctypes.CDLL(ctypes.util.find_library("lzma") or "liblzma.so.5")
    strm = ctypes.create_string_buffer(256)          # lzma_stream, zeroed = LZMA_STREAM_INIT
    opts = ctypes.create_string_buffer(256)          # lzma_options_lzma
    if lib.lzma_lzma_preset(opts, _LZMA_PRESET):
        raise RuntimeError("lzma_lzma_preset failed")
    if lib.lzma_microlzma_encoder(strm, opts):
        raise RuntimeError("lzma_microlzma_encoder failed")
    src = ctypes.create_string_buffer(data, len(data))
    out = ctypes.create_string_buffer(capacity)
    ptr = ctypes.sizeof(ctypes.c_void_p)
    # lzma_stream on LP64: next_in, avail_in, total_in, next_out, avail_out, total_out, ...
    ctypes.c_void_p.from_buffer(strm, 0).value = ctypes.addressof(src)
    ctypes.c_size_t.from_buffer(strm, ptr).value = len(data)
    ctypes.c_void_p.from_buffer(strm, 3 * ptr).value = ctypes.addressof(out)
    ctypes.c_size_t.from_buffer(strm, 4 * ptr).value = capacity
    ret = lib.lzma_code(strm, 3)                     # LZMA_FINISH
    try:
        if ret != 1:                                 # LZMA_STREAM_END
            raise RuntimeError(f"lzma_code returned {ret}")
        consumed = ctypes.c_uint64.from_buffer(strm, 2 * ptr).value
        produced = ctypes.c_uint64.from_buffer(strm, 5 * ptr).value
    finally:
        lib.lzma_end(strm)
    return out.raw[:produced], consumed


def compress(alg: str, data: bytes, capacity: int) -> bytes | None:
    """``data`` compressed by ``alg`` as the kernel decodes it, or None when it does not fit."""
    if alg == "lz4":
        import lz4.block
        stream = lz4.block.compress(data, mode="high_compression", compression=12, store_size=False)
    elif alg == "deflate":
        comp = zlib.compressobj(9, zlib.DEFLATED, -15)
        stream = comp.compress(data) + comp.flush()
    elif alg == "zstd":
        import zstandard
        stream = zstandard.ZstdCompressor(level=19, write_content_size=True).compress(data)
    elif alg == "lzma":
        stream, consumed = _microlzma(data, capacity)
        if consumed != len(data):
            return None
    else:
        raise ValueError(alg)
    return stream if len(stream) <= capacity else None


@dataclasses.dataclass
class Extent:
    """Bytes ``[start, next extent's start)`` of a file. ``kind``: "head1", "head2", "plain" or
    "fragment" (the tail, kept in the packed inode), "inline" or "inline_plain" (the tail, compressed by
    the first algorithm or not, stored right after the index: ztailpacking); ``blocks``: pcluster size in blocks
    (more than 1
    needs ``big``); ``extra``: further bytes the pcluster holds beyond the extent (PARTIAL_REF)."""

    start: int
    kind: str = "head1"
    blocks: int = 1
    extra: bytes = b""


@dataclasses.dataclass
class ZFile:
    name: str
    data: bytes
    extents: list = dataclasses.field(default_factory=list)
    head1: str = "lz4"
    head2: str = "lz4"
    big: bool = False
    interlaced: bool = False
    whole_fragment: bool = False        # the whole file lives in the packed inode
    dir_entries: int = 0                # a compressed directory of this many links to the files before it


def _dir_blocks(entries: list[tuple[bytes, int, int]]) -> bytes:
    """Directory data: blocks of (dirents, then their names), entries sorted, none split across blocks."""
    blocks, current = [], []
    for entry in sorted(entries):
        if sum(12 + len(name) for name, _, _ in current + [entry]) > BS:
            blocks.append(current)
            current = []
        current.append(entry)
    blocks.append(current)
    out = bytearray()
    for i, block in enumerate(blocks):
        body, names = bytearray(), bytearray()
        for name, nid, ftype in block:
            body += layout.Dirent.build(dict(e_nid=nid, e_nameoff=12 * len(block) + len(names), e_file_type=ftype,
                                             e_reserved=0))
            names += name
        out += body + names
        if i + 1 < len(blocks):
            out += bytes(BS - len(body) - len(names))
    return bytes(out)


class _Image:
    def __init__(self):
        self.blocks: list[bytearray] = []

    def alloc(self, count: int = 1) -> int:
        first = len(self.blocks)
        self.blocks.extend(bytearray(BS) for _ in range(count))
        return first

    def put(self, blkaddr: int, offset: int, data: bytes) -> None:
        at = blkaddr * BS + offset
        pos = 0
        while pos < len(data):
            blk, off = divmod(at + pos, BS)
            n = min(BS - off, len(data) - pos)
            self.blocks[blk][off:off + n] = data[pos:pos + n]
            pos += n


def _inode(mode: int, datalayout: int, size: int, i_u: int, ino: int, nlink: int = 1) -> bytes:
    return layout.InodeExtended.build(dict(
        i_format=layout.EROFS_INODE_LAYOUT_EXTENDED | datalayout << layout.EROFS_I_DATALAYOUT_BIT,
        i_xattr_icount=0, i_mode=mode, i_reserved=0, i_size=size, i_u=i_u, i_ino=ino, i_uid=0, i_gid=0,
        i_mtime=1_700_000_000, i_mtime_nsec=0, i_nlink=nlink, i_reserved2=bytes(16)))


def build(files: list[ZFile], *, packed: bytes = b"", packed_offsets: dict | None = None) -> bytes:
    """An EROFS image whose root holds ``files``. Fragment data is appended to ``packed``."""
    img = _Image()
    img.alloc(1)                                     # block 0: superblock
    meta_blkaddr = 1
    packed = bytearray(packed)
    fragment_at = {}
    for f in files:                                  # fragments first: the packed inode is written last
        if f.whole_fragment:
            fragment_at[f.name] = len(packed)
            packed += f.data
        elif f.extents and f.extents[-1].kind == "fragment":
            fragment_at[f.name] = len(packed)
            packed += f.data[f.extents[-1].start:]
    algs = set()
    for f in files:
        for ext in f.extents:
            if ext.kind in ("head1", "inline"):
                algs.add(ALGS[f.head1])
            elif ext.kind == "head2":
                algs.add(ALGS[f.head2])
    # metadata: each inode starts its own block (nid = (block - meta) * 128); root first
    root_blk = img.alloc(1)
    entries, max_blocks = [], 1
    for f in files:
        if f.dir_entries:
            algs.add(ALGS[f.head1])
    for ino, f in enumerate(files, start=2):
        if f.dir_entries:
            own_nid = (len(img.blocks) - meta_blkaddr) * (BS // 32)
            links = [(b"e%05d" % i, entries[i % len(entries)][1], 1) for i in range(f.dir_entries)
                     if entries[i % len(entries)][2] == 1]
            f.data = _dir_blocks(links + [(b".", own_nid, 2), (b"..", (root_blk - meta_blkaddr) * 128, 2)])
            f.extents = [Extent(s) for s in range(0, len(f.data), BS)]
        count = -(-len(f.data) // BS)
        index_end = 64 + layout.Z_EROFS_MAP_HEADER_SIZE + layout.Z_EROFS_FULL_INDEX_SKIP + 8 * count
        if f.extents and f.extents[-1].kind.startswith("inline"):
            index_end += BS                          # room for the inline pcluster
        blk = img.alloc(1 if f.whole_fragment else -(-index_end // BS))
        nid = (blk - meta_blkaddr) * (BS // 32)
        entries.append((f.name.encode(), nid, 2 if f.dir_entries else 1))
        head_at = 64                                 # after the extended inode, 8-aligned
        advise = 0
        if f.big:
            advise |= layout.Z_EROFS_ADVISE_BIG_PCLUSTER_1 | layout.Z_EROFS_ADVISE_BIG_PCLUSTER_2
        if f.interlaced:
            advise |= layout.Z_EROFS_ADVISE_INTERLACED_PCLUSTER
        size = len(f.data)
        if f.whole_fragment:
            header = (fragment_at[f.name] | 1 << 63).to_bytes(8, "little")
            img.put(blk, 0, _inode(0o100644, layout.EROFS_INODE_COMPRESSED_FULL, size, 0, ino))
            img.put(blk, head_at, header)
            continue
        starts = [e.start for e in f.extents]
        assert starts[0] == 0 and len({s // BS for s in starts}) == len(starts), "one head per lcluster"
        if f.extents[-1].kind == "fragment":
            advise |= layout.Z_EROFS_ADVISE_FRAGMENT_PCLUSTER
        inline = b""
        if f.extents[-1].kind.startswith("inline"):
            advise |= layout.Z_EROFS_ADVISE_INLINE_PCLUSTER
        index = [None] * count
        heads = [s // BS for s in starts]
        for lcn in range(count):
            if lcn not in heads:
                before = max(h for h in heads if h < lcn)
                after = min([h for h in heads if h > lcn] + [count])
                index[lcn] = ("nonhead", lcn - before, after - lcn)
        compressed_blocks = 0
        for i, ext in enumerate(f.extents):
            end = f.extents[i + 1].start if i + 1 < len(f.extents) else size
            head_lcn = ext.start // BS
            if ext.kind == "fragment":
                index[head_lcn] = (1, ext.start % BS, 0, False)
                continue
            if ext.kind == "inline":
                inline = compress(f.head1, f.data[ext.start:end], BS)
                index[head_lcn] = (layout.Z_EROFS_LCLUSTER_TYPE_HEAD1, ext.start % BS, 0, False)
                continue
            if ext.kind == "inline_plain":
                inline = f.data[ext.start:end]
                index[head_lcn] = (layout.Z_EROFS_LCLUSTER_TYPE_PLAIN, ext.start % BS, 0, False)
                continue
            pblk = img.alloc(ext.blocks)
            compressed_blocks += ext.blocks
            capacity = ext.blocks * BS
            payload = f.data[ext.start:end] + ext.extra
            if ext.kind == "plain":
                assert len(payload) <= capacity
                if f.interlaced:
                    rot = ext.start % BS
                    right = min(BS - rot, len(payload))
                    stored = bytearray(capacity)
                    stored[rot:rot + right] = payload[:right]
                    stored[:len(payload) - right] = payload[right:]
                    img.put(pblk, 0, bytes(stored))
                else:
                    img.put(pblk, 0, payload)
                lctype = layout.Z_EROFS_LCLUSTER_TYPE_PLAIN
            else:
                alg = f.head1 if ext.kind == "head1" else f.head2
                stream = compress(alg, payload, capacity)
                assert stream is not None, f"{f.name}: extent at {ext.start} does not fit {ext.blocks} blocks"
                # the kernel looks for the start of the stream in the pcluster's first block
                assert len(stream) > capacity - BS, f"{f.name}: extent at {ext.start} needs fewer blocks"
                img.put(pblk, capacity - len(stream), stream)
                lctype = layout.Z_EROFS_LCLUSTER_TYPE_HEAD1 if ext.kind == "head1" else \
                    layout.Z_EROFS_LCLUSTER_TYPE_HEAD2
            index[head_lcn] = (lctype, ext.start % BS, pblk, bool(ext.extra))
            if ext.blocks > 1:
                assert f.big and index[head_lcn + 1][0] == "nonhead"
                _, _, d1 = index[head_lcn + 1]
                index[head_lcn + 1] = ("cblkcnt", ext.blocks, d1)
        raw = bytearray()
        for lcn, entry in enumerate(index):
            assert entry is not None, (f.name, lcn)
            if entry[0] in ("nonhead", "cblkcnt"):
                d0 = entry[1] | (layout.Z_EROFS_LI_D0_CBLKCNT if entry[0] == "cblkcnt" else 0)
                raw += layout.LclusterIndex.build(dict(di_advise=layout.Z_EROFS_LCLUSTER_TYPE_NONHEAD,
                                                       di_clusterofs=0, di_u=d0 | entry[2] << 16))
            else:
                lctype, clusterofs, pblk, partial = entry
                raw += layout.LclusterIndex.build(dict(
                    di_advise=lctype | (layout.Z_EROFS_LI_PARTIAL_REF if partial else 0),
                    di_clusterofs=clusterofs, di_u=pblk))
        fragmentoff = fragment_at.get(f.name, 0) | len(inline) << 16     # h_idata_size: the high u16
        header = layout.ZMapHeader.build(dict(h_fragmentoff=fragmentoff, h_advise=advise,
                                              h_algorithmtype=ALGS[f.head1] | ALGS[f.head2] << 4,
                                              h_clusterbits=0))
        mode = 0o40755 if f.dir_entries else 0o100644
        img.put(blk, 0, _inode(mode, layout.EROFS_INODE_COMPRESSED_FULL, size, compressed_blocks, ino,
                               nlink=2 if f.dir_entries else 1))
        img.put(blk, head_at, header)
        index_at = head_at + layout.Z_EROFS_MAP_HEADER_SIZE + layout.Z_EROFS_FULL_INDEX_SKIP
        img.put(blk, index_at, bytes(raw))
        if inline:                                   # right after the last lcluster's index entry
            inline_at = index_at + len(raw)
            assert inline_at % BS + len(inline) <= BS, f"{f.name}: inline pcluster would cross a block"
            img.put(blk, inline_at, inline)
        max_blocks = max([max_blocks] + [e.blocks for e in f.extents])
    # the packed inode (flat plain), outside the directory tree
    packed_nid = 0
    incompat = layout.EROFS_FEATURE_INCOMPAT_ZERO_PADDING | layout.EROFS_FEATURE_INCOMPAT_COMPR_CFGS
    if any(f.extents and f.extents[-1].kind.startswith("inline") for f in files):
        incompat |= layout.EROFS_FEATURE_INCOMPAT_ZTAILPACKING
    if packed:
        blk = img.alloc(1)
        packed_nid = (blk - meta_blkaddr) * (BS // 32)
        data_blk = img.alloc(-(-len(packed) // BS))
        img.put(data_blk, 0, bytes(packed))
        img.put(blk, 0, _inode(0o100644, layout.EROFS_INODE_FLAT_PLAIN, len(packed), data_blk, 1))
        incompat |= layout.EROFS_FEATURE_INCOMPAT_FRAGMENTS
    # root directory: one block of dirents
    names = sorted([(b".", (root_blk - meta_blkaddr) * 128, 2), (b"..", (root_blk - meta_blkaddr) * 128, 2)] +
                   entries)
    dirblk = img.alloc(1)
    nameoff = 12 * len(names)
    body, tail = bytearray(), bytearray()
    for name, nid, ftype in names:
        body += layout.Dirent.build(dict(e_nid=nid, e_nameoff=nameoff + len(tail), e_file_type=ftype,
                                         e_reserved=0))
        tail += name
    dirent_bytes = bytes(body + tail)
    assert len(dirent_bytes) <= BS
    img.put(dirblk, 0, dirent_bytes)
    img.put(root_blk, 0, _inode(0o40755, layout.EROFS_INODE_FLAT_PLAIN, len(dirent_bytes), dirblk, 1, nlink=2))
    # superblock and compression configs
    cfgs = bytearray()
    for alg in sorted(algs | {0}):
        record = {0: layout.Lz4Cfgs.build(dict(max_distance=0, max_pclusterblks=max_blocks, reserved=bytes(10))),
                  1: layout.LzmaCfgs.build(dict(dict_size=8 << 20, format=0, reserved=bytes(8))),
                  2: layout.DeflateCfgs.build(dict(windowbits=15, reserved=bytes(5))),
                  3: layout.ZstdCfgs.build(dict(format=0, windowlog=10, reserved=bytes(4)))}[alg]
        while len(cfgs) % 4:
            cfgs += b"\0"
        cfgs += len(record).to_bytes(2, "little") + record
    sb = layout.SuperBlock.build(dict(
        s_checksum=0, s_feature_compat=0, s_blkszbits=BLKBITS, s_extslots=0,
        s_root_nid=(root_blk - meta_blkaddr) * 128, s_inos=len(files) + 1 + bool(packed),
        s_build_time=1_700_000_000, s_build_time_nsec=0, s_blocks=len(img.blocks), s_meta_blkaddr=meta_blkaddr,
        s_xattr_blkaddr=0, s_uuid=bytes(16), s_volume_name=bytes(16), s_feature_incompat=incompat,
        s_u=sum(1 << a for a in algs | {0}), s_extra_devices=0, s_devt_slotoff=0, s_dirblkbits=0,
        s_xattr_prefix_count=0, s_xattr_prefix_start=0, s_packed_nid=packed_nid, s_xattr_filter_reserved=0,
        s_reserved=bytes(23)))
    img.put(0, layout.EROFS_SUPER_OFFSET, sb)
    img.put(0, layout.EROFS_SUPER_OFFSET + layout.EROFS_SUPER_BLOCK_SIZE, bytes(cfgs))
    return b"".join(bytes(b) for b in img.blocks)
