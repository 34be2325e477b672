"""Blob ToC, tar headers, inline bootstraps and blob ids: the reference fixtures, the encoders the builder
uses (byte-identical to nydus-image output), and hostile blobs."""

from __future__ import annotations

import hashlib
import io
import json
import random
import tracemalloc

import pytest
import zstandard

import rafs
from rafs.blob import codecs
from rafs.ranges import BytesRangeReader
from rafs.blob.describe import describe_blob
from rafs.blob.tar_header import build_tar_header, parse_tar_header, walk_sections
from rafs.blob.toc import (TocEntry, compute_blob_id, extract_entry, extract_inline_bootstrap, read_toc,
                           toc_bytes)
from rafs.cli.main import main as cli_main
from rafs.errors import DigestMismatchError, InvalidImageError

TOC_BLOB_ID = "2fa78cad554b75ac91a4a125ed148d0ddeb25efa4aaa8bd80e5dc292690a4dca"
# TocLocation::with_digest(9010, 1024, [79, 223, 187, 54, ...]) in storage/src/meta/toc.rs tests
TOC_DIGEST = bytes.fromhex("4fdfbb36ef74a3c63a28e2abafa54044c7594155beb6ddad9f36825cfe58286c")
V6_BLOB_ID = "be7d77eeb719f70884758d1aa800ed0fb09d701aaec469964e9d54325f0d5fef"
V6_BLOB_SHA256 = "4b16fb83ae9f62d8263323b8569535e66ebf21171cf98fd94db9db27b59755ac"
V6_TOC_DIGEST = bytes.fromhex("cfc89ed0739aef4eb1bf0904f0dfdb1c857134eca7319465baae95a99b84acde")


@pytest.fixture(scope="module")
def toc_blob(fixtures):
    return fixtures / "toc" / TOC_BLOB_ID


@pytest.fixture(scope="module")
def v6_blob(fixtures):
    return fixtures / "blobs" / V6_BLOB_ID


# -- the reference's toc fixture (storage/src/meta/toc.rs tests) -------------------------------------

def test_toc_fixture_lists_four_entries(toc_blob):
    toc = read_toc(toc_blob.read_bytes())
    assert [e.name for e in toc] == ["image.blob", "blob.meta", "blob.meta.header", "image.boot"]
    assert (toc.offset, toc.size, toc.digest) == (9010, 1024, TOC_DIGEST)
    meta, header, boot = toc.get("blob.meta"), toc.get("blob.meta.header"), toc.get("image.boot")
    assert meta.uncompressed_size == 0x30 and header.uncompressed_size == 0x1000
    assert (boot.compressor, boot.compressed_size, boot.uncompressed_size) == ("zstd", 501, 20480)
    assert toc.get("blob.digest") is None


def test_toc_digest_and_location_are_checked(toc_blob):
    assert len(read_toc(toc_blob.read_bytes(), digest=TOC_DIGEST, size=1024, offset=9010)) == 4
    assert len(read_toc(toc_blob.read_bytes(), digest=TOC_DIGEST, size=1024)) == 4
    wrong = bytes([0]) + TOC_DIGEST[1:]
    with pytest.raises(DigestMismatchError):
        read_toc(toc_blob.read_bytes(), digest=wrong, size=1024, offset=9010)
    with pytest.raises(InvalidImageError):
        read_toc(toc_blob.read_bytes(), size=1024, offset=9000)
    with pytest.raises(InvalidImageError):
        read_toc(toc_blob.read_bytes(), size=1000)                  # not a multiple of 128
    with pytest.raises(InvalidImageError):
        read_toc(toc_blob.read_bytes(), size=1024, offset=9100)     # runs past the end
    # a zero digest means "not recorded" (as in the reference)
    assert len(read_toc(toc_blob.read_bytes(), digest=bytes(32), size=1024)) == 4


def test_toc_entries_extract_and_verify(toc_blob):
    toc = read_toc(toc_blob.read_bytes(), digest=TOC_DIGEST, size=1024)
    meta = extract_entry(toc_blob.read_bytes(), toc.get("blob.meta"))
    header = extract_entry(toc_blob.read_bytes(), toc.get("blob.meta.header"))
    assert len(meta) == 0x30 and len(header) == 0x1000 and header[:4] == b"\x0b\xb1\x0b\xb1"
    boot = extract_entry(toc_blob.read_bytes(), toc.get("image.boot"))
    assert len(boot) == 20480 and boot[1024:1028] == b"\xe2\xe1\xf5\xe0"


def test_inline_bootstrap_of_toc_fixture(toc_blob):
    data = toc_blob.read_bytes()
    bootstrap, blob_id = extract_inline_bootstrap(data, str(toc_blob))
    assert len(bootstrap) == 20480 and blob_id == TOC_BLOB_ID
    # without a usable name the id is computed as the builder does; this blob has no digest array,
    # so it is the file's sha256 (which is also its name)
    assert extract_inline_bootstrap(data, "/tmp/renamed.blob")[1] == TOC_BLOB_ID
    assert extract_inline_bootstrap(BytesRangeReader(data)) == (bootstrap, TOC_BLOB_ID)


def test_rafs_open_reads_inline_bootstrap(toc_blob):
    """Needs the RAFS v6 reader (rafs/v6/reader.py). The blob carries the data too, addressed through
    its CI array; the embedded blob table names the blob d788a0… (sha256 of the bytes before the
    bootstrap), and the reader substitutes the id derived from the file."""
    with rafs.open(toc_blob, validate=True) as image:
        assert image.version == 6
        paths = sorted(path for path, _ in image.iter_entries("/"))
        assert paths == [b"/", b"/error.rs", b"/lib.rs", b"/logger.rs"]
        assert image.blobs[0].blob_id == TOC_BLOB_ID
        assert image.read("/lib.rs").startswith(b"// Copyright 2020 Ant Group")
        assert list(image.check(verify_data=True)) == []
    with rafs.open(io.BytesIO(toc_blob.read_bytes())) as image:
        assert len(list(image.iter_entries("/"))) == 4


def test_zstd_fixture_is_the_toc_blob(fixtures, toc_blob):
    packed = (fixtures / "zstd" / f"{TOC_BLOB_ID}.zst").read_bytes()
    blob = codecs.decompress("zstd", packed, 10034)
    assert hashlib.sha256(blob).hexdigest() == TOC_BLOB_ID == hashlib.sha256(toc_blob.read_bytes()).hexdigest()
    # test_extract_from_buf: a zstd entry over the whole frame with the right and a wrong digest
    entry = TocEntry.new("image.blob", "zstd", bytes.fromhex(TOC_BLOB_ID), 0, len(packed), 10034)
    assert extract_entry(packed, entry, max_size=1 << 20) == blob
    bad = TocEntry.new("image.blob", "zstd", bytes(31) + b"\1", 0, len(packed), 10034)
    with pytest.raises(DigestMismatchError):
        extract_entry(packed, bad, max_size=1 << 20)


# -- the v6 fixture blob (blob-toc, inlined chunk digests) -------------------------------------------

def test_v6_blob_toc_and_sections(v6_blob):
    toc = read_toc(v6_blob.read_bytes(), digest=V6_TOC_DIGEST, size=1024)
    assert [e.name for e in toc] == ["image.blob", "blob.meta", "blob.meta.header", "blob.digest"]
    assert [(e.compressed_offset, e.compressed_size, e.uncompressed_size) for e in toc] == [
        (7802, 7802, 36864), (8314, 32, 32), (8346, 4096, 4096), (12954, 64, 64)]
    assert len(extract_entry(v6_blob.read_bytes(), toc.get("blob.digest"))) == 64
    sections = [(s.name, s.offset, s.size) for s in reversed(walk_sections(BytesRangeReader(v6_blob.read_bytes())))]
    assert sections == [("image.blob", 0, 7802), ("blob.meta", 8314, 4128), ("blob.digest", 12954, 64),
                        ("rafs.blob.toc", 13530, 512)]
    # image.blob's digest covers the chunk data and its tar header (pre-fix builders record the
    # data end as the entry's offset, so it is not extractable as is)
    data = v6_blob.read_bytes()
    assert hashlib.sha256(data[:7802 + 512]).digest() == toc.get("image.blob").uncompressed_digest
    with pytest.raises(InvalidImageError):
        extract_entry(v6_blob.read_bytes(), toc.get("image.blob"))
    assert extract_inline_bootstrap(data, str(v6_blob)) is None


def test_v6_blob_id_skips_the_digest_array(v6_blob):
    data = v6_blob.read_bytes()
    assert hashlib.sha256(data).hexdigest() == V6_BLOB_SHA256
    assert compute_blob_id(data) == V6_BLOB_ID == compute_blob_id(v6_blob.read_bytes())
    assert hashlib.sha256(data[:12954] + data[12954 + 64:]).hexdigest() == V6_BLOB_ID


def test_encoders_rebuild_the_v6_blob_tail_byte_for_byte(v6_blob):
    data = v6_blob.read_bytes()
    for name, size, at in (("image.blob", 7802, 7802), ("blob.meta", 4128, 12442), ("blob.digest", 64, 13018),
                           ("rafs.blob.toc", 512, 14042)):
        assert build_tar_header(name, size) == data[at:at + 512]
        assert parse_tar_header(data, at) == (name, size)
    toc = read_toc(data)
    assert toc_bytes(toc) == data[-1024:]
    for entry, at in zip(toc, range(13530, 14042, 128)):
        assert entry.pack() == data[at:at + 128]
        fresh = TocEntry.new(entry.name, entry.compressor, entry.uncompressed_digest, entry.compressed_offset,
                             entry.compressed_size, entry.uncompressed_size)
        # the builder leaves stack garbage in reserved2; everything else is what TocEntry.new makes
        assert fresh.pack()[:80] == data[at:at + 80] and fresh.pack()[80:] == bytes(48)
    assert hashlib.sha256(toc_bytes(toc)).digest() == V6_TOC_DIGEST


def test_tar_header_round_trip_and_big_sizes():
    for size in (0, 1, 4096, 8 ** 11 - 1, 8 ** 11, 1 << 40):
        header = build_tar_header("image.blob", size)
        assert len(header) == 512 and parse_tar_header(header) == ("image.blob", size)
    header = bytearray(build_tar_header("image.boot", 100))
    header[0] ^= 1
    with pytest.raises(InvalidImageError, match="checksum"):
        parse_tar_header(bytes(header))


# -- synthetic blobs: what the builder writes with --blob-inline-meta, and hostile variants -----------

def _inline_blob(bootstrap: bytes, *, with_toc: bool = True, compressor: str = "zstd") -> bytes:
    """chunk data | hdr(image.blob) | bootstrap | hdr(image.boot) | [ToC | hdr]"""
    chunk = b"chunk data " * 50
    out = bytearray(chunk + build_tar_header("image.blob", len(chunk)))
    stored = codecs.compress(compressor, bootstrap) if compressor != "none" else bootstrap
    boot_at = len(out)
    out += stored + build_tar_header("image.boot", len(stored))
    if with_toc:
        entries = [TocEntry.new("image.blob", "none", hashlib.sha256(out[:len(chunk) + 512]).digest(), 0,
                                len(chunk), 4096),
                   TocEntry.new("image.boot", compressor, hashlib.sha256(bootstrap).digest(), boot_at,
                                len(stored), len(bootstrap))]
        out += toc_bytes(entries)
    return bytes(out)


def test_inline_bootstrap_with_and_without_toc():
    bootstrap = bytes(1024) + b"\xe2\xe1\xf5\xe0" + b"x" * 3000
    for with_toc in (True, False):
        compressor = "zstd" if with_toc else "none"
        blob = _inline_blob(bootstrap, with_toc=with_toc, compressor=compressor)
        got, blob_id = extract_inline_bootstrap(blob, "some/dir/" + "ab" * 32)
        assert got == bootstrap and blob_id == "ab" * 32
        assert extract_inline_bootstrap(blob, "blob.bin")[1] == hashlib.sha256(blob).hexdigest()
    assert extract_inline_bootstrap(b"", "x") is None
    assert extract_inline_bootstrap(bytes(10000), "x") is None
    assert extract_inline_bootstrap(io.BytesIO(b"y" * 5000).getvalue(), "x") is None


def _assert_only_invalid_image(func, *args):
    try:
        return func(*args)
    except InvalidImageError:
        return None


def test_bit_flips_in_the_toc_fail_the_digest(toc_blob):
    data = toc_blob.read_bytes()
    tail = data[-1024:]
    rng = random.Random(7)
    for at in rng.sample(range(1024), 300):
        mutant = bytearray(tail)
        mutant[at] ^= 1 << rng.randrange(8)
        with pytest.raises(InvalidImageError):
            read_toc(bytes(data[:-1024] + mutant), digest=TOC_DIGEST, size=1024)


def test_hostile_toc_blobs_raise_only_invalid_image(toc_blob, v6_blob):
    rng = random.Random(11)
    for path in (toc_blob, v6_blob):
        data = path.read_bytes()
        for cut in sorted(rng.sample(range(len(data)), 60)) + [0, 1, 511, 512, 513, len(data) - 1]:
            blob = data[:cut]
            _assert_only_invalid_image(read_toc, blob)
            _assert_only_invalid_image(extract_inline_bootstrap, blob, "x")
            _assert_only_invalid_image(compute_blob_id, blob)
            info = describe_blob(blob)                 # never raises: faults land in "problems"
            assert isinstance(info["problems"], list)
        for _ in range(300):
            at = rng.randrange(max(0, len(data) - 2500), len(data))
            mutant = bytearray(data)
            mutant[at] ^= 1 << rng.randrange(8)
            blob = bytes(mutant)
            toc = _assert_only_invalid_image(read_toc, blob)
            for entry in toc or ():
                _assert_only_invalid_image(extract_entry, blob, entry)
            _assert_only_invalid_image(extract_inline_bootstrap, blob, "x")
            describe_blob(blob)
            if path == toc_blob:
                _assert_only_invalid_image(lambda: rafs.open(io.BytesIO(blob)).close())


def test_hostile_toc_headers():
    bootstrap = b"B" * 5000
    blob = bytearray(_inline_blob(bootstrap))
    toc_header_at = len(blob) - 512
    for size in (100, 129, len(blob), 1 << 40):        # not whole entries, or more than the blob holds
        mutant = blob[:toc_header_at] + build_tar_header("rafs.blob.toc", size)
        with pytest.raises(InvalidImageError):
            read_toc(bytes(mutant))
    # a trailing image.boot header claiming more bytes than precede it
    lying = b"z" * 600 + build_tar_header("image.boot", 10_000)
    with pytest.raises(InvalidImageError):
        extract_inline_bootstrap(lying, "x")


def _blob_with_boot_entry(stored: bytes, declared: int, compressor: str = "zstd",
                          digest: bytes = bytes(32)) -> bytes:
    head = b"h" * 100 + stored
    entry = TocEntry.new("image.boot", compressor, digest, 100, len(stored), declared)
    return head + build_tar_header("image.boot", len(stored)) + toc_bytes([entry])


def test_bootstrap_bombs_are_refused_without_inflating():
    bomb = bytes(256 << 20)
    framed = zstandard.ZstdCompressor(level=1).compress(bomb)                    # declares 256 MiB
    unframed = zstandard.ZstdCompressor(level=1, write_content_size=False).compress(bomb)
    del bomb
    tracemalloc.start()
    try:
        for stored in (framed, unframed):
            with pytest.raises(InvalidImageError):
                extract_inline_bootstrap(_blob_with_boot_entry(stored, 20480), "x")
        with pytest.raises(InvalidImageError, match="limit"):
            extract_inline_bootstrap(_blob_with_boot_entry(framed, 0x8000_0001), "x")
        with pytest.raises(InvalidImageError):         # "none" with sizes that disagree
            extract_inline_bootstrap(_blob_with_boot_entry(b"x" * 10, 1 << 30, "none"), "x")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20
    # an entry pointing past the blob
    entry = TocEntry.new("image.boot", "none", bytes(32), 50, 10_000, 10_000)
    with pytest.raises(InvalidImageError):
        extract_entry(b"q" * 1000, entry)
    with pytest.raises(InvalidImageError):            # unknown flags
        TocEntry("image.boot", 0x10, bytes(32), 0, 1, 1).compressor


# -- inspection ---------------------------------------------------------------------------------------

def test_describe_and_cli(toc_blob, v6_blob, capsys):
    info = describe_blob(toc_blob.read_bytes(), chunks=True)
    assert info["problems"] == [] and info["blob_id"] == TOC_BLOB_ID
    assert [s["name"] for s in info["sections"]] == ["image.blob", "blob.meta", "image.boot", "rafs.blob.toc"]
    assert info["chunk_count"] == 3 and info["inline_bootstrap"]["uncompressed_size"] == 20480
    assert cli_main(["blob-info", str(v6_blob), "--json", "--chunks"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["blob_id"] == V6_BLOB_ID and out["toc"]["digest"] == V6_TOC_DIGEST.hex()
    assert [(c["compressed_size"], c["uncompressed_size"]) for c in out["chunks"]] == [(4828, 16931), (2974, 13400)]
    assert cli_main(["blob-info", str(toc_blob)]) == 0
    text = capsys.readouterr().out
    assert "image.boot" in text and "4fdfbb36" in text
