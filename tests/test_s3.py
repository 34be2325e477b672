"""The user's guide against a real S3 endpoint on loopback (moto server, reached through s3fs).

``rafs build --backend-push`` of the guide's origin-root-dir, then ``rafs.open("s3://...")`` with the
guide's nydusd v1 configuration (s3 backend with blob_prefix/meta_prefix, blobcache work_dir). What
each read costs is counted from the requests the endpoint saw; faults are injected by the proxy.
"""

from __future__ import annotations

import json
import logging
import os
import struct

import pytest

import rafs
from rafs.cli.main import main as rafs_main
from rafs.errors import BackendError
from rafs.image.inspect import describe

from s3server import ACCESS_KEY_ID, ACCESS_KEY_SECRET, Faults, moto_server, s3, s3_proxy  # noqa: F401
from test_io_fetch import BUSYBOX, GROUP, LAYER_TAR

NAME = "image-basic-01-s3"


def guide_tree(root):
    """origin-root-dir exactly as the guide makes it."""
    for d in ("dir_1/subdir_a", "dir_1/subdir_b", "dir_2"):
        os.makedirs(root / d)
    (root / "dir_1/subdir_a/file_a").write_text("file_a\n")
    (root / "dir_2/file_b").write_text("file_b\n")
    (root / "file_c").write_text("file_c\n")
    os.symlink("file_c", root / "file_c_ln")
    return root


def blob_requests(s3, blob_id):
    return s3.proxy.requests_for("nydus-demo/blob/" + blob_id)


def range_size(request) -> int:
    start, end = request.range.removeprefix("bytes=").split("-")
    return int(end) - int(start) + 1


@pytest.fixture
def pushed_guide_image(s3, tmp_path, capsys):
    """The guide's image built and pushed by ``rafs build --backend-push``: (blob id, bootstrap URL)."""
    source = guide_tree(tmp_path / "origin-root-dir")
    config_file = tmp_path / "backend-config.s3.json"
    config_file.write_text(json.dumps(s3.backend_config()))
    out_dir = tmp_path / ".nydus-build-output"
    assert rafs_main(["build", "--name", NAME, "--source-dir", str(source), "--output-dir", str(out_dir),
                      "--backend-push", "--backend-type", "s3", "--backend-config-file", str(config_file)]) == 0
    printed = capsys.readouterr()
    output = json.loads((out_dir / "output.json").read_text())
    (blob_id,) = output["blobs"]
    assert sorted(os.listdir(out_dir)) == sorted([blob_id, f"{NAME}.meta", "output.json"])
    blob_url = f"s3://{s3.bucket}/nydus-demo/blob/{blob_id}"
    boot_url = f"s3://{s3.bucket}/nydus-demo/meta/{NAME}"
    assert f"pushed blob: {blob_url}" in printed.out and f"pushed bootstrap: {boot_url}" in printed.out
    assert s3.fs.cat_file(blob_url) == (out_dir / blob_id).read_bytes()
    assert s3.fs.cat_file(boot_url) == (out_dir / f"{NAME}.meta").read_bytes()
    for text in (printed.out, printed.err):
        assert ACCESS_KEY_SECRET not in text
    s3.proxy.reset()
    return blob_id, boot_url


def test_guide_flow_build_push_and_lazy_open(s3, tmp_path, pushed_guide_image, caplog):
    caplog.set_level(logging.DEBUG, logger="rafs")
    blob_id, boot_url = pushed_guide_image
    cache = tmp_path / "cache"
    config_file = tmp_path / "nydusd-config.s3.json"
    config_file.write_text(json.dumps(s3.nydusd_config(cache)))
    with rafs.open(boot_url, config=str(config_file)) as image:
        # opening fetches the bootstrap and nothing of the blob
        assert blob_requests(s3, blob_id) == []
        assert sorted(image.listdir("/")) == ["dir_1", "dir_2", "file_c", "file_c_ln"]
        assert image.readlink("/file_c_ln") == "file_c"
        assert blob_requests(s3, blob_id) == []
        (blob,) = image.blobs
        (chunk,) = image.chunks("/dir_1/subdir_a/file_a")
        s3.proxy.reset()

        assert image.read("/dir_1/subdir_a/file_a") == b"file_a\n"
        requests = blob_requests(s3, blob_id)
        # that file's chunk, plus the CI array and its header for the .blob.meta cache file
        assert len(requests) <= 2 and all(r.status == 206 for r in requests)
        assert sum(range_size(r) for r in requests) <= chunk.compressed_size + blob.ci_compressed_size + 4096
        assert any(range_size(r) == chunk.compressed_size for r in requests)
        assert len(s3.proxy.requests) == len(requests)          # nothing else was asked for

        s3.proxy.reset()
        assert image.read("/dir_1/subdir_a/file_a") == b"file_a\n"
        assert image.read("/file_c_ln") == b"file_c\n" and image.read("/file_c") == b"file_c\n"
        # the second read of file_a costs nothing; file_c costs its own chunk only
        requests = blob_requests(s3, blob_id)
        assert [range_size(r) for r in requests] == [image.chunks("/file_c")[0].compressed_size]

    # the three nydusd cache files, with nydusd's sizes and the bits of the chunks read
    base = cache / blob_id
    assert sorted(os.listdir(cache)) == sorted(f"{blob_id}{s}" for s in (".blob.data", ".blob.data.chunk_map",
                                                                           ".blob.meta"))
    assert os.path.getsize(f"{base}.blob.data") == blob.uncompressed_size == 3 * 4096
    chunk_map = open(f"{base}.blob.data.chunk_map", "rb").read()
    assert len(chunk_map) == 4096 + 1 and struct.unpack_from("<3I", chunk_map) == (0x424D4150, 1, 0x434D4150)
    with rafs.open(boot_url, config=str(config_file)) as image:
        read = {image.chunks(p)[0].index for p in ("/dir_1/subdir_a/file_a", "/file_c")}
        assert chunk_map[4096] == sum(0x80 >> i for i in read)
        (file_b,) = image.chunks("/dir_2/file_b")
        assert file_b.index not in read
    meta = open(f"{base}.blob.meta", "rb").read()
    assert len(meta) == 4096 + 4096 and struct.unpack_from("<I", meta, 4096)[0] == 0xB10BB10B
    assert ACCESS_KEY_SECRET not in caplog.text


def test_reopening_a_warm_cache_fetches_no_blob_data(s3, tmp_path, pushed_guide_image):
    blob_id, boot_url = pushed_guide_image
    config = s3.nydusd_config(tmp_path / "cache", validate=True)
    with rafs.open(boot_url, config=config) as image:
        for path in ("/dir_1/subdir_a/file_a", "/dir_2/file_b", "/file_c"):
            image.read(path)
    s3.proxy.reset()
    with rafs.open(boot_url, config=config) as image:
        assert image.read("/dir_2/file_b") == b"file_b\n"
        assert image.prefetch(all=True).fetched == 0
    assert blob_requests(s3, blob_id) == []


def upload_v5_fixture(s3, v5_fixture):
    bootstrap, blob_dir, _ = v5_fixture
    (blob,) = blob_dir.iterdir()
    s3.put("nydus-demo/meta/v5", bootstrap.read_bytes())
    s3.put("nydus-demo/blob/" + blob.name, blob.read_bytes())
    s3.proxy.reset()
    return f"s3://{s3.bucket}/nydus-demo/meta/v5", blob.name


def test_v5_fixture_lazily_from_s3(s3, tmp_path, v5_fixture):
    boot_url, blob_id = upload_v5_fixture(s3, v5_fixture)
    ref = rafs.open(v5_fixture[0], blob_dir=v5_fixture[1])
    with rafs.open(boot_url, config=s3.nydusd_config(tmp_path / "cache")) as image:
        assert blob_requests(s3, blob_id) == []
        assert image.read(GROUP) == ref.read(GROUP)
        (request,) = blob_requests(s3, blob_id)
        (chunk,) = ref.chunks(GROUP)
        assert request.range == f"bytes={chunk.compressed_offset}-{chunk.compressed_offset + 306}"
        s3.proxy.reset()
        image.read(GROUP)
        assert s3.proxy.requests == []
        # the big file: its two chunks, each one ranged request (1 MiB merge bound)
        assert image.read(LAYER_TAR) == ref.read(LAYER_TAR)
        assert sorted(range_size(r) for r in blob_requests(s3, blob_id)) == [367104, 1048576]
        # background prefetch of everything else, then every file comes from the cache
        handle = image.prefetch(all=True, threads=4, wait=False)
        assert handle.wait(60) and not handle.errors and handle.fetched == 23 - 3
        s3.proxy.reset()
        for path, inode in ref.iter_entries():
            if inode.is_reg:
                assert image.read(path) == ref.read(path)
        assert s3.proxy.requests == []


def test_transient_faults_are_retried(s3, tmp_path, v5_fixture, caplog):
    caplog.set_level(logging.DEBUG, logger="rafs")
    boot_url, blob_id = upload_v5_fixture(s3, v5_fixture)
    ref = rafs.open(v5_fixture[0], blob_dir=v5_fixture[1])
    files = [p for p, i in ref.iter_entries() if i.is_reg and i.size][:8]
    for mode in ("503", "drop", "cut"):
        s3.proxy.faults = Faults(mode=mode, every=2)         # every other GET fails
        config = s3.nydusd_config(tmp_path / f"cache-{mode}", validate=True, retry_limit=3)
        with rafs.open(boot_url, config=config) as image:
            for path in files:
                assert image.read(path) == ref.read(path), (mode, path)
        assert s3.proxy.faults.injected >= 4, mode
        s3.proxy.reset()
    assert ACCESS_KEY_SECRET not in caplog.text


def test_faults_beyond_the_retry_limit_give_a_clear_error(s3, tmp_path, v5_fixture, caplog):
    caplog.set_level(logging.DEBUG, logger="rafs")
    boot_url, blob_id = upload_v5_fixture(s3, v5_fixture)
    (chunk,) = rafs.open(v5_fixture[0], blob_dir=v5_fixture[1]).chunks(GROUP)
    for mode in ("503", "drop"):
        config = s3.nydusd_config(tmp_path / f"cache-{mode}", retry_limit=2)
        with rafs.open(boot_url, config=config) as image:
            s3.proxy.faults = Faults(mode=mode, every=1, match="/nydus-demo/blob/")
            with pytest.raises(BackendError) as info:
                image.read(GROUP)
            message = str(info.value)
            assert blob_id in message and f"[{chunk.compressed_offset:#x}, +{chunk.compressed_size:#x})" in message
            assert "3 attempts" in message and "retry_limit 2" in message
            attempts = len(blob_requests(s3, blob_id))
            if mode == "503":
                assert attempts == 3                             # one try and two retries
            else:
                # aiohttp itself retries once a request whose pooled connection was closed under it
                assert 3 <= attempts <= 6
            inspected = json.dumps(describe(image), default=str)
            for text in (message, repr(info.value), repr(image.locator), str(image.locator.config), inspected,
                         repr(image)):
                assert ACCESS_KEY_SECRET not in text and ACCESS_KEY_ID not in text.replace("***", "")
        s3.proxy.reset()
    # a permanent fault is not retried: a blob that is not there
    config = s3.nydusd_config(tmp_path / "cache-missing", blob_prefix="nowhere/")
    with rafs.open(boot_url, config=config) as image:
        with pytest.raises((FileNotFoundError, BackendError)):
            image.read(GROUP)
        assert len(s3.proxy.requests_for("nowhere/")) == 1
    assert ACCESS_KEY_SECRET not in caplog.text


def test_v2_toml_config_and_guide_localfs(s3, tmp_path, v5_fixture):
    boot_url, blob_id = upload_v5_fixture(s3, v5_fixture)
    backend = s3.backend_config()
    toml = f"""
version = 2
[backend]
type = "s3"
[backend.s3]
endpoint = "{backend['endpoint']}"
scheme = "http"
bucket_name = "{s3.bucket}"
object_prefix = "nydus-demo/blob/"
region = "us-east-1"
access_key_id = "{ACCESS_KEY_ID}"
access_key_secret = "{ACCESS_KEY_SECRET}"
[cache]
type = "blobcache"
[cache.filecache]
work_dir = "{tmp_path / 'cache'}"
[rafs]
validate = true
"""
    with rafs.open(boot_url, config=toml) as image:
        assert image.validate
        assert image.read(BUSYBOX + "/etc/passwd") == rafs.open(v5_fixture[0], blob_dir=v5_fixture[1]).read(
            BUSYBOX + "/etc/passwd")
    assert len(blob_requests(s3, blob_id)) == 1


def test_chained_fsspec_url_over_s3(s3, tmp_path, pushed_guide_image):
    import fsspec
    blob_id, boot_url = pushed_guide_image
    s3_options = {"key": ACCESS_KEY_ID, "secret": ACCESS_KEY_SECRET, "endpoint_url": f"http://{s3.proxy.endpoint}",
                  "client_kwargs": {"region_name": "us-east-1"}, "skip_instance_cache": True}
    url = f"rafs://dir_2/file_b::{boot_url}"
    with fsspec.open(url, s3=s3_options, rafs={"config": s3.nydusd_config(tmp_path / "cache"),
                                              "skip_instance_cache": True}) as f:
        assert f.read() == b"file_b\n"
    assert len(blob_requests(s3, blob_id)) <= 2


def test_plain_urls_with_storage_options_and_http(s3, tmp_path, v5_fixture):
    """Without a nydusd config: s3:// with storage_options passed through, and plain http:// ranges."""
    boot_url, blob_id = upload_v5_fixture(s3, v5_fixture)
    ref = rafs.open(v5_fixture[0], blob_dir=v5_fixture[1])
    options = {"key": ACCESS_KEY_ID, "secret": ACCESS_KEY_SECRET, "endpoint_url": f"http://{s3.proxy.endpoint}",
               "client_kwargs": {"region_name": "us-east-1"}, "skip_instance_cache": True}
    with rafs.open(boot_url, blob_dir=f"s3://{s3.bucket}/nydus-demo/blob", storage_options=options) as image:
        s3.proxy.reset()
        assert image.read(GROUP) == ref.read(GROUP)
        assert [range_size(r) for r in blob_requests(s3, blob_id)] == [307]
    # the same objects, made public, over plain http(s) URLs
    for key in ("nydus-demo/meta/v5", f"nydus-demo/blob/{blob_id}"):
        s3.fs.call_s3("put_object_acl", Bucket=s3.bucket, Key=key, ACL="public-read")
    base = f"http://{s3.proxy.endpoint}/{s3.bucket}/nydus-demo"
    with rafs.open(f"{base}/meta/v5", blobs={blob_id: f"{base}/blob/{blob_id}"}) as image:
        s3.proxy.reset()
        assert image.read(LAYER_TAR) == ref.read(LAYER_TAR)
        assert sorted(range_size(r) for r in blob_requests(s3, blob_id)) == [367104, 1048576]
    # and as nydusd's http-proxy backend
    config = {"version": 2, "backend": {"type": "http-proxy", "http-proxy": {
        "addr": f"http://{s3.proxy.endpoint}", "path": f"/{s3.bucket}/nydus-demo/blob"}},
        "cache": {"type": "blobcache", "filecache": {"work_dir": str(tmp_path / "cache")}}}
    with rafs.open(f"{base}/meta/v5", config=config) as image:
        s3.proxy.reset()
        assert image.read(GROUP) == ref.read(GROUP)
        assert [range_size(r) for r in blob_requests(s3, blob_id)] == [307]
