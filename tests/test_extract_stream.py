"""Extraction with file data read ahead (issue 14): ``Image.extractall`` equals the source (holes,
hardlinks, symlinks, large and many small files), decompression runs on the read-ahead workers, and
what is read ahead stays within its window however the files are shaped.
"""

from __future__ import annotations

import os
import random
import threading

import pytest

import rafs
from rafs.readahead import read_ahead
from test_fuse_support import diff_r, metadata_differences


def _tree(top) -> None:
    rng = random.Random(3)
    os.makedirs(f"{top}/a/b/c")
    with open(f"{top}/a/big", "wb") as f:
        f.write(rng.randbytes(3 * 1024 * 1024 + 5))
    with open(f"{top}/a/text", "wb") as f:
        f.write(b"".join(b"line %d\n" % i for i in range(50000)))
    with open(f"{top}/sparse", "wb") as f:           # holes before, between and after data
        f.seek(1024 * 1024 + 7)
        f.write(b"middle")
        f.seek(5 * 1024 * 1024)
        f.write(b"tail")
        f.truncate(9 * 1024 * 1024)
    for i in range(300):
        with open(f"{top}/a/b/c/small{i}", "wb") as f:
            f.write(rng.randbytes(rng.randrange(1, 3000)))
    open(f"{top}/empty", "wb").close()
    os.link(f"{top}/a/big", f"{top}/a/b/big-link")
    os.link(f"{top}/a/b/c/small7", f"{top}/small7-link")
    os.symlink("a/big", f"{top}/link")
    os.symlink("../../sparse", f"{top}/a/b/uplink")
    os.chmod(f"{top}/a/text", 0o640)
    os.utime(f"{top}/a/big", ns=(1, 1_600_000_000_123_456_789))


@pytest.fixture(scope="module", params=[5, 6], ids=["v5", "v6"])
def built(request, tmp_path_factory):
    work = tmp_path_factory.mktemp(f"extract-stream-v{request.param}")
    source = work / "src"
    _tree(str(source))
    blob_dir = work / "blobs"
    blob_dir.mkdir()
    bootstrap = work / "image.boot"
    rafs.Builder(str(source), fs_version=request.param, compressor="zstd", chunk_size=0x10000).write(
        bootstrap=str(bootstrap), blob_dir=str(blob_dir))
    return source, bootstrap, blob_dir


@pytest.mark.parametrize("threads", [1, 3])
def test_extractall_equals_the_source(built, tmp_path, threads):
    source, bootstrap, blob_dir = built
    out = tmp_path / "out"
    with rafs.open(bootstrap, blob_dir=blob_dir) as image:
        image.extractall(out, filter="fully_trusted", threads=threads)
        with image.open("/sparse") as f:
            stored = sum(length for _, length in f.data_regions())
    assert diff_r(source, out) == []
    problems = metadata_differences(str(source), str(out), with_xattrs=False)
    assert problems == []
    assert os.stat(out / "a/b/big-link").st_ino == os.stat(out / "a/big").st_ino
    assert os.stat(out / "small7-link").st_ino == os.stat(out / "a/b/c/small7").st_ino
    assert os.readlink(out / "a/b/uplink") == "../../sparse"
    # what the image holds as holes stays holes: only the chunks take space
    assert os.stat(out / "sparse").st_blocks * 512 <= stored + 64 * 1024


def test_decompression_runs_on_the_workers(built, tmp_path):
    _, bootstrap, blob_dir = built
    names: set[str] = set()
    with rafs.open(bootstrap, blob_dir=blob_dir) as image:
        read_chunks = image.read_chunks

        def recording(chunks, **kw):
            names.add(threading.current_thread().name)
            return read_chunks(chunks, **kw)
        image.read_chunks = recording
        image.extractall(tmp_path / "out", threads=2)
    assert names and all(n.startswith("rafs-readahead") for n in names), names


@pytest.mark.parametrize("batch_size, window", [(1, 1), (0x8000, 0x40000), (0x100000, 0x1000000)])
def test_read_ahead_hands_out_every_file_in_order(built, batch_size, window):
    """Whatever the batch and window (down to one chunk and one byte), each file gets exactly its
    chunks' data in order, and no more than the window plus one batch is ever held ahead."""
    _, bootstrap, blob_dir = built
    with rafs.open(bootstrap, blob_dir=blob_dir) as image:
        entries = list(image.iter_entries("/"))
        held = []

        def wants(path, inode):
            return inode.is_reg
        got = []
        for path, inode, pieces in read_ahead(image, iter(entries), wants, threads=2, batch_size=batch_size,
                                              window=window):
            got.append(path)
            if pieces is None:
                assert not (inode.is_reg and inode.size)
                continue
            data = bytearray(inode.size)
            for chunk, piece in pieces:
                data[chunk.file_offset:chunk.file_offset + len(piece)] = piece
            held.append(len(data))
            assert bytes(data[:inode.size]) == image.read(path), path
        assert got == [p for p, _ in entries]
        assert held


def test_a_failed_batch_raises_for_its_file(built, tmp_path):
    _, bootstrap, blob_dir = built
    (blob,) = os.listdir(blob_dir)
    broken = tmp_path / "blobs"
    broken.mkdir()
    raw = bytearray((blob_dir / blob).read_bytes())
    raw[: len(raw) // 2] = bytes(len(raw) // 2)           # the first half of the blob zeroed
    (broken / blob).write_bytes(bytes(raw))
    with rafs.open(bootstrap, blob_dir=broken, validate=True) as image:
        with pytest.raises(rafs.errors.RafsError):
            image.extractall(tmp_path / "out")


def test_unpack_tar_extracts_to_the_source(built, tmp_path):
    """``rafs unpack``'s tar (data read ahead) restores the source with GNU tar, holes included."""
    import shutil
    import subprocess
    from rafs.image.unpack import write_tar
    if shutil.which("tar") is None:
        pytest.skip("GNU tar is not installed")
    source, bootstrap, blob_dir = built
    archive = tmp_path / "image.tar"
    with rafs.open(bootstrap, blob_dir=blob_dir) as image, open(archive, "wb") as f:
        write_tar(image, f, threads=3)
    out = tmp_path / "out"
    out.mkdir()
    subprocess.run(["tar", "-C", str(out), "-xf", str(archive)], check=True)
    assert diff_r(source, out) == []
    assert metadata_differences(str(source), str(out), with_xattrs=False) == []
