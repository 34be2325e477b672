"""Bootstraps and blobs through fsspec: paths, file://, memory://, chained URLs; ranged reads only."""

from __future__ import annotations

import fsspec
import pytest

import rafs
from rafs.errors import BackendError
from rafs.io.retry import RetryPolicy, is_transient, redact
from rafs.io.source import FsspecRangeReader, LocalRangeReader, open_range_reader

from test_io_fetch import GROUP, LAYER_TAR


@pytest.fixture
def in_memory(v5_fixture):
    bootstrap, blob_dir, _ = v5_fixture
    (blob,) = blob_dir.iterdir()
    memory = fsspec.filesystem("memory")
    memory.pipe("/rafs-src/image.meta", bootstrap.read_bytes())
    memory.pipe(f"/rafs-src/blobs/{blob.name}", blob.read_bytes())
    yield blob.name
    memory.rm("/rafs-src", recursive=True)


def test_memory_urls_and_blob_dir_url(v5_fixture, in_memory):
    ref = rafs.open(v5_fixture[0], blob_dir=v5_fixture[1])
    with rafs.open("memory://rafs-src/image.meta", blob_dir="memory://rafs-src/blobs") as image:
        assert image.read(GROUP) == ref.read(GROUP)
        assert isinstance(image.chunk_reader(0).source, FsspecRangeReader)
    with rafs.open("memory://rafs-src/image.meta",
                   blobs={in_memory: f"memory://rafs-src/blobs/{in_memory}"}) as image:
        assert image.read(LAYER_TAR) == ref.read(LAYER_TAR)


def test_file_urls_and_chained_urls(v5_fixture, in_memory, tmp_path):
    bootstrap, blob_dir, _ = v5_fixture
    ref = rafs.open(bootstrap, blob_dir=blob_dir)
    with rafs.open(f"file://{bootstrap}", blob_dir=str(blob_dir)) as image:
        assert image.read(GROUP) == ref.read(GROUP)
    assert isinstance(open_range_reader(f"file://{bootstrap}"), LocalRangeReader)
    chained = "simplecache::memory://rafs-src/image.meta"
    with rafs.open(chained, blob_dir="memory://rafs-src/blobs",
                   storage_options={"simplecache": {"cache_storage": str(tmp_path)}}) as image:
        assert image.read(GROUP) == ref.read(GROUP)


def test_missing_blob_url(v5_fixture, in_memory):
    with rafs.open("memory://rafs-src/image.meta", blob_dir="memory://rafs-src/elsewhere") as image:
        with pytest.raises(rafs.BlobNotFoundError):
            image.read(GROUP)


def test_ranged_reads_are_exact(in_memory):
    fs = fsspec.filesystem("memory")
    reader = FsspecRangeReader(fs, f"/rafs-src/blobs/{in_memory}")
    whole = fs.cat_file(f"/rafs-src/blobs/{in_memory}")
    assert reader.read_range(100, 50) == whole[100:150]
    assert reader.read_range(0, 0) == b""
    with pytest.raises(BackendError, match="short read"):
        FsspecRangeReader(fs, f"/rafs-src/blobs/{in_memory}", retry=RetryPolicy(limit=1, base_delay=0)) \
            .read_range(len(whole) - 10, 20)


def test_retry_policy():
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionResetError("peer went away")
        return b"ok"

    assert RetryPolicy(limit=2, base_delay=0).call(flaky, "x") == b"ok" and len(calls) == 3
    calls.clear()
    with pytest.raises(BackendError, match=r"x: failed after 2 attempts \(retry_limit 1\)"):
        RetryPolicy(limit=1, base_delay=0).call(flaky, "x")
    calls.clear()

    def missing():
        calls.append(1)
        raise FileNotFoundError("gone")

    with pytest.raises(FileNotFoundError):
        RetryPolicy(limit=5, base_delay=0).call(missing, "x")
    assert len(calls) == 1
    assert is_transient(OSError(16, "busy")) and not is_transient(PermissionError("no"))
    assert not is_transient(OSError(22, "bad range"))
    assert redact("key=sekrit-value x", ["sekrit-value"]) == "key=*** x"
    with pytest.raises(BackendError) as info:
        RetryPolicy(limit=0, secrets=("sekrit-value",)).call(
            lambda: (_ for _ in ()).throw(TimeoutError("token sekrit-value expired")), "x")
    assert "sekrit-value" not in str(info.value)


def test_open_a_blob_with_inline_bootstrap_from_bytes(fixtures):
    """A blob handed over as bytes serves its own bootstrap and its data (found by fuzzing)."""
    import rafs
    data = (fixtures / "toc" / "2fa78cad554b75ac91a4a125ed148d0ddeb25efa4aaa8bd80e5dc292690a4dca").read_bytes()
    with rafs.open(data, validate=True) as image:
        assert image.listdir("/") == ["error.rs", "lib.rs", "logger.rs"]
        assert image.read("/lib.rs").startswith(b"//")
