"""Hostile blob ids (issue 12): an id from an image or an option never becomes a path, URL or key.

Images are built normally, then their blob table is rewritten with :func:`rafs.testing.blob_ids.
with_blob_ids`; a "victim" file outside the blob directory holds bytes the image must never serve.
Every way in is tried: the API (blob_dir, localfs dir/alt_dirs, http-proxy against a real server on
127.0.0.1, the blob cache), ``rafs unpack -D``, a FUSE mount, ``rafs merge`` options and source
bootstraps, ``rafs create --parent-bootstrap``; ``rafs inspect`` still shows such an image and
``rafs check`` reports it.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from hypothesis import given
from hypothesis import strategies as st

import rafs
from rafs.blob.ids import (MAX_BLOB_ID_LENGTH, blob_key, blob_path, blob_url, check_blob_id, is_blob_id,
                          is_sha256_id)
from rafs.builder.merge import Merger
from rafs.errors import BuildError, InvalidArgumentError, InvalidImageError
from rafs.io.backends import HttpProxyBackend, LocalFsBackend, S3Backend
from rafs.io.cache import BlobCache
from rafs.model import Blob
from rafs.oci.layout import digest_hex
from rafs.testing import build_tree, file
from rafs.testing.blob_ids import blob_id_strings, hostile_blob_ids, valid_blob_ids, with_blob_ids

from conftest import ROOT

SECRET = b"VICTIM-SECRET-" * 600          # as long as the image's file, so a served victim reads in full
CONTENT = b"image data " * 700


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}


def rafs_cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rafs", *map(str, args)], capture_output=True, text=True,
                          env=_env(), timeout=120)


@pytest.fixture(scope="module")
def victim_dir():
    """A short directory under /tmp (a v6 slot holds 64 bytes) with the victim file."""
    path = tempfile.mkdtemp(prefix="v", dir="/tmp")
    with open(os.path.join(path, "victim"), "wb") as f:
        f.write(SECRET)
    yield path
    shutil.rmtree(path)


@pytest.fixture(scope="module", params=[5, 6])
def image(request, tmp_path_factory):
    """(version, bootstrap bytes, blob dir, blob id) of a one-file image, uncompressed so a victim's
    bytes would be served as they are."""
    work = tmp_path_factory.mktemp(f"v{request.param}")
    built = build_tree({b"/f": file(CONTENT)}, work, fs_version=request.param, compressor="none")
    with open(built.source, "rb") as f:
        data = f.read()
    (blob_id,) = built.result.blob_ids
    return request.param, data, built.blob_dir, blob_id


def hostile_ids(blob_dir, victim_dir) -> dict[str, str]:
    victim = os.path.join(victim_dir, "victim")
    return {"relative": os.path.relpath(victim, blob_dir), "absolute": victim,
            "slashes": "////" + victim.lstrip("/"), "dotdot": "..", "long": "a" * 250}


def write_image(tmp_path, data: bytes, blob_id: str, name: str = "evil.boot") -> str:
    path = os.path.join(tmp_path, name)
    with open(path, "wb") as f:
        f.write(with_blob_ids(data, [blob_id]))
    return path


def kinds_for(version: int) -> list[str]:
    return ["relative", "absolute", "slashes", "dotdot"] + (["long"] if version == 5 else [])


def assert_refused(exc_info) -> None:
    message = str(exc_info.value)
    assert "blob table entry 0" in message and "blob id" in message, message
    assert exc_info.value.structure == "blob table entry 0"


# -- the rule -----------------------------------------------------------------------------------------

def test_reference_ids_are_valid(v5_fixture, v6_fixture):
    for bootstrap, blob_dir in (v5_fixture[:2], v6_fixture):
        with rafs.open(bootstrap, blob_dir=blob_dir) as img:
            assert img.blobs and all(is_sha256_id(b.blob_id) for b in img.blobs)
            assert not [fault for fault in img.check() if "blob id" in fault]


@pytest.mark.parametrize("blob_id", ["x" * 64, "prefetch-blob", "erofs-device-1", "a..b", "A", "a" * 128,
                                     "0" * 64])
def test_reference_forms_accepted(blob_id, tmp_path):
    assert check_blob_id(blob_id) == blob_id
    assert blob_path(tmp_path, blob_id) == os.path.join(tmp_path, blob_id)
    assert blob_url("http://h/p", blob_id) == "http://h/p/" + blob_id


@given(blob_id_strings())
def test_validity_decides_every_location(blob_id):
    if is_blob_id(blob_id):
        path = blob_path("/srv/blobs", blob_id)
        assert os.path.dirname(os.path.normpath(path)) == "/srv/blobs" and os.path.basename(path) == blob_id
        assert blob_url("http://h:1/p/", blob_id) == "http://h:1/p/" + blob_id
        assert blob_key("pre/", blob_id) == "pre/" + blob_id
        assert len(blob_id) <= MAX_BLOB_ID_LENGTH and blob_id not in (".", "..")
        return
    for make in (lambda: check_blob_id(blob_id), lambda: blob_path("/srv/blobs", blob_id),
                 lambda: blob_url("http://h:1/p/", blob_id), lambda: blob_key("pre/", blob_id)):
        with pytest.raises(InvalidArgumentError) as info:
            make()
        assert "\x1b" not in str(info.value) and "\n" not in str(info.value)


@given(hostile_blob_ids())
def test_hostile_ids_are_invalid(blob_id):
    assert not is_blob_id(blob_id)


@given(valid_blob_ids())
def test_valid_ids_are_valid(blob_id):
    assert is_blob_id(blob_id)


# -- the API --------------------------------------------------------------------------------------

def test_traversal_ids_refused_by_read(image, victim_dir, tmp_path):
    version, data, blob_dir, _ = image
    ids = hostile_ids(blob_dir, victim_dir)
    for kind in kinds_for(version):
        path = write_image(tmp_path, data, ids[kind])
        with rafs.open(path, blob_dir=blob_dir) as img:
            assert img.blobs[0].blob_id == ids[kind]            # the image opens: inspect and check work
            with pytest.raises(InvalidImageError) as info:
                img.read("/f")
            assert_refused(info)
            assert [f for f in img.check() if f.startswith("blob table entry 0: blob id")], kind


def test_a_valid_id_still_reads(image, tmp_path):
    """The positive control: the same rewrite with a plain (non-hex) id reads the file."""
    _, data, blob_dir, blob_id = image
    shutil.copy(os.path.join(blob_dir, blob_id), tmp_path / "my-blob.v1")
    path = write_image(tmp_path, data, "my-blob.v1")
    with rafs.open(path, blob_dir=tmp_path) as img:
        assert img.read("/f") == CONTENT and not list(img.check())


@pytest.mark.parametrize("where", ["dir", "alt_dirs"])
def test_localfs_config_refuses(image, victim_dir, tmp_path, where):
    version, data, blob_dir, _ = image
    localfs = {"dir": str(tmp_path / "empty")} if where == "alt_dirs" else {"dir": blob_dir}
    if where == "alt_dirs":
        localfs["alt_dirs"] = [blob_dir]
    config = {"version": 2, "backend": {"type": "localfs", "localfs": localfs}}
    for kind in kinds_for(version):
        path = write_image(tmp_path, data, hostile_ids(blob_dir, victim_dir)[kind])
        with rafs.open(path, config=config) as img, pytest.raises(InvalidImageError) as info:
            img.read("/f")
        assert_refused(info)


def test_cache_config_refuses_long_and_dotdot_ids(image, tmp_path):
    version, data, blob_dir, _ = image
    work = tmp_path / "cache"
    work.mkdir()
    config = {"version": 2, "backend": {"type": "localfs", "localfs": {"dir": blob_dir}},
              "cache": {"type": "blobcache", "filecache": {"work_dir": str(work)}}}
    for blob_id in [".."] + (["a" * 250] if version == 5 else []):
        path = write_image(tmp_path, data, blob_id)
        with rafs.open(path, config=config) as img, pytest.raises(InvalidImageError):
            img.read("/f")
    assert os.listdir(work) == []


def test_cache_refuses_ids_given_directly(tmp_path):
    for blob_id in ("..", ".", "a" * 250, "../x", "a/b", ""):
        with pytest.raises(InvalidArgumentError):
            BlobCache(tmp_path, Blob(index=0, blob_id=blob_id, chunk_count=1, uncompressed_size=4096))
    assert os.listdir(tmp_path) == []


def test_backends_make_no_location_from_bad_ids(tmp_path):
    local = LocalFsBackend({"dir": str(tmp_path)})
    proxy = HttpProxyBackend({"addr": "http://127.0.0.1:1", "path": "blobs"})
    s3 = S3Backend({"bucket_name": "b", "object_prefix": "nydus/"})
    for blob_id in ("../x", "/etc/shadow", "..", "%2e%2e", "a?b", "a#b", "a" * 250):
        for make in (local.path_for, proxy.url_for, s3.key_for):
            with pytest.raises(InvalidArgumentError):
                make(blob_id)
    assert proxy.url_for("abc") == "http://127.0.0.1:1/blobs/abc" and s3.key_for("abc") == "nydus/abc"
    assert proxy.describe() == "http-proxy http://127.0.0.1:1/blobs/"


class _Files(BaseHTTPRequestHandler):
    files: dict[str, bytes] = {}
    requested: list[str] = []

    def _body(self) -> bytes | None:
        self.requested.append(self.path)
        data = self.files.get(self.path)
        if data is None:
            self.send_error(404)
        return data

    def do_HEAD(self):  # noqa: N802 - the http.server API
        data = self._body()
        if data is not None:
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Accept-Ranges", "bytes")
            self.end_headers()

    def do_GET(self):  # noqa: N802
        data = self._body()
        if data is None:
            return
        first, last = 0, len(data) - 1
        header = self.headers.get("Range")
        if header and header.startswith("bytes="):
            lo, _, hi = header[6:].partition("-")
            first, last = int(lo), min(int(hi) if hi else last, last)
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {first}-{last}/{len(data)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(last - first + 1))
        self.end_headers()
        self.wfile.write(data[first:last + 1])

    def log_message(self, *args):
        pass


@pytest.fixture
def http_server():
    handler = type("Files", (_Files,), {"files": {}, "requested": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server, handler
    server.shutdown()
    server.server_close()


def test_http_proxy_fetches_nothing_outside_its_path(image, tmp_path, http_server):
    _, data, blob_dir, blob_id = image
    server, handler = http_server
    with open(os.path.join(blob_dir, blob_id), "rb") as f:
        handler.files[f"/blobs/{blob_id}"] = f.read()
    handler.files["/secret"] = SECRET
    config = {"version": 2, "backend": {"type": "http-proxy", "http-proxy": {
        "addr": f"http://127.0.0.1:{server.server_address[1]}", "path": "blobs"}}}
    with rafs.open(write_image(tmp_path, data, blob_id, "good.boot"), config=config) as img:
        assert img.read("/f") == CONTENT                          # the server works for a sound image
    assert any(p == f"/blobs/{blob_id}" for p in handler.requested)
    for evil in ("../secret", "..", "%2e%2e%2fsecret", "/secret", "../secret?x", "x#/../../secret"):
        with rafs.open(write_image(tmp_path, data, evil), config=config) as img, \
                pytest.raises(InvalidImageError) as info:
            img.read("/f")
        assert_refused(info)
    assert not [p for p in handler.requested if not p.startswith(f"/blobs/{blob_id}")], handler.requested


@given(draw=st.data())
def test_any_hostile_table_id_is_refused(image, draw):
    version, data, blob_dir, _ = image
    hostile = draw.draw(hostile_blob_ids(table=f"v{version}"))
    mutant = with_blob_ids(data, [hostile])
    try:
        img = rafs.open(io.BytesIO(mutant), blob_dir=blob_dir)
    except InvalidImageError:
        return                                # e.g. an empty id in a v5 table ends the table
    with img:
        with pytest.raises(InvalidImageError) as info:       # refused as an id, not looked up and missed
            img.read("/f")
        assert_refused(info)
        assert [f for f in img.check() if f.startswith("blob table entry 0: blob id")]


# -- the command line ------------------------------------------------------------------------------

def test_unpack_refuses(image, victim_dir, tmp_path):
    version, data, blob_dir, _ = image
    for kind in kinds_for(version):
        path = write_image(tmp_path, data, hostile_ids(blob_dir, victim_dir)[kind])
        out = tmp_path / f"{kind}.tar"
        result = rafs_cli("unpack", path, "-D", blob_dir, "--output", out)
        assert result.returncode == 1, result
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "blob table entry 0" in lines[0] and "Traceback" not in result.stderr, lines
        assert not out.exists() or SECRET[:64] not in out.read_bytes()


def test_inspect_shows_and_check_reports(image, victim_dir, tmp_path):
    version, data, blob_dir, _ = image
    victim = hostile_ids(blob_dir, victim_dir)["relative"]
    path = write_image(tmp_path, data, victim)
    shown = rafs_cli("inspect", path)
    assert shown.returncode == 0 and victim in shown.stdout, shown
    checked = rafs_cli("check", path)
    assert checked.returncode == 1 and "blob table entry 0: blob id" in checked.stdout + checked.stderr, checked


@pytest.fixture
def layer(image, tmp_path):
    """A layer bootstrap whose file name gives a valid id."""
    _, data, _, blob_id = image
    path = tmp_path / f"{blob_id}.boot"
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("value", ["../a", "/etc/shadow", "..", "a/b", "a" * 250])
def test_merge_refuses_bad_original_blob_ids(layer, tmp_path, value):
    out = tmp_path / "merged.boot"
    result = rafs_cli("merge", "-B", out, "--original-blob-ids", value, layer)
    assert result.returncode == 2 and "--original-blob-ids" in result.stderr and "Traceback" not in result.stderr
    assert not out.exists()
    with pytest.raises(InvalidArgumentError, match="--original-blob-ids"):
        Merger([layer], original_blob_ids=[value])


def test_merge_takes_good_original_blob_ids(layer, tmp_path):
    merged = Merger([layer], original_blob_ids=["my-blob.v1"]).write(bootstrap=tmp_path / "m.boot")
    assert merged.blob_ids == ["my-blob.v1"]


def test_merge_refuses_ids_from_bad_file_names(layer, tmp_path):
    odd = tmp_path / "my layer.boot"
    shutil.copy(layer, odd)
    with pytest.raises(InvalidArgumentError, match="file name"):
        Merger([odd]).write(bootstrap=tmp_path / "m.boot")
    digest = "sha256:" + "ab" * 32                  # a digest replaces the file-name id: nothing to refuse
    assert Merger([odd], blob_digests=[digest]).write(bootstrap=tmp_path / "m.boot").blob_ids == ["ab" * 32]


def test_merge_and_create_refuse_sources_with_bad_ids(image, victim_dir, tmp_path):
    _, data, blob_dir, _ = image
    evil = write_image(tmp_path, data, "../../x")
    with pytest.raises(BuildError, match="blob table entry 0"):
        Merger([evil], blob_accessible=True).write(bootstrap=tmp_path / "m.boot")
    with pytest.raises(BuildError, match="blob table entry 0"):
        Merger([evil], parent_bootstrap=evil).write(bootstrap=tmp_path / "m2.boot")
    src = tmp_path / "src"
    src.mkdir()
    (src / "g").write_bytes(b"upper")
    result = rafs_cli("create", "--parent-bootstrap", evil, "-B", tmp_path / "c.boot", "-D", tmp_path, src)
    assert result.returncode == 1 and "blob table entry 0" in result.stderr, result
    assert not (tmp_path / "c.boot").exists()


def test_oci_digests_are_ids():
    assert digest_hex("sha256:" + "0f" * 32) == "0f" * 32
    for digest in ("sha256:../../x", "sha256:" + "0F" * 32, "sha512:" + "0f" * 64, "sha256:" + "0f" * 31 + "/x"):
        with pytest.raises(InvalidImageError):
            digest_hex(digest)


# -- FUSE -------------------------------------------------------------------------------------------

@pytest.mark.privileged
def test_fuse_mount_serves_no_victim(image, victim_dir, tmp_path):
    """``rafs mount`` checks every blob's source before mounting (issue 16), so a traversal id stops it
    with one line naming the id; the image reader itself refuses such ids on every read too (above)."""
    from test_fuse_support import need_fuse
    need_fuse()
    version, data, blob_dir, _ = image
    path = write_image(tmp_path, data, hostile_ids(blob_dir, victim_dir)["relative"])
    (tmp_path / "mnt").mkdir()
    result = subprocess.run([sys.executable, "-m", "rafs", "mount", "--bootstrap", path, "--localfs-dir", blob_dir,
                             "--mountpoint", str(tmp_path / "mnt")], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and not os.path.ismount(tmp_path / "mnt")
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "blob id" in lines[0] and "victim" in lines[0], result.stderr
    assert "Traceback" not in result.stderr
