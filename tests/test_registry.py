"""Nydus images in a real OCI registry (Debian's docker-registry, see registry_server.py): opened by
reference (``rafs.open("docker://...")`` and the CLI), read lazily, logged in with Basic over TLS, with
tokens, and with a docker config.json; and the ``registry`` backend of nydusd configurations.

The source images are OCI layouts built here (three GNU tar layers with whiteouts and hardlinks, and a
two-platform index), converted with ``rafs convert`` and pushed with ``skopeo``. The registries are
started once per session.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import socket
import subprocess
import sys
import tarfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

import rafs
from rafs.errors import InvalidArgumentError, InvalidImageError, UnsupportedError
from rafs.oci.reference import parse_reference
from rafs.io.registry_auth import RegistryAuthError, parse_challenge
from rafs.oci import convert

from conftest import need
from helpers import rafs_mount
from oci_layers import (apply_layers, directory_inodes, directory_view, hardlink_groups, image_inodes,
                        image_view, make_layers, oci_image, oci_layout)
from registry_server import PASSWORD, USER, Registry, available

REPO = "rafs/app"
AUTH = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()


@pytest.fixture(scope="session")
def images(tmp_path_factory):
    """(single-platform Nydus layout, its flattened tree, two-platform Nydus layout, the arm64 tree, the
    source OCI layout of the first)."""
    base = tmp_path_factory.mktemp("registry-images")
    tars = make_layers(str(base / "layers"), compress="gzip")
    expected = apply_layers(tars, str(base / "expected"))
    two = apply_layers(tars[:2], str(base / "expected-two"))
    source = str(base / "src")
    oci_layout(source, [oci_image(source, tars)])
    convert(source, str(base / "nydus"))
    multi = str(base / "multi-src")
    oci_layout(multi, [], index_of=[oci_image(multi, tars, platform=("linux", "amd64")),
                                    oci_image(multi, tars[:2], platform=("linux", "arm64"))])
    convert(multi, str(base / "multi"), all_platforms=True, merge_platform=True)
    return str(base / "nydus"), expected, str(base / "multi"), two, source


def _registry(tmp_path_factory, images, mode):
    reason = available()
    need(reason is None, reason or "")
    registry = Registry(str(tmp_path_factory.mktemp(f"registry-{mode}")), mode)
    try:
        registry.push(images[0], f"{REPO}:v1")
        registry.push(images[2], f"{REPO}:multi", all_images=True)
        registry.push(images[4], "rafs/source:v1")
    except BaseException:
        registry.stop()
        raise
    return registry


@pytest.fixture(scope="session")
def basic_registry(tmp_path_factory, images):
    registry = _registry(tmp_path_factory, images, "basic")
    yield registry
    registry.stop()


@pytest.fixture(scope="session")
def token_registry(tmp_path_factory, images):
    registry = _registry(tmp_path_factory, images, "token")
    yield registry
    registry.stop()


@pytest.fixture(autouse=True)
def no_docker_config(tmp_path, monkeypatch):
    """No test sees the machine's own docker credentials."""
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "no-docker-config"))


def basic_options(registry, **extra) -> dict:
    return {"username": USER, "password": PASSWORD, "ca_file": registry.ca_file, **extra}


def assert_same_tree(image, expected):
    got, want = image_view(image), directory_view(expected)
    assert sorted(got) == sorted(want)
    for path in want:
        assert got[path] == want[path], path
    assert hardlink_groups(image_inodes(image)) == hardlink_groups(directory_inodes(expected))


# -- references -------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, host, repo, tag, digest", [
    ("docker://127.0.0.1:5000/a/b:v1", "127.0.0.1:5000", "a/b", "v1", None),
    ("docker://localhost/x", "localhost", "x", "latest", None),
    ("docker://busybox", "docker.io", "library/busybox", "latest", None),
    ("docker://ghcr.io/o/r@sha256:" + "a" * 64, "ghcr.io", "o/r", None, "sha256:" + "a" * 64),
    ("docker://reg.example:443/o/r:t@sha256:" + "b" * 64, "reg.example:443", "o/r", "t", "sha256:" + "b" * 64),
])
def test_references_parse_as_skopeo_spells_them(text, host, repo, tag, digest):
    ref = parse_reference(text)
    assert (ref.host, ref.repo, ref.tag, ref.digest) == (host, repo, tag, digest)


@pytest.mark.parametrize("text, words", [
    ("docker://host.example/UPPER:v1", "not a valid repository name"),
    ("docker://host.example/a@sha256:abc", "sha256:<64"),
    ("docker://host.example/a:bad/tag!", "not a valid repository name"),
    ("docker://ho$t.example:1/a", "is not a registry host"),
])
def test_bad_references_are_refused_by_name(text, words):
    with pytest.raises(InvalidArgumentError, match=words.replace("(", r"\(")):
        parse_reference(text)


def test_challenges_parse():
    scheme, params = parse_challenge('Bearer realm="http://a/token",service="reg",scope="repository:x/y:pull"')
    assert scheme == "bearer" and params == {"realm": "http://a/token", "service": "reg",
                                             "scope": "repository:x/y:pull"}
    assert parse_challenge('Basic realm="r"') == ("basic", {"realm": "r"})


# -- Basic auth over TLS ------------------------------------------------------------------------------

def test_open_by_reference_shows_the_source_tree(basic_registry, images):
    ref = f"docker://{basic_registry.host}/{REPO}:v1"
    with rafs.open(ref, storage_options=basic_options(basic_registry), validate=True) as image:
        assert image.name == ref
        assert_same_tree(image, images[1])


def test_reading_one_file_fetches_only_its_chunks(basic_registry, images):
    mark = basic_registry.log_mark()
    ref = f"docker://{basic_registry.host}/{REPO}:v1"
    with rafs.open(ref, storage_options=basic_options(basic_registry)) as image:
        want = open(os.path.join(images[1], "etc/passwd"), "rb").read()
        assert image.read("/etc/passwd") == want
        chunks = image.reader.chunks(image.stat("/etc/passwd").st_ino)
        file_blobs = {image.blobs[c.blob_index].blob_id for c in chunks}
        all_blobs = {b.blob_id for b in image.blobs}
    requests = basic_registry.requests_since(mark)
    manifests = [r for r in requests if "/manifests/" in r[1]]
    blob_gets = [r for r in requests if "/blobs/" in r[1] and r[0] == "GET" and r[2] in (200, 206)]
    assert manifests and all(r[1] == f"/v2/{REPO}/manifests/v1" for r in manifests)
    touched = {r[1].rsplit("sha256:", 1)[1] for r in blob_gets}
    # the bootstrap layer, and the blobs of the file's chunks: no other data blob was read
    bootstrap_layers = touched - all_blobs
    assert len(bootstrap_layers) == 1
    assert touched - bootstrap_layers == file_blobs
    assert all(r[2] == 206 for r in blob_gets), "every blob read is ranged"
    data_bytes = sum(r[3] for r in blob_gets if r[1].rsplit("sha256:", 1)[1] in file_blobs)
    assert data_bytes == sum(c.compressed_size for c in chunks), "only the file's chunks were fetched"
    assert len(requests) <= 10, requests


def test_wrong_password_is_refused_clearly_without_showing_it(basic_registry, caplog):
    ref = f"docker://{basic_registry.host}/{REPO}:v1"
    caplog.set_level(logging.DEBUG)
    with pytest.raises(RegistryAuthError) as info:
        rafs.open(ref, storage_options=basic_options(basic_registry, password="wrong-" + PASSWORD))
    message = str(info.value)
    assert f"{basic_registry.host}/{REPO}" in message and "refused" in message and USER in message
    assert "401" in message and "manifest v1" in message
    assert PASSWORD not in message and PASSWORD not in caplog.text and PASSWORD not in repr(info.value)


def test_docker_config_credentials_are_used(basic_registry, images, tmp_path, monkeypatch):
    config_dir = tmp_path / "docker"
    config_dir.mkdir()
    (config_dir / "config.json").write_text(json.dumps({"auths": {basic_registry.host: {"auth": AUTH}}}))
    monkeypatch.setenv("DOCKER_CONFIG", str(config_dir))
    ref = f"docker://{basic_registry.host}/{REPO}:v1"
    with rafs.open(ref, storage_options={"ca_file": basic_registry.ca_file}) as image:
        assert image.read("/etc/passwd") == open(os.path.join(images[1], "etc/passwd"), "rb").read()
        assert PASSWORD not in repr(image.locator) and AUTH not in repr(image.locator)
    # without credentials the registry refuses, and says whose access it refused
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "empty"))
    with pytest.raises(RegistryAuthError, match="anonymous access"):
        rafs.open(ref, storage_options={"ca_file": basic_registry.ca_file})


def test_credential_helpers_are_refused_with_a_clear_message(basic_registry, tmp_path, monkeypatch):
    (tmp_path / "config.json").write_text(json.dumps({"credHelpers": {basic_registry.host: "secretservice"}}))
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))
    with pytest.raises(UnsupportedError, match="docker-credential-secretservice, which rafs does not run"):
        rafs.open(f"docker://{basic_registry.host}/{REPO}:v1", storage_options={"ca_file": basic_registry.ca_file})


def test_untrusted_certificate_is_refused_and_insecure_skips_the_check(basic_registry):
    ref = f"docker://{basic_registry.host}/{REPO}:v1"
    with pytest.raises(Exception, match="CERTIFICATE_VERIFY_FAILED|certificate verify failed"):
        rafs.open(ref, storage_options={"username": USER, "password": PASSWORD, "retry_limit": 0})
    with rafs.open(ref, storage_options={"username": USER, "password": PASSWORD, "insecure": True}) as image:
        assert image.listdir("/")


def test_missing_tag_names_the_reference(basic_registry):
    ref = f"docker://{basic_registry.host}/{REPO}:nope"
    with pytest.raises(FileNotFoundError, match=f"{REPO}.*manifest nope.*not found"):
        rafs.open(ref, storage_options=basic_options(basic_registry))


def test_platform_is_chosen_from_the_index(basic_registry, images):
    ref = f"docker://{basic_registry.host}/{REPO}:multi"
    with rafs.open(ref, storage_options=basic_options(basic_registry, platform="linux/arm64")) as image:
        assert_same_tree(image, images[3])
    with rafs.open(ref, storage_options=basic_options(basic_registry, platform="linux/amd64")) as image:
        assert_same_tree(image, images[1])
    with pytest.raises(InvalidArgumentError, match="no manifest for platform linux/s390x.*linux/amd64"):
        rafs.open(ref, storage_options=basic_options(basic_registry, platform="linux/s390x"))


def test_an_oci_image_is_not_a_nydus_image(basic_registry, tmp_path):
    tars = make_layers(str(tmp_path / "layers"))
    layout = str(tmp_path / "oci")
    oci_layout(layout, [oci_image(layout, tars[:1])])
    basic_registry.push(layout, f"{REPO}:plain-oci")
    with pytest.raises(InvalidImageError, match="is not a Nydus image"):
        rafs.open(f"docker://{basic_registry.host}/{REPO}:plain-oci", storage_options=basic_options(basic_registry))


# -- the CLI ---------------------------------------------------------------------------------------------

def _cli(*args, env=None, **kwargs):
    return subprocess.run([sys.executable, "-m", "rafs", *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})}, **kwargs)


@pytest.fixture
def docker_env(basic_registry, tmp_path):
    (tmp_path / "docker").mkdir()
    (tmp_path / "docker" / "config.json").write_text(json.dumps({"auths": {basic_registry.host: {"auth": AUTH}}}))
    return {"DOCKER_CONFIG": str(tmp_path / "docker"), "PYTHONPATH": os.environ.get("PYTHONPATH", "")}


def test_cli_inspect_check_and_unpack_a_reference(basic_registry, images, docker_env, tmp_path):
    ref = f"docker://{basic_registry.host}/{REPO}:v1"
    shown = _cli("inspect", ref, "--insecure", "--json", "--log-level", "debug", env=docker_env)
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["version"] == 6
    checked = _cli("check", ref, "--insecure", env=docker_env)
    assert checked.returncode == 0, checked.stderr
    out = tmp_path / "image.tar"
    unpacked = _cli("unpack", ref, "--insecure", "--output", str(out), env=docker_env)
    assert unpacked.returncode == 0, unpacked.stderr
    with tarfile.open(out) as tar:
        assert tar.extractfile("etc/passwd").read() == open(os.path.join(images[1], "etc/passwd"), "rb").read()
    for output in (shown, checked, unpacked):
        assert PASSWORD not in output.stdout + output.stderr and AUTH not in output.stdout + output.stderr


def test_cli_wrong_password_is_one_line_without_the_password(basic_registry, tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"auths": {basic_registry.host: {
        "auth": base64.b64encode(f"{USER}:bad-{PASSWORD}".encode()).decode()}}}))
    result = _cli("inspect", f"docker://{basic_registry.host}/{REPO}:v1", "--insecure",
                  env={"DOCKER_CONFIG": str(tmp_path)})
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "access refused" in lines[0] and "Traceback" not in result.stderr, result.stderr
    assert PASSWORD not in result.stderr


def test_cli_flags_for_references_are_refused_elsewhere(tmp_path):
    result = _cli("inspect", str(tmp_path / "boot"), "--platform", "linux/arm64")
    assert result.returncode != 0 and "--platform applies to images in a registry" in result.stderr


def test_rafs_mount_of_a_reference(basic_registry, images, docker_env, tmp_path):
    need(os.geteuid() == 0 and os.path.exists("/dev/fuse"), "FUSE mounts need root and /dev/fuse")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    with rafs_mount(["-B", f"docker://{basic_registry.host}/{REPO}:v1", "--insecure"], mnt, env=docker_env) as server:
        got, want = directory_view(str(mnt), xattrs=False), directory_view(images[1], xattrs=False)
        assert sorted(got) == sorted(want)
        for path in want:
            assert got[path] == want[path], path
    assert PASSWORD not in server.stderr.read().decode()


# -- token auth ------------------------------------------------------------------------------------------

def test_token_auth_and_a_token_expiring_mid_read(token_registry, images):
    service = token_registry.token_service
    ref = f"docker://{token_registry.host}/{REPO}:v1"
    options = {"username": USER, "password": PASSWORD, "plain_http": True}
    service.lifetime = 2                    # the registry accepts each token for 2 s
    try:
        with rafs.open(ref, storage_options=options) as image:
            issued = service.issued
            assert image.read("/etc/passwd") == open(os.path.join(images[1], "etc/passwd"), "rb").read()
            time.sleep(3)                   # the client still believes its token good for minutes
            mark = token_registry.log_mark()
            assert_same_tree(image, images[1])
            assert service.issued > issued, "a new token was fetched"
            statuses = [r[2] for r in token_registry.requests_since(mark) if "/blobs/" in r[1]]
            assert 401 in statuses and 206 in statuses
    finally:
        service.lifetime = 300


def test_a_token_past_its_expires_in_is_renewed_before_use(token_registry, images):
    service = token_registry.token_service
    ref = f"docker://{token_registry.host}/{REPO}:v1"
    service.expires_in = 1                  # the client is told its tokens last a second
    try:
        with rafs.open(ref, storage_options={"username": USER, "password": PASSWORD, "plain_http": True}) as image:
            issued = service.issued
            time.sleep(1.5)
            assert image.read("/etc/passwd") == open(os.path.join(images[1], "etc/passwd"), "rb").read()
            assert service.issued > issued
    finally:
        service.expires_in = 300


def test_token_service_refusal_is_clear(token_registry):
    ref = f"docker://{token_registry.host}/{REPO}:v1"
    with pytest.raises(RegistryAuthError) as info:
        rafs.open(ref, storage_options={"username": USER, "password": "nope-" + PASSWORD, "plain_http": True})
    assert "token service" in str(info.value) and USER in str(info.value) and PASSWORD not in str(info.value)
    # anonymous users get a token that grants nothing: the registry refuses it
    with pytest.raises(RegistryAuthError, match="anonymous access"):
        rafs.open(ref, storage_options={"plain_http": True})


# -- the registry backend of nydusd configurations ----------------------------------------------------------

def _bootstrap_file(registry, tmp_path) -> str:
    from rafs.oci.reference import resolve
    resolved = resolve(f"docker://{registry.host}/{REPO}:v1", basic_options(registry))
    path = tmp_path / "image.boot"
    path.write_bytes(resolved.bootstrap)
    return str(path)


@pytest.mark.parametrize("version", [1, 2])
def test_nydusd_config_registry_backend(basic_registry, images, tmp_path, version, caplog):
    boot = _bootstrap_file(basic_registry, tmp_path)
    section = {"scheme": "https", "host": basic_registry.host, "repo": REPO, "auth": AUTH, "skip_verify": True,
               "timeout": 10, "connect_timeout": 5, "retry_limit": 2}
    if version == 2:
        config = {"version": 2, "backend": {"type": "registry", "registry": section},
                  "cache": {"type": "blobcache", "filecache": {"work_dir": str(tmp_path / "cache")}}}
    else:
        config = {"device": {"backend": {"type": "registry", "config": section},
                             "cache": {"type": "blobcache", "config": {"work_dir": str(tmp_path / "cache")}}}}
    caplog.set_level(logging.DEBUG)
    with rafs.open(boot, config=config, validate=True) as image:
        assert_same_tree(image, images[1])
        assert AUTH not in repr(image.locator) and PASSWORD not in repr(image.locator)
    assert os.listdir(tmp_path / "cache"), "blob data went through the cache"
    assert AUTH not in caplog.text and PASSWORD not in caplog.text
    # a wrong auth: one clear error when a blob is read
    section["auth"] = base64.b64encode(f"{USER}:x{PASSWORD}".encode()).decode()
    config_bad = {"version": 2, "backend": {"type": "registry", "registry": section}}
    with rafs.open(boot, config=config_bad) as image:
        with pytest.raises(RegistryAuthError, match="access refused") as info:
            image.read("/etc/passwd")
        assert section["auth"] not in str(info.value)


def test_nydusd_config_registry_keys_are_checked():
    for section, words in (({"repo": "a"}, "host is required"), ({"host": "h"}, "repo is required"),
                           ({"host": "h", "repo": "r", "auth": "!!"}, "auth is not base64"),
                           ({"host": "h", "repo": "r", "scheme": "ftp"}, "scheme must be")):
        with pytest.raises(InvalidArgumentError, match=words):
            rafs.open(io.BytesIO(b""), config={"version": 2, "backend": {"type": "registry", "registry": section}})


# -- faults: 429 with Retry-After, redirects to blob storage -------------------------------------------------

class _Storage(BaseHTTPRequestHandler):
    """A registry answering blob reads: ``/v2/r/blobs/...`` redirects to ``/storage/...?Expires=...``,
    which serves ranges of ``data``; the first ``throttle`` requests get 429 with Retry-After: 1."""

    data = bytes(range(256)) * 64
    throttle = 0
    cut = 0                       # requests whose body is cut off halfway (the connection dropped)
    log: list = []

    def log_message(self, *args):
        pass

    def do_HEAD(self):
        self.do_GET()

    def do_GET(self):
        cls = type(self)
        cls.log.append((self.command, self.path, time.monotonic()))
        if cls.throttle:
            cls.throttle -= 1
            self.send_response(429)
            self.send_header("Retry-After", "1")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if self.path.startswith("/v2/"):
            self.send_response(307)
            self.send_header("Location", f"/storage/blob?Expires={int(time.time()) + 600}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        first, last = map(int, self.headers["Range"].split("=")[1].split("-"))
        cls.log[-1] += (first, last)
        body = cls.data[first:last + 1]
        self.send_response(206)
        self.send_header("Content-Range", f"bytes {first}-{last}/{len(cls.data)}")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if cls.cut:
            cls.cut -= 1
            self.wfile.write(body[:len(body) // 2])
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
            return
        self.wfile.write(body)


@pytest.fixture
def storage():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Storage)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _Storage.log, _Storage.throttle, _Storage.cut = [], 0, 0
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_redirects_are_remembered_and_429_waits_for_retry_after(storage):
    from rafs.io.registry import RegistryBackend
    from rafs.io.retry import RetryPolicy
    backend = RegistryBackend({"scheme": "http", "host": storage, "repo": "r"}, retry=RetryPolicy(limit=3))
    reader = backend.open("ab" * 32)
    assert reader.read_range(10, 20) == _Storage.data[10:30]
    assert reader.read_range(100, 5) == _Storage.data[100:105]
    paths = [entry[1] for entry in _Storage.log]
    assert paths[0].startswith("/v2/r/blobs/sha256:") and paths[1].startswith("/storage/")
    assert paths[2].startswith("/storage/"), "the second read goes straight to the remembered URL"
    _Storage.log.clear()
    _Storage.throttle = 1
    assert reader.read_range(0, 4) == _Storage.data[:4]
    first, second = _Storage.log[0][2], _Storage.log[1][2]
    assert second - first >= 0.9, "Retry-After: 1 was honoured"


def test_a_dropped_connection_is_resumed_with_a_range_request(storage):
    from rafs.io.registry import RegistryBackend
    backend = RegistryBackend({"scheme": "http", "host": storage, "repo": "r"})
    reader = backend.open("ef" * 32)
    _Storage.cut = 1
    assert reader.read_range(1000, 2000) == _Storage.data[1000:3000]
    ranges = [entry[3:] for entry in _Storage.log if len(entry) > 3]
    assert ranges == [(1000, 2999), (2000, 2999)], "the second request asks only for the missing half"


def test_blob_redirected_host_and_scheme_rewrite_the_redirect(storage):
    from rafs.io.registry import RegistryBackend
    host, port = storage.split(":")
    # the registry's redirect names 127.0.0.1; blob_redirected_host sends it to localhost instead
    backend = RegistryBackend({"scheme": "http", "host": storage, "repo": "r", "blob_url_scheme": "http",
                               "blob_redirected_host": f"localhost:{port}"})
    assert backend.open("cd" * 32).read_range(0, 8) == _Storage.data[:8]
    cached = backend.registry._redirect("cd" * 32)
    assert cached is not None and cached.startswith(f"http://localhost:{port}/storage/")


# -- convert and copy by reference ---------------------------------------------------------------------------

def test_convert_from_registry_to_registry(basic_registry, images, docker_env, tmp_path):
    source = f"docker://{basic_registry.host}/rafs/source:v1"
    target = f"docker://{basic_registry.host}/rafs/converted:v1"
    result = _cli("convert", "--source", source, "--target", target, "--source-insecure", "--target-insecure",
                  "--check", "--work-dir", str(tmp_path / "work"), env=docker_env)
    assert result.returncode == 0, result.stderr
    assert "check passed" in result.stderr and PASSWORD not in result.stderr
    assert not [n for n in os.listdir(tmp_path / "work") if n.startswith(".rafs-tmp")], "scratch layouts removed"
    raw = subprocess.run(["skopeo", "inspect", "--raw", "--cert-dir", basic_registry.cert_dir, "--creds",
                          f"{USER}:{PASSWORD}", target], capture_output=True, text=True, timeout=60)
    manifest = json.loads(raw.stdout)
    layers = manifest["layers"]
    assert layers[-1]["annotations"]["containerd.io/snapshot/nydus-bootstrap"] == "true"
    assert all(layer["mediaType"] == "application/vnd.oci.image.layer.nydus.blob.v1" for layer in layers[:-1])
    with rafs.open(target, storage_options=basic_options(basic_registry), validate=True) as image:
        assert_same_tree(image, images[1])
    # the Nydus image is a valid OCI artifact: skopeo copies it out to a layout
    copied = subprocess.run(["skopeo", "--insecure-policy", "copy", "--src-cert-dir", basic_registry.cert_dir,
                             "--src-creds", f"{USER}:{PASSWORD}", target, f"oci:{tmp_path / 'out'}"],
                            capture_output=True, text=True, timeout=60)
    assert copied.returncode == 0, copied.stderr
    # nydusify check against the registry: the Nydus image equals its source
    checked = _cli("check", "--target", target, "--source", source, "--insecure", env=docker_env)
    assert checked.returncode == 0 and "entries equal to the source" in checked.stdout, checked.stderr
    tars = make_layers(str(tmp_path / "layers"))
    other = str(tmp_path / "other")
    oci_layout(other, [oci_image(other, tars[:2])])
    basic_registry.push(other, "rafs/other:v1")
    wrong = _cli("check", "--target", target, "--source", f"docker://{basic_registry.host}/rafs/other:v1",
                 "--insecure", env=docker_env)
    assert wrong.returncode == 1 and "FAULT" in wrong.stderr, wrong.stdout
    # converting again pushes nothing new: every blob is already there
    mark = basic_registry.log_mark()
    again = _cli("convert", "--source", source, "--target", target, "--source-insecure", "--target-insecure",
                 env=docker_env)
    assert again.returncode == 0, again.stderr
    assert not [r for r in basic_registry.requests_since(mark) if r[0] in ("POST", "PATCH")]


def test_copy_between_repositories_and_to_a_layout(basic_registry, images, docker_env, tmp_path):
    source = f"docker://{basic_registry.host}/{REPO}:multi"
    target = f"docker://{basic_registry.host}/rafs/copied:multi"
    result = _cli("copy", source, target, "--source-insecure", "--target-insecure", env=docker_env)
    assert result.returncode == 0, result.stderr
    with rafs.open(target, storage_options=basic_options(basic_registry, platform="linux/arm64")) as image:
        assert_same_tree(image, images[3])
    out = tmp_path / "layout"
    pulled = _cli("copy", target, str(out), "--source-insecure", env=docker_env)
    assert pulled.returncode == 0, pulled.stderr
    from rafs.oci.check import check_image
    report = check_image(str(out))
    assert report.ok and len(report.manifests) == 2, report.problems
