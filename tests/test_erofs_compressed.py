"""Compressed EROFS images (mkfs.erofs -z): rafs reads every file equal to the source and to a kernel mount.

mkfs.erofs here is erofs-utils 1.5 (lz4 and lz4hc; compact and, with legacy-compress, full indexes; big
pclusters; ztailpacking). The algorithms and layouts it cannot make (MicroLZMA, DEFLATE, zstd, a second
HEAD2 algorithm, interlaced plain pclusters, fragments, PARTIAL_REF dedupe extents, big pclusters in full
indexes) come from tests/erofs_zimage.py, and the running kernel is the judge of those images too.
"""

from __future__ import annotations

import os
import pathlib
import random
import shutil
import subprocess
import sys

import pytest

import rafs
from conftest import need
from erofs_zimage import BS, Extent, ZFile, build
from rafs.v6 import layout, zdecompress, zmap

DIR_ENTRIES = 500
# name -> mkfs.erofs options
MKFS_OPTIONS = {
    "lz4": ["-zlz4"],
    "lz4hc": ["-zlz4hc,12"],
    "big_pcluster": ["-zlz4", "-C65536"],
    "ztailpacking": ["-zlz4hc", "-Eztailpacking"],
    "big_ztailpacking": ["-zlz4", "-C16384", "-Eztailpacking"],
    "legacy": ["-zlz4", "-Elegacy-compress"],           # full indexes, no zero padding
    "legacy_ztailpacking": ["-zlz4", "-Elegacy-compress", "-Eztailpacking"],
}


def _text(lines: int, seed: int = 0) -> bytes:
    return b"".join(b"line %d of file %d: %s\n" % (i, seed, b"ab" * (i % 17)) for i in range(lines))


def make_tree(root: pathlib.Path) -> dict[str, bytes]:
    """Files of every shape that changes how a compressor cuts extents; returns path -> content."""
    rng = random.Random(17)
    files = {
        "empty": b"",
        "tiny": b"hi\n",
        "text.txt": _text(20_000),
        "random.bin": rng.randbytes(300_000),
        "zeros": bytes(200_000),
        "sparse": b"".join(bytes(50_000) + rng.randbytes(700) for _ in range(12)),
        "mixed": b"".join(rng.randbytes(3000) if rng.random() < 0.5 else bytes([rng.randrange(256)]) * 5000
                          for _ in range(500)),
        "big/multi_mb": b"".join(rng.randbytes(2000) + _text(200, i) for i in range(120)),
        "dir/dup1": b"ABCD" * 20_000 + b"tail1",
        "dir/dup2": b"ABCD" * 20_000 + b"tail2xyz",
    }
    for n in (4095, 4096, 4097, 8191, 65537):
        files[f"sizes/s{n}"] = (_text(n // 30 + 1, n)[: n // 2] + rng.randbytes(n))[:n]
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    os.symlink("text.txt", root / "link")
    return files


@pytest.fixture(scope="module")
def mkfs_images(tmp_path_factory):
    """(source files, {name: image path}) for every MKFS_OPTIONS entry."""
    mkfs = shutil.which("mkfs.erofs")
    need(mkfs is not None, "mkfs.erofs is not installed")
    base = tmp_path_factory.mktemp("zerofs")
    files = make_tree(base / "src")
    images = {}
    for name, options in MKFS_OPTIONS.items():
        images[name] = base / f"{name}.erofs"
        subprocess.run([mkfs, "--quiet", "-T1700000000", *options, str(images[name]), str(base / "src")],
                       check=True, capture_output=True)
    return files, images


def generated_files() -> list[ZFile]:
    """Files laid out by hand for what mkfs.erofs 1.5 cannot write."""
    rng = random.Random(29)
    files = []
    for alg in ("lz4", "lzma", "deflate", "zstd"):
        data = _text(3000, len(files))
        files.append(ZFile(alg, data, [Extent(s) for s in range(0, len(data), BS)], head1=alg))
    # two algorithms in one file (HEAD1/HEAD2), extents starting inside lclusters, a plain extent
    data = _text(4000, 9)
    files.append(ZFile("two_algorithms", data, [Extent(0), Extent(BS + 1000, "head2"), Extent(2 * BS + 10, "plain"),
                                                Extent(3 * BS + 10)] +
                       [Extent(s, "head2") for s in range(4 * BS, len(data), 2 * BS)], head1="zstd", head2="lzma"))
    # interlaced plain pclusters: rotated by where their extent starts in its block
    data = (_text(300, 3)[:BS + 700] + rng.randbytes(20_000))[:5 * BS + 700 + 3000]
    files.append(ZFile("interlaced", data, [Extent(0)] + [Extent(k * BS + 700, "plain") for k in range(1, 6)],
                       head1="deflate", interlaced=True))
    # big pclusters in a full index: 2 and 3 blocks, CBLKCNT in the first NONHEAD
    data = (rng.randbytes(6000) + bytes(3 * BS + 5 - 6000) + rng.randbytes(10_000) + bytes(4 * BS - 5 - 10_000) +
            _text(6000, 4))[:120_000]
    files.append(ZFile("big_full", data, [Extent(0, blocks=2), Extent(3 * BS + 5, blocks=3), Extent(7 * BS)] +
                       [Extent(s) for s in range(8 * BS, len(data), BS)], head1="zstd", big=True))
    # ztailpacking: the tail pcluster inline after the index, compressed or plain
    for alg in ("lzma", "deflate", "zstd"):
        data = _text(700, 11)
        tail = (len(data) // BS) * BS + 37
        files.append(ZFile(f"inline_{alg}", data, [Extent(s) for s in range(0, tail - 37, BS)] +
                           [Extent(tail, "inline")], head1=alg))
    data = _text(700, 12) + rng.randbytes(900)
    tail = (len(data) // BS) * BS + 37
    files.append(ZFile("inline_plain", data, [Extent(s) for s in range(0, tail - 37, BS)] +
                       [Extent(tail, "inline_plain")], head1="zstd"))
    # the tail extent in the packed inode; a whole file in the packed inode
    data = _text(2000, 5)
    tail = (len(data) // BS - 1) * BS + 123
    files.append(ZFile("tail_fragment", data, [Extent(s) for s in range(0, tail - 123, BS)] +
                       [Extent(tail, "fragment")], head1="lzma"))
    files.append(ZFile("whole_fragment", b"a whole file in the packed inode\n" * 100, whole_fragment=True))
    # dedupe: extents that are prefixes of their pcluster's data (PARTIAL_REF)
    data = _text(2500, 6)
    extents = [Extent(0, extra=b"bytes beyond the extent" * 20), Extent(BS, extra=rng.randbytes(100)),
               Extent(2 * BS, "head2", extra=b"z" * 600)] + [Extent(s) for s in range(3 * BS, len(data), BS)]
    files.append(ZFile("partial_ref", data, extents, head1="lz4", head2="deflate"))
    # a compressed directory (several blocks of dirents) of links to the files above
    files.append(ZFile("zdir", b"", head1="zstd", dir_entries=DIR_ENTRIES))
    return files


@pytest.fixture(scope="module")
def generated_image(tmp_path_factory):
    files = generated_files()
    path = tmp_path_factory.mktemp("zgen") / "generated.erofs"
    path.write_bytes(build(files))
    return {f.name: f.data for f in files if not f.dir_entries}, path


def _read_all(image) -> dict[str, bytes]:
    out = {}
    for top, _, names in image.walk("/"):
        for name in names:
            path = f"{top.rstrip('/')}/{name}"
            if image.inode(path).is_reg:
                out[path.lstrip("/")] = image.read(path)
    return out


@pytest.mark.parametrize("name", MKFS_OPTIONS)
def test_mkfs_image_reads_like_source(mkfs_images, name):
    files, images = mkfs_images
    with rafs.open(images[name]) as image:
        assert _read_all(image) == files
        assert image.readlink("/link") == "text.txt"
        assert list(image.check(verify_data=True)) == []
        with image.open("/big/multi_mb") as f:          # random access inside extents
            f.seek(1_000_003)
            assert f.read(70_000) == files["big/multi_mb"][1_000_003:1_070_003]


def test_mkfs_images_cover_the_layouts(mkfs_images):
    """The images above really exercise what they are meant to (guards against a silent fallback)."""
    _, images = mkfs_images
    seen = set()
    for name, path in images.items():
        with rafs.open(path) as image:
            reader = image.reader
            for _, inode in image.iter_entries():
                rec = reader.record(inode.ino)
                if rec.datalayout not in (layout.EROFS_INODE_COMPRESSED_FULL, layout.EROFS_INODE_COMPRESSED_COMPACT):
                    continue
                seen.add(rec.layout_name)
                advise = int.from_bytes(reader.data[(rec.body_end + 7) & ~7:][4:6], "little")
                if advise & layout.Z_EROFS_ADVISE_COMPACTED_2B and rec.size > 64 * BS:
                    seen.add("compact_2b")
                for ext in reader.zdata.extents(inode.ino):
                    seen.add({zmap.PCLUSTER: "pcluster", zmap.INLINE: "inline", zmap.FRAGMENT: "fragment"}[ext.kind])
                    if ext.kind == zmap.INLINE:
                        seen.add(f"inline_{rec.layout_name}")
                    seen.add(zdecompress.ALGORITHM_NAMES[ext.algorithm])
                    if ext.plen > BS and ext.kind == zmap.PCLUSTER:
                        seen.add(f"big_{rec.layout_name}")
            if not reader.zdata.mapper.zero_padding:
                seen.add("no_zero_padding")
    assert {"compressed_compact", "compressed_full", "compact_2b", "pcluster", "inline", "lz4", "plain",
            "big_compressed_compact", "no_zero_padding", "inline_compressed_full"} <= seen


def test_generated_image_reads_like_source(generated_image):
    files, path = generated_image
    with rafs.open(path) as image:
        assert _read_all(image) == {**files, **{f"zdir/{k}": v for k, v in _zdir_expected(files).items()}}
        assert list(image.check(verify_data=True)) == []
        kinds = {(ext.kind, ext.algorithm, ext.partial) for name in files
                 for ext in image.reader.zdata.extents(image.stat(f"/{name}").st_ino)}
    algorithms = {alg for _, alg, _ in kinds}
    assert algorithms >= {0, 1, 2, 3, zdecompress.SHIFTED, zdecompress.INTERLACED}
    assert {zmap.PCLUSTER, zmap.INLINE, zmap.FRAGMENT} == {kind for kind, _, _ in kinds}
    assert any(partial for _, _, partial in kinds)


def test_cli_check_reads_every_extent(generated_image, mkfs_images, tmp_path):
    _, path = generated_image
    for image in (path, mkfs_images[1]["legacy"]):
        result = subprocess.run([sys.executable, "-m", "rafs", "check", "-D", str(tmp_path), str(image)],
                                capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        assert "passed" in result.stdout


def test_extractall(mkfs_images, tmp_path):
    files, images = mkfs_images
    with rafs.open(images["big_ztailpacking"]) as image:
        image.extractall(tmp_path / "out")
    for rel, data in files.items():
        assert (tmp_path / "out" / rel).read_bytes() == data


@pytest.mark.parametrize("name", MKFS_OPTIONS)
def test_mkfs_image_matches_kernel(mkfs_images, name, kernel_mount):
    files, images = mkfs_images
    mountpoint = kernel_mount(images[name])
    with rafs.open(images[name]) as image:
        for rel, data in _read_all(image).items():
            assert (mountpoint / rel).read_bytes() == data, rel


def test_generated_image_matches_kernel(generated_image, kernel_mount):
    files, path = generated_image
    mountpoint = kernel_mount(path)
    with rafs.open(path) as image:
        for name, data in files.items():
            assert (mountpoint / name).read_bytes() == data == image.read(f"/{name}"), name


# -- hostile images ---------------------------------------------------------------------------------


def _one_file_image(zfile: ZFile) -> tuple[bytearray, int, int]:
    """(image bytes, nid, offset of its map header) of an image holding just ``zfile``."""
    data = bytearray(build([zfile]))
    image = rafs.open(bytes(data))
    nid = image.stat(f"/{zfile.name}").st_ino
    rec = image.reader.record(nid)
    return data, nid, (rec.body_end + 7) & ~7


def _simple(alg: str = "zstd") -> ZFile:
    data = _text(1000, 1)
    return ZFile("f", data, [Extent(s) for s in range(0, len(data), BS)], head1=alg)


def _read_fails(data, exc=rafs.InvalidImageError, match=None):
    with rafs.open(bytes(data)) as image:
        with pytest.raises(exc, match=match):
            image.read("/f")
        assert list(image.check(verify_data=True))


def test_pcluster_outside_the_image_is_refused():
    data, _, header = _one_file_image(_simple())
    first_entry = header + 16
    data[first_entry + 4:first_entry + 8] = (0x00FF_FFFF).to_bytes(4, "little")
    _read_fails(data, match="outside the image")


def test_corrupt_stream_is_an_image_error():
    for alg in ("lz4", "lzma", "deflate", "zstd"):
        data, _, header = _one_file_image(_simple(alg))
        blkaddr = int.from_bytes(data[header + 20:header + 24], "little")
        block = data[blkaddr * BS:(blkaddr + 1) * BS]
        start = len(block) - len(block.lstrip(b"\0"))
        if alg == "lzma":
            # all-zero range-coder input is valid LZMA (it decodes to zeros): break the properties byte
            data[blkaddr * BS + start] = 0x01
        else:
            data[blkaddr * BS + start + 1:(blkaddr + 1) * BS] = bytes(BS - start - 1)
        _read_fails(data)


def test_all_zero_pcluster_is_refused():
    data, _, header = _one_file_image(_simple())
    blkaddr = int.from_bytes(data[header + 20:header + 24], "little")
    data[blkaddr * BS:(blkaddr + 1) * BS] = bytes(BS)
    _read_fails(data, match="zero padding")


def test_huge_declared_size_costs_nothing():
    data, nid, _ = _one_file_image(_simple())
    image = rafs.open(bytes(data))
    inode_at = image.reader.inode_offset(nid)
    data[inode_at + 8:inode_at + 16] = (1 << 50).to_bytes(8, "little")      # i_size of the extended inode
    _read_fails(data, match="run past the image")


@pytest.mark.parametrize("alg", ["lz4", "deflate", "zstd"])
def test_stream_longer_than_its_extent(alg, tmp_path, kernel_mount):
    """A pcluster that decodes to more than its extent reads as its prefix, marked a partial reference
    (dedupe) or not, as the kernel reads it; the decoder never makes more than the extent."""
    zf = _simple(alg)
    zf.extents = [Extent(0), Extent(2 * BS)] + [Extent(s) for s in range(3 * BS, len(zf.data), BS)]
    data, _, header = _one_file_image(zf)
    # lcluster 1 (a NONHEAD) becomes a head sharing lcluster 0's pcluster, which holds 8192 bytes:
    # both extents are now 4096 bytes long
    entry0, entry1 = header + 16, header + 24
    data[entry1:entry1 + 8] = data[entry0:entry0 + 8]
    for partial_ref in (False, True):
        if partial_ref:
            for entry in (entry0, entry1):
                data[entry + 1] |= layout.Z_EROFS_LI_PARTIAL_REF >> 8
        path = tmp_path / f"{partial_ref}.erofs"
        path.write_bytes(data)
        with rafs.open(path) as image:
            content = image.read("/f")
            assert content[:2 * BS] == zf.data[:BS] * 2
            assert list(image.check(verify_data=True)) == []
        assert (kernel_mount(path) / "f").read_bytes() == content


def test_unknown_or_unlisted_algorithm():
    data, _, header = _one_file_image(_simple("zstd"))
    data[header + 6] = 0x07                                          # HEAD1 algorithm 7
    _read_fails(data, rafs.UnsupportedError, match="algorithm")
    data[header + 6] = 0x01                                          # lzma: not in available_compr_algs
    _read_fails(data, match="does not list")


def test_fragment_outside_the_packed_inode():
    zf = ZFile("f", b"whole file\n" * 50, whole_fragment=True)
    data, _, header = _one_file_image(zf)
    data[header:header + 8] = ((1 << 40) | 1 << 63).to_bytes(8, "little")
    _read_fails(data, match="packed inode")


def test_lz4_partial_decoder_bounds():
    with pytest.raises(rafs.InvalidImageError, match="distance"):
        zdecompress.lz4_partial(b"\x10a\x05\x00", 100, 0)           # a match reaching before the output
    with pytest.raises(rafs.InvalidImageError, match="decodes to"):
        zdecompress.lz4_partial(b"\x30abc", 100, 0)
    assert zdecompress.lz4_partial(b"\x1fa\x01\x00\xff\xff\x10", 50, 0) == b"a" * 50


def test_fragment_size_is_bounded_by_the_packed_inode():
    """A whole-file fragment declaring 2^60 bytes: refused when mapped, before any chunk list is made."""
    zf = ZFile("f", b"whole file\n" * 50, whole_fragment=True)
    data, nid, _ = _one_file_image(zf)
    inode_at = rafs.open(bytes(data)).reader.inode_offset(nid)
    data[inode_at + 8:inode_at + 16] = (1 << 60).to_bytes(8, "little")
    with rafs.open(bytes(data)) as image:
        with pytest.raises(rafs.InvalidImageError, match="packed inode"):
            image.chunks("/f")


def test_inspect_reports_compression(generated_image):
    _, path = generated_image
    with rafs.open(path) as image:
        assert image.reader.describe_extra()["compression"]["algorithms"] == ["lz4", "lzma", "deflate", "zstd"]


def test_mutated_indexes_fail_cleanly(generated_image):
    """Random byte changes in the metadata of compressed files: every outcome is data or a rafs error."""
    _, path = generated_image
    base = path.read_bytes()
    rng = random.Random(4)
    for _ in range(80):
        data = bytearray(base)
        for _ in range(rng.randrange(1, 5)):
            data[rng.randrange(1024, 16 * BS)] = rng.randrange(256)
        try:
            with rafs.open(bytes(data)) as image:
                list(image.check(verify_data=True))
        except rafs.RafsError:
            pass


def _zdir_expected(files: dict[str, bytes]) -> dict[str, bytes]:
    names = list(files)                 # the generator links e{i} to the i-th file (mod their number)
    return {f"e{i:05d}": files[names[i % len(names)]] for i in range(DIR_ENTRIES)}


def test_compressed_directory(generated_image, kernel_mount):
    files, path = generated_image
    expected = _zdir_expected(files)
    with rafs.open(path) as image:
        rec = image.reader.record(image.stat("/zdir").st_ino)
        assert rec.layout_name == "compressed_full" and rec.size > 2 * BS
        assert sorted(image.listdir("/zdir")) == sorted(expected)
        for name in ("e00000", "e00377", f"e{DIR_ENTRIES - 1:05d}"):
            assert image.read(f"/zdir/{name}") == expected[name]
        assert image.exists("/zdir/e00250") and not image.exists("/zdir/e99999")
    mountpoint = kernel_mount(path)
    assert sorted(os.listdir(mountpoint / "zdir")) == sorted(expected)
    assert (mountpoint / "zdir" / "e00377").read_bytes() == expected["e00377"]


def test_fuse_serves_compressed_files(mkfs_images, tmp_path):
    from test_fuse_support import Mount, need_fuse
    need_fuse()
    files, images = mkfs_images
    mount = Mount(["-B", str(images["big_ztailpacking"])], tmp_path / "mnt", tmp_path / "mount.log")
    try:
        for rel, data in files.items():
            assert (tmp_path / "mnt" / rel).read_bytes() == data, rel
    finally:
        mount.close()
