"""nydusd configuration files: the guide's v1 JSON, v2 TOML/JSON, refusals that name the key, secrets."""

from __future__ import annotations

import json

import pytest

import rafs
from rafs.errors import InvalidArgumentError, UnsupportedError
from rafs.io.config import ConfigLocator, locator_from_config, parse_config

from test_io_fetch import GROUP

SECRET = "guide-secret-Kq2Pz8"

# nydusd-config.localfs.json and nydusd-config.s3.json of the user's guide, verbatim but for values
GUIDE_LOCALFS = """{
  "device": {
    "backend": {"type": "localfs", "config": {"dir": "image-store"}},
    "cache": {"type": "blobcache", "config": {"work_dir": "cache"}}
  },
  "mode": "direct",
  "digest_validate": false,
  "iostats_files": false,
  "enable_xattr": true
}"""

GUIDE_S3 = {
    "device": {
        "backend": {"type": "s3", "config": {
            "endpoint": "s3.us-east-1.amazonaws.com", "scheme": "https", "access_key_id": "AKIAGUIDE",
            "access_key_secret": SECRET, "bucket_name": "xxx", "meta_prefix": "nydus-demo/meta/",
            "blob_prefix": "nydus-demo/blob/", "region": "us-east-1"}},
        "cache": {"type": "blobcache", "config": {"work_dir": "cache"}}},
    "mode": "direct", "digest_validate": False, "iostats_files": False, "enable_xattr": True}

# misc/configs/nydusd-config-v2.toml in shape
V2_TOML = """
version = 2
id = "my_id"

[backend]
type = "localfs"
[backend.localfs]
dir = "/var/lib/nydus/blobs"

[cache]
type = "filecache"
validate = true
[cache.filecache]
work_dir = "/var/lib/nydus/cache"

[rafs]
mode = "direct"
batch_size = 0
validate = false
enable_xattr = true
[rafs.prefetch]
enable = true
threads = 4
batch_size = 262144
prefetch_all = true
"""


def test_guide_v1_localfs_text():
    config = parse_config(GUIDE_LOCALFS)
    assert config.version == 1
    assert (config.backend_type, config.backend_config) == ("localfs", {"dir": "image-store"})
    assert config.cached and config.work_dir == "cache" and config.cache_type == "blobcache"
    assert config.enable_xattr is True and config.validate is False and config.mode == "direct"
    # FsPrefetchControl: prefetch off, prefetch_all true by default in v1
    assert config.prefetch.enable is False and config.prefetch.prefetch_all is True
    assert config.prefetch.threads == 8 and config.prefetch.batch_size == 0x100000


def test_guide_v1_s3_blob_prefix_is_where_blobs_live():
    locator = locator_from_config(GUIDE_S3)
    backend = locator.backend
    assert backend.key_for("58048df5") == "nydus-demo/blob/58048df5"
    assert backend.bucket == "xxx" and backend.region == "us-east-1"
    assert backend.storage_options["endpoint_url"] == "https://s3.us-east-1.amazonaws.com"
    assert backend.storage_options["config_kwargs"]["s3"]["addressing_style"] == "path"
    assert locator.validate is False and locator.config.enable_xattr is True


def test_object_prefix_wins_over_blob_prefix():
    config = json.loads(json.dumps(GUIDE_S3))
    config["device"]["backend"]["config"]["object_prefix"] = "nydus/"
    assert locator_from_config(config).backend.key_for("id") == "nydus/id"
    config["device"]["backend"]["config"]["object_prefix"] = ""
    assert locator_from_config(config).backend.key_for("id") == "id"


def test_v2_toml_and_json(tmp_path):
    config = parse_config(V2_TOML)
    assert config.version == 2 and config.id == "my_id"
    assert config.backend_config == {"dir": "/var/lib/nydus/blobs"}
    assert config.cache_type == "filecache" and config.work_dir == "/var/lib/nydus/cache"
    assert config.cache_validate is True and config.validate is False
    assert locator_from_config(config).validate is True         # cache.validate also validates
    assert config.prefetch.enable and config.prefetch.threads == 4 and config.prefetch.batch_size == 262144
    assert config.prefetch.prefetch_all is True and config.enable_xattr is True

    as_json = {"version": 2, "backend": {"type": "s3", "s3": {"bucket_name": "b", "endpoint": "127.0.0.1:9",
                                                               "scheme": "http", "object_prefix": "p/"}},
               "cache": {"type": "dummycache"}, "rafs": {"validate": True}}
    path = tmp_path / "nydusd.json"
    path.write_text(json.dumps(as_json))
    for given in (as_json, json.dumps(as_json), str(path), path):
        locator = locator_from_config(given)
        assert locator.backend.key_for("x") == "p/x" and locator.cache_dir is None and locator.validate

    toml_path = tmp_path / "nydusd.toml"
    toml_path.write_text(V2_TOML)
    assert parse_config(toml_path).work_dir == "/var/lib/nydus/cache"


def test_v1_fs_prefetch_keys():
    config = json.loads(GUIDE_LOCALFS)
    config["fs_prefetch"] = {"enable": True, "threads_count": 2, "merging_size": 131072, "bandwidth_rate": 1000000}
    locator = locator_from_config(config)
    prefetch = locator.config.prefetch
    assert (prefetch.enable, prefetch.threads, prefetch.batch_size, prefetch.bandwidth_limit) == \
        (True, 2, 131072, 1000000)
    assert locator.prefetch_bandwidth_limit == 1000000


def test_v2_prefetch_defaults_differ_from_v1():
    config = parse_config({"version": 2, "backend": {"type": "localfs", "localfs": {"dir": "."}},
                           "rafs": {"prefetch": {"enable": True}}})
    assert config.prefetch.enable and config.prefetch.prefetch_all is False


def test_http_proxy_backend_url():
    config = {"version": 2, "backend": {"type": "http-proxy", "http-proxy": {"addr": "http://127.0.0.1:8080",
                                                                          "path": "/namespace/blobs"}}}
    assert locator_from_config(config).backend.url_for("abc") == "http://127.0.0.1:8080/namespace/blobs/abc"
    config["backend"]["http-proxy"]["path"] = ""
    assert locator_from_config(config).backend.url_for("abc") == "http://127.0.0.1:8080/abc"


@pytest.mark.parametrize("change, error, words", [
    (lambda c: c["device"]["backend"].update(type="oss"), UnsupportedError, "device.backend.type 'oss'"),
    (lambda c: c["device"]["backend"].update(type="localdisk"), UnsupportedError, "device.backend.type 'localdisk'"),
    (lambda c: c["device"]["backend"].update(type="ftp"), InvalidArgumentError, "device.backend.type 'ftp'"),
    (lambda c: c["device"]["cache"].update(type="fscache"), UnsupportedError, "device.cache.type 'fscache'"),
    (lambda c: c["device"]["cache"].update(type="memcache"), InvalidArgumentError, "device.cache.type 'memcache'"),
    (lambda c: c["device"]["cache"].update(compressed=True), UnsupportedError, "device.cache.compressed"),
    (lambda c: c["device"]["cache"]["config"].update(enable_encryption=True), UnsupportedError,
     "device.cache.config.enable_encryption"),
    (lambda c: c["device"]["backend"]["config"].update(proxy={"url": "http://p"}), UnsupportedError,
     "proxy.url"),
    (lambda c: c["device"]["backend"]["config"].update(mirrors=[{"host": "http://m"}]), UnsupportedError,
     "mirrors"),
    (lambda c: c["device"]["backend"]["config"].pop("bucket_name"), InvalidArgumentError, "bucket_name"),
    (lambda c: c.update(mode="lazy"), InvalidArgumentError, "mode"),
    (lambda c: c.update(digest_validate="yes"), InvalidArgumentError, "digest_validate"),
    (lambda c: c.update(fs_prefetch={"enable": True, "threads_count": 0}), InvalidArgumentError,
     "fs_prefetch.threads_count"),
    (lambda c: c.update(fs_prefetch={"merging_size": 0x2000_0000}), InvalidArgumentError, "fs_prefetch.merging_size"),
])
def test_refusals_name_the_key(change, error, words):
    config = json.loads(json.dumps(GUIDE_S3))
    change(config)
    with pytest.raises(error) as info:
        locator_from_config(config)
    assert words in str(info.value)
    assert SECRET not in str(info.value)


def test_not_a_config(tmp_path):
    for bad in ({"hello": 1}, "[1, 2]", "version = 3\n", "not = [valid", str(tmp_path / "missing.json"), 42):
        with pytest.raises(InvalidArgumentError):
            parse_config(bad)


def test_secrets_never_shown():
    locator = locator_from_config(GUIDE_S3)
    assert isinstance(locator, ConfigLocator)
    shown = [repr(locator), str(locator.config), repr(locator.config), locator.describe(),
             json.dumps(locator.config.redacted()), repr(locator.backend)]
    for text in shown:
        assert SECRET not in text and "AKIAGUIDE" not in text
    assert locator.config.redacted()["backend"]["s3"]["access_key_secret"] == "***"
    assert SECRET in locator.config.secrets()


def test_open_with_config_reads_the_v5_fixture(v5_fixture, tmp_path):
    bootstrap, blob_dir, _ = v5_fixture
    config = {"device": {"backend": {"type": "localfs", "config": {"dir": str(blob_dir)}},
                         "cache": {"type": "blobcache", "config": {"work_dir": str(tmp_path / "cache")}}},
              "mode": "direct", "digest_validate": True, "enable_xattr": True}
    with rafs.open(bootstrap, config=config) as image, rafs.open(bootstrap, blob_dir=blob_dir) as plain:
        assert image.validate and image.locator.config.enable_xattr
        for path, inode in plain.iter_entries():
            if inode.is_reg:
                assert image.read(path) == plain.read(path)
    # a blob that is nowhere (and not in the cache: a warm cache needs no backend) is reported with
    # where it was looked for
    config["device"]["backend"]["config"]["dir"] = str(tmp_path)
    config["device"]["cache"]["config"]["work_dir"] = str(tmp_path / "cold-cache")
    with rafs.open(bootstrap, config=config) as image:
        with pytest.raises(rafs.BlobNotFoundError, match=str(tmp_path)):
            image.read(GROUP)
