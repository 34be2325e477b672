"""Builder options and refusals: what nydus-image create accepts, refuses and writes for each option."""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat
import struct
import threading

import pytest

import rafs
from rafs.blob import writer as blob_writer
from rafs.blob.toc import extract_inline_bootstrap
from rafs.builder import builder as builder_module
from rafs.builder.directory import load_directory
from rafs.cli.main import main as cli_main
from rafs.errors import BuildError, InvalidArgumentError
from rafs.model import Inode, Node, SuperFlags
from rafs.v5.reader import V5Reader

from helpers import verify_tree

VERSIONS = [5, 6]


@pytest.fixture
def small_tree(tmp_path):
    src = tmp_path / "src"
    (src / "sub" / "deep").mkdir(parents=True)
    (src / "a.txt").write_bytes(b"alpha\n" * 1000)
    (src / "sub" / "b.bin").write_bytes(os.urandom(9000))
    (src / "sub" / "deep" / "c.txt").write_bytes(b"gamma\n" * 3000)
    (src / "z-same").write_bytes(b"alpha\n" * 1000)
    (src / "empty").write_bytes(b"")
    os.setxattr(src / "a.txt", b"user.one", b"1")
    os.setxattr(src / "a.txt", b"user.two", b"2")
    os.setxattr(src / "a.txt", b"user.three", b"3")
    return src


# -- refusals ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("args,message", [
    (["-B", "{t}/b", "--blob-inline-meta", "-b", "{t}/blob"], "cannot be used with '--blob-inline-meta'"),
    (["-B", "{t}/b"], "both --blob and --blob-dir are missing"),
    (["-b", "{t}/blob"], "one of '--bootstrap', '--blob-dir'"),
    (["-B", "{t}/b", "-b", "{t}/blob", "-v", "5", "--features", "blob-toc"], "can't be used with `--version 5`"),
    (["-B", "{t}/b", "-b", "{t}/blob", "--chunk-size", "0x1001"], "invalid chunk size: 4097"),
    (["-B", "{t}/b", "-b", "{t}/blob", "--chunk-size", "2048"], "invalid chunk size: 2048"),
    (["-B", "{t}/b", "-b", "{t}/blob", "--chunk-size", "0x2000000"], "invalid chunk size"),
    (["-B", "{t}/b", "-b", "{t}/blob", "--chunk-size", "12k"], "invalid chunk size 12k"),
    (["-D", "{t}/missing"], "directory to store blobs does not exist"),
])
def test_cli_refusals(small_tree, tmp_path, capsys, args, message):
    argv = ["create", str(small_tree)] + [a.format(t=tmp_path) for a in args]
    assert cli_main(argv) == 2
    assert message in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]     # nothing written


def test_cli_refuses_a_file_source(small_tree, tmp_path, capsys):
    assert cli_main(["create", str(small_tree / "a.txt"), "-D", str(tmp_path)]) == 2
    assert "specified path must be a directory" in capsys.readouterr().err


@pytest.mark.parametrize("options", [dict(fs_version=7), dict(compressor="gzip"), dict(digester="md5"),
                                     dict(whiteout_spec="aufs"), dict(features=["blob-meta"]),
                                     dict(chunk_size=0x3000), dict(prefetch_policy="all"),
                                     dict(fs_version=6, compat="2.2"), dict(source_type="oci-layout")])
def test_builder_refuses_bad_options(small_tree, options):
    with pytest.raises(InvalidArgumentError):
        rafs.Builder(small_tree, **options)


def test_unsupported_xattr_prefix_is_refused(small_tree, monkeypatch):
    real = os.listxattr
    monkeypatch.setattr(os, "listxattr", lambda p, follow_symlinks=True: real(p, follow_symlinks=follow_symlinks)
                        + ["system.nfs4_acl"])
    with pytest.raises(BuildError, match="system.nfs4_acl.*prefix RAFS cannot store"):
        load_directory(small_tree)


# -- what is written --------------------------------------------------------------------------------

@pytest.mark.parametrize("fs_version", VERSIONS)
def test_repeatable_builds_are_identical(small_tree, tmp_path, fs_version):
    outputs = []
    for run in range(2):
        out = tmp_path / f"out{run}"
        out.mkdir()
        result = rafs.Builder(small_tree, fs_version=fs_version, repeatable=True).write(blob_dir=out)
        outputs.append({p.name: p.read_bytes() for p in out.iterdir()})
        assert sorted(outputs[-1]) == sorted([result.blob_ids[0], os.path.basename(result.bootstrap)])
        assert hashlib.sha256(outputs[-1][os.path.basename(result.bootstrap)]).hexdigest() == \
            os.path.basename(result.bootstrap)
        with rafs.open(result.bootstrap, blob_dir=out) as image:
            assert not image.reader.flags & SuperFlags.EXPLICIT_UID_GID
            assert list(image.inode("/a.txt").xattrs) == [b"user.one", b"user.three", b"user.two"]
    assert outputs[0] == outputs[1]


def test_explicit_uid_gid_by_default(small_tree, tmp_path):
    os.chown(small_tree / "a.txt", 321, 654)
    result = rafs.Builder(small_tree, fs_version=5).write(blob_dir=tmp_path)
    with rafs.open(result.bootstrap, blob_dir=tmp_path) as image:
        assert image.reader.flags & SuperFlags.EXPLICIT_UID_GID
        assert (image.inode("/a.txt").uid, image.inode("/a.txt").gid) == (321, 654)
        verify_tree(image, small_tree)


def test_write_fp_matches_write(small_tree, tmp_path):
    builder = rafs.Builder(small_tree, fs_version=5, repeatable=True)
    blob, boot = io.BytesIO(), io.BytesIO()
    result = builder.write_fp(blob, boot)
    on_disk = builder.write(bootstrap=tmp_path / "boot", blob=tmp_path / "blob")
    assert result.bootstrap is None and result.blob_ids == on_disk.blob_ids
    assert blob.getvalue() == (tmp_path / "blob").read_bytes()
    assert boot.getvalue() == (tmp_path / "boot").read_bytes()
    assert hashlib.sha256(blob.getvalue()).hexdigest() == result.blob_ids[0]


@pytest.mark.parametrize("fs_version,toc", [(5, False), (6, False), (6, True)])
def test_inline_bootstrap(small_tree, tmp_path, fs_version, toc):
    result = rafs.Builder(small_tree, fs_version=fs_version, blob_inline_meta=True,
                          features=["blob-toc"] if toc else ()).write(blob_dir=tmp_path)
    assert result.bootstrap is None and result.output["bootstrap"] == ""
    names = sorted(p.name for p in tmp_path.iterdir() if p.is_file())
    assert names == [result.blob_ids[0]]                       # no separate bootstrap
    data = (tmp_path / result.blob_ids[0]).read_bytes()
    bootstrap, blob_id = extract_inline_bootstrap(data)
    assert blob_id == result.blob_ids[0]
    assert b"x" * 64 in bootstrap                              # placeholder id in the embedded table
    if not toc:
        assert hashlib.sha256(data).hexdigest() == blob_id
    with rafs.open(tmp_path / result.blob_ids[0]) as image:
        assert image.blobs[0].blob_id == blob_id
        verify_tree(image, small_tree)


def test_prefetch_fs_policy_v5(small_tree, tmp_path):
    patterns = ["/sub/", "relative/ignored", "/a.txt", "/sub/deep", "/missing"]
    result = rafs.Builder(small_tree, fs_version=5, prefetch_patterns=patterns, chunk_size=0x1000) \
        .write(bootstrap=tmp_path / "boot", blob_dir=tmp_path)
    with rafs.open(result.bootstrap, blob_dir=tmp_path) as image:
        reader = image.reader
        wanted = [image.inode("/sub").ino, image.inode("/a.txt").ino]       # pattern order, as nydus-image
        assert reader.prefetch_inodes() == wanted
        # files under /sub come first in the blob (index order inside the pattern), then /a.txt
        first = [image.chunks(p)[0].index for p in ("/sub/b.bin", "/sub/deep/c.txt", "/a.txt", "/z-same")]
        assert first[0] == 0 and first[0] < first[1] < first[2]
        assert image.chunks("/z-same")[0].index == first[2]       # same content as a.txt: deduplicated
        assert image.blobs[0].readahead_size == 0
        verify_tree(image, small_tree)


def test_prefetch_blob_policy_counts_readahead(small_tree, tmp_path):
    result = rafs.Builder(small_tree, fs_version=5, prefetch_policy="blob", prefetch_patterns=["/sub"]) \
        .write(bootstrap=tmp_path / "boot", blob_dir=tmp_path)
    with rafs.open(result.bootstrap, blob_dir=tmp_path) as image:
        assert image.reader.prefetch_inodes() == []
        expected = sum(c.compressed_size for p in ("/sub/b.bin", "/sub/deep/c.txt") for c in image.chunks(p))
        assert image.blobs[0].readahead_size == expected > 0


def test_prefetch_patterns_from_stdin(small_tree, tmp_path, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO("/sub/deep/c.txt\n/a.txt\n"))
    assert cli_main(["create", str(small_tree), "-v", "5", "-D", str(tmp_path), "--prefetch-policy", "fs",
                     "-J", str(tmp_path / "out.json")]) == 0
    output = json.loads((tmp_path / "out.json").read_text())
    with rafs.open(output["bootstrap"], blob_dir=tmp_path) as image:
        assert image.reader.prefetch_inodes() == [image.inode("/sub/deep/c.txt").ino, image.inode("/a.txt").ino]
        assert image.chunks("/sub/deep/c.txt")[0].index == 0


def test_output_json(small_tree, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    assert cli_main(["create", str(small_tree), "-v", "5", "--compressor", "lz4_block", "-B", str(out / "boot"),
                     "-b", str(out / "blob"), "-J", str(out / "result.json")]) == 0
    output = json.loads((out / "result.json").read_text())
    assert list(output) == ["version", "bootstrap", "blobs", "external_bootstrap", "external_blobs", "trace",
                            "fs_version", "compressor"]
    assert output["bootstrap"] == str(out / "boot")
    assert output["blobs"] == [hashlib.sha256((out / "blob").read_bytes()).hexdigest()]
    assert (output["fs_version"], output["compressor"]) == ("5", "lz4_block")
    assert {"total_build", "build_tree", "load_from_directory", "dump_blob", "dump_bootstrap"} <= \
        set(output["trace"]["consumed_time"])
    events = output["trace"]["registered_events"]
    assert events["dedup_chunks"] == 1 and events["load_from_directory"] == 7
    assert events["euid"] == str(os.geteuid())


def test_aligned_chunk_v5(small_tree, tmp_path):
    for aligned in (False, True):
        result = rafs.Builder(small_tree, fs_version=5, aligned_chunk=aligned).write(blob_dir=tmp_path)
        with rafs.open(result.bootstrap, blob_dir=tmp_path) as image:
            offsets = [image.chunks(p)[0].uncompressed_offset for p in ("/a.txt", "/sub/b.bin")]
            assert all(o % 4096 == 0 for o in offsets) == aligned


def test_empty_tree_has_no_blob(tmp_path):
    src = tmp_path / "src"
    (src / "dir").mkdir(parents=True)
    (src / "empty").write_bytes(b"")
    out = tmp_path / "out"
    out.mkdir()
    result = rafs.Builder(src, fs_version=5).write(bootstrap=tmp_path / "boot", blob=tmp_path / "blob",
                                                   blob_dir=out)
    assert result.blob_ids == [] and result.output["blobs"] == []
    assert (tmp_path / "blob").read_bytes() == b""            # as nydus-image: the named file stays, empty
    assert list(out.iterdir()) == []
    with rafs.open(result.bootstrap) as image:
        assert image.blobs == [] and image.listdir("/") == ["dir", "empty"]


# -- whiteouts --------------------------------------------------------------------------------------

@pytest.fixture
def whiteout_tree(tmp_path):
    src = tmp_path / "src"
    (src / "opaque").mkdir(parents=True)
    (src / ".wh.dir").mkdir()
    (src / ".wh.dir" / "inside").write_bytes(b"x")
    (src / ".wh.gone").write_bytes(b"")
    (src / ".wh..wh..opq").write_bytes(b"")
    (src / "opaque" / "kept").write_bytes(b"k")
    os.fsencode(src)
    with open(os.fsencode(src) + b"/.wh.\xff", "wb"):
        pass
    os.setxattr(src / "opaque", b"trusted.overlay.opaque", b"y")
    os.mknod(src / "removed", 0o600 | stat.S_IFCHR, os.makedev(0, 0))
    return src


@pytest.mark.parametrize("spec,expected", [
    ("oci", ["opaque", "removed", ".wh.\udcff"]),
    ("overlayfs", [".wh..wh..opq", ".wh.dir", ".wh.gone", ".wh.\udcff", "opaque"]),
    ("none", [".wh..wh..opq", ".wh.dir", ".wh.gone", ".wh.\udcff", "opaque", "removed"]),
])
def test_single_layer_whiteouts(whiteout_tree, tmp_path, spec, expected):
    if os.geteuid() != 0:
        pytest.skip("overlayfs whiteouts need root (mknod, trusted.*)")
    result = rafs.Builder(whiteout_tree, fs_version=5, whiteout_spec=spec).write(blob_dir=tmp_path)
    with rafs.open(result.bootstrap, blob_dir=tmp_path) as image:
        assert sorted(image.listdir("/")) == sorted(expected)
        assert image.inode("/opaque").xattrs == {b"trusted.overlay.opaque": b"y"}


# -- streaming, atomicity ---------------------------------------------------------------------------

def test_failed_build_leaves_nothing(small_tree, tmp_path, monkeypatch):
    calls = []

    real_processor = blob_writer.codecs.chunk_processor

    def failing_processor(compressor, digester):
        process = real_processor(compressor, digester)

        def failing(data):
            calls.append(1)
            if len(calls) > 2:
                raise BuildError("disk on fire")
            return process(data)
        return failing

    monkeypatch.setattr(blob_writer.codecs, "chunk_processor", failing_processor)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(BuildError, match="disk on fire"):
        rafs.Builder(small_tree, fs_version=5, chunk_size=0x1000).write(bootstrap=tmp_path / "boot",
                                                                        blob_dir=out)
    assert list(out.iterdir()) == [] and not (tmp_path / "boot").exists()


def test_chunks_in_flight_are_bounded(tmp_path, monkeypatch):
    """A 64 MiB file streamed through the writer never has more than max_inflight chunks read ahead."""
    chunk, count = 0x10000, 1024
    state = {"read": 0, "retired": 0, "peak": 0}

    class Stream(io.RawIOBase):
        def readable(self):
            return True

        def read(self, size=-1):
            state["read"] += 1
            state["peak"] = max(state["peak"], state["read"] - state["retired"])
            return struct.pack("<Q", state["read"]) * (size // 8)

    def loader(source, *, whiteout_spec, layer):
        inode = Inode(ino=0, mode=stat.S_IFREG | 0o644, size=chunk * count)
        return Node(b"/", Inode(ino=0, mode=stat.S_IFDIR | 0o755),
                    children=[Node(b"big", inode, data=Stream)])

    real_store = blob_writer.BlobWriter._store

    def store(self, *args):
        state["retired"] += 1
        state["limit"] = self.max_inflight
        return real_store(self, *args)

    monkeypatch.setitem(builder_module.SOURCE_TYPES, "test-stream", loader)
    monkeypatch.setattr(blob_writer.BlobWriter, "_store", store)
    result = rafs.Builder("unused", source_type="test-stream", fs_version=5, chunk_size=chunk,
                          compressor="lz4_block").write_fp(io.BytesIO(), io.BytesIO())
    assert result.blobs[0].chunk_count == count and state["retired"] == count
    assert state["peak"] <= state["limit"] < count


def test_outputs_to_a_device_and_through_a_symlink(small_tree, tmp_path):
    """A device is written into, never replaced; a symlink keeps pointing at the file it names."""
    target = tmp_path / "real.boot"
    target.write_bytes(b"old")
    (tmp_path / "link.boot").symlink_to(target)
    result = rafs.Builder(small_tree, fs_version=6).write(bootstrap=tmp_path / "link.boot", blob="/dev/null")
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)
    assert (tmp_path / "link.boot").is_symlink() and result.bootstrap == str(target)
    assert target.read_bytes()[:3] != b"old" and target.stat().st_size == result.bootstrap_size


def test_an_unwritable_output_is_named(small_tree, tmp_path):
    with pytest.raises(BuildError, match="missing/boot"):
        rafs.Builder(small_tree).write(bootstrap=tmp_path / "missing" / "boot", blob=tmp_path / "blob")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]        # the blob was not left behind


def test_blob_to_a_fifo(small_tree, tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    received = []
    reader = threading.Thread(target=lambda: received.append(open(fifo, "rb").read()))
    reader.start()
    result = rafs.Builder(small_tree, fs_version=5).write(bootstrap=tmp_path / "boot", blob=fifo)
    reader.join(10)
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)
    assert hashlib.sha256(received[0]).hexdigest() == result.blob_ids[0]


def test_v5_inline_placeholder_and_records(small_tree, tmp_path):
    result = rafs.Builder(small_tree, fs_version=5, blob_inline_meta=True).write(blob=tmp_path / "blob")
    bootstrap, _ = extract_inline_bootstrap((tmp_path / "blob").read_bytes())
    reader = V5Reader(bootstrap)
    assert reader.blobs[0].blob_id == "x" * 64
    # the embedded table records the blob size before the bootstrap was appended
    assert reader.blobs[0].compressed_size < result.blob_size


def test_outputs_inside_the_source_are_not_part_of_it(small_tree):
    out = small_tree / "out"
    out.mkdir()
    result = rafs.Builder(small_tree, fs_version=5).write(blob_dir=out)
    with rafs.open(result.bootstrap, blob_dir=out) as image:
        assert image.listdir("/out") == []
        assert "a.txt" in image.listdir("/")


def test_prefetch_fs_policy_v6_keeps_pattern_order(small_tree, tmp_path):
    result = rafs.Builder(small_tree, fs_version=6, prefetch_patterns=["/sub/deep/c.txt", "/a.txt"]) \
        .write(bootstrap=tmp_path / "boot", blob_dir=tmp_path)
    with rafs.open(result.bootstrap, blob_dir=tmp_path) as image:
        assert image.reader.prefetch_inodes() == [image.inode("/sub/deep/c.txt").ino, image.inode("/a.txt").ino]
        assert image.chunks("/sub/deep/c.txt")[0].index == 0
        verify_tree(image, small_tree)


@pytest.mark.parametrize("fs_version", VERSIONS)
@pytest.mark.parametrize("toc", [False, True])
def test_inline_meta_without_file_data(tmp_path, fs_version, toc):
    """v6 keeps a data-less blob out of the blob table (a device slot of 0 blocks is invalid); the
    blob still carries the bootstrap and is named by its id."""
    if toc and fs_version == 5:
        return
    src = tmp_path / "src"
    (src / "dir").mkdir(parents=True)
    (src / "empty").write_bytes(b"")
    out = tmp_path / "out"
    out.mkdir()
    result = rafs.Builder(src, fs_version=fs_version, blob_inline_meta=True,
                          features=["blob-toc"] if toc else ()).write(blob_dir=out)
    assert [p.name for p in out.iterdir()] == [result.blob_id] == result.output["blobs"]
    with rafs.open(out / result.blob_id) as image:
        assert len(image.blobs) == (1 if fs_version == 5 else 0)
        assert image.listdir("/") == ["dir", "empty"]
        assert list(image.check(verify_data=True)) == []
