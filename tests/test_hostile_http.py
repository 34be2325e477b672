"""Hostile HTTP storage and secrets in URLs (issue 12).

Real servers on 127.0.0.1 (:class:`rafs.testing.http_servers.HostileServer`, whose first path segment
picks the misbehaviour: ignoring Range, dripping, endless or over-long bodies ...). Reads go through
``rafs.open(URL)`` for bootstraps and through an http-proxy configuration for blobs; each must end in a
clean rafs error (or the right bytes) within a few seconds, with the memory used and the bytes the server
could push bounded.

Then passwords written in URLs (an http-proxy ``addr``, an S3 ``endpoint``) and the S3 access key id must
show in no repr, ``describe()``, error, or CLI error line.
"""

from __future__ import annotations

import errno
import json
import re
import socket
import subprocess
import sys
import time
import tracemalloc

import pytest

import rafs
from rafs.errors import BackendError, RafsError
from rafs.io import source as source_module
from rafs.io.config import locator_from_config, parse_config
from rafs.io.redact import redact_url, redact_urls
from rafs.testing.http_servers import MODES, SOCKET_SLACK, HostileServer

from s3server import free_port
from test_io_fetch import GROUP, LAYER_TAR

# What a loaded CI machine may add to an operation's expected time; an unbounded read would take minutes
# (a dripped range of 0x133 bytes) or forever (an endless body), so the bounds still tell.
LOADED = 3.0


@pytest.fixture
def server(v5_fixture):
    bootstrap, blob_dir, _ = v5_fixture
    (blob,) = blob_dir.iterdir()
    srv = HostileServer({"boot": bootstrap.read_bytes(), blob.name: blob.read_bytes()})
    srv.blob_id = blob.name
    srv.reference = rafs.open(bootstrap, blob_dir=blob_dir)
    yield srv
    srv.close()


def proxy_config(srv, mode: str, **backend) -> dict:
    """An http-proxy configuration whose blobs are served by ``srv`` in ``mode``."""
    return {"version": 2, "backend": {"type": "http-proxy", "http-proxy": {
        "addr": f"http://127.0.0.1:{srv.port}", "path": f"/{mode}", "timeout": 1, "retry_limit": 0, **backend}}}


class Bounded:
    """Times a block and traces its peak Python memory."""

    def __enter__(self):
        tracemalloc.start()
        self.start = time.monotonic()
        return self

    def __exit__(self, *exc):
        self.seconds = time.monotonic() - self.start
        self.peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        return False


# --- a server that ignores Range -------------------------------------------------------------------------

def test_range_ignored_is_refused_without_buffering(server):
    for open_image in (lambda: rafs.open(server.url("good", "boot"), blobs={server.blob_id: server.url(
                           "norange", server.blob_id)}),
                       lambda: rafs.open(server.url("good", "boot"), config=proxy_config(server, "norange"))):
        with open_image() as image, Bounded() as bounded:
            with pytest.raises(BackendError, match="ignored the Range header") as info:
                image.read(LAYER_TAR)
        assert f"127.0.0.1:{server.port}/norange/{server.blob_id}" in str(info.value)
        assert bounded.seconds < 1 + LOADED and bounded.peak < SOCKET_SLACK
    # no retry of a server that will never do better, and not the 1 GiB it offered
    assert server.count("norange", server.blob_id) == 2
    assert server.sent < 2 * SOCKET_SLACK + 4 * len(server.files[server.blob_id])


def test_good_server_still_serves_ranges(server):
    with rafs.open(server.url("good", "boot"), config=proxy_config(server, "good")) as image:
        assert image.read(GROUP) == server.reference.read(GROUP)
        assert image.read(LAYER_TAR) == server.reference.read(LAYER_TAR)
    assert all(r for m, p, r in server.requests if m == "GET" and server.blob_id in p)


def test_redirects_and_head_refused(server):
    """Redirects are followed, credentials from the URL go only to its own origin; a server refusing
    HEAD still serves ranges."""
    other = HostileServer(server.files)
    try:
        server.redirect_to = other.url("good").rsplit("/good/", 1)[0]
        auth = f"http://alice:{HTTP_PASSWORD}@127.0.0.1:{server.port}"
        with rafs.open(f"{auth}/redirect/boot", blobs={server.blob_id: f"{auth}/redirect/{server.blob_id}"}) \
                as image:
            assert image.read(GROUP) == server.reference.read(GROUP)
        assert server.authorizations and all(a and a.startswith("Basic ") for a in server.authorizations)
        assert other.authorizations and not any(other.authorizations)
        with rafs.open(server.url("good", "boot"), blobs={server.blob_id: server.url("nohead", server.blob_id)}) \
                as image:
            assert image.read(GROUP) == server.reference.read(GROUP)
        assert server.count("nohead", server.blob_id, "HEAD") == 1
        # a redirect that never ends is cut off
        server.redirect_to = server.url("redirect").rstrip("/")
        with pytest.raises(BackendError, match="more than 5 redirects"):
            rafs.open(server.url("redirect", "boot"))
    finally:
        other.close()


def test_https_skip_verify_certificate_errors_and_a_silent_handshake(server):
    with HostileServer(server.files, tls=True) as tls:
        base = tls.url("good").rsplit("/good/", 1)[0]
        with rafs.open(server.url("good", "boot"), config=proxy_config(tls, "good", addr=base, skip_verify=True)) \
                as image:
            assert image.read(GROUP) == server.reference.read(GROUP)
        # a self-signed certificate does not verify, and is not retried as if it might
        with rafs.open(server.url("good", "boot"), config=proxy_config(tls, "good", addr=base, retry_limit=3)) \
                as image:
            with pytest.raises(BackendError, match="CERTIFICATE_VERIFY_FAILED") as info:
                image.read(GROUP)
        assert "attempts" not in str(info.value)
    # a TLS handshake nobody answers ends at the deadline
    with socket.create_server(("127.0.0.1", 0)) as silent:
        port = silent.getsockname()[1]
        config = {"version": 2, "backend": {"type": "http-proxy", "http-proxy": {
            "addr": f"https://127.0.0.1:{port}", "timeout": 1, "retry_limit": 0}}}
        with Bounded() as bounded:
            with pytest.raises(BackendError, match="within 1 s"):
                rafs.open(f"https://127.0.0.1:{port}/boot", config=config)
        assert bounded.seconds < 1 + LOADED


def test_keep_alive_and_a_bounded_watchdog(server):
    from rafs.io import deadline
    reader = source_module.open_http(server.url("good", server.blob_id), {"timeout": 300})
    blob = server.files[server.blob_id]
    for i in range(300):
        assert reader.read_range(i * 7, 100) == blob[i * 7:i * 7 + 100]
    assert len(server.clients) == 1                 # one keep-alive connection served every read
    assert len(deadline.WATCHDOG._heap) < 150          # finished requests do not pile up until their deadline
    reader.close()


# --- a server that drips ------------------------------------------------------------------------------

def test_dripping_bootstrap_hits_the_request_deadline(server):
    # through the http-proxy backend's own timeout (1 s for the whole request), retried once
    with Bounded() as bounded:
        with pytest.raises(BackendError, match=r"failed after 2 attempts.*within 1 s"):
            rafs.open(server.url("drip", "boot"), config=proxy_config(server, "good", retry_limit=1,
                                                                       addr=server.url("drip")))
    assert 2 <= bounded.seconds < 2 + LOADED
    assert server.count("drip", "boot") == 2
    # a plain URL takes its deadline from storage_options; the default retry policy (3) applies
    with Bounded() as bounded:
        with pytest.raises(BackendError, match="failed after 4 attempts"):
            rafs.open(server.url("drip", "boot"), storage_options={"timeout": 0.5})
    assert bounded.seconds < 2.5 + LOADED


@pytest.mark.parametrize("mode", ["drip", "driphead"])
def test_dripping_blob_hits_the_request_deadline(server, mode):
    with rafs.open(server.url("good", "boot"), config=proxy_config(server, mode)) as image:
        with Bounded() as bounded:
            with pytest.raises(BackendError, match="within 1 s"):
                image.read(GROUP)
    assert bounded.seconds < 1 + LOADED
    assert server.count(mode, server.blob_id) == 1                 # retry_limit 0: no second attempt


def test_request_timeout_is_per_request_not_per_read(server):
    """A body arriving a byte a second never idles past a 2 s socket timeout, yet the read ends."""
    reader = source_module.open_http(server.url("drip", server.blob_id), {"timeout": 2})
    reader.retry.limit = 0
    start = time.monotonic()
    with pytest.raises(BackendError, match="within 2 s"):
        reader.read_range(0, 100)
    assert time.monotonic() - start < 2 + LOADED


# --- bodies without end ---------------------------------------------------------------------------------

def test_endless_bootstrap_is_cut_off_at_the_limit(server, monkeypatch):
    monkeypatch.setattr(source_module, "MAX_BOOTSTRAP_SIZE", 4 << 20)
    with Bounded() as bounded:
        with pytest.raises(BackendError, match=r"runs past the limit of 4194304 bytes"):
            rafs.open(server.url("endless", "boot"))
    assert bounded.seconds < 1 + LOADED and bounded.peak < 3 * (4 << 20)
    assert server.count("endless", "boot") == 1
    assert server.sent < (4 << 20) + 2 * SOCKET_SLACK


def test_declared_huge_bootstrap_is_refused_before_reading(server):
    with Bounded() as bounded:
        with pytest.raises(BackendError, match=r"declares 1099511627776 bytes, more than the limit"):
            rafs.open(server.url("huge", "boot"))
    assert bounded.seconds < 1 + LOADED and bounded.peak < SOCKET_SLACK
    assert server.sent < 2 * SOCKET_SLACK


def test_blob_bodies_past_the_range_are_cut_off(server):
    ref = server.reference
    # a 206 with the right Content-Range, then zeros without end: the asked bytes are kept, no more
    with rafs.open(server.url("good", "boot"), config=proxy_config(server, "endless")) as image, \
            Bounded() as bounded:
        assert image.read(GROUP) == ref.read(GROUP)
        assert image.read(LAYER_TAR) == ref.read(LAYER_TAR)
    assert bounded.seconds < 1 + LOADED and bounded.peak < 2 * SOCKET_SLACK
    # a 206 declaring 1 TiB for a small range is refused
    with rafs.open(server.url("good", "boot"), config=proxy_config(server, "huge")) as image:
        with pytest.raises(BackendError, match="for a range of"):
            image.read(GROUP)
    # a body with junk after its Content-Length: the connection is never reused for the next read
    with rafs.open(server.url("overlong", "boot"), config=proxy_config(server, "overlong")) as image:
        assert image.read(GROUP) == ref.read(GROUP)
        assert image.read(LAYER_TAR) == ref.read(LAYER_TAR)
    assert server.sent < 6 * SOCKET_SLACK


def test_missing_and_refused_objects(server):
    with pytest.raises(FileNotFoundError):
        rafs.open(server.url("good", "nothing"))
    port = free_port()
    with pytest.raises(BackendError, match="ConnectionRefused"):
        rafs.open(f"http://127.0.0.1:{port}/boot", config={"version": 2, "backend": {"type": "http-proxy",
                  "http-proxy": {"addr": f"http://127.0.0.1:{port}", "retry_limit": 0}}})
    with pytest.raises(rafs.errors.InvalidArgumentError, match="'client_kwargs' not understood"):
        rafs.open(server.url("good", "boot"), storage_options={"client_kwargs": {}})


@pytest.mark.parametrize("mode", MODES)
def test_every_misbehaviour_gives_the_bytes_or_a_clean_error(server, mode, monkeypatch):
    """Each mode as the bootstrap's server and as the blobs' server: the right bytes or a rafs error,
    within the deadline (1 s, no retry) and bounded memory. A bootstrap may take MAX_BOOTSTRAP_SIZE
    (2 GiB) of memory, lowered here to 4 MiB so the bound shows."""
    monkeypatch.setattr(source_module, "MAX_BOOTSTRAP_SIZE", 4 << 20)
    server.redirect_to = server.url("good").rsplit("/good/", 1)[0]
    base = server.url(mode).rstrip("/")
    expected = server.reference.read(GROUP)
    for boot, blobs in ((f"{base}/boot", "good"), (server.url("good", "boot"), mode)):
        with Bounded() as bounded:
            try:
                with rafs.open(boot, config=proxy_config(server, blobs, addr=boot.rsplit("/", 2)[0])) as image:
                    assert image.read(GROUP) == expected
            except (RafsError, FileNotFoundError) as exc:
                assert mode in ("norange", "drip", "driphead", "endless", "huge"), f"{mode}: {exc}"
        assert bounded.seconds < 1 + LOADED and bounded.peak < 2 * SOCKET_SLACK, mode


# --- secrets in URLs ---------------------------------------------------------------------------------------

HTTP_PASSWORD = "Pa55-http-proxy-w0rd"
S3_PASSWORD = "S3-endpoint-pa55w0rd"
S3_KEY_ID = "AKIARAFSHIDDENKEYID9"
S3_SECRET = "s3-secret-access-key-Zq9"
SECRETS = (HTTP_PASSWORD, S3_PASSWORD, S3_KEY_ID, S3_SECRET, "alice", "bob")


def assert_clean(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text, f"{secret!r} shown in {text!r}"


def secret_configs(port: int) -> dict:
    return {
        "http-proxy": {"version": 2, "backend": {"type": "http-proxy", "http-proxy": {
            "addr": f"http://alice:{HTTP_PASSWORD}@127.0.0.1:{port}", "path": "/blobs", "retry_limit": 0,
            "timeout": 1}}},
        "s3": {"version": 2, "backend": {"type": "s3", "s3": {
            "endpoint": f"http://bob:{S3_PASSWORD}@127.0.0.1:{port}", "bucket_name": "b", "region": "us-east-1",
            "access_key_id": S3_KEY_ID, "access_key_secret": S3_SECRET, "retry_limit": 0, "timeout": 1,
            "connect_timeout": 1}}},
    }


def test_redact_helpers():
    assert redact_url("http://u:p@h:1/x?q#f") == "http://***@h:1/x?q#f"
    assert redact_url("https://u:p@ss@h/x") == "https://***@h/x"
    assert redact_url("u:p@h:9000/bucket") == "***@h:9000/bucket"
    assert redact_url("http://h/a@b") == "http://h/a@b"
    assert redact_url("/a@b/c") == "/a@b/c"
    assert redact_urls("get s3://k:s@b/o and http://x@y/ failed") == "get s3://***@b/o and http://***@y/ failed"


@pytest.mark.parametrize("backend", ["http-proxy", "s3"])
def test_passwords_absent_from_reprs_describe_and_errors(backend):
    port = free_port()
    config = secret_configs(port)[backend]
    locator = locator_from_config(config)
    shown = [repr(locator), locator.describe(), repr(locator.backend), repr(parse_config(config)),
             json.dumps(parse_config(config).redacted())]
    for text in shown:
        assert_clean(text)
    assert "127.0.0.1" in locator.describe()
    boot = "s3://b/boot" if backend == "s3" else f"http://alice:{HTTP_PASSWORD}@127.0.0.1:{port}/boot"
    with pytest.raises(RafsError) as info:
        rafs.open(boot, config=config)
    assert_clean(str(info.value))
    assert_clean(repr(info.value))
    if backend == "http-proxy":
        # a blob read: the bootstrap is local, the blob is behind the closed port
        reader = locator.backend.open("0" * 64)
        assert_clean(repr(reader))
        with pytest.raises(BackendError) as info:
            reader.read_range(0, 10)
        assert_clean(str(info.value))
        assert "127.0.0.1" in str(info.value)


def test_passwords_absent_from_a_plain_url_image_and_its_errors(server):
    url = server.url("good", "boot").replace("http://", f"http://alice:{HTTP_PASSWORD}@")
    with rafs.open(url, blobs={server.blob_id: server.url("good", server.blob_id)}) as image:
        assert_clean(repr(image) + image.name)
        assert image.read(GROUP) == server.reference.read(GROUP)
    with pytest.raises(RafsError) as info:
        rafs.open(url.replace("/good/", "/huge/"))
    assert_clean(str(info.value))


def run_cli(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rafs", *args], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("backend", ["http-proxy", "s3"])
def test_passwords_absent_from_cli_errors(tmp_path, backend):
    port = free_port()
    config = tmp_path / "config.json"
    config.write_text(json.dumps(secret_configs(port)[backend]))
    boot = "s3://b/boot" if backend == "s3" else f"http://alice:{HTTP_PASSWORD}@127.0.0.1:{port}/boot"
    (tmp_path / "mnt").mkdir()
    runs = [run_cli(["mount", "-B", boot, "-C", str(config), "-M", str(tmp_path / "mnt")])]
    if backend == "http-proxy":
        runs.append(run_cli(["--debug", "inspect", boot]))
    for run in runs:
        assert run.returncode != 0
        assert re.search(r"rafs (mount|inspect): \w+", run.stderr), run.stderr
        assert "127.0.0.1" in run.stderr and "Traceback" not in run.stderr
        assert_clean(run.stderr + run.stdout)


@pytest.mark.privileged
def test_mount_over_hostile_http_keeps_serving_and_shows_no_password(server, tmp_path):
    """``rafs mount`` of a bootstrap URL with a password and an http-proxy config with one: reads work,
    a blob read from a dripping server fails with EIO within the deadline, the daemon keeps serving,
    and its log never shows the password."""
    from test_fuse_support import Mount, need_fuse
    need_fuse()
    auth = f"http://alice:{HTTP_PASSWORD}@127.0.0.1:{server.port}"
    config = proxy_config(server, "drip", addr=auth)
    (tmp_path / "config.json").write_text(json.dumps(config))
    mount = Mount(["--bootstrap", f"{auth}/good/boot", "--config", str(tmp_path / "config.json")],
                  tmp_path / "mnt", tmp_path / "mount.log")
    try:
        start = time.monotonic()
        with pytest.raises(OSError) as info:
            (mount.path / GROUP.lstrip("/")).read_bytes()
        assert info.value.errno == errno.EIO
        assert time.monotonic() - start < 1 + LOADED
        assert (mount.path / LAYER_TAR.lstrip("/")).stat().st_size == len(server.reference.read(LAYER_TAR))
    finally:
        mount.close()
    log = (tmp_path / "mount.log").read_text(errors="replace")
    assert "127.0.0.1" in log
    assert_clean(log)
