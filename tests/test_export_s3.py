"""``rafs export --block -C ENTRY`` with the blobs on S3 (a moto server on loopback): the disk equals the
one exported from a local blob directory, and the blob is read in ranges, never fetched whole."""

from __future__ import annotations

import json
import random

import rafs
from rafs.cli.main import main as cli_main

from s3server import moto_server, s3, s3_proxy  # noqa: F401  (pytest fixtures)


def test_export_from_s3_equals_the_local_export(s3, tmp_path, capsys):
    source = tmp_path / "src"
    (source / "lib").mkdir(parents=True)
    (source / "lib" / "big.so").write_bytes(random.Random(18).randbytes(3 * 1024 * 1024 + 5))
    (source / "hostname").write_bytes(b"rafs\n")
    out = tmp_path / "out"
    out.mkdir()
    result = rafs.Builder(str(source), fs_version=6, compressor="zstd").write(bootstrap=tmp_path / "boot",
                                                                               blob_dir=out)
    (blob_id,) = result.blob_ids
    s3.put(f"nydus-demo/blob/{blob_id}", (out / blob_id).read_bytes())
    entry = {"type": "bootstrap", "id": "disk", "domain_id": "block",
             "config_v2": {"version": 2, "id": "factory",
                           "backend": {"type": "s3", "s3": s3.backend_config()},
                           "cache": {"type": "dummycache"}, "metadata_path": str(tmp_path / "boot")}}
    (tmp_path / "entry.json").write_text(json.dumps(entry))
    s3.proxy.reset()
    assert cli_main(["export", "--block", "--verity", "-C", str(tmp_path / "entry.json"),
                     "-O", str(tmp_path / "s3.disk")]) == 0
    from_s3 = capsys.readouterr().out
    assert s3.proxy.requests_for(blob_id), "the blob was not read from S3"
    assert all(r.range for r in s3.proxy.requests_for(blob_id))
    assert cli_main(["export", "--block", "--verity", "-B", str(tmp_path / "boot"), "-D", str(out),
                     "-O", str(tmp_path / "local.disk")]) == 0
    assert capsys.readouterr().out == from_s3
    assert (tmp_path / "s3.disk").read_bytes() == (tmp_path / "local.disk").read_bytes()
    assert s3.backend_config()["access_key_secret"] not in from_s3
