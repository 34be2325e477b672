"""``rafs chunkdict generate``: statistics in SQLite as nydus-image keeps them, the chunks versions
repeat chosen by exponential smoothing, and the dictionary usable by ``create --chunk-dict``."""

from __future__ import annotations

import json
import os
import random
import sqlite3

import pytest

import rafs
from rafs.builder.chunkdict import ChunkRow, divide_set, exponential_smoothing, generate, image_name_and_version
from rafs.cli.main import main as cli_main
from rafs.model import BlobFeatures

from helpers import verify_tree


@pytest.fixture(scope="module")
def versions(tmp_path_factory):
    """Five versions of one image (``registry:app:N``) sharing twelve libraries, each with its own app,
    plus a newer source tree; all blobs in ``blobs``."""
    top = tmp_path_factory.mktemp("chunkdict")
    rng = random.Random(3)
    libs = {f"lib{i}": rng.randbytes(rng.randint(1000, 150000)) for i in range(12)}
    (top / "blobs").mkdir()
    boots = []
    for v in range(1, 7):
        src = top / f"src{v}"
        src.mkdir()
        for name, data in libs.items():
            (src / name).write_bytes(data)
        (src / "app").write_bytes(rng.randbytes(40000))
        if v == 6:
            break
        directory = top / f"registry:app:{v}"
        directory.mkdir()
        rafs.Builder(str(src), fs_version=6, chunk_size=0x10000).write(bootstrap=directory / "image.boot",
                                                                       blob_dir=top / "blobs")
        boots.append(directory / "image.boot")
    return top, boots


def test_generate_and_use_the_dictionary(versions, tmp_path):
    top, boots = versions
    db = tmp_path / "chunkdict.db"
    assert cli_main(["chunkdict", "generate", "--database", f"sqlite://{db}", "-B", str(tmp_path / "dict.boot"),
                     "-J", str(tmp_path / "out.json")] + [str(b) for b in boots]) == 0
    with sqlite3.connect(db) as conn:
        columns = [row[1] for row in conn.execute("PRAGMA table_info(chunk)")]
        assert columns == ["id", "image_reference", "version", "chunk_blob_id", "chunk_digest", "chunk_crc32",
                           "chunk_compressed_size", "chunk_uncompressed_size", "chunk_compressed_offset",
                           "chunk_uncompressed_offset"]
        assert [row[1] for row in conn.execute("PRAGMA table_info(blob)")] == [
            "id", "blob_id", "blob_compressed_size", "blob_uncompressed_size", "blob_compressor",
            "blob_meta_ci_compressed_size", "blob_meta_ci_uncompressed_size", "blob_meta_ci_offset"]
        images = conn.execute("SELECT DISTINCT image_reference, version FROM chunk ORDER BY version").fetchall()
        assert images == [("app", str(v)) for v in range(1, 6)]
        assert conn.execute("SELECT COUNT(*) FROM blob").fetchone()[0] == 5
    output = json.loads((tmp_path / "out.json").read_text())
    with rafs.open(tmp_path / "dict.boot", blob_dir=top / "blobs") as dictionary:
        assert dictionary.listdir("/") == ["chunkdict"]
        assert all(b.has(BlobFeatures.IS_CHUNKDICT_GENERATED) for b in dictionary.blobs)
        assert output["blobs"] == [b.blob_id for b in dictionary.blobs] and dictionary.blobs
        assert list(dictionary.check(verify_data=True)) == []
    # a new version stores only what the dictionary lacks
    out = tmp_path / "new"
    out.mkdir()
    plain = rafs.Builder(str(top / "src6"), fs_version=6, chunk_size=0x10000).write(
        bootstrap=out / "plain.boot", blob_dir=out)
    result = rafs.Builder(str(top / "src6"), fs_version=6, chunk_size=0x10000,
                          chunk_dict=str(tmp_path / "dict.boot")).write(bootstrap=out / "boot", blob_dir=out)
    assert result.blob_size < plain.blob_size // 10
    for name in os.listdir(top / "blobs"):
        os.link(top / "blobs" / name, out / name)
    with rafs.open(out / "boot", blob_dir=out, validate=True) as image:
        assert len(image.blobs) == 2
        assert list(image.check(verify_data=True)) == []
        verify_tree(image, top / "src6")


def test_exponential_smoothing_as_the_reference_tests_it():
    """deduplicate.rs test_algorithm_exponential_smoothing."""
    rows = [ChunkRow("REDIS0", f"1.0.0{(i + 1) // 100}", f"BLOB{i}", f"DIGEST{(i + 1) % 2}", i, i, i * 2, i * 3,
                     i * 4) for i in range(199)]
    chosen = exponential_smoothing(rows, 0.1)
    assert len(chosen) == 2
    first = chosen[0]
    assert (first.image_reference, first.version, first.chunk_blob_id, first.chunk_digest) == \
        ("REDIS0", "1.0.01", "BLOB99", "DIGEST0")
    assert (first.chunk_compressed_size, first.chunk_uncompressed_size, first.chunk_compressed_offset,
            first.chunk_uncompressed_offset) == (99, 198, 297, 396)


def test_versions_split_by_their_numbers():
    rows = [ChunkRow("img", version, "b", "d", 0, 1, 1, 0, 0) for version in ("v10", "v9", "v2", "v1")]
    train, test = divide_set(rows)
    assert [r.version for r in train] == ["v1", "v2"] and [r.version for r in test] == ["v9", "v10"]


def test_image_name_from_the_directory(tmp_path):
    assert image_name_and_version(tmp_path / "docker.io:library:redis:7.2" / "image.boot") == ("redis", "7.2")
    with pytest.raises(rafs.InvalidArgumentError, match="IMAGE:VERSION"):
        image_name_and_version(tmp_path / "plain" / "image.boot")


@pytest.mark.parametrize("url, message", [
    ("mysql:///x.db", "Unsupported database type: mysql"),
    ("sqlite://relative.db", "Invalid database URL: sqlite://relative.db"),
    ("nothing", "Invalid database URL: nothing"),
])
def test_database_urls(versions, tmp_path, url, message):
    _, boots = versions
    with pytest.raises(rafs.InvalidArgumentError, match=message):
        generate(boots, url, tmp_path / "dict.boot")


def test_inconsistent_versions_are_refused(versions, tmp_path):
    top, boots = versions
    v5 = tmp_path / "app:v5"
    v5.mkdir()
    rafs.Builder(str(top / "src1"), fs_version=5).write(bootstrap=v5 / "image.boot", blob_dir=tmp_path)
    with pytest.raises(rafs.BuildError, match="Bootstrap versions are inconsistent"):
        generate([boots[0], v5 / "image.boot"], f"sqlite://{tmp_path / 'db'}", tmp_path / "dict.boot")


def test_cli_needs_an_output(versions, tmp_path, capsys):
    _, boots = versions
    assert cli_main(["chunkdict", "generate", "--database", f"sqlite://{tmp_path / 'db'}", str(boots[0])]) != 0
    assert "--bootstrap and --blob-dir are missing" in capsys.readouterr().err


def test_a_malformed_database_row_is_a_clean_error(versions, tmp_path):
    _, boots = versions
    db = tmp_path / "db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE chunk (id INTEGER PRIMARY KEY, image_reference TEXT, version TEXT, "
                     "chunk_blob_id TEXT NOT NULL, chunk_digest TEXT, chunk_crc32 INT, chunk_compressed_size INT, "
                     "chunk_uncompressed_size INT, chunk_compressed_offset INT, chunk_uncompressed_offset INT)")
        conn.execute("INSERT INTO chunk (image_reference, version, chunk_blob_id, chunk_digest) VALUES "
                     "('x', '1', 'b', '../not-hex')")
    with pytest.raises(rafs.BuildError, match="malformed chunk row"):
        generate(boots, f"sqlite://{db}", tmp_path / "dict.boot")


def test_a_reused_database_keeps_working(versions, tmp_path):
    """Rows of an earlier run whose blobs are not among the sources are left out, not a crash."""
    top, boots = versions
    db = f"sqlite://{tmp_path / 'db'}"
    generate(boots[:3], db, tmp_path / "first.boot")
    result = generate(boots[3:], db, tmp_path / "second.boot")
    with rafs.open(result.bootstrap, blob_dir=top / "blobs") as dictionary:
        assert list(dictionary.check(verify_data=True)) == []
