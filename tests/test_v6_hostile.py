"""Hostile RAFS v6 and EROFS images: every mutant opens, walks, stats and reads cleanly or raises a
rafs error, within a time bound; loops, nids outside the image and overlapping ranges are refused."""

from __future__ import annotations

import collections
import os
import shutil
import subprocess

import pytest

import rafs
from conftest import need
from hostile import bit_flips, check_mutant, truncations
from rafs.v6 import layout
from rafs.v6.dirent import DIRENT
from rafs.v6.reader import V6Reader, erofs_sb_checksum


@pytest.fixture(scope="module")
def v6_bytes(v6_fixture):
    return v6_fixture[0].read_bytes()


@pytest.fixture(scope="module")
def erofs_bytes(tmp_path_factory) -> bytes:
    """A small mkfs.erofs image: nested dirs, inline and plain files, symlinks, xattrs, a device."""
    mkfs = shutil.which("mkfs.erofs")
    need(mkfs is not None, "mkfs.erofs is not installed (Debian package erofs-utils)")
    base = tmp_path_factory.mktemp("hostile-erofs")
    src = base / "src"
    (src / "a" / "b" / "c").mkdir(parents=True)
    (src / "a" / "b" / "c" / "deep.txt").write_bytes(b"deep\n")
    (src / "a" / "b" / "sub").mkdir()
    (src / "small").write_bytes(b"small file\n")
    (src / "block").write_bytes(bytes(range(256)) * 40)
    (src / "big").write_bytes(bytes(range(251)) * 900)
    for i in range(120):
        (src / "a" / f"f{i:03d}").write_bytes(b"%d" % i)
    os.symlink("small", src / "link")
    os.symlink("x" * 600, src / "longlink")
    os.setxattr(src / "small", "user.k", b"v")
    os.setxattr(src / "block", "trusted.t", b"w" * 40)
    for i in range(3):
        os.setxattr(src / "a" / f"f{i:03d}", "user.shared", b"same")
    os.mkfifo(src / "fifo")
    image = base / "small.erofs"
    subprocess.run([mkfs, "--quiet", "-T1700000000", "-U6a1d0c1e-2f3b-4c5d-8e9f-0a1b2c3d4e5f", str(image), str(src)],
                   check=True, capture_output=True)
    return image.read_bytes()


def _outcomes(mutants, **open_kwargs) -> collections.Counter:
    outcomes = collections.Counter()
    for description, mutant in mutants:
        outcomes[check_mutant(description, mutant, seconds=5.0, **open_kwargs)] += 1
    return outcomes


def test_sound_images_pass(v6_bytes, v6_fixture, erofs_bytes):
    assert check_mutant("v6 fixture", v6_bytes, blob_dir=v6_fixture[1], validate=True) == "ok"
    assert check_mutant("mkfs.erofs image", erofs_bytes) == "ok"


def test_truncated_v6_bootstraps_are_invalid(v6_bytes, v6_fixture):
    for description, mutant in truncations(v6_bytes, 60):
        outcome = check_mutant(description, mutant, blob_dir=v6_fixture[1])
        assert outcome == "InvalidImageError", (description, outcome)


def test_truncated_erofs_images_never_escape(erofs_bytes):
    # a plain EROFS image has no size rule: cut short it fails where a read crosses the end
    outcomes = _outcomes(truncations(erofs_bytes, 60))
    assert outcomes["InvalidImageError"] >= 55, outcomes


def test_bit_flipped_v6_bootstraps_never_escape(v6_bytes, v6_fixture):
    # the whole file, then denser over the superblocks, device slot, blob table, inodes and chunk table
    mutants = list(bit_flips(v6_bytes, 80, seed=61))
    mutants += list(bit_flips(v6_bytes, 60, seed=62, span=(1024, 1536)))
    mutants += list(bit_flips(v6_bytes, 40, seed=63, span=(4096, 4352)))
    mutants += list(bit_flips(v6_bytes, 60, seed=64, span=(8192 + 4096, 8192 + 4096 + 512)))
    mutants += list(bit_flips(v6_bytes, 30, seed=65, span=(16384, 16384 + 160)))
    outcomes = _outcomes(mutants, blob_dir=v6_fixture[1], validate=True)
    # flips in reserved bytes, times and ids are harmless; those in the structure must be caught
    assert outcomes["InvalidImageError"] + outcomes["DigestMismatchError"] >= 35, outcomes
    assert outcomes["ok"] >= 20, outcomes


def test_bit_flipped_erofs_images_never_escape(erofs_bytes):
    reader = V6Reader(erofs_bytes)
    meta_end = min(len(erofs_bytes), reader.meta_base + 3 * 4096)
    mutants = list(bit_flips(erofs_bytes, 60, seed=71))
    mutants += list(bit_flips(erofs_bytes, 40, seed=72, span=(1024, 1152)))
    # past the checksummed superblock block: inodes, xattrs, dirents and chunk indexes
    mutants += list(bit_flips(erofs_bytes, 120, seed=73, span=(4096 if reader.meta_base < 4096 else
                                                                 reader.meta_base, meta_end)))
    outcomes = _outcomes(mutants)
    assert outcomes["InvalidImageError"] >= 30, outcomes


def test_zeroed_regions_never_escape(v6_bytes, v6_fixture, erofs_bytes):
    for data, kwargs in ((v6_bytes, {"blob_dir": v6_fixture[1]}), (erofs_bytes, {})):
        for start in range(1024, min(len(data), 40 * 1024), 512):
            mutant = bytearray(data)
            mutant[start:start + 128] = bytes(128)
            check_mutant(f"zeroed [{start:#x}, +128)", bytes(mutant), **kwargs)


def _rechecksum(data: bytearray, reader: V6Reader) -> bytes:
    if reader.superblock.s_feature_compat & layout.EROFS_FEATURE_COMPAT_SB_CHKSUM:
        checksum = erofs_sb_checksum(data, reader.block_size)
        data[layout.EROFS_SUPER_OFFSET + 4:layout.EROFS_SUPER_OFFSET + 8] = checksum.to_bytes(4, "little")
    return bytes(data)


def _dirent_offset(reader: V6Reader, dir_nid: int, name: bytes) -> int:
    """Byte offset of the dirent called ``name`` in a directory stored inline or in one plain block."""
    rec = reader.record(dir_nid)
    for file_offset, length, blob, offset in reader.flat_extents(rec):
        block = bytes(reader.data[offset:offset + length])
        count = DIRENT.unpack_from(block, 0).e_nameoff // 12
        for i, entry in enumerate(DIRENT.iter_unpack(block, 0, count)):
            end = DIRENT.unpack_from(block, 12 * (i + 1)).e_nameoff if i + 1 < count else len(block)
            if block[entry.e_nameoff:end].rstrip(b"\0") == name:
                return offset + 12 * i
    raise AssertionError(f"no dirent {name!r}")


def _retarget(data: bytes, dir_path: str, name: bytes, nid: int) -> bytes:
    reader = V6Reader(data)
    with rafs.open(data) as image:
        dir_nid = image.lstat(dir_path).st_ino
    at = _dirent_offset(reader, dir_nid, name)
    mutant = bytearray(data)
    mutant[at:at + 8] = nid.to_bytes(8, "little")
    return _rechecksum(mutant, reader)


def test_directory_loop_is_refused(erofs_bytes):
    reader = V6Reader(erofs_bytes)
    # /a/b/sub points back at /a: walking would never end
    with rafs.open(erofs_bytes) as image:
        a_nid = image.lstat("/a").st_ino
    mutant = _retarget(erofs_bytes, "/a/b", b"sub", a_nid)
    with pytest.raises(rafs.InvalidImageError, match="reachable twice"):
        with rafs.open(mutant) as image:
            list(image.iter_entries("/"))
    with pytest.raises(rafs.InvalidImageError, match="reachable twice"):
        with rafs.open(mutant) as image:
            list(image.iter_stats("/"))
    with pytest.raises(rafs.InvalidImageError):
        with rafs.open(mutant) as image:
            list(image.walk("/"))
    with pytest.raises(rafs.InvalidImageError, match="reachable twice"):
        with rafs.open(mutant) as image:
            image.tree("/")
    assert check_mutant("loop to an ancestor", mutant) == "InvalidImageError"
    # a directory containing itself
    mutant = _retarget(erofs_bytes, "/a/b", b"c", V6Reader(erofs_bytes).root_ino)
    assert check_mutant("loop to the root", mutant) == "InvalidImageError"
    assert reader.root_ino != a_nid


def test_nids_outside_the_image_are_refused(erofs_bytes, v6_bytes, v6_fixture):
    for nid in (len(erofs_bytes) // 32 + 7, 1 << 40, (1 << 64) - 1):
        mutant = _retarget(erofs_bytes, "/", b"small", nid)
        with rafs.open(mutant) as image:
            with pytest.raises(rafs.InvalidImageError, match="outside the image"):
                image.lstat("/small")
        assert check_mutant(f"nid {nid}", mutant) == "InvalidImageError"
    mutant = _retarget(v6_bytes, "/", b"lib.rs", 1 << 33)
    assert check_mutant("v6 nid past the end", mutant, blob_dir=v6_fixture[1]) == "InvalidImageError"
    # the root itself outside the image
    root = bytearray(erofs_bytes)
    root[layout.EROFS_SUPER_OFFSET + 14:layout.EROFS_SUPER_OFFSET + 16] = (0xFFFF).to_bytes(2, "little")
    with pytest.raises(rafs.InvalidImageError):
        rafs.open(_rechecksum(root, V6Reader(erofs_bytes)))


def test_overlapping_and_misplaced_ranges_are_refused(v6_bytes, erofs_bytes):
    ext = layout.EROFS_SUPER_OFFSET + layout.EROFS_SUPER_BLOCK_SIZE
    reader = V6Reader(v6_bytes)
    cases = {
        "chunk table on the blob table": (ext + 24, reader.superblock_ext.s_blob_table_offset.to_bytes(8, "little")),
        "prefetch table on the chunk table": (ext + 40, (reader.superblock_ext.s_chunk_table_offset + 8)
                                              .to_bytes(8, "little") + (16).to_bytes(4, "little")),
        "blob table past the end": (ext + 8, (len(v6_bytes)).to_bytes(8, "little")),
        "meta area past the end": (layout.EROFS_SUPER_OFFSET + 40, (1 << 20).to_bytes(4, "little")),
    }
    for description, (at, value) in cases.items():
        mutant = bytearray(v6_bytes)
        mutant[at:at + len(value)] = value
        with pytest.raises(rafs.InvalidImageError):
            V6Reader(bytes(mutant))
        assert check_mutant(description, bytes(mutant)) == "InvalidImageError"
    # an EROFS device table laid over the superblock
    plain = V6Reader(erofs_bytes)
    mutant = bytearray(erofs_bytes)
    sb = layout.EROFS_SUPER_OFFSET
    mutant[sb + 80:sb + 84] = (plain.superblock.s_feature_incompat | layout.EROFS_FEATURE_INCOMPAT_DEVICE_TABLE) \
        .to_bytes(4, "little")
    mutant[sb + 86:sb + 90] = (1).to_bytes(2, "little") + (8).to_bytes(2, "little")
    with pytest.raises(rafs.InvalidImageError, match="device table"):
        V6Reader(_rechecksum(mutant, plain))


def test_unknown_features_are_unsupported(erofs_bytes):
    plain = V6Reader(erofs_bytes)
    for bit in (layout.EROFS_FEATURE_INCOMPAT_48BIT, layout.EROFS_FEATURE_INCOMPAT_METABOX, 0x8000):
        mutant = bytearray(erofs_bytes)
        at = layout.EROFS_SUPER_OFFSET + 80
        mutant[at:at + 4] = (plain.superblock.s_feature_incompat | bit).to_bytes(4, "little")
        with pytest.raises(rafs.UnsupportedError):
            V6Reader(_rechecksum(mutant, plain))


def test_zeroed_and_foreign_data(v6_bytes):
    with pytest.raises(rafs.InvalidImageError):
        rafs.open(bytes(len(v6_bytes)))
    with pytest.raises(rafs.InvalidImageError):
        rafs.open(v6_bytes[:1028])
    with pytest.raises(rafs.InvalidImageError):
        V6Reader(b"\0" * 1024 + layout.EROFS_SUPER_MAGIC_V1.to_bytes(4, "little"))
