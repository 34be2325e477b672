"""RAFS v6 bootstrap writing: the reference's allocator, byte identity with a nydus-image bootstrap,
and images of awkward trees checked by the strictest readers (the kernel's EROFS, fsck.erofs, rafs)."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import stat
import struct
import subprocess

import pytest

import rafs
from rafs.blob.meta import build_ci_header, encode_chunk_info_v1
from rafs.errors import InvalidArgumentError
from rafs.model import BlobFeatures, Blob, Chunk, Inode, Node, SuperFlags
from rafs.builder.tree import number_tree
from rafs.v6 import alloc, dirent, layout
from rafs.blob.toc import extract_inline_bootstrap
from rafs.v6.encode import dirent_blocks, dirent_size, xattr_body
from rafs.v6.records import (BLOB, CHUNK_INDEX as CHUNK_ADDR, CHUNK_INFO, DEVICE, DIRENT, INODE_EXTENDED as INODE,
                             SUPERBLOCK, SUPERBLOCK_EXT)
from rafs.v6.writer import LEGACY_DEVSLOT_ALIGNMENT, UNMAPPED_DEVSLOTS, write_bootstrap

FLAGS = (SuperFlags.COMPRESSION_NONE | SuperFlags.HASH_SHA256 | SuperFlags.ENCRYPTION_NONE
         | SuperFlags.EXPLICIT_UID_GID)


# -- the allocator ----------------------------------------------------------------------------------

def test_allocator_matches_reference_sequence():
    """The sequence of builder/src/core/v6.rs test_set_v6_offset (32-byte compact inodes, cursor 0)."""
    a = alloc.MetaAllocator()
    a.cursor = 0
    p = a.place_file(32, 0)
    assert (p.offset, p.layout, a.cursor) == (0, alloc.CHUNK_BASED, 32)
    steps = [  # (dirent size, layout, inode offset, data offset or None, cursor after)
        (4064, alloc.FLAT_INLINE, 4096, None, 8192),
        (4096, alloc.FLAT_PLAIN, 32, 8192, 8192 + 4096),
        (8160, alloc.FLAT_INLINE, 8192 + 4096, 8192 + 4096 + 4096, 8192 + 4096 + 8192),
        (8161, alloc.FLAT_PLAIN, 64, 8192 + 4096 + 8192, 8192 + 4096 + 8192 + 8192),
        (4096 + 3968, alloc.FLAT_INLINE, 96, 28672, 28672 + 4096),
        (4096 + 2048, alloc.FLAT_INLINE, 32768, 32768 + 4096, 40960),
        (1985, alloc.FLAT_INLINE, 40960, None, 40960 + 2048),
        (1984, alloc.FLAT_INLINE, 32768 + 2048 + 32, None, 40960 + 2048),
    ]
    for size, layout_, offset, data_offset, cursor in steps:
        p = a.place_with_tail(32, size)
        assert (p.layout, p.offset, a.cursor) == (layout_, offset, cursor), size
        if data_offset is not None:
            assert p.data_offset == data_offset, size


def test_allocator_fragments_are_reused_smallest_fit_first():
    a = alloc.MetaAllocator()
    inline = a.place_with_tail(64, 4096 - 64 - 100)   # 3996 bytes inline; cursor aligned to 8096
    plain = a.place_with_tail(64, 2 * 4096)            # inode at 8096, its tail [8160, 8192) freed
    assert (inline.offset, plain.offset, plain.data_offset, a.cursor) == (4096, 8096, 8192, 16384)
    assert a.place_file(64, 0).offset == 16384         # 64 bytes: the 1-slot fragment is too small
    assert a.place_file(24, 0).offset == 8160          # 24 bytes fit it
    assert a.place_file(24, 0).offset == 16448         # used up
    assert a.place_special(24).offset == 16480         # specials never take fragments


# -- small encoders -------------------------------------------------------------------------------

def test_xattr_body_matches_reference_sizes():
    body = xattr_body({b"user.a": b"\x01", b"trusted.b": b"\x02"})
    assert len(body) == 12 + 8 + 8                # v6.rs test_rafs_xattr_size_v6
    assert (len(body) - 12) // 4 + 1 == 5         # test_rafs_xattr_count_v6
    assert body[12:20] == bytes([1, layout.EROFS_XATTR_INDEX_USER, 1, 0]) + b"a\x01\0\0"
    acl = xattr_body({b"system.posix_acl_access": b"x"})
    assert acl[12:16] == bytes([0, layout.EROFS_XATTR_INDEX_POSIX_ACL_ACCESS, 1, 0])
    assert xattr_body({}) == b""
    with pytest.raises(InvalidArgumentError):
        xattr_body({b"unknown.b": b"2"})
    with pytest.raises(InvalidArgumentError):
        xattr_body({b"user.big": bytes(0x10000)})


def test_dirents_never_straddle_a_block():
    names = sorted([b".", b".."] + [b"%04d" % i + b"x" * 200 for i in range(40)])
    size = dirent_size(names, 4096)
    blocks = dirent_blocks([(n, 7, 1) for n in names], 4096)
    assert all(len(b) <= 4096 for b in blocks)
    assert size == 4096 * (len(blocks) - 1) + len(blocks[-1])
    # each block: n dirents, first nameoff = 12 n, names in order
    seen = []
    for block in blocks:
        n = DIRENT.unpack_from(block, 0).e_nameoff // 12
        offs = [DIRENT.unpack_from(block, 12 * i).e_nameoff for i in range(n)] + [len(block)]
        seen += [block[offs[i]:offs[i + 1]] for i in range(n)]
    assert seen == names


# -- building trees for tests -----------------------------------------------------------------------

@dataclasses.dataclass
class F:
    """A regular file. ``sparse``: all-zero chunks become holes; ``reverse``: chunks stored in reverse
    order in the blob (never contiguous); ``blob``: blob index, or one per chunk."""
    data: bytes = b""
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    mtime: int = 1_600_000_000
    nsec: int = 0
    xattrs: dict = dataclasses.field(default_factory=dict)
    sparse: bool = False
    reverse: bool = False
    blob: int | list = 0


@dataclasses.dataclass
class D:
    mode: int = 0o755
    uid: int = 0
    gid: int = 0
    mtime: int = 1_600_000_000
    nsec: int = 0
    xattrs: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class L:
    target: bytes
    xattrs: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class H:
    """A hardlink to another regular file of the tree."""
    target: str


@dataclasses.dataclass
class S:
    kind: int                      # stat.S_IFCHR, S_IFBLK, S_IFIFO, S_IFSOCK
    rdev: int = 0
    mode: int = 0o600


@dataclasses.dataclass
class Built:
    root: Node
    blobs: list[Blob]
    blob_data: list[bytes]         # whole blob files (uncompressed data, CI, CI header)
    files: dict[str, bytes]        # regular file path -> content
    entries: dict[str, object]


def tree_of(entries: dict[str, object]) -> Node:
    """Nodes for the entries (parents made as needed), children sorted, hardlinks sharing an Inode."""
    root = Node(b"/", Inode(0, stat.S_IFDIR | 0o755))
    by_path = {"": root}

    def ensure_dir(path: str) -> Node:
        if path in by_path:
            return by_path[path]
        parent_path, _, name = path.rpartition("/")
        parent = ensure_dir(parent_path)
        node = Node(name.encode("utf-8", "surrogateescape"), Inode(0, stat.S_IFDIR | 0o755))
        parent.children.append(node)
        by_path[path] = node
        return node

    for path in sorted(entries, key=lambda p: isinstance(entries[p], H)):
        spec = entries[path]
        parent_path, _, name = path.rpartition("/")
        if isinstance(spec, D):
            node = ensure_dir(path)
            node.inode = Inode(0, stat.S_IFDIR | spec.mode, spec.uid, spec.gid, mtime=spec.mtime,
                               mtime_nsec=spec.nsec, xattrs=dict(spec.xattrs))
            continue
        if isinstance(spec, F):
            inode = Inode(0, stat.S_IFREG | spec.mode, spec.uid, spec.gid, len(spec.data), spec.mtime,
                          spec.nsec, xattrs=dict(spec.xattrs))
        elif isinstance(spec, L):
            inode = Inode(0, stat.S_IFLNK | 0o777, size=len(spec.target), symlink=spec.target,
                          xattrs=dict(spec.xattrs))
        elif isinstance(spec, S):
            inode = Inode(0, spec.kind | spec.mode, rdev=spec.rdev)
        elif isinstance(spec, H):
            inode = dataclasses.replace(by_path[spec.target].inode)
            by_path[spec.target].hardlink_key = spec.target
        node = Node(name.encode("utf-8", "surrogateescape"), inode,
                    hardlink_key=spec.target if isinstance(spec, H) else None)
        ensure_dir(parent_path).children.append(node)
        by_path[path] = node
    for node in by_path.values():
        node.children.sort(key=lambda n: n.name)
    number_tree(root)               # the builder's numbering: ino, nlink, one Inode per hardlink group
    return root


def build(entries: dict[str, object], *, chunk_size: int = 0x4000, blob_count: int = 1,
          digester: str = "sha256", tarfs: bool = False) -> Built:
    """A tree plus synthetic uncompressed blobs holding its file data at 4K-aligned offsets (tarfs:
    512-byte aligned, like file data inside a tar)."""
    align = 512 if tarfs else 4096
    root = tree_of(entries)
    paths = {}
    for path, spec in entries.items():
        paths[path.encode("utf-8", "surrogateescape")] = spec
    datas = [bytearray() for _ in range(blob_count)]
    infos: list[list[Chunk]] = [[] for _ in range(blob_count)]
    known: dict[tuple[int, bytes], Chunk] = {}
    files = {}
    done = set()
    hasher = {"sha256": hashlib.sha256, "blake3": _blake3}[digester]
    for path, node in root.walk():
        spec = paths.get(path.lstrip(b"/"))
        if not isinstance(spec, F) or id(node.inode) in done:
            if isinstance(spec, H):
                files[path.decode("utf-8", "surrogateescape")] = entries[spec.target].data
            continue
        done.add(id(node.inode))
        files[path.decode("utf-8", "surrogateescape")] = spec.data
        pieces = [(off, spec.data[off:off + chunk_size]) for off in range(0, len(spec.data), chunk_size)]
        order = list(reversed(pieces)) if spec.reverse else pieces
        made = {}
        for n, (off, piece) in enumerate(order):
            if spec.sparse and not piece.strip(b"\0"):
                continue
            slot = off // chunk_size
            b = spec.blob[slot] if isinstance(spec.blob, list) else spec.blob
            digest = hasher(piece).digest()
            base = known.get((b, digest))
            if base is None:
                at = len(datas[b])
                datas[b] += piece + bytes(-len(piece) % align)
                base = Chunk(digest, b, at, len(piece), at, len(piece), off, len(infos[b]))
                infos[b].append(base)
                known[(b, digest)] = base
            made[off] = dataclasses.replace(base, file_offset=off)
        node.chunks = [made[off] for off in sorted(made)]
    blobs, blob_data = [], []
    for b in range(blob_count):
        data = bytes(datas[b])
        if tarfs:                                   # the tar is the blob: no CI array
            features, ci, whole = BlobFeatures.TARFS, b"", data
        else:
            features = BlobFeatures.ALIGNED | BlobFeatures.CAP_TAR_TOC
            ci = b"".join(struct.pack("<QQ", *encode_chunk_info_v1(c.compressed_offset, c.compressed_size,
                                                                    c.uncompressed_offset, c.uncompressed_size))
                          for c in infos[b])
            header = build_ci_header(features=features, ci_compressor="none", ci_entries=len(infos[b]),
                                     ci_offset=len(data), ci_compressed_size=len(ci), ci_uncompressed_size=len(ci))
            whole = data + ci + header
        blobs.append(Blob(b, hashlib.sha256(whole).hexdigest(), "none", digester, chunk_size, len(infos[b]),
                          len(whole), len(data), int(features), ci_compressor="none", ci_offset=len(data),
                          ci_compressed_size=len(ci), ci_uncompressed_size=len(ci)))
        blob_data.append(whole)
    return Built(root, blobs, blob_data, files, entries)


def _blake3(data: bytes):
    import blake3
    return blake3.blake3(data)


def write(built: Built, **kwargs) -> bytes:
    chunk_size = built.blobs[0].chunk_size if built.blobs else 0x4000
    flags = kwargs.pop("flags", FLAGS)
    return write_bootstrap(built.root, built.blobs, chunk_size=chunk_size, flags=flags, **kwargs)


# -- a tree with every awkward thing --------------------------------------------------------------

def _acl(*entries) -> bytes:
    """A POSIX ACL xattr value (version 2, sorted (tag, perm, id) entries)."""
    return struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *e) for e in entries)


UNDEF = 0xFFFF_FFFF
ACL = _acl((0x01, 6, UNDEF), (0x02, 4, 1234), (0x04, 4, UNDEF), (0x10, 4, UNDEF), (0x20, 4, UNDEF))
CHUNK = 0x4000


def awkward_entries() -> dict[str, object]:
    pattern = bytes(range(256)) * 64                       # 16 KiB, one full chunk
    entries: dict[str, object] = {
        "empty": F(b""),
        "small": F(b"hello\n", mode=0o600, uid=100000, gid=70000, mtime=1_234_567_890, nsec=123456789,
                   xattrs={b"user.one": b"1", b"trusted.two": b"2" * 50, b"security.three": b"",
                           b"system.posix_acl_access": ACL}),
        "contiguous": F(b"".join(bytes([i]) * CHUNK for i in range(1, 4)) + b"tail"),   # 4 chunks in a row
        "reversed": F(b"".join(bytes([i]) * CHUNK for i in range(5, 8)), reverse=True),
        "deduped": F(pattern + b"\x09" * CHUNK + pattern),                              # repeats a chunk
        "sparse": F(bytes(CHUNK) + b"data" + bytes(CHUNK - 4) + bytes(2 * CHUNK) + b"end", sparse=True),
        "hole-only": F(bytes(3 * CHUNK + 5), sparse=True),
        "other-blob": F(b"A" * CHUNK + b"B" * CHUNK + b"C" * 100, blob=[1, 0, 1]),
        "dir/hard1": F(b"linked content\n" * 300),
        "dir/hard2": H("dir/hard1"),
        "hard3": H("dir/hard1"),
        "dir/sub/empty-dir": D(mode=0o700, mtime=42),
        "link": L(b"small"),
        "dir/long-link": L(b"/" + b"x" * 4094),             # 4095 bytes: cannot be inline
        "dir/link-with-xattr": L(b"../small", xattrs={b"trusted.l": b"v"}),
        "chr": S(stat.S_IFCHR, os.makedev(1, 3)),
        "blk": S(stat.S_IFBLK, os.makedev(259, 70000)),
        "fifo": S(stat.S_IFIFO, mode=0o644),
        "sock": S(stat.S_IFSOCK),
        "-before-dot": F(b"sorts before ."),
        " space": F(b"sorts first"),
        "x" * 255: F(b"long name"),
        "many-xattrs": F(b"x", xattrs={b"user.attr%03d" % i: bytes([i]) * (i * 7) for i in range(90)}),
        "dir-with-xattrs": D(xattrs={b"user.d%03d" % i: b"v" * 60 for i in range(80)}),
        "big-xattr": F(b"y", xattrs={b"user.big": b"z" * 60000}),
        "\udcff-not-utf8": F(b"raw name"),
    }
    for i in range(2500):                                   # multi-block directory, varied name sizes
        name = "big/%05d-" % i + "n" * (i % 180)
        entries[name] = F(b"") if i % 3 else L(b"t%d" % i) if i % 2 else S(stat.S_IFIFO)
    entries["big/" + "y" * 255] = F(b"in big dir")
    deep = "/".join("d%02d" % i for i in range(60))
    entries[deep + "/bottom"] = F(b"deep file\n")
    return entries


@pytest.fixture(scope="module")
def awkward():
    built = build(awkward_entries(), chunk_size=CHUNK, blob_count=2)
    return built, write(built)


def expected_stats(built: Built):
    """path -> (mode, uid, gid, size or None, mtime_ns, nlink, rdev, symlink, xattrs) from the tree."""
    out = {}
    for path, node in built.root.walk():
        ino = node.inode
        size = None if ino.is_dir else len(ino.symlink) if ino.is_symlink else ino.size
        rdev = ino.rdev if stat.S_ISCHR(ino.mode) or stat.S_ISBLK(ino.mode) else 0
        out[path.decode("utf-8", "surrogateescape")] = (ino.mode, ino.uid, ino.gid, size, ino.mtime_ns,
                                                        ino.nlink, rdev, ino.symlink, dict(ino.xattrs))
    return out


def mounted_stats(mnt):
    out = {}
    for dirpath, dirnames, filenames in os.walk(mnt):
        for name in [""] + dirnames + filenames:
            full = os.path.join(dirpath, name) if name else dirpath
            st = os.lstat(full)
            rel = os.path.relpath(full, mnt)
            rel = "/" if rel == "." else "/" + rel
            size = None if stat.S_ISDIR(st.st_mode) else st.st_size
            target = os.readlink(full).encode("utf-8", "surrogateescape") if stat.S_ISLNK(st.st_mode) else None
            xattrs = {k.encode(): os.getxattr(full, k, follow_symlinks=False)
                      for k in os.listxattr(full, follow_symlinks=False)}
            out[rel] = (st.st_mode, st.st_uid, st.st_gid, size, st.st_mtime_ns, st.st_nlink, st.st_rdev,
                        target, xattrs)
    return out


@pytest.mark.privileged
def test_kernel_mounts_awkward_tree(awkward, kernel_mount, tmp_path):
    built, image = awkward
    boot = tmp_path / "boot"
    boot.write_bytes(image)
    devices = []
    for i, data in enumerate(built.blob_data):
        dev = tmp_path / f"blob{i}"
        dev.write_bytes(data)
        devices.append(dev)
    mnt = kernel_mount(boot, *devices)
    expected, got = expected_stats(built), mounted_stats(mnt)
    assert sorted(got) == sorted(expected)
    for path in expected:
        assert got[path] == expected[path], path
    inodes = {}
    for path, content in built.files.items():
        full = os.path.join(mnt, path.lstrip("/"))
        with open(full, "rb") as f:
            assert f.read() == content, path
        inodes.setdefault(os.lstat(full).st_ino, set()).add(path)
    assert {"/dir/hard1", "/dir/hard2", "/hard3"} in inodes.values()


@pytest.mark.privileged
def test_fsck_erofs_accepts_and_extracts(awkward, tmp_path, tool):
    built, image = awkward
    fsck = tool("fsck.erofs")
    boot = tmp_path / "boot"
    boot.write_bytes(image)
    args = [fsck]
    for i, data in enumerate(built.blob_data):
        (tmp_path / f"blob{i}").write_bytes(data)
        args.append(f"--device={tmp_path / f'blob{i}'}")
    out = tmp_path / "out"
    result = subprocess.run(args + [f"--extract={out}", str(boot)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    # erofs-utils 1.5 writes the mapped extents of a file back to back when extracting, dropping holes,
    # so sparse files are left to the kernel test.
    sparse = {path for path, spec in built.entries.items() if isinstance(spec, F) and spec.sparse}
    for path, content in built.files.items():
        if path.lstrip("/") not in sparse:
            assert (out / path.lstrip("/")).read_bytes() == content, path


def test_rafs_reads_back_and_rebuilds_the_same_bytes(awkward, tmp_path):
    built, image = awkward
    boot = tmp_path / "boot"
    boot.write_bytes(image)
    blob_dir = tmp_path / "blobs"
    blob_dir.mkdir()
    for blob, data in zip(built.blobs, built.blob_data):
        (blob_dir / blob.blob_id).write_bytes(data)
    expected = expected_stats(built)
    with rafs.open(boot, blob_dir=blob_dir, validate=True) as im:
        got = {}
        for path, inode in im.iter_entries():
            size = None if inode.is_dir else inode.size
            got[path.decode("utf-8", "surrogateescape")] = (
                inode.mode, inode.uid, inode.gid, size, inode.mtime_ns, inode.nlink, inode.rdev, inode.symlink,
                dict(inode.xattrs))
        assert got == expected
        for path, content in built.files.items():
            assert im.read(path) == content, path
        assert list(im.check(verify_data=True)) == []
    # read, renumber, write again: the same bytes
    root, blobs, chunk_size, flags = tree_of_image(boot)
    assert write_bootstrap(root, blobs, chunk_size=chunk_size, flags=flags) == image


@pytest.mark.privileged
def test_kernel_mounts_tarfs_mode_with_512_byte_blocks(kernel_mount, tmp_path):
    entries = {
        "a": F(b"".join(bytes([i]) * 4096 for i in range(3)) + b"tail"),     # contiguous: one 16 KiB chunk
        "b": F(b"short"),
        "dir/link-inline": L(b"t" * 400),
        "dir/link-tail": L(b"u" * 600),                  # one full 512-byte block and an inline tail
        "dir/xattrs": F(b"x", xattrs={b"user.k%02d" % i: b"v" * 20 for i in range(30)}),
    }
    for i in range(60):
        entries["many/%03d-%s" % (i, "n" * 40)] = F(b"%d" % i)
    built = build(entries, chunk_size=0x1000, tarfs=True)
    image = write(built, flags=FLAGS | SuperFlags.TARTFS_MODE)
    d = Decoded(image)
    assert d.sb.s_blkszbits == 9 and d.sb.s_meta_blkaddr * 512 == 8192 and len(image) % 4096 == 0
    nids = dict(d.walk())
    assert d.inode(nids[b"/a"]).i_u & layout.EROFS_CHUNK_FORMAT_BLKBITS_MASK == 14 - 9
    assert d.inode(nids[b"/many"]).i_size > 5 * 512
    boot, blob = tmp_path / "boot", tmp_path / "tar"
    boot.write_bytes(image)
    blob.write_bytes(built.blob_data[0])
    mnt = kernel_mount(boot, blob)
    assert mounted_stats(mnt) == expected_stats(built)
    for path, content in built.files.items():
        assert (mnt / path.lstrip("/")).read_bytes() == content, path


# -- structure of the written bytes -------------------------------------------------------------------

class Decoded:
    """Just enough decoding of a bootstrap to look at its structures (tests only)."""

    def __init__(self, data: bytes):
        self.data = data
        self.sb = SUPERBLOCK.unpack_from(data, layout.EROFS_SUPER_OFFSET)
        self.ext = SUPERBLOCK_EXT.unpack_from(data, layout.EROFS_SUPER_OFFSET + 128)
        self.block_size = 1 << self.sb.s_blkszbits
        self.meta = self.sb.s_meta_blkaddr * self.block_size
        self.devices = [DEVICE.unpack_from(data, layout.RAFSV6_DEVTABLE_OFFSET + 128 * i)
                        for i in range(self.sb.s_extra_devices)]
        self.blobs = [BLOB.unpack_from(data, self.ext.s_blob_table_offset + 256 * i)
                      for i in range(self.ext.s_blob_table_size // 256)]
        self.chunk_table = list(CHUNK_INFO.iter_unpack(data, self.ext.s_chunk_table_offset,
                                                       self.ext.s_chunk_table_size // 80))

    def inode(self, nid: int):
        return INODE.unpack_from(self.data, self.meta + 32 * nid)

    def inode_end(self, nid: int) -> int:
        i = self.inode(nid)
        return self.meta + 32 * nid + 64 + (12 + 4 * (i.i_xattr_icount - 1) if i.i_xattr_icount else 0)

    def dir_data(self, nid: int) -> bytes:
        i = self.inode(nid)
        layout_ = i.i_format >> 1 & 7
        bs, size = self.block_size, i.i_size
        whole = size // bs * bs if layout_ == layout.EROFS_INODE_FLAT_INLINE else -(-size // bs) * bs
        data = self.data[i.i_u * bs:i.i_u * bs + whole]
        if layout_ == layout.EROFS_INODE_FLAT_INLINE:
            end = self.inode_end(nid)
            data += self.data[end:end + size % bs]
        return data[:size]

    def entries(self, nid: int) -> list[tuple[bytes, int, int]]:
        data, bs = self.dir_data(nid), self.block_size
        return [e for start in range(0, len(data), bs)
                for e in dirent.parse_block(data[start:start + bs], where=start)]

    def walk(self, nid: int | None = None, path: bytes = b"/"):
        nid = self.sb.s_root_nid if nid is None else nid
        yield path, nid
        if stat.S_ISDIR(self.inode(nid).i_mode):
            for name, child, _ in self.entries(nid):
                if name not in (b".", b".."):
                    yield from self.walk(child, path.rstrip(b"/") + b"/" + name)

    def chunk_indexes(self, nid: int):
        i = self.inode(nid)
        start = -(-self.inode_end(nid) // 8) * 8
        count = -(-i.i_size // self.ext.s_chunk_size)
        return list(CHUNK_ADDR.iter_unpack(self.data, start, count))


def test_written_structures(awkward):
    built, image = awkward
    d = Decoded(image)
    assert len(image) % 4096 == 0
    assert d.sb.s_root_nid == 128 and d.sb.s_feature_incompat == 0x0C and d.sb.s_devt_slotoff == 11
    assert d.sb.s_feature_compat == layout.EROFS_FEATURE_COMPAT_RAFS_V6
    assert d.sb.s_inos == sum(1 for _ in built.root.walk())
    assert d.ext.s_flags == FLAGS | SuperFlags.HAS_XATTR     # no blob has inlined digests
    assert d.sb.s_blocks == sum(b.uncompressed_size // 4096 for b in built.blobs)
    assert d.sb.s_meta_blkaddr * 4096 == d.ext.s_blob_table_offset + 4096 == 8192
    # device slots: first blob starts at the bootstrap end rounded up to 512 KiB, the next after it
    end = len(image)
    for dev, blob in zip(d.devices, built.blobs):
        assert dev.blob_id.rstrip(b"\0").decode() == blob.blob_id
        assert dev.mapped_blkaddr * 4096 == -(-end // 0x80000) * 0x80000
        assert dev.blocks == blob.uncompressed_size // 4096
        end = (dev.mapped_blkaddr + dev.blocks) * 4096
    # chunk table: distinct (digest, blob) keys, sorted
    keys = [(c.block_id, c.blob_index) for c in d.chunk_table]
    assert keys == sorted(set(keys))
    assert len(keys) == sum(len(b_) for b_ in _distinct_chunks(built))
    nids = dict(d.walk())
    # the same nid for every hardlink, nlink 3
    assert nids[b"/dir/hard1"] == nids[b"/dir/hard2"] == nids[b"/hard3"]
    assert d.inode(nids[b"/hard3"]).i_nlink == 3
    # chunk headers: the power-of-two trick only for contiguous multi-chunk files
    def chunk_bits(path):
        return d.inode(nids[path]).i_u & layout.EROFS_CHUNK_FORMAT_BLKBITS_MASK
    assert chunk_bits(b"/contiguous") == (3 * CHUNK + 4 - 1).bit_length() - 12    # one 64 KiB chunk
    for path in (b"/reversed", b"/deduped", b"/sparse", b"/other-blob", b"/small"):
        assert chunk_bits(path) == CHUNK.bit_length() - 1 - 12, path
    # holes are EROFS null addresses; blob index + 1 in the low byte of hi
    sparse = d.chunk_indexes(nids[b"/sparse"])
    assert [c.c_blk_addr == layout.EROFS_NULL_ADDR for c in sparse] == [True, False, True, True, False]
    assert all(c.c_blk_addr == layout.EROFS_NULL_ADDR for c in d.chunk_indexes(nids[b"/hole-only"]))
    assert [c.c_blob_addr_hi & 0xFF for c in d.chunk_indexes(nids[b"/other-blob"])] == [2, 1, 2]
    # directories: '.' and '..' sorted in with the rest; the root's '..' is itself
    root_entries = d.entries(128)
    assert [e[0] for e in root_entries] == sorted(e[0] for e in root_entries)
    assert root_entries[:2] == [(b" space", nids[b"/ space"], 1), (b"-before-dot", nids[b"/-before-dot"], 1)]
    assert (b"..", 128, 2) in root_entries
    big = d.inode(nids[b"/big"])
    assert big.i_size > 10 * 4096
    assert d.inode(nids[b"/dir/long-link"]).i_format >> 1 == layout.EROFS_INODE_FLAT_PLAIN
    assert d.inode(nids[b"/link"]).i_format >> 1 == layout.EROFS_INODE_FLAT_INLINE


def _distinct_chunks(built: Built):
    per_blob = [set() for _ in built.blobs]
    for _, node in built.root.walk():
        for c in node.chunks:
            per_blob[c.blob_index].add(c.digest)
    return per_blob


def test_output_is_deterministic(awkward):
    built, image = awkward
    assert write(built) == image


def test_chunk_table_keeps_file_offset_of_last_visited():
    a = b"a" * CHUNK
    built = build({"x": F(a), "y": F(b"b" * CHUNK + a)}, chunk_size=CHUNK)
    d = Decoded(write(built))
    digest = hashlib.sha256(a).digest()
    (record,) = [c for c in d.chunk_table if c.block_id == digest]
    assert record.file_offset == CHUNK          # /y's copy, visited last


def test_flags_follow_content():
    plain = build({"f": F(b"data")})
    d = Decoded(write(plain))
    assert d.ext.s_flags == FLAGS                 # no xattr, blob without inlined digests
    plain.blobs[0].features |= BlobFeatures.INLINED_CHUNK_DIGEST
    d = Decoded(write(plain, flags=FLAGS | SuperFlags.HAS_XATTR))
    assert d.ext.s_flags == FLAGS | SuperFlags.HAS_XATTR | SuperFlags.INLINED_CHUNK_DIGEST


def test_no_blobs_means_no_meta_shift():
    built = build({"dir/empty": F(b""), "link": L(b"dir")}, blob_count=0)
    d = Decoded(write(built))
    assert not d.blobs and d.sb.s_meta_blkaddr == 0 and d.sb.s_root_nid == 128
    assert d.ext.s_blob_table_offset == 4096 and d.ext.s_chunk_table_size == 0


def test_prefetch_table_holds_nids():
    built = build({"a": F(b"1"), "b/c": F(b"2")})
    c = built.root.child(b"b").child(b"c")
    image = write(built, prefetch=[c, built.root])
    d = Decoded(image)
    nids = dict(d.walk())
    offset, size = d.ext.s_prefetch_table_offset, d.ext.s_prefetch_table_size
    assert offset == d.ext.s_blob_table_offset + d.ext.s_blob_table_size and size == 8
    assert struct.unpack_from("<2I", image, offset) == (nids[b"/b/c"], 128)


@pytest.mark.parametrize("mutate, message", [
    (lambda r: r.children.append(Node(b"a/b", Inode(9, stat.S_IFREG))), "invalid file name"),
    (lambda r: r.children.append(Node(b"f", Inode(9, stat.S_IFREG))), "twice"),
    (lambda r: r.children.append(Node(b"l", Inode(9, stat.S_IFLNK))), "no target"),
    (lambda r: setattr(r.children[0].inode, "xattrs", {b"bad.x": b""}), "prefixes"),
    (lambda r: setattr(r.children[0].chunks[0], "file_offset", 1), "does not fit"),
    (lambda r: setattr(r.children[0].chunks[0], "blob_index", 3), "blob 3"),
    (lambda r: setattr(r.children[0].inode, "uid", 1 << 32), "uid"),
])
def test_bad_trees_are_refused(mutate, message):
    built = build({"f": F(b"content")})
    mutate(built.root)
    with pytest.raises(InvalidArgumentError, match=message):
        write(built)


def test_bad_options_are_refused():
    built = build({"f": F(b"content")})
    with pytest.raises(InvalidArgumentError, match="chunk size"):
        write_bootstrap(built.root, built.blobs, chunk_size=3000, flags=FLAGS)
    with pytest.raises(InvalidArgumentError, match="compression"):
        write_bootstrap(built.root, built.blobs, chunk_size=CHUNK, flags=SuperFlags.HASH_SHA256)
    built.blobs[0].blob_id = "y" * 65
    with pytest.raises(InvalidArgumentError, match="blob id"):
        write(built)


# -- the reference's own bootstrap ------------------------------------------------------------------

def tree_of_image(path, root_ino: int = 1) -> tuple[Node, list[Blob], int, SuperFlags]:
    """The tree, blobs, chunk size and flags of a bootstrap, read with rafs and renumbered as the
    builder numbers a tree (``root_ino``: what to write as the root's i_ino)."""
    with rafs.open(path) as image:
        root = image.tree()
        reader = image.reader
        blobs = [dataclasses.replace(b) for b in reader.blobs]
        chunk_size, flags = reader.chunk_size, SuperFlags(reader.flags)
    for _, node in root.walk():
        node.inode = dataclasses.replace(node.inode)      # not the reader's cached objects
    number_tree(root)
    root.inode.ino = root_ino
    return root, blobs, chunk_size, flags


def structures(data: bytes) -> dict[str, dict]:
    """Every structure of a bootstrap by name, as field dicts."""
    d = Decoded(data)
    out = {"superblock": d.sb._asdict(), "superblock ext": d.ext._asdict()}
    for i, dev in enumerate(d.devices):
        out[f"device {i}"] = dev._asdict()
    for i, b in enumerate(d.blobs):
        out[f"blob {i}"] = b._asdict()
    for i, c in enumerate(d.chunk_table):
        out[f"chunk info {i}"] = c._asdict()
    for path, nid in d.walk():
        name = path.decode()
        out[f"inode {name}"] = dict(d.inode(nid)._asdict(), nid=nid)
        if stat.S_ISDIR(d.inode(nid).i_mode):
            out[f"dirents {name}"] = {"entries": d.entries(nid)}
        if stat.S_ISREG(d.inode(nid).i_mode):
            out[f"chunk indexes {name}"] = {"entries": [tuple(c) for c in d.chunk_indexes(nid)]}
    return out


def differences(a: bytes, b: bytes) -> set[tuple[str, str]]:
    sa, sb = structures(a), structures(b)
    assert sa.keys() == sb.keys()
    return {(name, field) for name in sa for field in sa[name] if sa[name][field] != sb[name][field]}


def test_rebuilds_reference_bootstrap_byte_for_byte(v6_fixture):
    """nydus-image 2.2 output, rebuilt from its own tree with that builder's legacy values."""
    data = (v6_fixture[0]).read_bytes()
    root, blobs, chunk_size, flags = tree_of_image(v6_fixture[0], root_ino=0)   # 2.2 wrote root i_ino 0
    assert not flags & SuperFlags.ENCRYPTION_NONE                     # 2.2 did not set it
    rebuilt = write_bootstrap(root, blobs, chunk_size=chunk_size, flags=flags,
                              devslot_alignment=LEGACY_DEVSLOT_ALIGNMENT)
    assert differences(rebuilt, data) == set()
    assert rebuilt == data


def test_current_reference_differs_only_where_the_builder_changed(v6_fixture):
    """With today's builder values only the three known fields change."""
    data = (v6_fixture[0]).read_bytes()
    root, blobs, chunk_size, flags = tree_of_image(v6_fixture[0])
    rebuilt = write_bootstrap(root, blobs, chunk_size=chunk_size, flags=flags | SuperFlags.ENCRYPTION_NONE)
    assert differences(rebuilt, data) == {("superblock ext", "s_flags"), ("device 0", "mapped_blkaddr"),
                                          ("inode /", "i_ino")}
    assert Decoded(rebuilt).devices[0].mapped_blkaddr == 0x80000 // 4096


def test_rebuilds_pre_2_2_inline_bootstrap(fixtures, tmp_path):
    """The bootstrap inside the early blob-toc fixture (4 inodes), from a builder that did not map
    blobs into the flattened device view yet."""
    blob = (fixtures / "toc" / "2fa78cad554b75ac91a4a125ed148d0ddeb25efa4aaa8bd80e5dc292690a4dca").read_bytes()
    data, _ = extract_inline_bootstrap(blob)
    path = tmp_path / "image.boot"
    path.write_bytes(data)
    root, blobs, chunk_size, flags = tree_of_image(path, root_ino=0)
    assert [name for name, _ in root.walk()] == [b"/", b"/error.rs", b"/lib.rs", b"/logger.rs"]
    rebuilt = write_bootstrap(root, blobs, chunk_size=chunk_size, flags=flags, devslot_alignment=UNMAPPED_DEVSLOTS)
    assert rebuilt == data
    rebuilt = write_bootstrap(root, blobs, chunk_size=chunk_size, flags=flags)
    assert differences(rebuilt, data) == {("device 0", "mapped_blkaddr")}
