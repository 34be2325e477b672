"""ZRAN (``rafs create -t targz-ref``): images whose chunks stay inside the original gzip layer.

Every tar.gz fixture of the reference (single stream, two concatenated streams, a 256 KiB zero file,
a bgzip busybox root of many small members) is built with targz-ref and read back equal to Python's
``tarfile`` view of it; contexts that start inside a byte (primed through the system zlib) and chunks
of files that start in the middle of a gzip member are exercised by the bgzip layer. The context
generator is checked against the reference's own tests, hostile contexts are refused, and the
reference's option conflicts give its messages.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tarfile

import pytest

import rafs
import rafs.oci.check
from rafs.blob.meta import load_blob_meta
from rafs.blob.zran import MAX_CONTEXT_OUTPUT, ci_blob_id, inflate_context
from rafs.builder.tar import read_tar
from rafs.builder.zran_context import ZranGenerator
from rafs.errors import InvalidArgumentError, InvalidImageError
from rafs.model import BlobFeatures

GZ_FIXTURES = ["zran-single-stream.tar.gz", "zran-two-streams.tar.gz", "zran-zero-file.tar.gz", "bgzip.tar.gz"]


def _sha256(path) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def build_ref(layer, tmp_path, *, chunk_size=0x100000, source_type="targz-ref", **options):
    """Build ``layer`` with ``source_type`` into tmp_path/blobs, the layer copied in under its id."""
    blobs = tmp_path / "blobs"
    blobs.mkdir(exist_ok=True)
    boot = tmp_path / "bootstrap"
    result = rafs.Builder(os.fspath(layer), source_type=source_type, chunk_size=chunk_size,
                          **options).write(bootstrap=os.fspath(boot), blob_dir=os.fspath(blobs))
    shutil.copyfile(layer, blobs / _sha256(layer))
    return boot, blobs, result


def tar_view(layer) -> dict[str, bytes]:
    """{path: content} of the regular files as tarfile sees them (every concatenated archive)."""
    files = {}
    with tarfile.open(layer, ignore_zeros=True) as tar:
        for member in tar:
            name = "/" + os.path.normpath(member.name).lstrip("/")
            if member.isreg():
                files[name] = tar.extractfile(member).read()
            elif member.islnk():
                files[name] = files["/" + os.path.normpath(member.linkname).lstrip("/")]
    return files


def assert_reads_back(boot, blobs, layer):
    expected = tar_view(layer)
    assert expected
    with rafs.open(os.fspath(boot), blob_dir=os.fspath(blobs), validate=True) as image:
        for path, data in expected.items():
            assert image.read(path) == data, path
        assert list(image.check(verify_data=True)) == []


@pytest.mark.parametrize("name", GZ_FIXTURES)
@pytest.mark.parametrize("chunk_size", [0x1000, 0x100000])
def test_targz_ref_reads_back_as_tarfile_sees_it(fixtures, tmp_path, name, chunk_size):
    layer = fixtures / "zran" / name
    boot, blobs, result = build_ref(layer, tmp_path, chunk_size=chunk_size)
    with rafs.open(os.fspath(boot), blob_dir=os.fspath(blobs)) as image:
        [blob] = image.blobs
        assert blob.blob_id == _sha256(layer) and result.blob_ids == [blob.blob_id]
        assert blob.compressed_size == layer.stat().st_size
        assert blob.compressor == "gzip" and blob.digester == "sha256" and image.digester == "sha256"
        wanted = (BlobFeatures.ZRAN | BlobFeatures.SEPARATE | BlobFeatures.CHUNK_INFO_V2 | BlobFeatures.ALIGNED
                  | BlobFeatures.CAP_TAR_TOC)
        assert int(blob.features) == int(wanted)
        # the meta blob (the build's output) is named by the sha256 the blob table keeps
        assert ci_blob_id(blob) == result.blob_id and (blobs / result.blob_id).is_file()
        assert blob.meta_size == (blobs / result.blob_id).stat().st_size
    assert_reads_back(boot, blobs, layer)


def test_contexts_start_mid_byte_and_members_are_crossed(fixtures, tmp_path):
    """bgzip: contexts that begin inside a byte, chunks of files that begin inside a gzip member and
    contexts that run across member boundaries all read back."""
    layer = fixtures / "zran" / "bgzip.tar.gz"
    boot, blobs, _ = build_ref(layer, tmp_path, chunk_size=0x1000)
    with rafs.open(os.fspath(boot), blob_dir=os.fspath(blobs)) as image:
        blob = image.blobs[0]
        meta = load_blob_meta(blob, image.locator.open_ci(blob))
    assert any(ctx.ctx_bits for ctx in meta.zran_contexts)
    assert any(ctx.dict_size == 0x8000 for ctx in meta.zran_contexts)
    raw = layer.read_bytes()
    members = _member_starts(raw)
    assert len(members) > 1
    # some context covers the start of a later member (the decoder crosses trailer and header)
    assert any(any(c.in_offset < m < c.in_offset + c.in_len for m in members) for c in meta.zran_contexts)
    assert_reads_back(boot, blobs, layer)


def _member_starts(raw: bytes) -> list[int]:
    import zlib
    starts, offset = [], 0
    while offset < len(raw):
        starts.append(offset)
        d = zlib.decompressobj(31)
        d.decompress(raw[offset:])
        offset = len(raw) - len(d.unused_data)
    return starts


@pytest.mark.parametrize("step,expected", [(512, 3), (4096, 3)])
def test_generator_matches_the_reference_tests(fixtures, step, expected):
    """utils/src/compress/zlib_random.rs test_generate_comp_info and storage/src/meta/zran.rs
    test_generate_chunk_info: two streams, min/max compressed 1024/2048, max uncompressed 4096 -> 3
    contexts, each of which inflates."""
    layer = fixtures / "zran" / "zran-two-streams.tar.gz"
    with read_tar(os.fspath(layer), on_file=lambda node, stream: None) as tar:
        runs = tar.data_runs
    assert len(runs) == 5                      # the reference sees 5 files with ignore_zeros
    with open(layer, "rb") as f:
        generator = ZranGenerator(f, min_compressed=1024, max_compressed=2048, max_uncompressed=4096)
        for _, offset, size in runs:
            generator.read_to(offset)
            left = size
            while True:
                generator.begin_read(step)
                data = generator.read_some(min(step, left)) if left else b""
                if not data:
                    break
                generator.end_read()
                left -= len(data)
        contexts = generator.contexts
        generator.close()
    assert len(contexts) == expected
    raw = layer.read_bytes()
    for ctx in contexts:
        out = inflate_context(ctx, ctx.dictionary, raw[ctx.in_offset:ctx.in_offset + ctx.in_len])
        assert len(out) == ctx.out_len


def test_non_gzip_input_falls_back_to_tar_ref(fixtures, tmp_path):
    layer = fixtures / "tar" / "all-entry-type.tar"
    boot, blobs, _ = build_ref(layer, tmp_path)
    with rafs.open(os.fspath(boot), blob_dir=os.fspath(blobs)) as image:
        [blob] = image.blobs
        assert not blob.features & BlobFeatures.ZRAN and blob.features & BlobFeatures.SEPARATE
        assert blob.blob_id == _sha256(layer) and blob.compressed_size == layer.stat().st_size
        chunks = [c for path in tar_view(layer) for c in image.chunks(path)]
        assert chunks and not any(c.is_compressed for c in chunks)
    assert_reads_back(boot, blobs, layer)


def test_blob_toc_meta_blob(fixtures, tmp_path):
    """With --features blob-toc the meta blob carries chunk digests and a ToC, and still reads."""
    layer = fixtures / "zran" / "zran-two-streams.tar.gz"
    boot, blobs, result = build_ref(layer, tmp_path, features=("blob-toc",))
    with rafs.open(os.fspath(boot), blob_dir=os.fspath(blobs)) as image:
        blob = image.blobs[0]
        assert blob.features & BlobFeatures.HAS_TOC and blob.features & BlobFeatures.INLINED_CHUNK_DIGEST
        assert blob.toc_size and blob.meta_size == (blobs / result.blob_id).stat().st_size
    assert_reads_back(boot, blobs, layer)


def _rafs(*args, **kwargs):
    return subprocess.run([sys.executable, "-m", "rafs", *args], capture_output=True, text=True, timeout=120,
                          **kwargs)


@pytest.mark.parametrize("flags,message", [
    (["--encrypt"], "conversion type 'targz-ref' conflicts with '--encrypt'"),
    (["--blob-id", "abc"], "conversion type 'targz-ref' conflicts with '--blob-id'"),
    (["--prefetch-policy", "blob"], "conversion type targz-ref conflicts with '--prefetch-policy blob'"),
    (["-v", "5"], "'--fs-version 5' conflicts with conversion type 'targz-ref', only V6 is supported"),
    (["--batch-size", "0x1000"], "unsupported ConversionType for batch chunk: targz-ref"),
])
def test_reference_conflicts(fixtures, tmp_path, flags, message):
    layer = fixtures / "zran" / "zran-single-stream.tar.gz"
    done = _rafs("create", "-t", "targz-ref", os.fspath(layer), "-D", os.fspath(tmp_path),
                 "-B", os.fspath(tmp_path / "boot"), *flags, input="")
    assert done.returncode != 0
    assert message in done.stderr
    assert "Traceback" not in done.stderr


def test_cli_build_and_check(fixtures, tmp_path):
    layer = fixtures / "zran" / "bgzip.tar.gz"
    done = _rafs("create", "-t", "targz-ref", os.fspath(layer), "-D", os.fspath(tmp_path),
                 "-B", os.fspath(tmp_path / "boot"))
    assert done.returncode == 0, done.stderr
    assert _sha256(layer) in done.stderr + done.stdout
    shutil.copyfile(layer, tmp_path / _sha256(layer))
    done = _rafs("check", "-D", os.fspath(tmp_path), os.fspath(tmp_path / "boot"))
    assert done.returncode == 0, done.stderr


# -- hostile contexts ---------------------------------------------------------------------------------

def _read_all_with_context(tmp_path, fixtures, mutate):
    layer = fixtures / "zran" / "zran-zero-file.tar.gz"
    boot, blobs, _ = build_ref(layer, tmp_path, chunk_size=0x1000)
    image = rafs.open(os.fspath(boot), blob_dir=os.fspath(blobs))
    mutate(image.chunk_reader(0).blob_meta())
    return image, list(tar_view(layer))


@pytest.mark.parametrize("field,value,words", [
    ("in_offset", 1 << 40, "past the end of the layer"),
    ("in_len", 1 << 31, "bytes of the gzip stream"),
    ("out_len", MAX_CONTEXT_OUTPUT + 1, "over rafs's limit"),
    ("ctx_bits", 9, "bits into a byte"),
])
def test_hostile_context_is_refused(fixtures, tmp_path, field, value, words):
    def mutate(meta):
        meta.zran_contexts[0] = meta.zran_contexts[0]._replace(**{field: value})

    image, paths = _read_all_with_context(tmp_path, fixtures, mutate)
    with image, pytest.raises(InvalidImageError, match=words):
        for path in paths:
            image.read(path)


def test_wrong_window_is_caught_by_the_digest(fixtures, tmp_path):
    """A dictionary that is not the stream's window inflates to other bytes: the chunk digest says so."""
    layer = fixtures / "zran" / "bgzip.tar.gz"
    boot, blobs, _ = build_ref(layer, tmp_path)
    with rafs.open(os.fspath(boot), blob_dir=os.fspath(blobs), validate=True) as image:
        meta = image.chunk_reader(0).blob_meta()
        meta.zran_dicts = bytes(len(meta.zran_dicts))
        with pytest.raises((InvalidImageError, rafs.errors.DigestMismatchError)):
            for path in tar_view(layer):
                image.read(path)


def test_inflate_context_refuses_short_input():
    class Ctx:
        in_offset, in_len, out_len, ctx_byte, ctx_bits = 0, 10, 100, 0, 0
    with pytest.raises(InvalidImageError, match="10"):
        inflate_context(Ctx, b"", b"short")
    Ctx.in_len = 5
    with pytest.raises(InvalidImageError):
        inflate_context(Ctx, b"", b"\xff" * 5)


def test_ref_types_need_a_path(tmp_path):
    import io
    with pytest.raises(InvalidArgumentError, match="tar file path"):
        rafs.Builder(io.BytesIO(b""), source_type="targz-ref").write(bootstrap=os.fspath(tmp_path / "b"),
                                                                      blob_dir=os.fspath(tmp_path))



# -- rafs convert --oci-ref ---------------------------------------------------------------------------

NYDUS_REF = "containerd.io/snapshot/nydus-ref"


@pytest.fixture(scope="module")
def oci_ref_image(tmp_path_factory):
    """An OCI layout of gzip, gzip and plain layers converted with --oci-ref."""
    import oci_layers
    base = tmp_path_factory.mktemp("ociref")
    gz = oci_layers.make_layers(str(base / "gz"), compress="gzip")
    plain = oci_layers.make_layers(str(base / "plain"))
    layers = [gz[0], gz[1], plain[2]]
    expected = oci_layers.apply_layers(plain, str(base / "expected"))
    layout = str(base / "layout")
    oci_layers.oci_layout(layout, [oci_layers.oci_image(layout, layers)])
    target = str(base / "nydus")
    from rafs.oci import convert
    result = convert(layout, target, oci_ref=True, workers=1)
    return layout, target, result, layers, expected


def test_oci_ref_layout_and_annotations(oci_ref_image):
    import json
    layout, target, result, layers, _ = oci_ref_image
    index = json.load(open(os.path.join(target, "index.json")))
    manifest = json.load(open(os.path.join(target, "blobs", "sha256", index["manifests"][0]["digest"][7:])))
    assert manifest["mediaType"] == "application/vnd.oci.image.manifest.v1+json"     # --oci forced
    blob_layers, boot = manifest["layers"][:-1], manifest["layers"][-1]
    assert len(blob_layers) == len(layers)
    for desc, layer in zip(blob_layers, layers):
        assert desc["mediaType"] == "application/vnd.oci.image.layer.nydus.blob.v1"
        assert desc["annotations"] == {"containerd.io/snapshot/nydus-blob": "true",
                                       NYDUS_REF: "sha256:" + _sha256(layer)}
        # the original layer is in the target layout, unchanged
        assert _sha256(os.path.join(target, "blobs", "sha256", _sha256(layer))) == _sha256(layer)
    assert boot["annotations"]["containerd.io/snapshot/nydus-bootstrap"] == "true"


def test_oci_ref_image_reads_and_checks(oci_ref_image, tmp_path):
    import oci_layers
    layout, target, result, layers, expected = oci_ref_image
    report = rafs.oci.check.check_image(target, source=layout)
    assert report.ok, report.problems
    assert report.files_compared == len(oci_layers.directory_view(expected)) + 1
    image_desc = result.images[0]
    boot = tmp_path / "boot"
    with tarfile.open(os.path.join(target, "blobs", "sha256", image_desc.bootstrap_digest[7:])) as tar:
        boot.write_bytes(tar.extractfile("image/image.boot").read())
    with rafs.open(os.fspath(boot), blob_dir=os.path.join(target, "blobs", "sha256"), validate=True) as image:
        blobs = image.blobs
        # the merged table keeps the layers still referenced, each named by its original layer and
        # pointing at its meta blob (the Nydus blob layer) for the CI
        meta_of = dict(zip((_sha256(layer) for layer in layers), (d[7:] for d in image_desc.blob_digests)))
        assert blobs and {b.blob_id for b in blobs} <= set(meta_of)
        assert any(b.features & BlobFeatures.ZRAN for b in blobs)
        for b in blobs:
            assert ci_blob_id(b) == meta_of[b.blob_id]
            assert bool(b.features & BlobFeatures.ZRAN) == layers[list(meta_of).index(b.blob_id)].endswith(".gz")
        got, want = oci_layers.image_view(image), oci_layers.directory_view(expected)
        assert sorted(got) == sorted(want)
        for path in want:
            assert got[path] == want[path], path


def test_oci_ref_needs_v6(oci_ref_image, tmp_path):
    from rafs.oci import convert
    with pytest.raises(InvalidArgumentError, match="oci ref can only be supported by fs version 6"):
        convert(oci_ref_image[0], tmp_path / "x", oci_ref=True, fs_version=5)


@pytest.mark.privileged
@pytest.mark.parametrize("mode", ["fuse", "fuse-blobcache", "erofs-ondemand"])
def test_mount_serves_a_zran_image(fixtures, tmp_path, mode):
    """rafs mount of a targz-ref image returns the layer's content: FUSE with and without a blob cache,
    and the kernel's EROFS filled on demand (rafs.serve.ondemand)."""
    import json
    from conftest import need
    from helpers import rafs_mount
    need(os.geteuid() == 0 and os.path.exists("/dev/fuse"), "FUSE mounts need root and /dev/fuse")
    layer = fixtures / "zran" / "bgzip.tar.gz"
    boot, blobs, _ = build_ref(layer, tmp_path, chunk_size=0x10000)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    args = ["-B", os.fspath(boot)]
    if mode == "fuse":
        args += ["-D", os.fspath(blobs)]
    else:
        (tmp_path / "cache").mkdir()
        config = {"device": {"backend": {"type": "localfs", "config": {"dir": os.fspath(blobs)}},
                             "cache": {"type": "blobcache", "config": {"work_dir": os.fspath(tmp_path / "cache")}}},
                  "mode": "direct"}
        (tmp_path / "config.json").write_text(json.dumps(config))
        args += ["-C", os.fspath(tmp_path / "config.json")]
    if mode == "erofs-ondemand":
        args += ["--fs-driver", "erofs"]
    with rafs_mount(args, mnt):
        for path, data in tar_view(layer).items():
            assert (mnt / path.lstrip("/")).read_bytes() == data, path


@pytest.mark.privileged
def test_export_block_of_a_zran_image_mounts_in_the_kernel(fixtures, tmp_path, kernel_mount):
    """rafs export --block reads every chunk through its context; the kernel mounts the result and shows
    the layer's files."""
    from rafs.cli.main import main as cli
    layer = fixtures / "zran" / "bgzip.tar.gz"
    boot, blobs, _ = build_ref(layer, tmp_path, chunk_size=0x10000)
    disk = tmp_path / "disk"
    assert cli(["export", "--block", "-B", os.fspath(boot), "-D", os.fspath(blobs), "-O", os.fspath(disk)]) == 0
    mountpoint = kernel_mount(disk)
    for path, data in tar_view(layer).items():
        assert (mountpoint / path.lstrip("/")).read_bytes() == data, path


@pytest.mark.parametrize("field_offset,value,words", [
    (32, 0x8001, "dictionary"),                 # dict_size: a window larger than 32 KiB
    (16, 1 << 40, "dictionary"),                # dict_offset past the dictionary table
])
def test_hostile_window_is_refused_when_the_ci_is_decoded(fixtures, tmp_path, field_offset, value, words):
    from rafs.blob.meta import load_blob_meta_file
    layer = fixtures / "zran" / "bgzip.tar.gz"
    boot, blobs, _ = build_ref(layer, tmp_path)
    with rafs.open(os.fspath(boot), blob_dir=os.fspath(blobs)) as image:
        meta = image.chunk_reader(0).blob_meta()
    data = bytearray(meta.file_bytes())
    at = meta.header.s_ci_zran_offset + field_offset
    size = 4 if field_offset == 32 else 8
    data[at:at + size] = value.to_bytes(size, "little")
    with pytest.raises(InvalidImageError, match=words):
        load_blob_meta_file(bytes(data))


def test_context_past_the_layer_is_refused_when_the_ci_is_decoded(fixtures, tmp_path):
    """A checkpoint whose gzip range runs past the end of the layer: refused as the CI is decoded (so
    check -D reports it), not when a read reaches it."""
    from rafs.blob.meta import decode_blob_meta
    layer = fixtures / "zran" / "bgzip.tar.gz"
    boot, blobs, _ = build_ref(layer, tmp_path)
    with rafs.open(os.fspath(boot), blob_dir=os.fspath(blobs)) as image:
        meta = image.chunk_reader(0).blob_meta()
    ci = bytearray(meta.ci_data)
    at = meta.header.s_ci_zran_offset + 40 * (len(meta.zran_contexts) - 1)
    ci[at:at + 8] = (layer.stat().st_size - 10).to_bytes(8, "little")     # in_offset near the end
    decode_blob_meta(meta.header_bytes, meta.ci_data, compressed_limit=layer.stat().st_size)
    with pytest.raises(InvalidImageError, match="past the end of the layer"):
        decode_blob_meta(meta.header_bytes, bytes(ci), compressed_limit=layer.stat().st_size)


def test_chunk_dict_dedups_a_zran_build(fixtures, tmp_path):
    """--chunk-dict: chunks found in the dictionary point at its blob (nothing of them in the ZRAN
    context records); the rest read from the layer."""
    layer = fixtures / "zran" / "bgzip.tar.gz"
    dict_dir, blobs0, two = tmp_path / "dict", tmp_path / "blobs0", tmp_path / "two"
    for directory in (dict_dir, blobs0, two):
        directory.mkdir()
    rafs.Builder(os.fspath(fixtures / "zran" / "zran-two-streams.tar.gz"), source_type="targz-rafs",
                 digester="sha256").write(bootstrap=os.fspath(dict_dir / "boot"), blob_dir=os.fspath(blobs0))
    merged = tmp_path / "merged.tar.gz"
    # a layer that repeats the dictionary's files after bgzip's: some of its chunks are in the dictionary
    merged.write_bytes(layer.read_bytes() + (fixtures / "zran" / "zran-two-streams.tar.gz").read_bytes())
    boot, blobs, _ = build_ref(merged, two, chunk_dict=os.fspath(dict_dir / "boot"))
    for name in os.listdir(tmp_path / "blobs0"):
        shutil.copyfile(tmp_path / "blobs0" / name, blobs / name)
    with rafs.open(os.fspath(boot), blob_dir=os.fspath(blobs), validate=True) as image:
        assert len(image.blobs) == 2
        for path, data in tar_view(merged).items():
            assert image.read(path) == data, path


def test_context_at_the_end_of_a_gzip_member_reads(fixtures):
    """A context starting where a member's deflate data ends (its trailer, then the next member): what
    the generator records for a chunk starting exactly at a member boundary. rafs reads it."""
    import zlib
    raw = (fixtures / "zran" / "zran-two-streams.tar.gz").read_bytes()
    first = zlib.decompressobj(31)
    first.decompress(raw)
    member_end = len(raw) - len(first.unused_data)
    tail = raw[member_end - 8:]
    import gzip

    class Ctx:
        in_offset, in_len, ctx_byte, ctx_bits = member_end - 8, len(tail), 0, 0
        out_len = len(gzip.decompress(raw[member_end:]))
    assert inflate_context(Ctx, b"", tail) == gzip.decompress(raw[member_end:])


def test_chunk_starting_at_a_member_boundary(tmp_path):
    """A layer whose second gzip member starts exactly where a chunk does (eStargz-like splitting):
    the generator starts a context at the end of the first member's deflate data; it reads back."""
    import gzip
    import io
    import random
    data = random.Random(5).randbytes(3 << 20)
    plain = io.BytesIO()
    with tarfile.open(fileobj=plain, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        info = tarfile.TarInfo("big")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    tar_bytes = plain.getvalue()
    split = 512 + (1 << 20)                      # the tar header, then the first 1 MiB chunk
    layer = tmp_path / "split.tar.gz"
    layer.write_bytes(gzip.compress(tar_bytes[:split], mtime=0) + gzip.compress(tar_bytes[split:], mtime=0))
    boot, blobs, _ = build_ref(layer, tmp_path)
    with rafs.open(os.fspath(boot), blob_dir=os.fspath(blobs), validate=True) as image:
        meta = image.chunk_reader(0).blob_meta()
        first_member = len(gzip.compress(tar_bytes[:split], mtime=0))
        assert any(ctx.in_offset == first_member - 8 for ctx in meta.zran_contexts)
        assert image.read("/big") == data


def test_cli_convert_oci_ref_with_check(oci_ref_image, tmp_path, caplog):
    from rafs.cli.main import main as cli
    layout = oci_ref_image[0]
    target = tmp_path / "target"
    assert cli(["convert", "--source", layout, "--target", os.fspath(target), "--oci-ref", "--check",
                "--workers", "1"]) == 0
    assert "forcibly enabled `--oci` option" in caplog.text


def test_estargz_ref_builds_as_targz_ref(fixtures, tmp_path):
    """estargz-ref takes the targz-ref path (its eStargz index and landmark files are skipped by the
    tar reader either way): the same bootstrap and meta blob, byte for byte; a rebuild is identical."""
    layer = fixtures / "zran" / "bgzip.tar.gz"
    outputs = []
    for i, kind in enumerate(("targz-ref", "estargz-ref", "targz-ref")):
        work = tmp_path / str(i)
        work.mkdir()
        boot, blobs, result = build_ref(layer, work, source_type=kind)
        outputs.append((boot.read_bytes(), (blobs / result.blob_id).read_bytes()))
    assert outputs[0] == outputs[1] == outputs[2]


def test_blob_cache_takes_a_whole_context(fixtures, tmp_path):
    """Reading one file through a blob cache stores every chunk of the context it inflated (nydusd's
    behaviour): the layer's other files in that context then read from the cache, inflating nothing."""
    import json
    layer = fixtures / "zran" / "bgzip.tar.gz"
    boot, blobs, _ = build_ref(layer, tmp_path, chunk_size=0x10000)
    (tmp_path / "cache").mkdir()
    config = {"device": {"backend": {"type": "localfs", "config": {"dir": os.fspath(blobs)}},
                         "cache": {"type": "blobcache", "config": {"work_dir": os.fspath(tmp_path / "cache")}}},
              "mode": "direct"}
    files = tar_view(layer)
    with rafs.open(os.fspath(boot), config=json.dumps(config)) as image:
        meta = image.chunk_reader(0).blob_meta()
        chunks = {path: image.chunks(path) for path in files}
        first = next(path for path, found in chunks.items() if found)
        context = meta.chunks[chunks[first][0].index].context_index
        assert image.read(first) == files[first]
        fetcher = image.chunk_reader(0)
        same = [c for found in chunks.values() for c in found if meta.chunks[c.index].context_index == context]
        assert len(same) > 1 and all(fetcher.is_cached(c) for c in same)
        others = [c for found in chunks.values() for c in found if meta.chunks[c.index].context_index != context]
        assert not any(fetcher.is_cached(c) for c in others)
    with rafs.open(os.fspath(boot), config=json.dumps(config), validate=True) as image:
        for path, data in files.items():
            assert image.read(path) == data, path
