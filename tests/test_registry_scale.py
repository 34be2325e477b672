"""Converting between registries at scale: layers streamed from the source registry and pushed by the
worker that converted them, ``--from-list`` with local processes, and a Dask ``LocalCluster`` whose
workers do the per-layer work; cross-repository mounts. Against Debian's docker-registry (see
registry_server.py), nothing mocked.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys

import pytest

from rafs.errors import InvalidArgumentError
from rafs.oci.distributed import read_pairs

from conftest import need
from helpers import rafs_mount
from oci_layers import apply_layers, directory_view, make_layers, oci_image, oci_layout
from registry_server import PASSWORD, USER, Registry, available

AUTH = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
IMAGES = 3


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    reason = available()
    need(reason is None, reason or "")
    base = tmp_path_factory.mktemp("scale")
    tars = make_layers(str(base / "layers"), compress="gzip")
    server = Registry(str(base / "registry"), "basic")
    server.expected = apply_layers(tars, str(base / "expected"))        # the flattened tree of src1
    try:
        # three images sharing layers in different combinations
        for i, layers in enumerate((tars, tars[:2], [tars[0], tars[2]]), start=1):
            layout = str(base / f"src{i}")
            oci_layout(layout, [oci_image(layout, layers)])
            server.push(layout, f"rafs/src{i}:v1")
    except BaseException:
        server.stop()
        raise
    yield server
    server.stop()


@pytest.fixture
def docker_env(registry, tmp_path, monkeypatch):
    (tmp_path / "docker").mkdir()
    (tmp_path / "docker" / "config.json").write_text(json.dumps({"auths": {registry.host: {"auth": AUTH}}}))
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker"))      # the Dask workers inherit it
    return {"DOCKER_CONFIG": str(tmp_path / "docker"), "PYTHONPATH": os.environ.get("PYTHONPATH", "")}


def _cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "rafs", *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})})


def _manifest(registry, reference: str) -> dict:
    raw = subprocess.run(["skopeo", "inspect", "--raw", "--cert-dir", registry.cert_dir, "--creds",
                          f"{USER}:{PASSWORD}", reference], capture_output=True, text=True, timeout=60, check=True)
    return json.loads(raw.stdout)


def _layers(registry, reference: str) -> list[str]:
    return [layer["digest"] for layer in _manifest(registry, reference)["layers"]]


def _list(tmp_path, registry, prefix: str) -> str:
    path = tmp_path / f"{prefix}.list"
    path.write_text("# source target\n\n" + "".join(
        f"docker://{registry.host}/rafs/src{i}:v1 docker://{registry.host}/rafs/{prefix}{i}:v1\n"
        for i in range(1, IMAGES + 1)))
    return str(path)


def test_registry_to_registry_streams_layers_and_pushes_each_blob_once(registry, docker_env, tmp_path):
    source, target = f"docker://{registry.host}/rafs/src1:v1", f"docker://{registry.host}/rafs/streamed:v1"
    mark = registry.log_mark()
    result = _cli("convert", "--source", source, "--target", target, "--source-insecure", "--target-insecure",
                  "--work-dir", str(tmp_path), env=docker_env)
    assert result.returncode == 0, result.stderr
    assert "pulled" not in result.stderr, "the source is not pulled into a layout first"
    requests = registry.requests_since(mark)
    layer_gets = [r for r in requests if r[0] == "GET" and "/rafs/src1/blobs/" in r[1]]
    assert layer_gets, requests
    uploads = [r for r in requests if r[0] == "PUT" and "/rafs/streamed/blobs/uploads/" in r[1]]
    layers = _layers(registry, target)
    assert len(uploads) == len(layers) + 1, "every Nydus blob, the bootstrap layer and the config: once each"
    assert PASSWORD not in result.stderr + result.stdout


def test_from_list_with_local_processes_matches_single_conversions(registry, docker_env, tmp_path):
    for i in range(1, IMAGES + 1):
        single = _cli("convert", "--source", f"docker://{registry.host}/rafs/src{i}:v1", "--target",
                      f"docker://{registry.host}/rafs/single{i}:v1", "--source-insecure", "--target-insecure",
                      env=docker_env)
        assert single.returncode == 0, single.stderr
    result = _cli("convert", "--from-list", _list(tmp_path, registry, "local"), "--source-insecure",
                  "--target-insecure", env=docker_env)
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("converted docker://") == IMAGES and f"[{IMAGES}/{IMAGES}]" in result.stderr
    for i in range(1, IMAGES + 1):
        assert _manifest(registry, f"docker://{registry.host}/rafs/local{i}:v1") == \
            _manifest(registry, f"docker://{registry.host}/rafs/single{i}:v1")


def test_dask_local_cluster_converts_three_images_byte_identically(registry, docker_env, tmp_path):
    import distributed
    serial = {}
    for i in range(1, IMAGES + 1):
        one = _cli("convert", "--source", f"docker://{registry.host}/rafs/src{i}:v1", "--target",
                   f"docker://{registry.host}/rafs/serial{i}:v1", "--source-insecure", "--target-insecure",
                   env=docker_env)
        assert one.returncode == 0, one.stderr
        serial[i] = _manifest(registry, f"docker://{registry.host}/rafs/serial{i}:v1")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                  scheduler_port=0) as cluster:
        mark = registry.log_mark()
        result = _cli("convert", "--from-list", _list(tmp_path, registry, "dask"), "--scheduler",
                      cluster.scheduler_address, "--source-insecure", "--target-insecure", env=docker_env)
        assert result.returncode == 0, result.stderr
    assert f"[{IMAGES}/{IMAGES}]" in result.stderr
    for i in range(1, IMAGES + 1):
        # blobs and bootstraps (the layers) and every document byte-identical to the serial conversion
        assert _manifest(registry, f"docker://{registry.host}/rafs/dask{i}:v1") == serial[i]
    # the source layers were streamed from the registry (by the workers)
    requests = registry.requests_since(mark)
    assert any(r[0] == "GET" and "/rafs/src" in r[1] and "/blobs/" in r[1] for r in requests)


def test_scheduler_needs_registry_targets_and_a_reachable_address(registry, docker_env, tmp_path):
    listing = tmp_path / "layouts.list"
    listing.write_text(f"docker://{registry.host}/rafs/src1:v1 {tmp_path / 'out'}\n")
    result = _cli("convert", "--from-list", str(listing), "--scheduler", "tcp://127.0.0.1:9", "--source-insecure",
                  env=docker_env)
    assert result.returncode != 0 and "--scheduler" in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_copy_within_a_registry_mounts_blobs_across_repositories(registry, docker_env):
    source, target = f"docker://{registry.host}/rafs/src2:v1", f"docker://{registry.host}/rafs/mounted:v1"
    mark = registry.log_mark()
    result = _cli("copy", source, target, "--source-insecure", "--target-insecure", env=docker_env)
    assert result.returncode == 0, result.stderr
    from urllib.parse import quote
    source_layers = [quote(d, safe="") for d in _layers(registry, source)]
    requests = registry.requests_since(mark)
    mounts = [r for r in requests if r[0] == "POST" and "mount=" in r[1] and any(d in r[1] for d in source_layers)]
    # every layer is mounted from the source repository (201), none uploaded again
    assert len(mounts) == len(source_layers) and all(r[2] == 201 for r in mounts), mounts
    assert not [r for r in requests if r[0] == "PUT" and "/blobs/uploads/" in r[1] and "mounted" in r[1]
                and r[3] > 0 and any(d in r[1] for d in source_layers)]
    assert _manifest(registry, target) == _manifest(registry, source)


def test_list_files_are_checked_line_by_line(tmp_path):
    bad = tmp_path / "bad.list"
    bad.write_text("a b\nonly-one\n")
    with pytest.raises(InvalidArgumentError, match=r"bad.list:2: expected 'SOURCE TARGET'"):
        read_pairs(str(bad))
    empty = tmp_path / "empty.list"
    empty.write_text("# nothing\n\n")
    with pytest.raises(InvalidArgumentError, match="names no image"):
        read_pairs(str(empty))
    with pytest.raises(InvalidArgumentError, match="cannot read"):
        read_pairs(str(tmp_path / "missing.list"))
    result = _cli("convert", "--from-list", str(bad))
    assert result.returncode != 0 and "bad.list:2" in result.stderr and "Traceback" not in result.stderr


def test_erofs_on_demand_mount_of_a_reference(registry, docker_env, tmp_path):
    from test_ondemand import need_ondemand
    need_ondemand()
    target = f"docker://{registry.host}/rafs/ondemand:v1"
    converted = _cli("convert", "--source", f"docker://{registry.host}/rafs/src1:v1", "--target", target,
                     "--source-insecure", "--target-insecure", env=docker_env)
    assert converted.returncode == 0, converted.stderr
    mnt, cache = tmp_path / "mnt", tmp_path / "cache"
    mnt.mkdir()
    with rafs_mount(["--fs-driver", "erofs", "-B", target, "--insecure", "--fscache", str(cache)], mnt,
                    env=docker_env) as server:
        got, want = directory_view(str(mnt), xattrs=False), directory_view(registry.expected, xattrs=False)
        assert got == want
    assert PASSWORD not in server.stderr.read().decode()
    assert any(name.endswith(".blob.data") for name in os.listdir(cache)), "blobs filled into nydusd's layout"


def test_export_a_block_disk_from_a_reference(registry, docker_env, tmp_path, kernel_mount):
    target = f"docker://{registry.host}/rafs/export:v1"
    converted = _cli("convert", "--source", f"docker://{registry.host}/rafs/src1:v1", "--target", target,
                     "--source-insecure", "--target-insecure", env=docker_env)
    assert converted.returncode == 0, converted.stderr
    disk = tmp_path / "disk.img"
    exported = _cli("export", "--block", "--verity", "-B", target, "--insecure", "-O", str(disk), env=docker_env)
    assert exported.returncode == 0, exported.stderr
    assert "root_digest" in exported.stdout or "dm-verity options" in exported.stdout
    assert directory_view(str(kernel_mount(disk)), xattrs=False) == directory_view(registry.expected, xattrs=False)
    refused = _cli("export", "--block", "-B", target, "--insecure", "-D", str(tmp_path), "-O", str(disk),
                   env=docker_env)
    assert refused.returncode != 0 and "--localfs-dir" in refused.stderr and "Traceback" not in refused.stderr
