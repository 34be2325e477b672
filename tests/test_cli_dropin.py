"""rafs as a drop-in for nydus-image and nydusd: the command lines the tools around them run, as written.

- nydus-snapshotter's converter (pkg/converter/tool/builder.go, convert_unix.go): ``create`` of an OCI
  layer tar read from a FIFO into a blob written to a FIFO, prefetch patterns on stdin; ``merge`` of
  the bootstraps it extracts from the blobs, with ``--blob-digests/--blob-sizes/--blob-toc-digests``;
  ``unpack`` of a blob back into a tar read from a FIFO. Each is run through a ``nydus-image`` shim
  (the converter executes a binary path) and as ``python -m rafs``, and checked by reading the result.
- the user's guide (``nydus-image create ... --log-level warn``, ``nydusd ... --digest-validate``).
- every alternate spelling nydus-image accepts for create, merge, check, unpack and inspect, and its
  conflict messages.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tarfile
import threading

import pytest

import rafs
from conftest import ROOT
from helpers import ranged_blob_server
from rafs.blob import layout
from rafs.blob.toc import extract_entry, read_toc
from s3server import moto_server, s3, s3_proxy  # noqa: F401  (pytest fixtures)

PYTHON_RAFS = [sys.executable, "-m", "rafs"]


def env() -> dict:
    environment = dict(os.environ)
    environment["PYTHONPATH"] = str(ROOT) + os.pathsep + environment.get("PYTHONPATH", "")
    return environment


def shim(directory, name: str, *command: str) -> str:
    """An executable ``name`` that runs ``python -m rafs COMMAND...`` (how a tool calling the binary
    ``nydus-image`` or ``nydusd`` reaches rafs)."""
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, name)
    with open(path, "w") as f:
        f.write(f"#!/bin/sh\nexec {sys.executable} -m rafs {' '.join(command)} \"$@\"\n")
    os.chmod(path, 0o755)
    return path


@pytest.fixture(params=["nydus-image", "python -m rafs"])
def builder(request, tmp_path) -> list[str]:
    """The builder command: the converter's binary path (a shim), or rafs itself."""
    if request.param == "nydus-image":
        return [shim(tmp_path / "bin", "nydus-image")]
    return PYTHON_RAFS


def run(argv, *, stdin: bytes | None = None, cwd=None, ok: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(argv, input=stdin, capture_output=True, env=env(), cwd=cwd, timeout=120,
                          stdin=None if stdin is not None else subprocess.DEVNULL)
    if ok:
        assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    return proc


# -- layers as OCI tars ------------------------------------------------------------------------------

def layer_tar(entries) -> bytes:
    """An OCI layer tar: ``entries`` maps names to bytes (file), None (directory) or ("->", target)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, content in entries.items():
            info = tarfile.TarInfo(name)
            info.mtime = 1700000000
            if content is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            elif isinstance(content, tuple):
                info.type, info.linkname = tarfile.SYMTYPE, content[1]
                tar.addfile(info)
            else:
                info.size, info.mode = len(content), 0o644
                tar.addfile(info, io.BytesIO(content))
    return buf.getvalue()


LOWER = {"etc": None, "etc/os-release": b"ID=rafs\n", "bin": None, "bin/tool": bytes(range(256)) * 300,
         "usr": None, "usr/lib": None, "usr/lib/old.so": b"old library\n", "link": ("->", "etc/os-release")}
UPPER = {"usr": None, "usr/lib": None, "usr/lib/.wh.old.so": b"", "usr/lib/new.so": b"new library\n" * 1000,
         "etc": None, "etc/hostname": b"rafs-host\n"}


def tar_members(data: bytes) -> dict:
    """name -> (type, content or link target) of a tar's members, names without ./ or a trailing /."""
    found = {}
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        for member in tar:
            name = member.name.strip("/").removeprefix("./")
            if not name or name == ".":
                continue
            if member.isfile():
                found[name] = ("file", tar.extractfile(member).read())
            elif member.issym():
                found[name] = ("symlink", member.linkname)
            elif member.isdir():
                found[name] = ("dir", None)
            else:
                found[name] = (member.type, None)
    return found


# -- the converter's steps -------------------------------------------------------------------------

class Fifo:
    """A FIFO at ``path`` with a thread on its other end: feeding ``data`` in, or draining it."""

    def __init__(self, path, *, feed: bytes | None = None):
        os.mkfifo(path)
        self.path, self.data, self.error = str(path), b"", None
        self.thread = threading.Thread(target=self._feed if feed is not None else self._drain,
                                       args=(feed,) if feed is not None else (), daemon=True)
        self.thread.start()

    def _feed(self, data: bytes) -> None:
        try:
            with open(self.path, "wb") as f:
                f.write(data)
        except BrokenPipeError as exc:      # the reader gave up: the command's exit status tells why
            self.error = exc

    def _drain(self) -> None:
        with open(self.path, "rb") as f:
            self.data = f.read()

    def join(self) -> bytes:
        self.thread.join(60)
        assert not self.thread.is_alive(), f"nobody opened the other end of {self.path}"
        return self.data


def release(fifo: Fifo) -> None:
    """Open the far end of a FIFO the command never opened, so its thread ends."""
    if fifo.thread.is_alive():
        fd = os.open(fifo.path, os.O_RDWR | os.O_NONBLOCK)
        os.close(fd)
    fifo.thread.join(10)


def pack_args(blob_path, source_path, fs_version: str, *, tar2rafs: bool = True, chunk_dict=None,
              extra=()) -> list[str]:
    """buildPackArgs in pkg/converter/tool/builder.go, in its order."""
    args = ["create", "--log-level", "warn", "--prefetch-policy", "fs", "--blob", str(blob_path),
            "--whiteout-spec", "none", "--fs-version", fs_version]
    if tar2rafs:
        args += ["--type", "tar-rafs", "--blob-inline-meta"]
        if fs_version == "6":
            args += ["--features", "blob-toc"]
    else:
        args += ["--source-type", "directory", "--inline-bootstrap"]
    if chunk_dict is not None:
        args += ["--chunk-dict", f"bootstrap={chunk_dict}"]
    return args + list(extra) + [str(source_path)]


def pack(builder, work, layer: bytes, fs_version: str, patterns: str = "/", extra=(), chunk_dict=None) -> bytes:
    """packFromTar: the layer tar goes into the FIFO blob.targz, the blob comes out of blob.rafs."""
    os.makedirs(work)
    out = Fifo(work / "blob.rafs")
    src = Fifo(work / "blob.targz", feed=layer)
    proc = run(builder + pack_args(work / "blob.rafs", work / "blob.targz", fs_version, extra=extra,
                                   chunk_dict=chunk_dict),
               stdin=patterns.encode(), ok=False)
    release(out)
    release(src)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    return out.join()


def unpack_entry(blob: bytes, name: str) -> bytes:
    """UnpackEntry: by the blob's ToC when it has one, else by walking the tar headers from the end."""
    try:
        toc = read_toc(blob)
    except rafs.errors.InvalidImageError:
        toc = None
    entry = toc.get(name) if toc is not None else None
    if entry is not None:
        if entry.compressor == "none":          # the stored bytes as they are (image.blob: the chunks)
            return blob[entry.compressed_offset:entry.compressed_offset + entry.compressed_size]
        return extract_entry(blob, entry)
    cur = len(blob) - layout.TAR_BLOCK_SIZE
    while cur >= 0:
        header = tarfile.TarInfo.frombuf(blob[cur:cur + layout.TAR_BLOCK_SIZE], "utf-8", "surrogateescape")
        assert header.size <= cur
        if header.name == name:
            return blob[cur - header.size:cur]
        cur -= header.size + layout.TAR_BLOCK_SIZE
    raise KeyError(name)


def toc_digest(blob: bytes) -> str:
    """calcBlobTOCDigest: sha256 of the rafs.blob.toc entry's data."""
    return hashlib.sha256(unpack_entry(blob, "rafs.blob.toc")).hexdigest()


def test_converter_detects_tar2rafs_and_nothing_rafs_lacks(builder):
    """DetectFeatures runs ``create -h``: "--type" and "tar-rafs" must be there (else the converter
    unpacks layers to directories); "--batch-size" too, now that rafs writes batch chunks."""
    help_text = run(builder + ["create", "-h"]).stdout.decode()
    assert "--type" in help_text and "tar-rafs" in help_text
    assert "--batch-size" in help_text


@pytest.mark.parametrize("fs_version", ["6", "5"])
def test_converter_pack_merge_unpack(builder, tmp_path, fs_version):
    blobs = [pack(builder, tmp_path / f"pack{i}", layer_tar(layer), fs_version, patterns="/bin\n/etc\n")
             for i, layer in enumerate((LOWER, UPPER))]
    for blob, layer in zip(blobs, (LOWER, UPPER)):
        assert blob.endswith(b"\0" * 8) or len(blob) > 512
        with rafs.open(io.BytesIO(blob)) as image:      # each blob carries its own bootstrap
            assert image.version == int(fs_version)
            for name, content in layer.items():
                if isinstance(content, bytes):
                    assert image.read("/" + name) == content
        if fs_version == "6":
            assert read_toc(blob).get(layout.TOC_ENTRY_BOOTSTRAP) is not None      # --features blob-toc

    # Merge: bootstraps named after the original layer digests, blobs by the nydus layer digests
    work = tmp_path / "merge"
    work.mkdir()
    digests = [hashlib.sha256(blob).hexdigest() for blob in blobs]
    sources = []
    for blob, layer in zip(blobs, (LOWER, UPPER)):
        path = work / hashlib.sha256(layer_tar(layer)).hexdigest()
        path.write_bytes(unpack_entry(blob, "image.boot"))
        sources.append(str(path))
    target, output = work / "bootstrap", work / "merge-output.json"
    args = ["merge", "--log-level", "warn", "--prefetch-policy", "fs", "--output-json", str(output),
            "--bootstrap", str(target), *sources, "--blob-digests", ",".join(digests)]
    if fs_version == "6":
        args += ["--blob-toc-digests", ",".join(toc_digest(b) for b in blobs)]
    args += ["--blob-sizes", ",".join(str(len(b)) for b in blobs)]
    run(builder + args, stdin=b"/")
    assert json.loads(output.read_text())["blobs"] == digests      # what the converter reads back
    store = tmp_path / "store"
    store.mkdir()
    for digest, blob in zip(digests, blobs):
        (store / digest).write_bytes(blob)
    with rafs.open(str(target), blob_dir=str(store)) as image:
        assert [b.blob_id for b in image.blobs] == digests
        assert [b.compressed_size for b in image.blobs] == [len(b) for b in blobs]
        if fs_version == "6":
            assert [b.toc_digest.hex() for b in image.blobs] == [toc_digest(b) for b in blobs]
        assert image.read("/usr/lib/new.so") == UPPER["usr/lib/new.so"]
        assert image.read("/bin/tool") == LOWER["bin/tool"]
        assert image.read("/etc/hostname") == b"rafs-host\n" and image.read("/link") == b"ID=rafs\n"
        assert sorted(image.listdir("/usr/lib")) == ["new.so"]           # the whiteout applied
    assert run(builder + ["check", "--log-level", "warn", str(target)]).returncode == 0

    # Unpack: bootstrap and blob data taken out of the layer, the tar read from a FIFO
    for i, (blob, layer) in enumerate(zip(blobs, (LOWER, UPPER))):
        work = tmp_path / f"unpack{i}"
        work.mkdir()
        (work / "image.boot").write_bytes(unpack_entry(blob, "image.boot"))
        (work / "image.blob").write_bytes(unpack_entry(blob, "image.blob"))
        tar_out = Fifo(work / "oci.tar")
        proc = run(builder + ["unpack", "--log-level", "warn", "--bootstrap", str(work / "image.boot"),
                              "--output", str(work / "oci.tar"), "--blob", str(work / "image.blob")], ok=False)
        release(tar_out)
        assert proc.returncode == 0, proc.stderr.decode(errors="replace")
        members = tar_members(tar_out.join())
        expected = tar_members(layer_tar(layer))
        assert {k: v for k, v in members.items() if k in expected} == expected
        assert set(members) - set(expected) <= {n.rsplit("/", 1)[0] for n in expected}


def test_converter_pack_legacy_directory_form(builder, tmp_path):
    """Without tar2rafs the converter unpacks the layer and passes ``--source-type directory
    --inline-bootstrap``, plus ``--compressor``, ``--aligned-chunk`` and ``--chunk-size`` when set."""
    source = tmp_path / "layer"
    (source / "etc").mkdir(parents=True)
    (source / "etc/os-release").write_bytes(b"ID=rafs\n" * 3000)
    out = Fifo(tmp_path / "blob.rafs")
    args = pack_args(tmp_path / "blob.rafs", source, "5", tar2rafs=False,
                     extra=["--compressor", "lz4_block", "--aligned-chunk", "--chunk-size", "0x4000"])
    proc = run(builder + args, stdin=b"/", ok=False)
    release(out)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    with rafs.open(io.BytesIO(out.join())) as image:
        assert image.version == 5 and image.compressor == "lz4_block" and image.chunk_size == 0x4000
        assert image.read("/etc/os-release") == b"ID=rafs\n" * 3000


def test_converter_merge_with_blob_toc_sizes(tmp_path):
    """``--blob-toc-sizes`` (the last of merge's per-layer lists) lands in the blob table."""
    blob = pack(PYTHON_RAFS, tmp_path / "pack", layer_tar(LOWER), "6")
    boot = tmp_path / "layer.boot"
    boot.write_bytes(unpack_entry(blob, "image.boot"))
    toc = unpack_entry(blob, "rafs.blob.toc")
    digest = hashlib.sha256(blob).hexdigest()
    run(PYTHON_RAFS + ["merge", "--log-level", "warn", "-B", str(tmp_path / "merged"), str(boot),
                       "--blob-digests", digest, "--blob-sizes", str(len(blob)),
                       "--blob-toc-digests", hashlib.sha256(toc).hexdigest(),
                       "--blob-toc-sizes", str(len(toc) + 512)])
    with rafs.open(str(tmp_path / "merged")) as image:
        (entry,) = image.blobs
        assert (entry.blob_id, entry.toc_size) == (digest, len(toc) + 512)


def test_converter_pack_and_merge_with_a_chunk_dict(tmp_path):
    """``--chunk-dict bootstrap=PATH`` on create and merge, as the converter passes it: chunks the
    dictionary holds are not stored again; the dictionary's blob joins the blob tables."""
    (tmp_path / "dict").mkdir()
    (tmp_path / "lower.tar").write_bytes(layer_tar(LOWER))
    run(PYTHON_RAFS + ["create", "-t", "tar-rafs", "-B", str(tmp_path / "dict.boot"), "-D", str(tmp_path / "dict"),
                       str(tmp_path / "lower.tar")])
    (dict_blob,) = os.listdir(tmp_path / "dict")
    layer = dict(UPPER, **{"bin": None, "bin/tool": LOWER["bin/tool"]})          # a file the dictionary holds
    blob = pack(PYTHON_RAFS, tmp_path / "pack", layer_tar(layer), "6", chunk_dict=tmp_path / "dict.boot")
    with rafs.open(io.BytesIO(blob)) as image:              # bin/tool's chunks point at the dictionary
        assert {c.blob_index for c in image.chunks("/bin/tool")} == \
            {b.index for b in image.blobs if b.blob_id == dict_blob}
    digest = hashlib.sha256(blob).hexdigest()
    boot = tmp_path / hashlib.sha256(layer_tar(layer)).hexdigest()
    boot.write_bytes(unpack_entry(blob, "image.boot"))
    run(PYTHON_RAFS + ["merge", "--log-level", "warn", "--prefetch-policy", "fs", "--output-json",
                       str(tmp_path / "out.json"), "--bootstrap", str(tmp_path / "merged"), "--chunk-dict",
                       f"bootstrap={tmp_path / 'dict.boot'}", str(boot), "--blob-digests", digest,
                       "--blob-toc-digests", toc_digest(blob), "--blob-sizes", str(len(blob))], stdin=b"/")
    assert sorted(json.loads((tmp_path / "out.json").read_text())["blobs"]) == sorted([digest, dict_blob])
    (tmp_path / "dict" / digest).write_bytes(blob)
    with rafs.open(str(tmp_path / "merged"), blob_dir=str(tmp_path / "dict")) as image:
        assert image.read("/bin/tool") == LOWER["bin/tool"]
        assert image.read("/usr/lib/new.so") == UPPER["usr/lib/new.so"]
        assert {c.blob_index for c in image.chunks("/bin/tool")} == \
            {b.index for b in image.blobs if b.blob_id == dict_blob}


def test_create_chunk_dict_from_a_directory(tmp_path):
    a, b, blobs = tmp_path / "a", tmp_path / "b", tmp_path / "blobs"
    for d in (a, b, blobs):
        d.mkdir()
    shared = os.urandom(300000)
    (a / "shared").write_bytes(shared)
    (b / "shared").write_bytes(shared)
    (b / "own").write_bytes(b"own data\n" * 100)
    run(PYTHON_RAFS + ["create", str(a), "-B", str(tmp_path / "dict.boot"), "-D", str(blobs)])
    run(PYTHON_RAFS + ["create", str(b), "-B", str(tmp_path / "b.boot"), "-D", str(blobs), "--chunk-dict",
                       str(tmp_path / "dict.boot"), "-J", str(tmp_path / "b.json")])
    own_id, dict_id = json.loads((tmp_path / "b.json").read_text())["blobs"]
    assert os.path.getsize(blobs / own_id) < 10000                 # the shared file is not stored again
    assert b"metadata and data" in run(PYTHON_RAFS + ["check", str(tmp_path / "b.boot"), "-D", str(blobs)]).stdout
    with rafs.open(str(tmp_path / "b.boot"), blob_dir=str(blobs)) as image:
        assert [blob.blob_id for blob in image.blobs] == [own_id, dict_id]
        assert image.read("/shared") == shared
    # a dictionary built otherwise is refused in the reference's words
    proc = run(PYTHON_RAFS + ["create", str(b), "-B", str(tmp_path / "c.boot"), "-D", str(blobs), "--chunk-size",
                              "0x10000", "--chunk-dict", f"bootstrap={tmp_path / 'dict.boot'}"], ok=False)
    assert proc.returncode == 1 and b"inconsistent configuration of chunk_size" in proc.stderr
    proc = run(PYTHON_RAFS + ["create", str(b), "-B", str(tmp_path / "c.boot"), "-D", str(blobs),
                              "--chunk-dict", "boltdb=/x.db"], ok=False)
    assert proc.returncode == 2 and b"invalid chunk dict argument" in proc.stderr


# -- the user's guide ---------------------------------------------------------------------------------

def guide_tree(root) -> None:
    """origin-root-dir as the guide makes it."""
    shutil.copytree(ROOT / "samples" / "origin-root-dir", root, symlinks=True)
    os.makedirs(root / "dir_1" / "subdir_b", exist_ok=True)


GUIDE_BLOB_ID = "58048df580011d3a700076d8a1ec9ccaee6881f7feb8352aa298959ee8866f28"
GUIDE_CREATE = ("create --bootstrap image-store/image-basic-01.meta --log-level warn --whiteout-spec oci "
                "--output-json image-store/output.json --blob image-store/image-basic-01.blob --fs-version 6 "
                "--compressor zstd --chunk-size 0x100000 origin-root-dir")


def test_guide_nydus_image_create_line(tmp_path):
    """The create line nydusify runs in the guide, as written, then the guide's ``mv`` by output.json."""
    guide_tree(tmp_path / "origin-root-dir")
    (tmp_path / "image-store").mkdir()
    nydus_image = shim(tmp_path / "bin", "nydus-image")
    proc = run([nydus_image, *GUIDE_CREATE.split()], cwd=tmp_path)
    assert b"[INFO]" not in proc.stderr                   # --log-level warn after the command took effect
    blob_id = json.loads((tmp_path / "image-store/output.json").read_text())["blobs"][0]
    assert blob_id == GUIDE_BLOB_ID                       # the id the guide shows for this tree
    os.rename(tmp_path / "image-store/image-basic-01.blob", tmp_path / "image-store" / blob_id)
    with rafs.open(str(tmp_path / "image-store/image-basic-01.meta"), blob_dir=str(tmp_path / "image-store")) as image:
        assert image.read("/dir_1/subdir_a/file_a") == b"file_a\n"


def test_guide_nydusd_line_with_its_listed_flags(tmp_path):
    """``nydusd --config ... --mountpoint mnt-local --bootstrap ... --log-level info`` plus the two
    flags the guide lists under it, through a ``nydusd`` shim."""
    from test_fuse_support import Mount, guide_config, need_fuse
    need_fuse()
    guide_tree(tmp_path / "origin-root-dir")
    (tmp_path / "image-store").mkdir()
    run(PYTHON_RAFS + GUIDE_CREATE.split(), cwd=tmp_path)
    os.rename(tmp_path / "image-store/image-basic-01.blob", tmp_path / "image-store" / GUIDE_BLOB_ID)
    (tmp_path / "nydusd-config.localfs.json").write_text(json.dumps(guide_config("image-store", "cache")))
    nydusd = shim(tmp_path / "bin", "nydusd", "mount")
    mount = Mount([], tmp_path / "mnt-local", tmp_path / "nydusd.log",
                  command=[nydusd, "--config", "nydusd-config.localfs.json", "--mountpoint", "mnt-local",
                           "--bootstrap", "image-store/image-basic-01.meta", "--log-level", "info",
                           "--digest-validate", "--iostats-files"])
    try:
        assert (mount.path / "dir_2/file_b").read_text() == "file_b\n"
        log = mount.log_text()
        assert "digest validation on" in log and "no per-file I/O statistics" in log
    finally:
        mount.close()


def test_mount_digest_validate_catches_a_corrupt_chunk(tmp_path):
    """--digest-validate turns on chunk digest checks: a blob whose data was altered fails to read."""
    from test_fuse_support import Mount, need_fuse
    need_fuse()
    source = tmp_path / "src"
    source.mkdir()
    (source / "file").write_bytes(b"A" * 5000)
    (tmp_path / "blobs").mkdir()
    result = rafs.Builder(str(source), compressor="none").write(bootstrap=str(tmp_path / "boot"),
                                                                blob_dir=str(tmp_path / "blobs"))
    blob = tmp_path / "blobs" / result.blob_id
    data = bytearray(blob.read_bytes())
    data[0] ^= 0xFF
    blob.write_bytes(bytes(data))
    for flags, readable in (([], True), (["--digest-validate"], False), (["--digest-validate", "false"], True)):
        mount = Mount(["--bootstrap", str(tmp_path / "boot"), "--localfs-dir", str(tmp_path / "blobs"), *flags],
                      tmp_path / "mnt", tmp_path / "mount.log")
        try:
            if readable:
                assert (mount.path / "file").read_bytes()[1:] == b"A" * 4999
            else:
                with pytest.raises(OSError):
                    (mount.path / "file").read_bytes()
        finally:
            mount.close()


def test_nydusify_check_line_writes_the_reference_json(tmp_path):
    """nydusify's checker and committer run ``check --log-level warn --output-json OUT --bootstrap BOOT``
    and read "blobs" (ids), "fs_version" and "compressor" from OUT."""
    source = tmp_path / "src"
    guide_tree(source)
    (tmp_path / "blobs").mkdir()
    rafs.Builder(str(source), fs_version=5, compressor="lz4_block").write(bootstrap=str(tmp_path / "boot"),
                                                                          blob_dir=str(tmp_path / "blobs"))
    nydus_image = shim(tmp_path / "bin", "nydus-image")
    run([nydus_image, "check", "--log-level", "warn", "--output-json", str(tmp_path / "out.json"),
         "--bootstrap", str(tmp_path / "boot")])
    out = json.loads((tmp_path / "out.json").read_text())
    assert out["blobs"] == os.listdir(tmp_path / "blobs")
    assert (out["fs_version"], out["compressor"], out["bootstrap"]) == ("5", "lz4_block", str(tmp_path / "boot"))
    assert out["faults"] == [] and "consumed_time" in out["trace"]


# -- global options and alternate spellings ---------------------------------------------------------

@pytest.fixture
def image(tmp_path):
    """(bootstrap, blob dir, source) of a small v6 image."""
    source = tmp_path / "src"
    guide_tree(source)
    (tmp_path / "blobs").mkdir()
    rafs.Builder(str(source)).write(bootstrap=str(tmp_path / "boot"), blob_dir=str(tmp_path / "blobs"))
    return str(tmp_path / "boot"), str(tmp_path / "blobs"), source


@pytest.mark.parametrize("where", ["before", "after", "both"])
def test_global_options_before_or_after_the_command(image, tmp_path, where):
    boot, blobs, _ = image
    log = tmp_path / "rafs.log"
    glob = ["--log-level", "debug", "-L", str(log)]
    argv = {"before": glob + ["check", boot, "-D", blobs], "after": ["check", boot, "-D", blobs] + glob,
            "both": ["-l", "error", "check", "-l", "debug", boot, "-D", blobs, "--log-file", str(log)]}[where]
    proc = run(PYTHON_RAFS + argv)
    assert b"check passed" in proc.stdout
    assert log.exists()                                 # -L/--log-file opened wherever it was given


def test_log_level_after_the_command_takes_effect(image, tmp_path):
    _, _, source = image
    quiet = run(PYTHON_RAFS + ["create", str(source), "-B", str(tmp_path / "b1"), "-D", str(tmp_path),
                               "--log-level", "warn"])
    loud = run(PYTHON_RAFS + ["--log-level", "warn", "create", str(source), "-B", str(tmp_path / "b2"),
                              "-D", str(tmp_path), "-l", "info"])
    assert b"[INFO]" not in quiet.stderr and b"[INFO]" in loud.stderr      # the later one wins


@pytest.mark.parametrize("command", ["check", "inspect", "unpack"])
def test_bootstrap_positional_or_deprecated_flag(image, tmp_path, command):
    boot, blobs, _ = image
    extra = {"check": [], "inspect": ["-R", "stats"], "unpack": ["-D", blobs, "--output", str(tmp_path / "o.tar")]}
    for spelling in ([boot], ["-B", boot], ["--bootstrap", boot]):
        run(PYTHON_RAFS + [command, *spelling, *extra[command]])
    both = run(PYTHON_RAFS + [command, boot, "-B", boot, *extra[command]], ok=False)
    assert both.returncode == 2
    assert b"the argument '--bootstrap <bootstrap>' cannot be used with '[BOOTSTRAP]'" in both.stderr
    neither = run(PYTHON_RAFS + [command, *extra[command]], ok=False)
    assert neither.returncode == 2 and b"required arguments were not provided: <BOOTSTRAP>" in neither.stderr


@pytest.mark.parametrize("argv, message", [
    (["check", "{boot}", "-D", "{blobs}", "-C", "{boot}"],
     "the argument '--blob-dir <blob-dir>' cannot be used with '--config <config>'"),
    (["unpack", "{boot}", "-D", "{blobs}", "-b", "{boot}", "--output", "{tmp}/o.tar"],
     "the argument '--blob-dir <blob-dir>' cannot be used with '--blob <blob>'"),
    (["unpack", "{boot}", "--backend-type", "s3", "--backend-config", "{{}}", "--backend-config-file", "{boot}",
      "--output", "{tmp}/o.tar"], "cannot be used with '--backend-config <backend-config>'"),
    (["unpack", "{boot}", "--backend-type", "localfs", "--backend-config", "{{}}", "--output", "{tmp}/o.tar"],
     "Use --blob-dir to specify localfs backend"),
    (["unpack", "{boot}", "--backend-type", "s3", "--output", "{tmp}/o.tar"],
     "--backend-config or --backend-config-file must be specified"),
    (["unpack", "{boot}", "--output", ""], "invalid empty --output option"),
    (["create", "{src}", "--blob-inline-meta", "-B", "{tmp}/b", "-b", "{tmp}/x"],
     "the argument '--bootstrap <bootstrap>' cannot be used with '--blob-inline-meta'"),
    (["create", "{src}", "--blob-inline-meta", "--blob-id", "x", "-b", "{tmp}/x"],
     "the argument '--blob-inline-meta' cannot be used with '--blob-id <blob-id>'"),
    (["create", "{src}", "-B", "{tmp}/b", "--blob-cache-dir", "{tmp}", "--compressor", "zstd"],
     "the argument '--blob-cache-dir <blob-cache-dir>' cannot be used with '--compressor <compressor>'"),
    (["create", "{src}", "-B", "{tmp}/b", "--blob-cache-dir", "{tmp}", "-b", "{tmp}/x"],
     "the argument '--blob-cache-dir <blob-cache-dir>' cannot be used with '--blob <blob>'"),
    (["create", "{src}", "-B", "{tmp}/b", "-b", "{tmp}/x", "--blob-id", "a" * 256], "blob id is limited to length 255"),
    (["create", "{src}", "-B", "{tmp}/b", "-D", "{tmp}", "--blob-id", "../up"], "--blob-id '../up'"),
    (["create", "{src}", "-B", "{tmp}/b", "-b", "{tmp}/x", "--blob-offset", "-1"], "invalid blob offset -1"),
    (["create", "{src}", "-B", "{tmp}/b", "-b", "{tmp}/x", "-C", "{tmp}/missing.json"], "--config"),
])
def test_reference_conflict_messages(image, tmp_path, argv, message):
    boot, blobs, source = image
    argv = [a.format(boot=boot, blobs=blobs, tmp=tmp_path, src=source) for a in argv]
    proc = run(PYTHON_RAFS + argv, ok=False)
    assert proc.returncode == 2, proc.stderr
    assert message.encode() in proc.stderr, proc.stderr
    assert not os.path.exists(tmp_path / "b") and not os.path.exists(tmp_path / "o.tar")


def test_create_blob_id_names_the_blob(image, tmp_path):
    _, _, source = image
    out = tmp_path / "out"
    out.mkdir()
    run(PYTHON_RAFS + ["create", str(source), "-B", str(out / "boot"), "-D", str(out), "--blob-id", "my-blob",
                       "-J", str(out / "o.json")])
    assert json.loads((out / "o.json").read_text())["blobs"] == ["my-blob"]
    with rafs.open(str(out / "boot"), blob_dir=str(out)) as img:
        assert [b.blob_id for b in img.blobs] == ["my-blob"]
        assert img.read("/dir_2/file_b") == b"file_b\n"


def test_create_blob_offset_shifts_chunk_records(image, tmp_path):
    """--blob-offset N: the blob is meant to sit N bytes into a larger file (a tar): v5 chunk records
    point there, so the blob read at that offset serves the files."""
    _, _, source = image
    run(PYTHON_RAFS + ["create", str(source), "-v", "5", "-B", str(tmp_path / "boot"), "-b",
                       str(tmp_path / "blob"), "--blob-offset", "1536"])
    (tmp_path / "container").write_bytes(bytes(1536) + (tmp_path / "blob").read_bytes())
    with rafs.open(str(tmp_path / "boot"), blobs=[str(tmp_path / "container")]) as img:
        assert img.read("/dir_1/subdir_a/file_a") == b"file_a\n"
        assert min(c.compressed_offset for c in img.chunks("/file_c")) >= 1536


def test_create_blob_data_size_and_batch_size_are_accepted(image, tmp_path):
    _, _, source = image
    run(PYTHON_RAFS + ["create", str(source), "-B", str(tmp_path / "boot"), "-D", str(tmp_path),
                       "--blob-data-size", "0x1000", "--batch-size", "0"])
    run(PYTHON_RAFS + ["create", str(source), "-B", str(tmp_path / "boot2"), "-D", str(tmp_path),
                       "--batch-size", "0x10000"])
    proc = run(PYTHON_RAFS + ["create", str(source), "-B", str(tmp_path / "boot3"), "-D", str(tmp_path),
                              "--batch-size", "0x10000", "-v", "5"], ok=False)
    assert proc.returncode == 2 and b"`--batch-size` with non-zero value conflicts with `--fs-version 5`" \
        in proc.stderr


@pytest.mark.parametrize("argv, command", [
    (["-L", "x.log", "check", "boot"], "check"),
    (["--log-file", "x.log", "-l", "warn", "unpack", "boot"], "unpack"),
    (["create", "--log-level", "warn", "src"], "create"),
])
def test_command_found_past_global_options(argv, command):
    from rafs.cli.main import command_of
    assert command_of(argv) == command


def test_create_blob_cache_dir_writes_what_nydusd_caches(image, tmp_path):
    """--blob-cache-dir leaves no blob but the .blob.data and .blob.meta a blobcache holds once every
    chunk was read: the same bytes rafs's own cache writes when reading the blob built normally."""
    _, _, source = image
    (tmp_path / "gen").mkdir()
    run(PYTHON_RAFS + ["create", str(source), "-B", str(tmp_path / "boot1"), "--blob-cache-dir",
                       str(tmp_path / "gen"), "-J", str(tmp_path / "o.json")])
    (blob_id,) = json.loads((tmp_path / "o.json").read_text())["blobs"]
    assert sorted(os.listdir(tmp_path / "gen")) == [f"{blob_id}.blob.data", f"{blob_id}.blob.meta"]
    # the same build with a blob, read through a blobcache
    (tmp_path / "blobs2").mkdir()
    run(PYTHON_RAFS + ["create", str(source), "-B", str(tmp_path / "boot2"), "-D", str(tmp_path / "blobs2"),
                       "--compressor", "none"])
    assert (tmp_path / "boot1").read_bytes() == (tmp_path / "boot2").read_bytes()
    config = {"device": {"backend": {"type": "localfs", "config": {"dir": str(tmp_path / "blobs2")}},
                         "cache": {"type": "blobcache", "config": {"work_dir": str(tmp_path / "cache")}}},
              "mode": "direct"}
    with rafs.open(str(tmp_path / "boot2"), config=config) as img:
        for path, inode in img.iter_entries("/"):
            if inode.is_reg:
                img.read(path)
    for suffix in (".blob.data", ".blob.meta"):
        assert (tmp_path / "gen" / (blob_id + suffix)).read_bytes() == \
            (tmp_path / "cache" / (blob_id + suffix)).read_bytes(), suffix


def test_create_estargz_rafs(tmp_path):
    """-t estargz-rafs: an eStargz is a tar.gz whose index and landmark files are not part of the tree."""
    import gzip
    tar = layer_tar({"etc": None, "etc/motd": b"hello\n", "stargz.index.json": b"{}", ".prefetch.landmark": b"\xf0"})
    (tmp_path / "layer.tar.gz").write_bytes(gzip.compress(tar))
    run(PYTHON_RAFS + ["create", "-t", "estargz-rafs", "-B", str(tmp_path / "boot"), "-D", str(tmp_path),
                       str(tmp_path / "layer.tar.gz")])
    with rafs.open(str(tmp_path / "boot"), blob_dir=str(tmp_path)) as img:
        assert sorted(img.listdir("/")) == ["etc"] and img.read("/etc/motd") == b"hello\n"


def test_create_config_is_checked(image, tmp_path):
    _, _, source = image
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"device": {"backend": {"type": "localfs", "config": {"dir": str(tmp_path)}}}}))
    run(PYTHON_RAFS + ["create", str(source), "-B", str(tmp_path / "boot"), "-D", str(tmp_path), "-C", str(good)])
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    proc = run(PYTHON_RAFS + ["create", str(source), "-B", str(tmp_path / "boot2"), "-D", str(tmp_path),
                              "--config", str(bad)], ok=False)
    assert proc.returncode == 2 and b"neither JSON" in proc.stderr
    assert not (tmp_path / "boot2").exists()


def test_create_checks_its_output_unless_disable_check(image, tmp_path, monkeypatch, capsys):
    """After the build the metadata is read back and checked; --disable-check skips that. A builder
    made to write a broken bootstrap shows the difference."""
    from rafs.cli.main import main
    from rafs.v6 import writer as v6_writer
    _, _, source = image
    real = v6_writer.write_bootstrap

    def broken(*args, **kwargs):
        data = bytearray(real(*args, **kwargs))
        data[1024:1028] = b"\0\0\0\0"                  # the EROFS superblock's magic
        return bytes(data)

    monkeypatch.setattr(v6_writer, "write_bootstrap", broken)
    assert main(["create", str(source), "-B", str(tmp_path / "b1"), "-D", str(tmp_path)]) == 1
    assert "validation of the generated RAFS metadata" in capsys.readouterr().err
    assert main(["create", str(source), "-B", str(tmp_path / "b2"), "-D", str(tmp_path), "--disable-check"]) == 0


def test_unpack_through_a_backend(image, tmp_path):
    """--backend-type http-proxy --backend-config '{"addr": ...}', as the converter's stream unpack
    passes it, with an http:// address (a loopback HTTP server holding the blob)."""
    boot, blobs, source = image
    with ranged_blob_server(blobs) as address:
        config = json.dumps({"addr": address})
        run(PYTHON_RAFS + ["unpack", "--log-level", "warn", "--bootstrap", boot, "--output", str(tmp_path / "o.tar"),
                           "--backend-type", "http-proxy", "--backend-config", config])
        (tmp_path / "backend.json").write_text(config)
        run(PYTHON_RAFS + ["unpack", boot, "--output", str(tmp_path / "o2.tar"), "--backend-type", "http-proxy",
                           "--backend-config-file", str(tmp_path / "backend.json")])
    members = tar_members((tmp_path / "o.tar").read_bytes())
    assert members["dir_1/subdir_a/file_a"] == ("file", b"file_a\n")
    assert members == tar_members((tmp_path / "o2.tar").read_bytes())


def test_unpack_through_s3(image, tmp_path, s3):
    """--backend-type s3 --backend-config-file: the blob is read from a real S3 endpoint (moto), ranged;
    the secret in the configuration never shows up in what rafs prints."""
    from s3server import ACCESS_KEY_SECRET
    boot, blobs, _ = image
    (blob_id,) = os.listdir(blobs)
    s3.put("nydus-demo/blob/" + blob_id, (pathlib.Path(blobs) / blob_id).read_bytes())
    (tmp_path / "backend.json").write_text(json.dumps(s3.backend_config()))
    s3.proxy.reset()
    proc = run(PYTHON_RAFS + ["unpack", "-B", boot, "--output", str(tmp_path / "o.tar"), "--backend-type", "s3",
                              "--backend-config-file", str(tmp_path / "backend.json"), "-l", "debug"])
    assert ACCESS_KEY_SECRET.encode() not in proc.stdout + proc.stderr
    assert s3.proxy.requests_for(blob_id)                     # the data came through the backend
    assert tar_members((tmp_path / "o.tar").read_bytes())["file_c"] == ("file", b"file_c\n")


def test_help_offers_what_works():
    unpack_help = run(PYTHON_RAFS + ["unpack", "--help"]).stdout.decode()
    assert "{s3,http-proxy}" in unpack_help and "oss" not in unpack_help
    for command in ("create", "merge", "check", "inspect", "unpack", "mount"):
        text = run(PYTHON_RAFS + [command, "--help"]).stdout.decode()
        assert "--log-level" in text and "--log-file" in text, command
