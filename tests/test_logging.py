"""Useful logs (issue 16): at ``--log-level debug`` rafs tells what it does (bootstrap source, each fetch
with blob, range, bytes and time, cache hits and misses, retries, prefetch progress) while botocore,
s3fs, fsspec, urllib3 and aiohttp stay quiet unless ``--log-level trace``; no credential is ever
written, not even by botocore at trace; a failed read in the mount log names the file's path.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys

import pytest

import rafs
from rafs.cli.logs import THIRD_PARTY, configure, scrub

from conftest import ROOT
from s3server import ACCESS_KEY_ID, ACCESS_KEY_SECRET, Faults, moto_server, s3, s3_proxy  # noqa: F401
from test_fuse_support import Mount, need_fuse

FETCH = re.compile(r"fetch blob (?P<blob>[0-9a-f]{64}) range \[(?P<start>0x[0-9a-f]+), (?P<end>0x[0-9a-f]+)\) "
                   r"(?P<size>\d+) bytes, \d+ chunks?, [\d.]+ ms")
NOISY = ("botocore", "s3fs", "fsspec", "urllib3", "aiobotocore", "aiohttp", "Authorization")


@pytest.fixture
def s3_image(s3, tmp_path):
    """(bootstrap, blob id, nydusd config path) of a small v6 image whose blob is on S3."""
    source = tmp_path / "src"
    (source / "dir").mkdir(parents=True)
    (source / "dir" / "big").write_bytes(os.urandom(1_500_000))
    (source / "small").write_bytes(b"hello\n")
    out = tmp_path / "out"
    out.mkdir()
    result = rafs.Builder(str(source), fs_version=6).write(bootstrap=str(tmp_path / "image.meta"), blob_dir=str(out))
    (blob_id,) = result.blob_ids
    s3.put(f"nydus-demo/blob/{blob_id}", (out / blob_id).read_bytes())
    config = tmp_path / "nydusd-config.s3.json"
    config.write_text(json.dumps(s3.nydusd_config(tmp_path / "cache")))
    s3.proxy.reset()
    return tmp_path / "image.meta", blob_id, config


def _child(code: str, *args) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True,
                          timeout=120, env=env)


READ_OVER_S3 = """
import sys, rafs
from rafs.cli.logs import configure
configure(sys.argv[1])
with rafs.open(sys.argv[2], config=sys.argv[3]) as image:
    assert len(image.read("/dir/big")) == 1_500_000
    assert image.read("/small") == b"hello\\n"
"""


def _assert_no_secret(text: str) -> None:
    assert ACCESS_KEY_ID not in text and ACCESS_KEY_SECRET not in text


def test_debug_logs_each_fetch_and_nothing_of_botocore(s3, s3_image):
    bootstrap, blob_id, config = s3_image
    result = _child(READ_OVER_S3, "debug", bootstrap, config)
    assert result.returncode == 0, result.stderr
    log = result.stderr
    fetches = [m for m in FETCH.finditer(log)]
    assert fetches and {m["blob"] for m in fetches} == {blob_id}
    for m in fetches:
        assert int(m["end"], 16) - int(m["start"], 16) == int(m["size"])
    # each fetch logged is a request the server saw; the one request not logged as a chunk fetch is the
    # blob's chunk table, written to the cache as .blob.meta (logged as such)
    asked = [r.range for r in s3.proxy.requests_for(f"nydus-demo/blob/{blob_id}")]
    said = [f"bytes={int(m['start'], 16)}-{int(m['end'], 16) - 1}" for m in fetches]
    assert sorted(said) == sorted(set(said)) and set(said) <= set(asked) and len(asked) == len(said) + 1
    assert f"blob {blob_id}: chunk table fetched into" in log
    assert f"bootstrap {bootstrap}" in log and "RAFS v6" in log
    assert re.search(rf"blob {blob_id}: \d+ chunks from the cache, \d+ missing", log)
    for word in NOISY:
        assert word not in log, word
    _assert_no_secret(log)


def test_info_shows_no_fetch(s3, s3_image):
    bootstrap, _, config = s3_image
    result = _child(READ_OVER_S3, "info", bootstrap, config)
    assert result.returncode == 0 and "fetch blob" not in result.stderr and "botocore" not in result.stderr


def test_trace_shows_botocore_without_credentials(s3, s3_image):
    bootstrap, _, config = s3_image
    result = _child(READ_OVER_S3, "trace", bootstrap, config)
    assert result.returncode == 0, result.stderr[-2000:]
    log = result.stderr
    assert "botocore" in log or "s3fs" in log or "aiobotocore" in log
    # blob reads are signed by botocore's SigV4 signer and sent by rafs's own client (rafs.io.s3sign):
    # the trace shows the signing, the signature itself scrubbed
    # one assertion each, the log's tail in the message: a rare CI failure did not say which part was missing
    assert "Calculating signature using v4 auth" in log, log[-3000:]
    assert re.search(r"Signature:\s*\*\*\*", log), log[-3000:]
    assert FETCH.search(log), log[-3000:]
    _assert_no_secret(log)
    assert not re.search(r"Signature=[0-9a-f]{16}", log)


def test_scrub_forms():
    assert scrub("{'Authorization': b'AWS4-HMAC-SHA256 Credential=AKIAX/20260101/us-east-1/s3/aws4_request, "
                 "SignedHeaders=host, Signature=abcdef0123'}").count("AKIAX") == 0
    assert "abcdef0123" not in scrub("GET /b/k?X-Amz-Credential=AKIAX%2F1&X-Amz-Signature=abcdef0123&x=1")
    assert scrub("proxy http://user:pass@host:8080/x") == "proxy http://***@host:8080/x"
    assert scrub("fetch blob abc range [0x0, 0x10) 16 bytes") == "fetch blob abc range [0x0, 0x10) 16 bytes"


def test_configure_levels():
    root = logging.getLogger()
    before = (root.level, list(root.handlers), {n: logging.getLogger(n).level for n in THIRD_PARTY})
    try:
        configure("debug")
        assert logging.getLogger("rafs.io.fetch").isEnabledFor(logging.DEBUG)
        for name in THIRD_PARTY:
            assert not logging.getLogger(name).isEnabledFor(logging.INFO), name
        handlers = len(root.handlers)
        configure("trace")                      # again: replaces its handler, adds none
        assert len(root.handlers) == handlers
        assert logging.getLogger("botocore.endpoint").isEnabledFor(logging.DEBUG)
        configure("error")
        assert not logging.getLogger("rafs").isEnabledFor(logging.WARNING)
    finally:
        from rafs.cli import logs
        root.removeHandler(logs._console)
        logs._console = None
        root.setLevel(before[0])
        for name, level in before[2].items():
            logging.getLogger(name).setLevel(level)


def test_prefetch_progress_cache_hits_and_retries(s3, s3_image, caplog):
    bootstrap, blob_id, config = s3_image
    s3.proxy.faults = Faults(mode="503", every=2, limit=2, match="nydus-demo/blob/")
    with caplog.at_level(logging.DEBUG, logger="rafs"):
        with rafs.open(bootstrap, config=str(config)) as image:
            image.prefetch(all=True, threads=2, batch_size=0x40000)
            assert len(image.read("/dir/big")) == 1_500_000
    messages = [r.getMessage() for r in caplog.records]
    assert any(re.match(r"prefetch: \d+ chunks to fetch in \d+ requests from 1 blobs", m) for m in messages)
    progress = [m for m in messages if re.match(r"prefetch: \d+/\d+ requests done", m)]
    assert len(progress) >= 2 and progress[-1].split()[1].split("/")[0] == progress[-1].split()[1].split("/")[1]
    assert any(m.startswith("prefetch: done") for m in messages)
    assert any(re.search(rf"blob {blob_id}: \d+ chunks from the cache, 0 missing", m) for m in messages)
    assert any("transient" in m and "retry 1/" in m for m in messages)
    _assert_no_secret("\n".join(messages))


# -- the mount log -----------------------------------------------------------------------------------

@pytest.mark.privileged
def test_mount_at_debug_logs_s3_fetches_without_botocore(s3, s3_image, tmp_path):
    need_fuse()
    bootstrap, blob_id, config = s3_image
    mount = Mount(["--config", str(config), "--bootstrap", str(bootstrap), "--log-level", "debug",
                   "--log-file", str(tmp_path / "daemon.log")], tmp_path / "mnt", tmp_path / "rafs.log")
    try:
        assert len((mount.path / "dir" / "big").read_bytes()) == 1_500_000
    finally:
        mount.close()
    for log in (mount.log.read_text(), (tmp_path / "daemon.log").read_text()):
        assert any(m["blob"] == blob_id for m in FETCH.finditer(log)), log[-3000:]
        for word in NOISY:
            assert word not in log, word
        _assert_no_secret(log)


@pytest.mark.privileged
def test_mount_log_names_the_path_of_a_failed_read(tmp_path):
    need_fuse()
    source = tmp_path / "src"
    (source / "deep" / "er").mkdir(parents=True)
    (source / "deep" / "er" / "file").write_bytes(os.urandom(200_000))
    (tmp_path / "blobs").mkdir()
    rafs.Builder(str(source), fs_version=6).write(bootstrap=str(tmp_path / "boot"), blob_dir=str(tmp_path / "blobs"))
    store = tmp_path / "store"
    shutil.copytree(tmp_path / "blobs", store)
    mount = Mount(["--bootstrap", str(tmp_path / "boot"), "--localfs-dir", str(store)], tmp_path / "mnt",
                  tmp_path / "rafs.log")
    try:
        (blob,) = os.listdir(store)
        os.truncate(store / blob, 100)          # the blob breaks after the mount started
        with pytest.raises(OSError):
            (mount.path / "deep" / "er" / "file").read_bytes()
    finally:
        mount.close()
    log = mount.log.read_text()
    line = next(line for line in log.splitlines() if "read of" in line)
    assert re.search(r"read of /deep/er/file \(inode \d+\), \d+ bytes at offset 0: ", line), log
    assert "<inode" not in log and "Traceback" not in log
