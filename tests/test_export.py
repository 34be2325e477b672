"""``rafs export --block [--verity]``: raw EROFS disks with dm-verity trees, as nydus-image exports them.

Checked against the reference (the sha256 its own export test expects for the v6 fixture), against the
kernel (a plain loop mount of the disk, no ``device=``), and against cryptsetup's ``veritysetup``
(``format`` makes the same tree, ``verify`` accepts it and refuses it after one flipped byte).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess

import pytest

import rafs
from rafs.cli.main import main as cli_main
from rafs.errors import InvalidImageError, UnsupportedError
from rafs.export import disk_layout, export_block
from rafs.verity import BLOCK_SIZE, SPARE_ZERO, VerityWriter, tree_size

from test_build_kernel import assert_mount_matches

# service/src/block_device.rs test_export: sha256 of rafs-v6-2.2.boot.disk exported with verity
REFERENCE_DISK_SHA256 = "5684c330c622350c12d633d0773201f862b9955375d806670e1aaf36ef038b31"


def _verity_options(line: str) -> tuple[list[str], str]:
    """(veritysetup options but the salt, root digest) from the line export prints."""
    assert line.startswith("dm-verity options: "), line
    words = line.split()[2:]
    assert words[2:4] == ["-s", '""'], words            # an empty salt
    return words[:2] + words[4:-1], words[-1]


def _veritysetup(tool, action: str, options: list[str], disk, root: str):
    """Run veritysetup with the empty salt ("-s -": the shell's "" cannot pass through argv as such)."""
    argv = [tool("veritysetup"), action] + options + ["-s", "-"]
    return subprocess.run(argv + [str(disk), str(disk), root], capture_output=True, text=True)


def test_fixture_export_is_byte_identical_to_nydus_image(v6_fixture, tmp_path, capsys):
    bootstrap, blobs = v6_fixture
    work = tmp_path / "work"
    shutil.copytree(blobs, work)
    assert cli_main(["export", "--block", "--verity", "-B", str(bootstrap), "-D", str(work)]) == 0
    disk = work / "rafs-v6-2.2.boot.disk"           # nydus-image's default name and place
    assert hashlib.sha256(disk.read_bytes()).hexdigest() == REFERENCE_DISK_SHA256
    data = disk.read_bytes()
    # block_device.rs test_block_device: 0x209 blocks, EROFS magic in block 0
    assert data[1024:1028] == b"\xe2\xe1\xf5\xe0" and len(data) == 0x209 * BLOCK_SIZE + tree_size(0x209)
    options, root = _verity_options(capsys.readouterr().out.strip())
    assert f"--hash-offset {0x209 * BLOCK_SIZE}" in " ".join(options)
    # root = sha256 of the top page, which holds the digests of the leaf pages
    assert hashlib.sha256(data[0x209 * BLOCK_SIZE:][:BLOCK_SIZE]).hexdigest() == root


def test_fixture_export_through_a_blob_cache_entry(v6_fixture, tmp_path):
    bootstrap, blobs = v6_fixture
    entry = {"type": "bootstrap", "id": "disk", "domain_id": "block",
             "config_v2": {"version": 2, "id": "factory",
                           "backend": {"type": "localfs", "localfs": {"dir": str(blobs)}},
                           "cache": {"type": "dummycache"}, "metadata_path": str(bootstrap)}}
    import json
    (tmp_path / "entry.json").write_text(json.dumps(entry))
    out = tmp_path / "disk"
    assert cli_main(["export", "--block", "--verity", "-C", str(tmp_path / "entry.json"), "-O", str(out)]) == 0
    assert hashlib.sha256(out.read_bytes()).hexdigest() == REFERENCE_DISK_SHA256


def test_kernel_mounts_the_exported_disk(source_tree, tmp_path, kernel_mount):
    built = rafs.Builder(source_tree, fs_version=6, compressor="zstd", chunk_size=0x10000).write(
        bootstrap=tmp_path / "boot", blob_dir=tmp_path)
    with rafs.open(built.bootstrap, blob_dir=tmp_path) as image:
        result = export_block(image, tmp_path / "disk")
    assert result.root_digest is None and os.path.getsize(tmp_path / "disk") == result.blocks * BLOCK_SIZE
    assert_mount_matches(kernel_mount(tmp_path / "disk"), source_tree, contents=True)
    with rafs.open(built.bootstrap, blob_dir=tmp_path) as image:
        export_block(image, tmp_path / "verity-disk", verity=True)
    # the tree after the data blocks does not disturb the file system
    assert_mount_matches(kernel_mount(tmp_path / "verity-disk"), source_tree, contents=True)


def test_kernel_mounts_a_two_blob_export(source_tree, tmp_path, kernel_mount):
    """Two layers: two blobs at their own mapped block addresses, the gap between them zeros."""
    upper = tmp_path / "upper"
    (upper / "added").mkdir(parents=True)
    payload = os.urandom(300_000)
    (upper / "added" / "file").write_bytes(payload)
    lower = rafs.Builder(source_tree, fs_version=6, chunk_size=0x10000).write(bootstrap=tmp_path / "lower",
                                                                              blob_dir=tmp_path)
    top = rafs.Builder(upper, fs_version=6, chunk_size=0x10000, parent_bootstrap=lower.bootstrap).write(
        bootstrap=tmp_path / "top", blob_dir=tmp_path)
    with rafs.open(top.bootstrap, blob_dir=tmp_path) as image:
        layout = disk_layout(image)
        assert len(layout.regions) == 2
        export_block(image, tmp_path / "disk")
        expected = {os.fsdecode(path): image.read(path) for path, inode in image.iter_entries() if inode.is_reg}
    mnt = kernel_mount(tmp_path / "disk")
    assert (mnt / "added" / "file").read_bytes() == payload
    for path, content in expected.items():
        assert (mnt / path.lstrip("/")).read_bytes() == content, path


def test_veritysetup_verifies_a_zero_spare_tree_and_catches_a_flipped_byte(v6_fixture, tmp_path, tool, capsys):
    bootstrap, blobs = v6_fixture
    disk = tmp_path / "disk"
    assert cli_main(["export", "--block", "--verity", "--verity-spare", "zero", "-B", str(bootstrap),
                     "-D", str(blobs), "-O", str(disk)]) == 0
    options, root = _verity_options(capsys.readouterr().out.strip())
    ok = _veritysetup(tool, "verify", options, disk, root)
    assert ok.returncode == 0, ok.stderr
    with open(disk, "r+b") as f:                    # one byte of lib.rs's data, inside the blob's region
        f.seek(512 * BLOCK_SIZE + 100)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 1]))
    bad = _veritysetup(tool, "verify", options, disk, root)
    assert bad.returncode != 0 and "data area" in bad.stderr.lower() + bad.stdout.lower()


def test_nydus_spare_tree_differs_from_veritysetup_only_in_spare_slots(v6_fixture, tmp_path, capsys, tool):
    """The reference fills unused digest slots with the digest of a zero page; veritysetup verify calls
    that a non-zeroed spare area, the kernel does not look. Zeroing those slots gives veritysetup's tree."""
    bootstrap, blobs = v6_fixture
    for spare in ("nydus", "zero"):
        assert cli_main(["export", "--block", "--verity", "--verity-spare", spare, "-B", str(bootstrap),
                         "-D", str(blobs), "-O", str(tmp_path / spare)]) == 0
    capsys.readouterr()
    nydus, zero = (tmp_path / "nydus").read_bytes(), (tmp_path / "zero").read_bytes()
    start = 0x209 * BLOCK_SIZE
    assert nydus[:start] == zero[:start]
    leaf_n, leaf_z = nydus[start + BLOCK_SIZE:], zero[start + BLOCK_SIZE:]
    used = 0x209 * 32
    assert leaf_n[:used] == leaf_z[:used]
    assert leaf_n[used:] == hashlib.sha256(bytes(BLOCK_SIZE)).digest() * ((len(leaf_n) - used) // 32)
    assert leaf_z[used:] == bytes(len(leaf_z) - used)
    root = hashlib.sha256(nydus[start:start + BLOCK_SIZE]).hexdigest()
    options = ["--no-superblock", "--format=1", "--hash=sha256", "--data-blocks", str(0x209),
               "--hash-offset", str(start)]
    refused = _veritysetup(tool, "verify", options, tmp_path / "nydus", root)
    assert refused.returncode != 0 and "spare area" in refused.stderr.lower()


@pytest.mark.parametrize("blocks", [1, 2, 128, 129, 128 * 128 + 1])
def test_verity_tree_equals_veritysetup_format(tmp_path, tool, blocks):
    """Every tree geometry (no tree, one page, two levels, three levels) as veritysetup format writes it."""
    data = bytearray(blocks * BLOCK_SIZE)
    for i in range(0, blocks, 37):                  # some non-zero blocks, most zero (hashed as known)
        data[i * BLOCK_SIZE:i * BLOCK_SIZE + 8] = i.to_bytes(8, "little")
    fd = os.open(tmp_path / "ours", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        writer = VerityWriter(fd, 0, blocks, spare=SPARE_ZERO)
        for i in range(blocks):
            block = data[i * BLOCK_SIZE:(i + 1) * BLOCK_SIZE]
            if any(block):
                writer.update(block[:100])          # a block fed in two pieces
                writer.update(block[100:])
            else:
                writer.zeros(BLOCK_SIZE)
        root = writer.finish()
    finally:
        os.close(fd)
    (tmp_path / "data").write_bytes(data)
    (tmp_path / "hash").write_bytes(b"")
    made = subprocess.run([tool("veritysetup"), "format", "--no-superblock", "--format=1", "-s", "-",
                           "--hash=sha256", "--data-blocks", str(blocks), str(tmp_path / "data"),
                           str(tmp_path / "hash")], capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    theirs = [line.split(":", 1)[1].strip() for line in made.stdout.splitlines() if line.startswith("Root hash")]
    assert theirs == [root.hex()]
    assert (tmp_path / "ours").read_bytes() == (tmp_path / "hash").read_bytes()[:tree_size(blocks)]
    assert len((tmp_path / "ours").read_bytes()) == tree_size(blocks)


def test_export_refuses_v5_and_missing_blobs(v5_fixture, v6_fixture, tmp_path, capsys):
    bootstrap, blobs, _ = v5_fixture
    with rafs.open(bootstrap, blob_dir=blobs) as image, pytest.raises(UnsupportedError):
        export_block(image, tmp_path / "disk")
    assert cli_main(["export", "--block", "-B", str(v6_fixture[0]), "-D", str(tmp_path), "-O",
                     str(tmp_path / "disk")]) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "be7d77" in err
    assert not [name for name in os.listdir(tmp_path) if name != "disk" and name.startswith(".rafs-tmp")]
    assert not (tmp_path / "disk").exists()
    assert cli_main(["export", "--block", "-B", str(v6_fixture[0])]) == 2
    assert "--localfs-dir are missing" in capsys.readouterr().err


def test_export_refuses_blobs_mapped_backwards(v6_fixture, tmp_path):
    """A device slot pointing inside the bootstrap's own blocks is a broken image, not an overlap."""
    bootstrap, blobs = v6_fixture
    with rafs.open(bootstrap, blob_dir=blobs) as image:
        image.blobs[0].mapped_blkaddr = 2
        with pytest.raises(InvalidImageError, match="mapped at block 2"):
            export_block(image, tmp_path / "disk")


def test_export_refuses_more_data_than_the_chunks_hold(v6_fixture, tmp_path):
    """A blob declaring terabytes of data for two chunks is a broken image, not a disk to write."""
    bootstrap, blobs = v6_fixture
    with rafs.open(bootstrap, blob_dir=blobs) as image:
        image.blobs[0].uncompressed_size = 1 << 40
        with pytest.raises(InvalidImageError, match="more than its 2 chunks"):
            export_block(image, tmp_path / "disk")
    assert not os.listdir(tmp_path)
