"""nydusd configurations that catch mistakes: special files and deep nesting give one-line errors fast
(issue 12), unknown keys warn with the nearest known key, wrong types are errors naming the key, a mount
whose blobs are nowhere refuses to start, and a merge that names blobs after files says so (issue 16).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import time

import pytest
from hypothesis import given, strategies as st

import rafs
from rafs.cli.main import main
from rafs.errors import InvalidArgumentError, RafsError
from rafs.io import config as config_module
from rafs.io.config import parse_config, read_config_file
from rafs.io.preflight import fully_cached, missing_blobs

from s3server import moto_server, s3, s3_proxy  # noqa: F401  (pytest fixtures)

GUIDE_LOCALFS = {"device": {"backend": {"type": "localfs", "config": {"dir": "image-store"}},
                            "cache": {"type": "blobcache", "config": {"work_dir": "cache"}}},
                 "mode": "direct", "digest_validate": False, "iostats_files": False, "enable_xattr": True}


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    """A work dir with a small v6 image: boot, blobs/<id> (see blob_of), mnt."""
    base = tmp_path_factory.mktemp("config-checks")
    src = base / "src"
    (src / "d").mkdir(parents=True)
    (src / "a").write_bytes(b"hello\n")
    (src / "d" / "b").write_bytes(os.urandom(300_000))
    (base / "blobs").mkdir()
    rafs.Builder(str(src), fs_version=6).write(bootstrap=str(base / "boot"), blob_dir=str(base / "blobs"))
    (base / "mnt").mkdir()
    return base


@pytest.fixture(autouse=True)
def no_real_mount(monkeypatch):
    """These mounts must be refused before mounting: one that got through would serve forever here."""
    import rafs.fuse

    def refuse(*args, **kwargs):
        raise AssertionError("rafs mount got past its checks")
    monkeypatch.setattr(rafs.fuse, "mount", refuse)


def blob_of(image) -> str:
    (blob_id,) = os.listdir(image / "blobs")
    return blob_id


def run(capsys, argv):
    """(exit code, stderr) of ``rafs argv`` in this process."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:
        code = exc.code
    return code, capsys.readouterr().err


def one_error_line(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if not line.startswith("[")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# -- special files and nesting (issue 12) ------------------------------------------------------------

@pytest.mark.parametrize("device", ["/dev/zero", "/dev/urandom"])
def test_device_config_is_refused_at_once(capsys, image, device):
    started = time.monotonic()
    code, err = run(capsys, ["mount", "-B", image / "boot", "-M", image / "mnt", "--config", device])
    assert code == 2 and time.monotonic() - started < 5
    assert f"{device}: is a character device, not a regular file" in one_error_line(err)
    with pytest.raises(InvalidArgumentError, match="character device"):
        rafs.open(image / "boot", config=device)


def test_backend_config_file_from_a_device(capsys, image):
    code, err = run(capsys, ["build", "--name", "x", "--source-dir", image / "src", "--output-dir", image / "out",
                             "--backend-push", "--backend-type", "s3", "--backend-config-file", "/dev/zero"])
    assert code == 2
    assert "--backend-config-file /dev/zero: is a character device" in one_error_line(err)


def _endless_writer(path):
    def write():
        try:
            with open(path, "wb") as f:
                while True:
                    f.write(b'{"device": ' * 4096)
        except (BrokenPipeError, OSError):
            pass
    thread = threading.Thread(target=write, daemon=True)
    thread.start()
    return thread


def test_fifo_with_an_endless_writer_stops_at_the_cap(capsys, image, tmp_path):
    fifo = tmp_path / "config.fifo"
    os.mkfifo(fifo)
    _endless_writer(fifo)
    started = time.monotonic()
    code, err = run(capsys, ["mount", "-B", image / "boot", "-M", image / "mnt", "--config", fifo])
    assert code == 2 and time.monotonic() - started < 5
    assert f"{fifo}: larger than 1 MiB" in one_error_line(err)
    # the same loader serves --backend-config-file
    fifo2 = tmp_path / "backend.fifo"
    os.mkfifo(fifo2)
    _endless_writer(fifo2)
    with pytest.raises(InvalidArgumentError, match="larger than 1 MiB"):
        from rafs.io.push import load_backend_config
        load_backend_config(config_file=str(fifo2))


def test_fifo_without_a_writer_does_not_hang(tmp_path, monkeypatch):
    fifo = tmp_path / "silent.fifo"
    os.mkfifo(fifo)
    monkeypatch.setattr(config_module, "CONFIG_READ_TIMEOUT", 1)
    started = time.monotonic()
    with pytest.raises(InvalidArgumentError, match="no data for 1 s"):
        read_config_file(fifo)
    assert time.monotonic() - started < 5


def test_a_pipe_that_ends_is_read(tmp_path):
    fifo = tmp_path / "config.fifo"
    os.mkfifo(fifo)

    def write():
        with open(fifo, "w") as f:
            f.write(json.dumps(GUIDE_LOCALFS))
    threading.Thread(target=write, daemon=True).start()
    assert parse_config(str(fifo)).work_dir == "cache"


def test_a_file_larger_than_its_size_claims(tmp_path):
    # /proc files say size 0 whatever they hold; the cap is on what is read
    with pytest.raises(InvalidArgumentError, match="neither JSON"):
        parse_config("/proc/self/maps")
    big = tmp_path / "big.json"
    big.write_text(" " * (1 << 20) + "{}")
    with pytest.raises(InvalidArgumentError, match="larger than 1 MiB"):
        parse_config(str(big))


DEEP = {
    "json-arrays": "[" * 100_000 + "]" * 100_000,
    "json-objects": '{"a":' * 100_000 + "1" + "}" * 100_000,
    "toml-arrays": "a = " + "[" * 100_000 + "]" * 100_000,
    "toml-inline-tables": "a = " + "{b=" * 50_000 + "1" + "}" * 50_000,
    "toml-dotted-keys": "[" + ".".join(["a"] * 20_000) + "]\nx = 1\n",
    "toml-brackets-in-strings": 's = "]]]]]]]]]]"\na = ' + "[" * 100_000 + "]" * 100_000,
}


@pytest.mark.parametrize("text", DEEP.values(), ids=DEEP.keys())
def test_deep_nesting_is_a_one_line_error(capsys, image, tmp_path, text):
    path = tmp_path / "deep.conf"
    path.write_text(text)
    started = time.monotonic()
    code, err = run(capsys, ["mount", "-B", image / "boot", "-M", image / "mnt", "--config", path])
    assert code == 2 and time.monotonic() - started < 5
    assert f"{path}: nested more than 32 levels deep" in one_error_line(err)


def test_deep_dict_and_inline_backend_config(capsys, image):
    deep: dict = {}
    for _ in range(5000):
        deep = {"a": deep}
    with pytest.raises(InvalidArgumentError, match="nested more than"):
        parse_config({"device": deep})
    code, err = run(capsys, ["build", "--name", "x", "--source-dir", image / "src", "--output-dir", image / "out",
                             "--backend-push", "--backend-config", "[" * 50_000 + "]" * 50_000])
    assert code == 2 and "--backend-config: nested more than" in one_error_line(err)


def test_strings_with_brackets_are_not_nesting():
    text = json.dumps({**GUIDE_LOCALFS, "device": {**GUIDE_LOCALFS["device"],
                                                   "id": "[[[[" * 20 + '\\"' + "{{{{" * 20}})
    assert parse_config(text).id.startswith("[[[[")
    toml = 'version = 2\nid = """' + "[" * 40 + '""" # ' + "[" * 40 + "\n" \
           '[backend]\ntype = "localfs"\n[backend.localfs]\ndir = "/x"\n'
    assert parse_config(toml).id.startswith("[[[[")


# -- unknown keys and wrong types (issue 16) ---------------------------------------------------------

def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def test_typo_warns_with_the_nearest_key(caplog, tmp_path):
    config = json.loads(json.dumps(GUIDE_LOCALFS))
    config["device"]["cache"]["config"] = {"workdir": "/var/cache/x"}
    path = tmp_path / "nydusd.json"
    path.write_text(json.dumps(config))
    with caplog.at_level(logging.WARNING):
        parsed = parse_config(str(path))
    warned = _warnings(caplog)
    assert f"unknown key device.cache.config.workdir in {path} (did you mean work_dir?)" in warned
    assert any("work_dir is not set: the blob cache goes to the current directory" in w for w in warned)
    assert parsed.unknown_keys == ["device.cache.config.workdir"]


@pytest.mark.parametrize("raw, path, suggestion", [
    ({"version": 2, "backend": {"type": "localfs", "localfs": {"dir": "/b"}},
      "cache": {"type": "blobcache", "filecache": {"work_dir": "/c", "disable_index_map": True}}},
     "cache.filecache.disable_index_map", "disable_indexed_map"),
    ({"version": 2, "backend": {"type": "localfs", "localfs": {"dir": "/b"}, "registy": {}}},
     "backend.registy", "registry"),
    ({"version": 2, "backend": {"type": "localfs", "localfs": {"dir": "/b"}},
      "cache": {"type": "blobcache", "enable_encryption": False, "filecache": {"work_dir": "/c"}}},
     "cache.enable_encryption", "cache.filecache.enable_encryption"),
    ({**GUIDE_LOCALFS, "fs_prefetch": {"enable": True, "threads": 4}}, "fs_prefetch.threads", "threads_count"),
    ({**GUIDE_LOCALFS, "enable_xatr": True}, "enable_xatr", "enable_xattr"),
    ({**GUIDE_LOCALFS, "completely_different": 1}, "completely_different", None),
], ids=["v2-filecache", "v2-backend-table", "wrong-table", "v1-prefetch", "top-level", "no-suggestion"])
def test_unknown_keys_name_their_full_path(caplog, raw, path, suggestion):
    with caplog.at_level(logging.WARNING):
        parse_config(raw)
    hint = f" (did you mean {suggestion}?)" if suggestion else ""
    assert f"unknown key {path} in configuration{hint}" in _warnings(caplog)


def test_valid_configs_warn_about_nothing(caplog, tmp_path):
    s3_guide = {"device": {"backend": {"type": "s3", "config": {
        "endpoint": "s3.us-east-1.amazonaws.com", "scheme": "https", "access_key_id": "AKIAX",
        "access_key_secret": "s", "bucket_name": "b", "meta_prefix": "m/", "blob_prefix": "b/",
        "region": "us-east-1", "timeout": 5, "connect_timeout": 5, "retry_limit": 2, "skip_verify": False}},
        "cache": {"type": "blobcache", "validate": False, "config": {"work_dir": "cache",
                                                                     "disable_indexed_map": False}}},
        "mode": "direct", "digest_validate": False, "iostats_files": False, "enable_xattr": True,
        "access_pattern": False, "latest_read_files": False, "amplify_io": 131072,
        "fs_prefetch": {"enable": True, "threads_count": 4, "merging_size": 131072, "bandwidth_rate": 0,
                        "prefetch_all": True}}
    v2 = """version = 2
id = "x"
[backend]
type = "localfs"
[backend.localfs]
dir = "/b"
alt_dirs = ["/c"]
[cache]
type = "filecache"
validate = true
[cache.filecache]
work_dir = "/w"
[cache.prefetch]
enable = true
threads = 2
[rafs]
mode = "direct"
batch_size = 0
validate = false
enable_xattr = true
iostats_files = false
latest_read_files = false
[rafs.prefetch]
enable = true
threads = 4
batch_size = 262144
bandwidth_limit = 0
prefetch_all = true
"""
    with caplog.at_level(logging.DEBUG, logger="rafs"):
        parse_config(GUIDE_LOCALFS)
        parse_config(s3_guide)
        parse_config(v2)
    assert _warnings(caplog) == []
    ignored = [r.getMessage() for r in caplog.records
               if r.levelno == logging.DEBUG and "not acted on" in r.getMessage()]
    assert any("rafs.latest_read_files" in m for m in ignored)
    # rafs mount --apisock keeps per-file counters when iostats_files asks (rafs.serve.metrics)
    assert not any("iostats_files" in m for m in ignored)


@pytest.mark.parametrize("change, words", [
    (lambda c: c["device"]["cache"]["config"].update(work_dir=5), "device.cache.config.work_dir must be a str, not 5"),
    (lambda c: c.update(enable_xattr="yes"), "enable_xattr must be true or false, not 'yes'"),
    (lambda c: c.update(fs_prefetch={"threads_count": "8"}), "fs_prefetch.threads_count must be an int"),
    (lambda c: c.update(amplify_io=1.5), "amplify_io must be an int, not 1.5"),
    (lambda c: c["device"]["backend"]["config"].update(alt_dirs="/x"), "device.backend.config.alt_dirs must be a list"),
    (lambda c: c["device"].update(cache=[]), "device.cache must be an object/table"),
    (lambda c: c["device"]["backend"].update(type=5), "device.backend.type must be a str"),
    (lambda c: c["device"].update(id={"a": 1}), "device.id must be a str"),
], ids=["work_dir", "bool", "int-as-string", "float", "list", "table", "backend-type", "id"])
def test_wrong_type_is_an_error_naming_the_key(capsys, image, tmp_path, change, words):
    config = json.loads(json.dumps(GUIDE_LOCALFS))
    change(config)
    with pytest.raises(InvalidArgumentError) as info:
        parse_config(config)
    assert words in str(info.value)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(config))
    code, err = run(capsys, ["mount", "-B", image / "boot", "-M", image / "mnt", "--config", path])
    assert code == 2 and words in one_error_line(err)


def test_v2_wrong_types_and_backend_config_typos(capsys, caplog, image):
    with pytest.raises(InvalidArgumentError, match=r"rafs.prefetch.threads must be an int, not 'four'"):
        parse_config({"version": 2, "backend": {"type": "localfs", "localfs": {"dir": "/b"}},
                      "rafs": {"prefetch": {"threads": "four"}}})
    from rafs.io.push import load_backend_config
    with caplog.at_level(logging.WARNING):
        load_backend_config(config='{"endpoint": "e", "bucket_name": "b", "blob_prefx": "p/"}')
    assert "unknown key blob_prefx in --backend-config (did you mean blob_prefix?)" in _warnings(caplog)


# -- a mount without a blob source (issue 16) ----------------------------------------------------------

def test_mount_without_any_blob_source_refuses(capsys, image):
    code, err = run(capsys, ["mount", "-B", image / "boot", "-M", image / "mnt"])
    assert code == 2
    assert f"blob {blob_of(image)} has no source (give --config or --localfs-dir)" in one_error_line(err)
    assert not os.path.ismount(image / "mnt")


def test_mount_with_an_empty_localfs_dir_refuses(capsys, image, tmp_path):
    code, err = run(capsys, ["mount", "-B", image / "boot", "-M", image / "mnt", "--localfs-dir", tmp_path])
    assert code == 2
    assert f"blob {blob_of(image)} not found in --localfs-dir {tmp_path}" in one_error_line(err)


def test_mount_with_a_typo_in_the_config_refuses_naming_keys(capsys, image, tmp_path):
    config = {"device": {"backend": {"type": "localfs", "config": {"dir": str(tmp_path / "store"),
                                                                     "alt_dirs": [str(tmp_path / "alt")]}},
                         "cache": {"type": "blobcache", "config": {"work_dir": str(tmp_path / "cache")}}},
              "mode": "direct"}
    path = tmp_path / "nydusd.json"
    path.write_text(json.dumps(config))
    code, err = run(capsys, ["mount", "-B", image / "boot", "-M", image / "mnt", "-C", path])
    assert code == 2
    assert (f"blob {blob_of(image)} not found in device.backend.config.dir {tmp_path / 'store'}, alt_dirs "
            f"{tmp_path / 'alt'} (localfs) nor in the cache device.cache.config.work_dir {tmp_path / 'cache'}"
            in one_error_line(err))
    v2 = {"version": 2, "backend": {"type": "localfs", "localfs": {"blob_file": str(tmp_path / "none")}}}
    path.write_text(json.dumps(v2))
    code, err = run(capsys, ["mount", "-B", image / "boot", "-M", image / "mnt", "-C", path])
    assert code == 2 and f"not found in backend.localfs.blob_file {tmp_path / 'none'} (localfs)" in err


def test_a_fully_cached_blob_needs_no_backend(image, tmp_path):
    """A warm cache without the backend is a source (issue 14): the check lets such a mount start."""
    store = tmp_path / "store"
    shutil.copytree(image / "blobs", store)
    config = {"device": {"backend": {"type": "localfs", "config": {"dir": str(store)}},
                         "cache": {"type": "blobcache", "config": {"work_dir": str(tmp_path / "cache")}}},
              "mode": "direct"}
    with rafs.open(image / "boot", config=config) as warm:
        assert missing_blobs(warm) == []
        (blob,) = warm.blobs
        assert not fully_cached(tmp_path / "cache", blob)
        warm.read("/a")                                   # one chunk of several: not fully cached yet
        assert not fully_cached(tmp_path / "cache", blob)
        warm.prefetch(all=True)
        assert fully_cached(tmp_path / "cache", blob)
    shutil.rmtree(store)
    with rafs.open(image / "boot", config=config) as cold_backend:
        assert missing_blobs(cold_backend) == []
    shutil.rmtree(tmp_path / "cache")
    with rafs.open(image / "boot", config=config) as nothing:
        (missing,) = missing_blobs(nothing)
        assert missing.blob_id == blob_of(image) and len(missing.looked) == 2


def test_s3_blob_missing_from_the_bucket_refuses(capsys, s3, image, tmp_path):
    config = s3.nydusd_config(tmp_path / "cache")
    path = tmp_path / "nydusd-config.s3.json"
    path.write_text(json.dumps(config))
    code, err = run(capsys, ["mount", "-B", image / "boot", "-M", image / "mnt", "-C", path])
    assert code == 2
    line = one_error_line(err)
    assert f"blob {blob_of(image)} not found in device.backend.config (s3 http://{s3.proxy.endpoint}/" in line
    assert "nydus-demo/blob/" in line and "device.cache.config.work_dir" in line
    assert "rafs-test-secret" not in err and "AKIA" not in err
    s3.put(f"nydus-demo/blob/{blob_of(image)}", (image / "blobs" / blob_of(image)).read_bytes())
    with rafs.open(image / "boot", config=config) as found:
        assert missing_blobs(found) == []
    assert [r.method for r in s3.proxy.requests_for(blob_of(image), method="HEAD")]


# -- merge (issue 16) ----------------------------------------------------------------------------------

def test_merge_without_digests_warns(capsys, image, tmp_path):
    layer = tmp_path / "layer-one.boot"
    shutil.copy(image / "boot", layer)
    code, err = run(capsys, ["merge", layer, "-B", tmp_path / "merged"])
    assert code == 0
    assert f"the blob of {layer} gets the id 'layer-one' from its file name (it was {blob_of(image)})" in err
    assert "--blob-digests" in err
    code, err = run(capsys, ["merge", layer, "-B", tmp_path / "merged2", "--blob-digests", blob_of(image)])
    assert code == 0 and "from its file name" not in err
    named = tmp_path / f"{blob_of(image)}.boot"             # nydusify names bootstraps after their blob
    shutil.copy(image / "boot", named)
    code, err = run(capsys, ["merge", named, "-B", tmp_path / "merged3"])
    assert code == 0 and "from its file name" not in err


# -- any document: a config or a clean error ---------------------------------------------------------

_KEYS = st.sampled_from(["device", "backend", "cache", "config", "type", "dir", "work_dir", "workdir", "version",
                         "rafs", "prefetch", "localfs", "s3", "filecache", "fs_prefetch", "threads", "enable",
                         "mode", "bucket_name", "retry_limit", "alt_dirs", "blob_file", "x"])
_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-2, 2**40) | st.floats(allow_nan=False) |
    st.sampled_from(["localfs", "s3", "blobcache", "direct", "/tmp", "", "http-proxy", "dummycache"]),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(_KEYS, children, max_size=4), max_leaves=25)


@given(st.dictionaries(_KEYS, _VALUES, max_size=5), st.sampled_from([None, 1, 2]))
def test_any_document_is_a_config_or_a_clean_error(document, version):
    if version is not None:
        document = {**document, "version": version}
    for given_as in (document, json.dumps(document)):
        try:
            parse_config(given_as)
        except RafsError:
            pass
