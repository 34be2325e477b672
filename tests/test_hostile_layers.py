"""Tar layers and OCI image layouts as hostile input (issue 12): every length they declare is
bounded before rafs acts on it, and every malformed document is a one-line error, never a traceback,
a hang, or memory in proportion to a number the input declares.

Header bombs run in a child process under ``RLIMIT_AS``, with the child's peak memory checked.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import textwrap
import time
import zlib

import pytest

from rafs.builder.tar import read_tar
from rafs.builder.tarstream import MAX_LONG_NAME_SIZE, MAX_PAX_HEADER_SIZE, MAX_SPARSE_ENTRIES, MAX_ZERO_RUN
from rafs.cli.main import main as cli
from rafs.errors import BuildError, InvalidArgumentError, InvalidImageError
from rafs.oci import convert
from rafs.oci.layout import OciLayout, is_oci_layout

from oci_layers import oci_image, oci_layout

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MIB = 1 << 20
MEMORY_CAP = 1 << 30                 # the child's address space; the bombs declare more than this
BOMB = 1536 * MIB                    # what the layer declared: 1.5 GiB
PEAK_RSS = 300 * MIB                 # a bounded build of a tiny layer stays far below this

# -- building hostile bytes cheaply -----------------------------------------------------------------------


def gzip_with_zeros(prefix: bytes, zeros: int) -> bytes:
    """A gzip stream of ``prefix`` then ``zeros`` zero bytes, built in about a millisecond per
    100 MiB: after a full flush deflate restarts, so one compressed MiB of zeros repeats. The
    trailer's CRC is wrong; nothing bounded reads that far."""
    c = zlib.compressobj(9, zlib.DEFLATED, 31)
    head = c.compress(prefix) + c.flush(zlib.Z_FULL_FLUSH)
    piece = c.compress(bytes(MIB)) + c.flush(zlib.Z_FULL_FLUSH)
    assert c.compress(bytes(MIB)) + c.flush(zlib.Z_FULL_FLUSH) == piece
    return head + piece * (zeros // MIB) + c.flush()


def raw_header(name: bytes, typeflag: bytes, size: int, *, extra: dict[int, bytes] | None = None) -> bytes:
    """A GNU tar header block, fields written by hand so any size (base-256 past 8 GiB) fits."""
    block = bytearray(512)
    block[0:len(name)] = name
    block[100:108] = b"0000644\0"
    block[108:116] = block[116:124] = b"0000000\0"
    block[124:136] = b"%011o\0" % size if size < 8 ** 11 else b"\x80" + size.to_bytes(11, "big")
    block[136:148] = b"00000000000\0"
    block[156:157] = typeflag
    block[257:265] = b"ustar  \0"
    for offset, value in (extra or {}).items():
        block[offset:offset + len(value)] = value
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\0 " % sum(block)
    return bytes(block)


def tar_of(*members: tuple[str, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def run_capped(argv: list[str], *, timeout: float = 60) -> tuple[int, str, int]:
    """(exit code, stderr, peak RSS in bytes) of ``rafs argv`` in a child limited to MEMORY_CAP.

    The peak is the child's VmHWM: ``ru_maxrss`` would include the parent's size, which Linux carries
    over when the forked copy of pytest execs the child."""
    child = textwrap.dedent(f"""
        import resource, sys
        resource.setrlimit(resource.RLIMIT_AS, ({MEMORY_CAP}, {MEMORY_CAP}))
        from rafs.cli.main import main
        code = main({argv!r})
        with open("/proc/self/status") as status:
            print(next(line.split()[1] for line in status if line.startswith("VmHWM:")))
        sys.exit(code)
    """)
    env = dict(os.environ, PYTHONPATH=ROOT)
    done = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=timeout, env=env)
    lines = done.stdout.split()
    peak = int(lines[-1]) * 1024 if lines else -1
    return done.returncode, done.stderr, peak


def assert_one_line_error(code: int, stderr: str, *, codes=(1,)) -> None:
    assert code in codes, stderr
    assert "Traceback" not in stderr, stderr
    assert len(stderr.strip().splitlines()) == 1, stderr


# -- tar header bombs ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("typeflag", [b"x", b"g", b"L", b"K"])
@pytest.mark.parametrize("packing", ["plain", "gzip"])
def test_extended_header_bomb_is_refused_in_bounded_memory(tmp_path, typeflag, packing):
    """A first header declaring a 1.5 GiB PAX header or GNU long name: refused before it is read,
    in a layer that is sparse on disk (read in place) or a 1.6 MB gzip (streamed)."""
    header = raw_header(b"bomb", typeflag, BOMB)
    layer = tmp_path / f"layer.{packing}"
    if packing == "gzip":
        layer.write_bytes(gzip_with_zeros(header, BOMB))
        assert layer.stat().st_size < 2 * MIB
    else:
        with open(layer, "wb") as f:
            f.write(header)
            f.truncate(len(header) + BOMB + 1024)
    started = time.monotonic()
    code, stderr, peak = run_capped(["create", "-t", "tar-rafs", str(layer), "-B", str(tmp_path / "boot"),
                                     "-b", str(tmp_path / "blob")])
    assert_one_line_error(code, stderr)
    assert "offset 0x0" in stderr and "over the limit" in stderr
    assert 0 < peak < PEAK_RSS
    assert time.monotonic() - started < 30


def test_header_limits_admit_what_real_tars_carry(tmp_path):
    """A long name, a long symlink target and xattrs of real size pass the bounds."""
    out = io.BytesIO()
    name = "d/" * 200 + "file"
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo(name)
        info.size = 3
        info.pax_headers = {"SCHILY.xattr.user.note": "v" * 60000}
        tar.addfile(info, io.BytesIO(b"abc"))
        link = tarfile.TarInfo("link")
        link.type, link.linkname = tarfile.SYMTYPE, "t" * (MAX_LONG_NAME_SIZE - 1)
        tar.addfile(link)
    with read_tar(io.BytesIO(out.getvalue())) as layer:
        assert layer.entries == 2
    assert MAX_PAX_HEADER_SIZE >= 64 << 10


def test_chains_of_extended_headers_are_bounded(tmp_path):
    """tarfile recurses once per extended header: 10,000 of them in a row were a RecursionError."""
    chain = b"".join(raw_header(b"././@LongLink", b"L", 8) + b"name\0\0\0\0".ljust(512, b"\0")
                     for _ in range(10_000))
    with pytest.raises(BuildError, match="extended headers in a row"):
        read_tar(io.BytesIO(chain + raw_header(b"f", b"0", 0) + bytes(1024)))


def _global_header(records: bytes) -> bytes:
    return raw_header(b"pax_global_header", b"g", len(records)) + records.ljust(-(-len(records) // 512) * 512, b"\0")


def test_global_pax_headers_are_bounded_together():
    """tarfile applies every global header to every member: their keys, piled up over many small
    headers, would multiply the work of each member."""
    def record(key: bytes) -> bytes:
        body = b" %s=v\n" % key
        length = len(body) + len(str(len(body)))
        length = len(body) + len(str(length))
        return b"%d%s" % (length, body)

    git_archive = _global_header(record(b"comment") * 1)
    with read_tar(io.BytesIO(git_archive + tar_of(("f", b"x")))) as layer:
        assert layer.entries == 1
    member = tar_of(("f", b"x"))[:1024]                  # a header and its block, no end of archive
    piled = b"".join(_global_header(b"".join(record(b"k%d.%d" % (n, i)) for i in range(40))) + member
                     for n in range(50))
    with pytest.raises(BuildError, match="global headers over the limit"):
        read_tar(io.BytesIO(piled + bytes(1024)))


def test_a_libarchive_xattr_name_that_is_not_utf8_is_kept_as_bytes():
    """Found by fuzz_tar_layer: a non-UTF-8 byte in a ``LIBARCHIVE.xattr.`` key reached
    urllib's unquote as a surrogate and raised UnicodeEncodeError."""
    records = b"32 LIBARCHIVE.xattr.user.\x94=dg==\n"
    layer = raw_header(b"PaxHeader/f", b"x", len(records)) + records.ljust(512, b"\0") + tar_of(("f", b"x"))
    with read_tar(io.BytesIO(layer)) as tar:
        (node,) = tar.root.children
    assert node.inode.xattrs == {b"user.\x94": b"v"}


@pytest.mark.parametrize("body", [
    raw_header(b"s", b"S", 512, extra={482: b"\x01", 483: b"%011o\0" % 512}),   # extension block missing
    raw_header(b"x", b"x", 20) + b"20 path=unterminated".ljust(512, b"\0") + bytes(1024),   # tarfile: ValueError
    raw_header(b"x", b"x", 40) + b"99999999999999999999 path=a\n".ljust(512, b"\0") + bytes(1024),
])
def test_damaged_extended_headers_are_build_errors(body):
    with pytest.raises(BuildError, match="tar"):
        read_tar(io.BytesIO(body))


# -- GNU sparse members ---------------------------------------------------------------------------------------

def sparse_member(realsize: int, runs: list[tuple[int, int]], *, extended: bool = False) -> bytes:
    structs = b"".join(b"%011o\0" % offset + b"%011o\0" % length for offset, length in runs[:4])
    size_field = b"%011o\0" % realsize if realsize < 8 ** 11 else b"\x80" + realsize.to_bytes(11, "big")
    stored = sum(length for _, length in runs)
    header = raw_header(b"sparse", b"S", stored, extra={386: structs, 482: b"\x01" if extended else b"\0",
                                                        483: size_field})
    return header + bytes(-(-stored // 512) * 512)


@pytest.mark.parametrize("realsize", [1 << 40, (1 << 63) - 1, (1 << 87)])
def test_sparse_realsize_bomb_is_refused_fast(tmp_path, realsize):
    """A 10 KiB tar declaring a 1 TiB (or 2^63) sparse file ran for 14 minutes: refused at once."""
    layer = tmp_path / "sparse.tar"
    layer.write_bytes(sparse_member(realsize, [(0, 512)]) + bytes(9 * 1024))
    started = time.monotonic()
    with pytest.raises(BuildError, match="holes"):
        read_tar(str(layer))
    code = cli(["create", "-t", "tar-rafs", str(layer), "-B", str(tmp_path / "boot"), "-b", str(tmp_path / "blob")])
    assert code == 1
    assert time.monotonic() - started < 5


@pytest.mark.parametrize("realsize, runs, message", [
    (4096, [(1024, 512), (0, 512)], "out of order"),
    (4096, [(0, 1024), (512, 512)], "overlap"),
    (1024, [(0, 512), (2048, 512)], "past the real size"),
])
def test_sparse_maps_must_be_ordered_and_inside_realsize(realsize, runs, message):
    with pytest.raises(BuildError, match=message):
        read_tar(io.BytesIO(sparse_member(realsize, runs) + bytes(1024)))


def test_sparse_map_entry_count_is_bounded():
    """PAX sparse 1.0 keeps its map in the member's data: a count of 10^18 entries is refused
    before one is read (tarfile would read the whole stream into a list)."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("f")
        info.pax_headers = {"GNU.sparse.major": "1", "GNU.sparse.minor": "0", "GNU.sparse.name": "f",
                            "GNU.sparse.realsize": "512"}
        data = b"1000000000000000000\n0\n512\n".ljust(512, b"\0")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    with pytest.raises(BuildError, match=f"over the limit of {MAX_SPARSE_ENTRIES}"):
        read_tar(io.BytesIO(out.getvalue()))


def test_a_good_sparse_member_still_reads():
    layer = sparse_member(8192, [(1024, 512), (4096, 512)])
    layer = layer[:512] + b"a" * 512 + b"b" * 512 + bytes(1024)
    with read_tar(io.BytesIO(layer)) as tar, tar.files[0].data() as f:
        data = f.read()
    assert data == bytes(1024) + b"a" * 512 + bytes(2560) + b"b" * 512 + bytes(3584)


# -- endless and non-tar layers --------------------------------------------------------------------------------

def test_dev_zero_is_refused_at_once(tmp_path):
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "rafs", "create", "-t", "tar-rafs", "/dev/zero", "-B",
                           str(tmp_path / "boot"), "-b", str(tmp_path / "blob")],
                          capture_output=True, text=True, timeout=30,
                          env=dict(os.environ, PYTHONPATH=ROOT))
    assert_one_line_error(done.returncode, done.stderr, codes=(2,))
    assert "character device" in done.stderr
    assert time.monotonic() - started < 20


class Zeros(io.RawIOBase):
    """An endless stream of zero bytes that cannot seek (a pipe from /dev/zero)."""

    def __init__(self):
        self.served = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        buffer[:] = bytes(len(buffer))
        self.served += len(buffer)
        return len(buffer)


def test_an_endless_zero_stream_is_an_empty_archive():
    stream = Zeros()
    with read_tar(stream) as layer:
        assert layer.entries == 0 and not layer.root.children
    assert stream.served <= MAX_ZERO_RUN + 4 * MIB


@pytest.mark.parametrize("data", [
    os.urandom(4096),
    b"hello, this is not a tar\n" * 100,
    gzip.compress(os.urandom(4096)),
    gzip.compress(tar_of(("f", os.urandom(100000))))[:20000],       # truncated gzip
    b"\x1f\x8b\x08" + os.urandom(1000),                            # gzip magic, then garbage
])
def test_non_tar_layers_are_clean_errors(tmp_path, data):
    layer = tmp_path / "layer"
    layer.write_bytes(data)
    with pytest.raises(BuildError):
        read_tar(str(layer))
    code = cli(["create", "-t", "tar-rafs", str(layer), "-B", str(tmp_path / "boot"), "-b", str(tmp_path / "blob")])
    assert code == 1


# -- OCI layouts -----------------------------------------------------------------------------------------------

LAYER_TAR = tar_of(("hello", b"hello world\n"), ("etc/config", b"x = 1\n"))


@pytest.fixture(scope="module")
def source_layout(tmp_path_factory):
    base = tmp_path_factory.mktemp("hostile-oci")
    layer = base / "layer.tar"
    layer.write_bytes(LAYER_TAR)
    layout = str(base / "source")
    oci_layout(layout, [oci_image(layout, [str(layer)])])
    return layout


@pytest.fixture(scope="module")
def nydus_layout(source_layout, tmp_path_factory):
    target = str(tmp_path_factory.mktemp("hostile-nydus") / "nydus")
    convert(source_layout, target, workers=1)
    assert cli(["check", target]) == 0
    return target


def _blob(layout: str, digest: str) -> bytes:
    with open(os.path.join(layout, "blobs", "sha256", digest.split(":", 1)[1]), "rb") as f:
        return f.read()


def _put(layout: str, data: bytes) -> tuple[str, int]:
    digest = hashlib.sha256(data).hexdigest()
    with open(os.path.join(layout, "blobs", "sha256", digest), "wb") as f:
        f.write(data)
    return "sha256:" + digest, len(data)


def _encoded(value) -> bytes:
    return value if isinstance(value, bytes) else json.dumps(value).encode()


class Layout:
    """A copy of a layout whose documents a variant rewrites: ``index``, ``manifest`` (the first
    index entry's) and ``config`` are decoded; :meth:`save` re-hashes what changed and updates the
    descriptors pointing at it, so a variant reaches the check it is aimed at."""

    def __init__(self, path: str):
        self.path = path
        self.layout_file: object = {"imageLayoutVersion": "1.0.0"}
        with open(os.path.join(path, "index.json"), "rb") as f:
            self.index = json.load(f)
        self.manifest = json.loads(_blob(path, self.index["manifests"][0]["digest"]))
        self.config = json.loads(_blob(path, self.manifest["config"]["digest"]))
        self.raw_index = None              # bytes to write as index.json verbatim

    def save(self) -> None:
        manifest = self.manifest
        if isinstance(manifest, dict) and isinstance(manifest.get("config"), dict) and \
                "digest" in manifest["config"] and not isinstance(self.config, bytes):
            digest, size = _put(self.path, _encoded(self.config))
            if manifest["config"].get("digest", "").startswith("sha256:"):
                manifest["config"] = dict(manifest["config"], digest=digest, size=size)
        digest, size = _put(self.path, _encoded(manifest))
        entries = self.index.get("manifests") if isinstance(self.index, dict) else None
        if isinstance(entries, list) and entries and isinstance(entries[0], dict) and \
                entries[0].pop("_keep", None) is None:
            entries[0] = dict(entries[0], digest=digest, size=size)
        with open(os.path.join(self.path, "oci-layout"), "wb") as f:
            f.write(_encoded(self.layout_file))
        with open(os.path.join(self.path, "index.json"), "wb") as f:
            f.write(self.raw_index if self.raw_index is not None else _encoded(self.index))


def _entry(layout: Layout) -> dict:
    return layout.index["manifests"][0]


def _freeze(layout: Layout, **fields) -> None:
    """Set fields of the index entry that save() must not overwrite with the manifest's digest."""
    layout.index["manifests"][0] = dict(_entry(layout), _keep=True, **fields)


def _deep(depth: int) -> bytes:
    return b'{"schemaVersion":2,"manifests":' + b"[" * depth + b"]" * depth + b"}"


VARIANTS = {
    "oci-layout not JSON": lambda l: setattr(l, "layout_file", b"{imageLayoutVersion"),
    "oci-layout a list": lambda l: setattr(l, "layout_file", ["1.0.0"]),
    "oci-layout version a number": lambda l: setattr(l, "layout_file", {"imageLayoutVersion": 1}),
    "index.json not UTF-8": lambda l: setattr(l, "raw_index", b'{"schemaVersion":2,"manifests":["\xff\xfe"]}'),
    "index.json nested 100000 deep": lambda l: setattr(l, "raw_index", _deep(100_000)),
    "index.json a string": lambda l: setattr(l, "raw_index", b'"manifests"'),
    "index.json a 5000-digit number": lambda l: setattr(l, "raw_index", b'{"schemaVersion":' + b"9" * 5000 + b"}"),
    "schemaVersion a string": lambda l: l.index.update(schemaVersion="2"),
    "manifests missing": lambda l: l.index.pop("manifests"),
    "manifests an object": lambda l: l.index.update(manifests={"a": 1}),
    "manifest entry a string": lambda l: l.index.update(manifests=["sha256:" + "0" * 64]),
    "digest missing": lambda l: _freeze(l, digest=None),
    "digest a path": lambda l: _freeze(l, digest="sha256:../../../../etc/passwd"),
    "digest upper-case hex": lambda l: _freeze(l, digest=_entry(l)["digest"].upper().replace("SHA256", "sha256")),
    "digest sha512": lambda l: _freeze(l, digest="sha512:" + "a" * 128),
    "size negative": lambda l: _freeze(l, size=-1),
    "size a string": lambda l: _freeze(l, size=str(_entry(l)["size"])),
    "size a boolean": lambda l: _freeze(l, size=True),
    "size a float": lambda l: _freeze(l, size=float(_entry(l)["size"])),
    "size off by one": lambda l: _freeze(l, size=_entry(l)["size"] + 1),
    "platform a string": lambda l: _freeze(l, platform="linux/amd64"),
    "annotations a list": lambda l: _freeze(l, annotations=["a"]),
    "manifest a list": lambda l: setattr(l, "manifest", [l.manifest]),
    "manifest layers a string": lambda l: l.manifest.update(layers="layer.tar"),
    "manifest layer a number": lambda l: l.manifest.update(layers=[7]),
    "manifest config missing": lambda l: l.manifest.pop("config"),
    "manifest content tampered": lambda l: _freeze(l, digest="sha256:" + "0" * 64),
    "config rootfs a list": lambda l: l.config.update(rootfs=["layers"]),
    "config diff_ids numbers": lambda l: l.config.update(rootfs={"type": "layers", "diff_ids": [1, 2]}),
    "config history a string": lambda l: l.config.update(history="none"),
}


def _variant(original: str, tmp_path, name: str) -> str:
    path = str(tmp_path / "layout")
    shutil.copytree(original, path)
    layout = Layout(path)
    VARIANTS[name](layout)
    layout.save()
    return path


def _was_refused(capsys, code: int) -> str:
    err = capsys.readouterr().err
    assert code == 1, err
    assert "Traceback" not in err
    return err


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_malformed_source_layouts_are_one_line_convert_errors(source_layout, tmp_path, capsys, name):
    source = _variant(source_layout, tmp_path, name)
    code = cli(["convert", "--source", source, "--target", str(tmp_path / "out"), "--workers", "1"])
    err = _was_refused(capsys, code)
    assert len(err.strip().splitlines()) == 1, err
    assert not os.path.exists(tmp_path / "out")


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_malformed_nydus_layouts_fail_check_cleanly(nydus_layout, tmp_path, capsys, name):
    target = _variant(nydus_layout, tmp_path, name)
    _was_refused(capsys, cli(["check", target]))


def test_variants_name_the_file_and_field(source_layout, tmp_path):
    source = _variant(source_layout, tmp_path, "size a string")
    with pytest.raises(InvalidImageError, match=r"index.json: manifests\[0\].size: '\d+' is not a int"):
        OciLayout(source)


def test_json_documents_are_read_with_a_cap(source_layout, tmp_path):
    """An index.json of 9 MiB (its size from getsize or not) is refused before it is parsed."""
    source = str(tmp_path / "layout")
    shutil.copytree(source_layout, source)
    with open(os.path.join(source, "index.json"), "wb") as f:
        f.write(b" " * (9 * MIB) + b"{}")
    with pytest.raises(InvalidImageError, match="over the"):
        OciLayout(source)


def test_a_layout_archive_with_a_header_bomb_is_refused(tmp_path, capsys):
    archive = tmp_path / "layout.tar"
    with open(archive, "wb") as f:
        f.write(raw_header(b"oci-layout", b"x", BOMB))
        f.truncate(512 + BOMB + 1024)
    code = cli(["convert", "--source", str(archive), "--target", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 1 and "over the limit" in err and "Traceback" not in err
    assert not is_oci_layout(archive)                # what rafs check asks of any path it is given


# -- the bootstrap layer of a Nydus image ----------------------------------------------------------------------

def _replace_bootstrap_layer(nydus: str, tmp_path, data: bytes) -> str:
    path = str(tmp_path / "nydus")
    shutil.copytree(nydus, path)
    layout = Layout(path)
    digest, size = _put(path, data)
    boot = layout.manifest["layers"][-1]
    layout.manifest["layers"][-1] = dict(boot, digest=digest, size=size)
    layout.save()
    return path


def test_gzip_bomb_bootstrap_layer_is_bounded(nydus_layout, tmp_path):
    """A 2 MB bootstrap layer that decompresses to 1.5 GiB grew rafs check past 10 GB: now it is a
    fault after the bytes a bootstrap layer may hold, in bounded memory."""
    bomb = gzip_with_zeros(tar_of(("image/other", b"x")), BOMB)
    target = _replace_bootstrap_layer(nydus_layout, tmp_path, bomb)
    code, stderr, peak = run_capped(["check", target])
    assert code == 1 and "Traceback" not in stderr, stderr
    assert "decompresses to more than" in stderr
    assert 0 < peak < PEAK_RSS


@pytest.mark.parametrize("data, message", [
    (os.urandom(2000), "not a readable tar.gz"),
    (gzip.compress(os.urandom(2000)), "not a readable tar.gz"),
    (gzip.compress(tar_of(("image/image.boot", os.urandom(100000))))[:3000], "not a readable tar.gz"),
    (gzip.compress(tar_of(("image/other", b"x"))), "no image/image.boot"),
    (gzip.compress(raw_header(b"image/image.boot", b"0", 1 << 40)), "at most"),
])
def test_broken_bootstrap_layers_are_faults(nydus_layout, tmp_path, capsys, data, message):
    target = _replace_bootstrap_layer(nydus_layout, tmp_path, data)
    code = cli(["check", target])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    assert message in err


def test_invalid_argument_paths_stay_usage_errors(tmp_path):
    with pytest.raises(InvalidArgumentError):
        OciLayout(tmp_path / "missing")


# -- the fuzz targets for these parsers ------------------------------------------------------------------------

@pytest.fixture(params=["fuzz_tar_layer", "fuzz_oci_documents"])
def fuzz_target(request):
    import importlib
    sys.path.insert(0, os.path.join(ROOT, "fuzz"))
    try:
        yield importlib.import_module(request.param)
    finally:
        sys.path.remove(os.path.join(ROOT, "fuzz"))


def test_fuzz_targets_take_seeds_mutants_and_bombs(fuzz_target, fixtures):
    from rafs.testing import bit_flips, truncations
    seeds = [(fixtures / name).read_bytes() for name in getattr(fuzz_target, "SEEDS", [])
             if name.endswith(".tar")]
    seeds += list(getattr(fuzz_target, "SEED_DOCUMENTS", {}).values())
    seeds += [raw_header(b"bomb", t, BOMB) + bytes(1024) for t in (b"x", b"g", b"L", b"K")]
    seeds += [sparse_member(1 << 40, [(0, 512)]) + bytes(1024), _deep(100_000)]
    assert len(seeds) > 6
    for data in seeds:
        fuzz_target.TestOneInput(data)
        for _, mutant in list(truncations(data, 4)) + list(bit_flips(data, 12)):
            fuzz_target.TestOneInput(mutant)
