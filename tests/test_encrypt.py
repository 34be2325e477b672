"""Encrypted images (``rafs create --encrypt``): AES-128-XTS chunks, CI array and CI header, the key
and IV in the blob table as nydus-image stores them; read back, checked, never shown."""

from __future__ import annotations

import json
import os
import random

import pytest

import rafs
from rafs.blob import codecs, crypt, layout
from rafs.blob.meta import load_blob_meta, parse_ci_header
from rafs.cli.main import main as cli_main
from rafs.model import BlobFeatures, ChunkFlags, SuperFlags

from helpers import verify_tree

TEXT = b"an encrypted line of very compressible text\n" * 2000


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    top = tmp_path_factory.mktemp("encrypt-src") / "tree"
    rng = random.Random(5)
    os.makedirs(top / "d")
    (top / "text").write_bytes(TEXT)
    (top / "tiny").write_bytes(b"0123456789")          # shorter than one XTS data unit once stored raw
    (top / "multi").write_bytes(rng.randbytes(0x250000))
    for i in range(30):
        (top / "d" / f"f{i}").write_bytes(rng.randbytes(rng.choice([5, 300, 4000, 40000])))
    return top


def build(source, out, **options):
    out.mkdir(exist_ok=True)
    return rafs.Builder(str(source), fs_version=6, encrypt=True, **options).write(bootstrap=out / "boot",
                                                                                 blob_dir=out)


@pytest.mark.parametrize("batch_size", [0, 0x1000, 0x10000, 0x100000], ids=hex)
@pytest.mark.parametrize("compressor", ["zstd", "lz4_block", "none"])
def test_round_trip(tree, source_tree, tmp_path, compressor, batch_size):
    for name, source in (("small", tree), ("tree", source_tree)):
        out = tmp_path / name
        result = build(source, out, compressor=compressor, batch_size=batch_size)
        with rafs.open(result.bootstrap, blob_dir=out, validate=True) as image:
            blob = image.blobs[0]
            assert blob.cipher == "aes128xts" and len(blob.cipher_key) == 32 and len(blob.cipher_iv) == 16
            assert blob.has(BlobFeatures.ENCRYPTED) and blob.has(BlobFeatures.CHUNK_INFO_V2)
            assert image.superblock is not None and image.reader.flags & SuperFlags.ENCRYPTION_ASE_128_XTS
            assert not image.reader.flags & SuperFlags.ENCRYPTION_NONE
            meta = load_blob_meta(blob, open(out / blob.blob_id, "rb"))
            assert all(info.flags & ChunkFlags.ENCRYPTED for info in meta.chunks)
            table = image.reader.chunk_table()
            for index, info in enumerate(meta.chunks):
                record = table[(0, index)]
                assert record.flags & ChunkFlags.ENCRYPTED
                if not info.is_batch:
                    assert (record.compressed_offset, record.compressed_size) == (info.compressed_offset,
                                                                                  info.compressed_size)
            assert list(image.check(verify_data=True)) == []
            verify_tree(image, source)
        assert cli_main(["check", str(result.bootstrap), "-D", str(out)]) == 0


def test_what_is_encrypted(tree, tmp_path):
    """Chunks and the CI header are ciphertext; decrypted with the table's key and IV the header is
    a CI header and the chunk the compressed file; short stored data is padded as the reference pads."""
    result = build(tree, tmp_path, compressor="zstd")
    data = (tmp_path / result.blob_id).read_bytes()
    with rafs.open(result.bootstrap, blob_dir=tmp_path) as image:
        blob = image.blobs[0]
        (chunk,) = image.chunks("/text")
        stored = data[chunk.compressed_offset:chunk.compressed_offset + chunk.compressed_size]
        assert b"compressible" not in data
        plain = crypt.decrypt("aes128xts", blob.cipher_key, blob.cipher_iv, stored)
        assert codecs.decompress("zstd", plain, len(TEXT)) == TEXT
        raw_header = data[blob.ci_offset + blob.ci_compressed_size:][:layout.BLOB_CCT_HEADER_SIZE]
        assert len(raw_header) == layout.BLOB_CCT_HEADER_SIZE
        assert raw_header[:4] != layout.BLOB_CCT_MAGIC.to_bytes(4, "little")
        header = parse_ci_header(crypt.decrypt("aes128xts", blob.cipher_key, blob.cipher_iv, raw_header))
        assert header.s_ci_entries == blob.chunk_count and header.s_features & BlobFeatures.ENCRYPTED
        (tiny,) = image.chunks("/tiny")
        assert tiny.compressed_size == crypt.PADDING_LENGTH
        assert image.read("/tiny") == b"0123456789"


def test_every_build_has_its_own_key(tree, tmp_path):
    first, second = build(tree, tmp_path / "a"), build(tree, tmp_path / "b")
    assert first.blob_id != second.blob_id
    with rafs.open(first.bootstrap) as a, rafs.open(second.bootstrap) as b:
        assert a.blobs[0].cipher_key != b.blobs[0].cipher_key
        assert a.blobs[0].cipher_iv != b.blobs[0].cipher_iv


def test_the_key_is_never_shown(tree, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    assert cli_main(["create", str(tree), "-B", str(out / "boot"), "-D", str(out), "--encrypt",
                     "-J", str(tmp_path / "create.json")]) == 0
    with rafs.open(out / "boot", blob_dir=out) as image:
        blob = image.blobs[0]
        secrets = [blob.cipher_key.hex(), blob.cipher_iv.hex(), blob.cipher_key[:8].hex(),
                   blob.cipher_iv[:8].hex()]
        shown = [repr(blob), str(blob), repr(image)]
    blob_path = out / blob.blob_id
    for argv in (["inspect", str(out / "boot")], ["check", "-v", str(out / "boot"), "-D", str(out)],
                 ["check", str(out / "boot"), "-J", str(tmp_path / "check.json")],
                 ["blob-info", str(blob_path), "--chunks"]):
        cli_main(argv)
    captured = capsys.readouterr()
    shown += [captured.out, captured.err, (tmp_path / "create.json").read_text(),
              (tmp_path / "check.json").read_text()]
    for text in shown:
        for secret in secrets:
            assert secret not in text.lower()
        assert str(int.from_bytes(blob.cipher_iv[:8], "little")) not in text


def test_a_wrong_key_is_an_invalid_image(tree, tmp_path):
    result = build(tree, tmp_path)
    boot = bytearray((tmp_path / "boot").read_bytes())
    with rafs.open(result.bootstrap) as image:
        key = image.blobs[0].cipher_key
    at = boot.index(key)
    boot[at + 3] ^= 0x40
    (tmp_path / "boot").write_bytes(boot)
    with rafs.open(tmp_path / "boot", blob_dir=tmp_path) as image:
        with pytest.raises(rafs.InvalidImageError):
            load_blob_meta(image.blobs[0], open(tmp_path / result.blob_id, "rb"))
        with pytest.raises(rafs.RafsError):
            image.read("/text")
        assert list(image.check(verify_data=True))


@pytest.mark.parametrize("options, message", [
    ({"fs_version": 5}, "--encrypt needs --fs-version 6"),
    ({"compressor": "none", "blob_layout": "mapped"}, "cannot be combined with --encrypt"),
])
def test_refused_options(tree, options, message):
    with pytest.raises(rafs.InvalidArgumentError, match=message):
        rafs.Builder(str(tree), encrypt=True, **options)


def test_secrets_are_checked_and_tweaked():
    key, iv = crypt.new_secrets("aes128xts", b"\x11" * 32, b"\x22" * 16)
    assert key == b"\xa5" * 16 + b"\x11" * 16 and iv == b"\x22" * 16
    key, _ = crypt.new_secrets("aes128xts", b"\xa5" * 32, bytes(16))
    assert key == b"\x5a" * 16 + b"\xa5" * 16
    with pytest.raises(rafs.InvalidArgumentError):
        crypt.new_secrets("aes128xts", b"short", bytes(16))


@pytest.mark.privileged
def test_kernel_mounts_an_encrypted_bootstrap(source_tree, tmp_path, kernel_mount):
    from test_build_kernel import assert_mount_matches
    result = build(source_tree, tmp_path, batch_size=0x10000)
    assert_mount_matches(kernel_mount(result.bootstrap), source_tree)


@pytest.mark.privileged
def test_fuse_serves_encrypted_images(tree, tmp_path):
    from test_fuse_support import Mount, diff_r, guide_config, need_fuse
    need_fuse()
    result = build(tree, tmp_path, batch_size=0x10000)
    config = tmp_path / "config.json"
    config.write_text(json.dumps(guide_config(tmp_path, tmp_path / "cache")))
    mount = Mount(["--config", str(config), "--bootstrap", str(result.bootstrap)], tmp_path / "mnt",
                  tmp_path / "rafs.log")
    try:
        assert diff_r(tree, mount.path) == []
    finally:
        mount.close()
