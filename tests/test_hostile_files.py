"""Hostile files around rafs's own files (issue 12): links and odd files planted under the blob
cache's names, unusable cache directories, planted or shared temporary names, and signals during a
build. Nothing outside may be written through a link, and nothing may be left behind."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import tarfile
import time

import pytest

import rafs
from rafs.image import Image, detect_reader
from rafs.io.blobs import BlobLocator
from rafs.io.cache import BlobCache
from rafs.io.cachefiles import CacheError
from rafs.io.source import load_bytes
from rafs.oci import convert
from rafs.tempfiles import TEMP_PREFIX, umask

from oci_layers import make_layers, oci_image, oci_layout

BLOB_ID = "be7d77eeb719f70884758d1aa800ed0fb09d701aaec469964e9d54325f0d5fef"
SUFFIXES = (".blob.data", ".blob.data.chunk_map", ".blob.meta")
VICTIM = b"precious bytes that must stay as they are\n" * 200


def open_cached(v6_fixture, cache_dir) -> Image:
    bootstrap, blob_dir = v6_fixture
    return Image(detect_reader(load_bytes(bootstrap)), BlobLocator(blob_dir=blob_dir, cache_dir=cache_dir))


def read_all(image) -> dict:
    return {path: image.read(path) for path, inode in image.iter_entries() if inode.is_reg}


@pytest.fixture(scope="module")
def expected(v6_fixture):
    bootstrap, blob_dir = v6_fixture
    with rafs.open(bootstrap, blob_dir=blob_dir) as image:
        return read_all(image)


def leftovers(directory) -> list[str]:
    return [name for name in os.listdir(directory) if name.startswith(TEMP_PREFIX)]


# -- links planted under the cache's names -----------------------------------------------------------

@pytest.mark.parametrize("dangling", [False, True], ids=["victim", "dangling"])
@pytest.mark.parametrize("suffix", SUFFIXES)
def test_planted_symlink_is_never_written_through(v6_fixture, expected, tmp_path, caplog, suffix, dangling):
    """The data and the chunk map are then left alone (the blob is read without the cache: another
    process may be replacing the link at the same moment, and swapping one of a pair of files under a
    process that uses them would mismatch data and readiness). ``.blob.meta`` is written whole and
    renamed into place, which replaces the link itself."""
    cache, outside = tmp_path / "cache", tmp_path / "outside"
    cache.mkdir()
    outside.mkdir()
    victim = outside / "victim"
    if not dangling:
        victim.write_bytes(VICTIM)
        os.chmod(victim, 0o600)
    os.symlink(victim, cache / (BLOB_ID + suffix))
    with caplog.at_level(logging.WARNING), open_cached(v6_fixture, cache) as image:
        assert read_all(image) == expected
        assert read_all(image) == expected
    if dangling:
        assert not victim.exists()
    else:
        assert victim.read_bytes() == VICTIM and os.stat(victim).st_mode & 0o777 == 0o600
    planted = cache / (BLOB_ID + suffix)
    if suffix == ".blob.meta":
        assert not planted.is_symlink() and planted.stat().st_size == 8192
    else:
        assert planted.is_symlink()
        assert f"{BLOB_ID}{suffix} is a symlink" in caplog.text
    assert leftovers(cache) == []


@pytest.mark.parametrize("suffix", SUFFIXES[:2])
def test_planted_hard_link_is_not_written_through(v6_fixture, expected, tmp_path, suffix):
    """Possible where fs.protected_hardlinks is off, or for files the planter owns."""
    victim = tmp_path / "victim"
    victim.write_bytes(VICTIM)
    cache = tmp_path / "cache"
    cache.mkdir()
    os.link(victim, cache / (BLOB_ID + suffix))
    with open_cached(v6_fixture, cache) as image:
        assert read_all(image) == expected
    assert victim.read_bytes() == VICTIM


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_directory_or_fifo_under_a_cache_name(v6_fixture, expected, tmp_path, suffix):
    for kind in ("directory", "fifo"):
        cache = tmp_path / f"{kind}{suffix}"
        cache.mkdir()
        planted = cache / (BLOB_ID + suffix)
        os.mkdir(planted) if kind == "directory" else os.mkfifo(planted)
        with open_cached(v6_fixture, cache) as image:
            assert read_all(image) == expected            # a FIFO must not hang it either
        if kind == "directory":
            assert planted.is_dir()
        else:                                   # .blob.meta is renamed over the FIFO, as over a link
            assert planted.is_file() if suffix == ".blob.meta" else planted.is_fifo()
        assert leftovers(cache) == []


def test_blob_cache_refuses_odd_files_with_a_rafs_error(v6_fixture, tmp_path):
    bootstrap, blob_dir = v6_fixture
    with rafs.open(bootstrap, blob_dir=blob_dir) as image:
        blob = image.blobs[0]
    os.mkdir(tmp_path / (BLOB_ID + ".blob.data"))
    with pytest.raises(CacheError, match="is a directory, not a regular file") as info:
        BlobCache(tmp_path, blob)
    assert isinstance(info.value, rafs.RafsError)
    os.rmdir(tmp_path / (BLOB_ID + ".blob.data"))
    os.symlink("/etc/passwd", tmp_path / (BLOB_ID + ".blob.data.chunk_map"))
    with pytest.raises(CacheError, match="is a symlink"):
        BlobCache(tmp_path, blob)


READ_THROUGH_CACHE = """
import sys
from rafs.image import Image, detect_reader
from rafs.io.blobs import BlobLocator
from rafs.io.source import load_bytes
image = Image(detect_reader(load_bytes(sys.argv[1])), BlobLocator(blob_dir=sys.argv[2], cache_dir=sys.argv[3]))
for path, inode in image.iter_entries():
    if inode.is_reg:
        image.read(path)
print("ok")
"""


def child_env() -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}


def test_processes_racing_to_create_the_cache_share_one_set_of_files(v6_fixture, expected, tmp_path):
    """Files are created with O_EXCL at their names: whoever loses the race opens the winner's."""
    bootstrap, blob_dir = v6_fixture
    procs = [subprocess.Popen([sys.executable, "-c", READ_THROUGH_CACHE, str(bootstrap), str(blob_dir), str(tmp_path)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env())
             for _ in range(4)]
    for proc in procs:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0 and out.strip() == "ok" and "WARNING" not in err, err
    assert sorted(os.listdir(tmp_path)) == sorted(BLOB_ID + s for s in SUFFIXES)
    with open_cached(v6_fixture, tmp_path) as image:
        assert read_all(image) == expected


# -- unusable work_dir values ------------------------------------------------------------------------

@pytest.mark.parametrize("case", ["nul", "regular file", "under a file", "proc", "sys"])
def test_bad_work_dir_is_a_clean_error_naming_it(v6_fixture, tmp_path, case):
    regular = tmp_path / "file"
    regular.write_bytes(b"x")
    work_dir = {"nul": f"{tmp_path}/a\0b", "regular file": str(regular), "under a file": f"{regular}/cache",
                "proc": "/proc/self", "sys": "/sys/kernel"}[case]
    bootstrap, blob_dir = v6_fixture
    with rafs.open(bootstrap, blob_dir=blob_dir) as image:
        blob = image.blobs[0]
    with pytest.raises(rafs.InvalidArgumentError, match="work_dir"):
        BlobCache(work_dir, blob)
    with open_cached(v6_fixture, work_dir) as image, pytest.raises(rafs.InvalidArgumentError, match="work_dir"):
        read_all(image)
    assert regular.read_bytes() == b"x"


# -- temporary names of outputs ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def layout(tmp_path_factory):
    base = tmp_path_factory.mktemp("layers")
    tars = make_layers(str(base / "layers"), compress="gzip")
    path = str(base / "layout")
    oci_layout(path, [oci_image(path, tars[:1])])
    return path


def test_convert_to_tar_ignores_a_link_at_the_old_fixed_temp_name(layout, tmp_path):
    victim = tmp_path / "victim"
    victim.write_bytes(VICTIM)
    target = tmp_path / "out.tar"
    os.symlink(victim, tmp_path / "out.tar.tmp")
    convert(layout, target)
    assert victim.read_bytes() == VICTIM
    assert tarfile.is_tarfile(target) and not target.is_symlink()
    assert oct(target.stat().st_mode & 0o777) == oct(0o666 & ~umask())     # as tarfile.open(path) made it
    assert sorted(os.listdir(tmp_path)) == ["out.tar", "out.tar.tmp", "victim"]


def rafs_cli(*args, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "rafs", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=child_env(), **kwargs)


def test_concurrent_converts_to_one_target(layout, tmp_path, monkeypatch):
    """A second conversion to the same target runs while the first is writing its archive: each
    has its own temporary archive and renames it over the target whole."""
    from rafs.oci import layout as layout_module
    add = layout_module.tarfile.TarFile.add
    target = tmp_path / "out.tar"
    started = []

    def add_and_interleave(self, *args, **kwargs):
        if not started:
            started.append(True)
            convert(layout, target)
        return add(self, *args, **kwargs)

    monkeypatch.setattr(layout_module.tarfile.TarFile, "add", add_and_interleave)
    convert(layout, target)
    monkeypatch.undo()
    with tarfile.open(target) as tar:
        index = tar.extractfile("index.json").read()
        assert {"index.json", "oci-layout"} <= set(tar.getnames())
    convert(layout, tmp_path / "alone.tar")
    with tarfile.open(tmp_path / "alone.tar") as tar:
        assert tar.extractfile("index.json").read() == index      # whole, not a mix of two writers
    assert sorted(os.listdir(tmp_path)) == ["alone.tar", "out.tar"]


def test_failed_convert_leaves_no_temporary_file(layout, tmp_path, monkeypatch):
    from rafs.oci import layout as layout_module

    def broken(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(layout_module.tarfile.TarFile, "add", broken)     # the archive of the layout
    with pytest.raises(OSError):
        convert(layout, tmp_path / "out.tar")
    assert os.listdir(tmp_path) == []


# -- signals during a build --------------------------------------------------------------------------

def big_tree(path, files: int = 12, size: int = 16 << 20):
    """``files`` files of ``size`` bytes, no two 1 MiB chunks alike (nothing deduplicated, so the
    build takes a while)."""
    path.mkdir()
    for i in range(files):
        block = os.urandom(1 << 20)
        with open(path / f"f{i}", "wb") as f:
            for j in range(size >> 20):
                f.write(block[j:] + block[:j])


@pytest.fixture(scope="module")
def big_source(tmp_path_factory):
    source = tmp_path_factory.mktemp("big") / "tree"
    big_tree(source)
    return source


def stop_while_writing(command: str, args, out, signum: int) -> None:
    """Run ``rafs command args``, send ``signum`` once it writes its output in ``out``, and check it
    ends with one line and 128+signum, leaving nothing of its own in ``out``."""
    before = set(os.listdir(out))
    proc = rafs_cli(command, *args)
    deadline = time.monotonic() + 60
    while not leftovers(out):                       # its output is open: the handlers are in place
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.005)
    # stopped first, so the signal lands mid-build even on a machine fast enough to finish meanwhile
    proc.send_signal(signal.SIGSTOP)
    proc.send_signal(signum)
    proc.send_signal(signal.SIGCONT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signum, stderr
    assert stderr.strip() == f"rafs {command}: stopped by {signal.Signals(signum).name}; temporary files removed"
    assert set(os.listdir(out)) == before


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_signal_during_create_removes_temporary_files(big_source, tmp_path, signum):
    stop_while_writing("create", ["-B", tmp_path / "boot", "-b", tmp_path / "blob", big_source], tmp_path, signum)


def test_signal_during_unpack_removes_temporary_files(big_source, tmp_path):
    rafs.Builder(big_source, compressor="none").write(bootstrap=tmp_path / "boot", blob=tmp_path / "blob")
    stop_while_writing("unpack", ["-b", tmp_path / "blob", "--output", tmp_path / "out.tar", tmp_path / "boot"],
                       tmp_path, signal.SIGTERM)
