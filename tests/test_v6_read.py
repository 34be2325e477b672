"""Reading RAFS v6: the reference's 2.2 fixture (its tree, stat, content and kernel view are in the
reader-conformance suite, tests/test_reader_conformance.py): tables and chunk resolution
through the chunk table and through the CI array, inline-meta blob ids, the CLI, and the struct fast
path agreeing with construct for every v6 schema."""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import stat as _stat
import subprocess
import sys
import tarfile

import construct
import pytest

import rafs
from rafs import _records
from rafs.builder.tree import number_tree
from rafs.model import Blob, BlobFeatures, Chunk, Inode, Node, SuperFlags
from rafs.v6 import layout
from rafs.v6.reader import V6Reader, is_erofs
from rafs.v6.writer import write_bootstrap

EXPECTED_FILES = {"lib.rs": 16931, "sync_io.rs": 13400}


@pytest.fixture(scope="module")
def v6_bytes(v6_fixture):
    return v6_fixture[0].read_bytes()


def _rafs_stats(image) -> dict:
    out = {}
    for path, inode in image.iter_entries("/"):
        st = image.lstat(path)
        out[path.decode()] = (st.st_ino, st.st_mode, st.st_size, st.st_nlink, st.st_uid, st.st_gid,
                              st.st_mtime_ns, st.st_blocks)
    return out


def _kernel_stats(root) -> dict:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [None] + dirnames + filenames:
            path = dirpath if name is None else os.path.join(dirpath, name)
            if name is None and dirpath != str(root):
                continue
            st = os.lstat(path)
            rel = "/" if path == str(root) else "/" + os.path.relpath(path, root)
            out[rel] = (st.st_ino, st.st_mode, st.st_size, st.st_nlink, st.st_uid, st.st_gid, st.st_mtime_ns,
                        st.st_blocks)
    return out


def test_superblock_and_tables(v6_bytes):
    assert is_erofs(v6_bytes)
    reader = V6Reader(v6_bytes)
    assert reader.is_rafs and reader.version == 6
    assert reader.root_ino == 128 and reader.block_size == 4096
    assert reader.chunk_size == 0x100000
    assert reader.flags & SuperFlags.COMPRESSION_ZSTD and reader.digester == "blake3"
    (blob,) = reader.blobs
    assert blob.blob_id == "be7d77eeb719f70884758d1aa800ed0fb09d701aaec469964e9d54325f0d5fef"
    assert (blob.compressor, blob.digester, blob.chunk_count) == ("zstd", "blake3", 2)
    assert blob.has(BlobFeatures.ALIGNED) and blob.has(BlobFeatures.HAS_TOC)
    assert blob.mapped_blkaddr == 512                      # 2 MiB segment alignment of 2.2 builds
    assert (blob.ci_offset, blob.ci_uncompressed_size) == (8314, 32)
    assert len(reader.chunk_table()) == 2
    assert reader.prefetch_inodes() == []
    assert list(reader.verify_structure()) == []


def test_lookup_by_name(v6_fixture):
    boot, blob_dir = v6_fixture
    with rafs.open(boot, blob_dir=blob_dir) as image:
        assert image.reader.lookup(image.reader.root_ino, b"lib.rs") == image.lstat("/lib.rs").st_ino
        assert image.reader.lookup(image.reader.root_ino, b"missing.rs") is None


def test_corrupted_chunk_data_fails_digest(v6_fixture, tmp_path):
    boot, blob_dir = v6_fixture
    (blob_path,) = list(blob_dir.iterdir())
    damaged = bytearray(blob_path.read_bytes())
    with rafs.open(boot, blob_dir=blob_dir) as image:
        chunk = image.chunks("/sync_io.rs")[0]
    # one byte flipped inside the chunk's zstd frame: a decode error or a digest mismatch
    damaged[chunk.compressed_offset + chunk.compressed_size // 2] ^= 0x40
    copy = tmp_path / blob_path.name
    copy.write_bytes(bytes(damaged))
    with rafs.open(boot, blob_dir=tmp_path, validate=True) as image:
        assert len(image.read("/lib.rs")) == 16931
        with pytest.raises(rafs.InvalidImageError):
            image.read("/sync_io.rs")


def test_chunks_through_ci_array_match_chunk_table(v6_fixture):
    boot, blob_dir = v6_fixture
    with rafs.open(boot, blob_dir=blob_dir, validate=True) as image:
        reader = image.reader
        from_table = {name: reader.chunks(image.lstat("/" + name).st_ino) for name in EXPECTED_FILES}
        expected = {name: image.read("/" + name) for name in EXPECTED_FILES}
    with rafs.open(boot, blob_dir=blob_dir, validate=True) as image:
        reader = image.reader
        assert reader.chunk_info_source is not None
        reader._chunk_table = {}                   # as if the bootstrap had no chunk info table
        for name in EXPECTED_FILES:
            from_ci = reader.chunks(image.lstat("/" + name).st_ino)

            def key(c):
                return (c.blob_index, c.compressed_offset, c.compressed_size, c.uncompressed_offset,
                        c.uncompressed_size, c.file_offset, c.index, int(c.flags) & 1)
            assert [key(c) for c in from_ci] == [key(c) for c in from_table[name]]
            assert all(c.digest == b"" for c in from_ci)
            assert image.read("/" + name) == expected[name]


def test_missing_chunk_without_ci_is_invalid(v6_bytes):
    reader = V6Reader(v6_bytes)
    reader._chunk_table = {}
    ino = reader.lookup(reader.root_ino, b"lib.rs")
    with pytest.raises(rafs.InvalidImageError, match="CI array"):
        reader.chunks(ino)


def _with_blob_id(data: bytes, reader: V6Reader, new_id: bytes, features: int | None = None) -> bytes:
    out = bytearray(data)
    table = reader.superblock_ext.s_blob_table_offset
    out[table:table + 64] = new_id.ljust(64, b"\0")
    out[layout.RAFSV6_DEVTABLE_OFFSET:layout.RAFSV6_DEVTABLE_OFFSET + 64] = new_id.ljust(64, b"\0")
    if features is not None:
        out[table + 84:table + 88] = features.to_bytes(4, "little")
    return bytes(out)


def test_inline_meta_placeholder_takes_the_hint(v6_bytes):
    reader = V6Reader(v6_bytes)
    features = reader.blobs[0].features | BlobFeatures.INLINED_FS_META
    mutant = _with_blob_id(v6_bytes, reader, layout.RAFSV6_INLINE_BLOB_ID_PLACEHOLDER.encode(), features)
    assert V6Reader(mutant).blobs[0].blob_id == "x" * 64
    hinted = V6Reader(mutant, blob_id_hint="ab" * 32)
    assert hinted.blobs[0].blob_id == "ab" * 32
    assert hinted.blobs[0].mapped_blkaddr == 512
    # an ordinary blob id of a ToC-era blob without inline meta is kept
    assert V6Reader(v6_bytes, blob_id_hint="ab" * 32).blobs[0].blob_id == reader.blobs[0].blob_id


def test_blob_with_inline_bootstrap(fixtures):
    """The early (2.2) v6 blob carrying its bootstrap: the blob id comes from the file name."""
    blob = fixtures / "toc" / "2fa78cad554b75ac91a4a125ed148d0ddeb25efa4aaa8bd80e5dc292690a4dca"
    with rafs.open(blob, validate=True) as image:
        assert image.version == 6
        assert [b.blob_id for b in image.blobs] == [blob.name]
        assert sorted(image.listdir("/")) == ["error.rs", "lib.rs", "logger.rs"]
        for name in image.listdir("/"):
            assert image.read("/" + name).startswith(b"// Copyright")
        assert list(image.check(verify_data=True)) == []


def test_duplicate_device_ids_are_invalid(v6_bytes):
    # two device slots naming the same blob
    mutant = bytearray(v6_bytes)
    sb = layout.EROFS_SUPER_OFFSET
    mutant[sb + 86:sb + 88] = (2).to_bytes(2, "little")
    slot = layout.RAFSV6_DEVTABLE_OFFSET
    mutant[slot + 128:slot + 256] = mutant[slot:slot + 128]
    with pytest.raises(rafs.InvalidImageError, match="duplicate"):
        V6Reader(bytes(mutant))


def test_overlapping_tables_are_invalid(v6_bytes):
    reader = V6Reader(v6_bytes)
    ext = layout.EROFS_SUPER_OFFSET + layout.EROFS_SUPER_BLOCK_SIZE
    mutant = bytearray(v6_bytes)
    # chunk table moved onto the blob table
    mutant[ext + 24:ext + 32] = reader.superblock_ext.s_blob_table_offset.to_bytes(8, "little")
    with pytest.raises(rafs.InvalidImageError, match="overlaps"):
        V6Reader(bytes(mutant))


def _cli(*args, check=True):
    result = subprocess.run([sys.executable, "-m", "rafs", *map(str, args)], capture_output=True, text=True)
    if check:
        assert result.returncode == 0, result.stderr
    return result


def test_cli_inspect_check_unpack(v6_fixture, tmp_path):
    boot, blob_dir = v6_fixture
    text = _cli("inspect", boot).stdout
    assert "RAFS v6" in text
    for word in ("meta_blkaddr", "root_nid", "devices", "chunk_table_entries", "be7d77ee"):
        assert word in text
    info = json.loads(_cli("inspect", "--json", boot).stdout)
    assert info["root_nid"] == 128 and info["meta_blkaddr"] == 2 and info["chunk_table_entries"] == 2
    assert info["devices"] == [{"index": 1, "tag": info["blobs"][0]["blob_id"], "blocks": 9,
                                "mapped_blkaddr": 512}]
    assert info["stats"]["files"] == 2
    result = _cli("check", boot, "-D", blob_dir)
    assert "check passed" in result.stdout
    out = tmp_path / "layer.tar"
    _cli("unpack", boot, "-D", blob_dir, "--output", out)
    with tarfile.open(out) as tar:
        members = {m.name.strip("./").rstrip("/"): m for m in tar.getmembers()}
        assert members["lib.rs"].size == 16931 and members["sync_io.rs"].size == 13400
        assert tar.extractfile(members["lib.rs"]).read().startswith(b"// Copyright")


def test_cli_check_detects_damaged_blob(v6_fixture, tmp_path):
    boot, blob_dir = v6_fixture
    (blob_path,) = list(blob_dir.iterdir())
    damaged = bytearray(blob_path.read_bytes())
    damaged[100] ^= 0xFF
    (tmp_path / blob_path.name).write_bytes(bytes(damaged))
    assert _cli("check", boot, "-D", tmp_path, check=False).returncode == 1


FAST_SCHEMAS = [layout.SuperBlock, layout.SuperBlockExt, layout.Device, layout.InodeCompact,
                layout.InodeExtended, layout.InodeChunkHeader, layout.ChunkIndex, layout.BlockMapEntry,
                layout.Dirent, layout.XattrIbodyHeader, layout.XattrEntry, layout.Blob, layout.ChunkInfo,
                layout.PrefetchTableEntry]


@pytest.mark.parametrize("schema", FAST_SCHEMAS, ids=lambda s: str(s.subcons[0].name))
def test_fast_records_agree_with_construct(schema):
    fast = _records.FastRecord(schema, "schema under test")
    rng = random.Random(6)
    for _ in range(20):
        raw = bytearray(rng.randbytes(schema.sizeof()))
        if schema is layout.SuperBlock:
            raw[0:4] = layout.EROFS_SUPER_MAGIC_V1.to_bytes(4, "little")
        parsed = schema.parse(bytes(raw))
        record = fast.unpack_from(bytes(raw))
        assert {name: getattr(record, name) for name in fast.fields} == \
            {k: v for k, v in parsed.items() if not k.startswith("_")}
        assert fast.pack(*record) == bytes(raw) == schema.build(parsed)


def test_layout_sizes_and_constants():
    assert layout.RAFSV6_DEVTABLE_OFFSET == 1408
    assert layout.EROFS_XATTR_PREFIXES[layout.EROFS_XATTR_INDEX_SECURITY] == b"security."
    assert layout.EROFS_DATALAYOUT_NAMES[layout.EROFS_INODE_CHUNK_BASED] == "chunk_based"
    with pytest.raises(construct.ConstError):
        layout.SuperBlock.parse(bytes(128))


def _tarfs_image(tmp_path, prefetch: tuple[str, ...] = ()):
    """A tar used as the blob of a tarfs-mode (512-byte block) RAFS v6 bootstrap written by rafs."""
    chunk_size = 0x1000
    contents = {"d/contiguous": b"".join(bytes([i]) * 4096 for i in range(1, 4)) + b"tail",
                "d/short": b"short", "top": bytes(range(256)) * 33}
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name, data in contents.items():
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), 1_600_000_000
            tar.addfile(info, io.BytesIO(data))
    tar_bytes = buf.getvalue()
    offsets = {m.name: m.offset_data for m in tarfile.open(fileobj=io.BytesIO(tar_bytes)).getmembers()}

    def node(name: bytes, mode: int, **kw) -> Node:
        return Node(name=name, inode=Inode(ino=0, mode=mode, mtime=1_600_000_000, **kw))

    root, sub = node(b"/", _stat.S_IFDIR | 0o755), node(b"d", _stat.S_IFDIR | 0o755)
    count = 0
    files = {}
    for name, data in contents.items():
        leaf = node(name.rsplit("/", 1)[-1].encode(), _stat.S_IFREG | 0o644, size=len(data))
        leaf.chunks = []
        for off in range(0, len(data), chunk_size):
            piece = data[off:off + chunk_size]
            at = offsets[name] + off
            leaf.chunks.append(Chunk(hashlib.sha256(piece).digest(), 0, at, len(piece), at, len(piece), off, count))
            count += 1
        files[name] = leaf
    sub.children = [files["d/contiguous"], files["d/short"]]
    root.children = [sub, files["top"]]
    number_tree(root)
    blob = Blob(0, hashlib.sha256(tar_bytes).hexdigest(), "none", "sha256", chunk_size, count, len(tar_bytes),
                len(tar_bytes), int(BlobFeatures.TARFS))
    flags = SuperFlags.COMPRESSION_NONE | SuperFlags.HASH_SHA256 | SuperFlags.ENCRYPTION_NONE | \
        SuperFlags.TARTFS_MODE
    boot = tmp_path / "tarfs.boot"
    boot.write_bytes(write_bootstrap(root, [blob], chunk_size=chunk_size, flags=flags,
                                     prefetch=[files[name] for name in prefetch]))
    tar_path = tmp_path / blob.blob_id
    tar_path.write_bytes(tar_bytes)
    return boot, tar_path, contents


def test_tarfs_mode_reads_from_the_tar(tmp_path):
    boot, tar_path, contents = _tarfs_image(tmp_path)
    with rafs.open(boot, blob_dir=tmp_path, validate=True) as image:
        assert image.reader.block_size == 512
        for name, data in contents.items():
            assert image.read(name) == data
        assert list(image.check(verify_data=True)) == []


@pytest.mark.privileged
def test_tarfs_mode_matches_kernel_mount(tmp_path, kernel_mount):
    boot, tar_path, contents = _tarfs_image(tmp_path)
    mountpoint = kernel_mount(boot, tar_path)
    with rafs.open(boot, blobs=[tar_path]) as image:
        assert _rafs_stats(image) == _kernel_stats(mountpoint)
        for name in contents:
            assert image.read(name) == (mountpoint / name).read_bytes()


def test_prefetch_table_holds_nids(tmp_path):
    boot, _, _ = _tarfs_image(tmp_path, prefetch=("top", "d/short"))
    with rafs.open(boot, blob_dir=tmp_path) as image:
        assert image.reader.prefetch_inodes() == [image.lstat("/top").st_ino, image.lstat("/d/short").st_ino]
        assert image.reader.describe_extra()["superblock_ext"]["s_prefetch_table_size"] == 8
