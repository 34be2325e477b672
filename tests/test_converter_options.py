"""The converter's command lines with every optional flag buildPackArgs and Merge add
(nydus-snapshotter pkg/converter/tool/builder.go): ``--compressor``, ``--aligned-chunk``,
``--chunk-size``, ``--batch-size`` and ``--encrypt`` on create; ``--parent-bootstrap`` on merge. The
encrypted blob is then unpacked as the converter does in stream mode, through its unix-socket proxy."""

from __future__ import annotations

import hashlib
import io
import json

import pytest

import rafs
from test_cli_dropin import (LOWER, PYTHON_RAFS, UPPER, layer_tar, pack, run, shim, tar_members, toc_digest,
                             unpack_entry)
from test_converter_stream import ContentStoreProxy, stream_unpack

EVERY_OPTION = ["--compressor", "zstd", "--aligned-chunk", "--chunk-size", "0x100000", "--encrypt"]


@pytest.fixture(params=["nydus-image", "python -m rafs"])
def builder(request, tmp_path) -> list[str]:
    if request.param == "nydus-image":
        return [shim(tmp_path / "bin", "nydus-image")]
    return PYTHON_RAFS


def test_pack_with_every_option_then_stream_unpack(builder, tmp_path):
    """Every option but ``--batch-size``: a batch blob's chunk table lies in its blob.meta entry, which the
    converter's unpack does not hand over (it serves or extracts image.blob only); see the next test."""
    blob = pack(builder, tmp_path / "pack", layer_tar(LOWER), "6", patterns="/bin\n", extra=EVERY_OPTION)
    with rafs.open(io.BytesIO(blob)) as image:
        (entry,) = image.blobs
        assert entry.compressor == "zstd" and entry.cipher != "none" and image.chunk_size == 0x100000
        assert image.read("/bin/tool") == LOWER["bin/tool"]
    server = ContentStoreProxy(tmp_path / "cs.sock", unpack_entry(blob, "image.blob"))
    try:
        _, data = stream_unpack(builder, tmp_path / "unpack", blob, tmp_path / "cs.sock")
    finally:
        server.close()
    expected = tar_members(layer_tar(LOWER))
    assert {k: v for k, v in tar_members(data).items() if k in expected} == expected


def test_pack_with_a_batch_size(builder, tmp_path):
    blob = pack(builder, tmp_path / "pack", layer_tar(UPPER), "6", extra=EVERY_OPTION + ["--batch-size", "0x100000"])
    with rafs.open(io.BytesIO(blob)) as image:
        assert image.read("/usr/lib/new.so") == UPPER["usr/lib/new.so"]
        assert image.read("/etc/hostname") == UPPER["etc/hostname"]


def test_merge_with_a_parent_bootstrap(builder, tmp_path):
    """Merge's ``--parent-bootstrap``: the layers are laid over the parent image's tree."""
    blobs = [pack(PYTHON_RAFS, tmp_path / f"pack{i}", layer_tar(layer), "6") for i, layer in enumerate((LOWER, UPPER))]
    boots = []
    for i, blob in enumerate(blobs):
        boots.append(tmp_path / f"layer{i}.boot")
        boots[-1].write_bytes(unpack_entry(blob, "image.boot"))
    digests = [hashlib.sha256(b).hexdigest() for b in blobs]
    run(PYTHON_RAFS + ["merge", "--log-level", "warn", "-B", str(tmp_path / "parent.boot"), str(boots[0]),
                       "--blob-digests", digests[0]])
    output = tmp_path / "out.json"
    run(builder + ["merge", "--log-level", "warn", "--prefetch-policy", "fs", "--output-json", str(output),
                   "--bootstrap", str(tmp_path / "merged"), "--parent-bootstrap", str(tmp_path / "parent.boot"),
                   str(boots[1]), "--blob-digests", digests[1], "--blob-toc-digests", toc_digest(blobs[1]),
                   "--blob-sizes", str(len(blobs[1]))], stdin=b"/")
    assert json.loads(output.read_text())["blobs"] == digests
    store = tmp_path / "store"
    store.mkdir()
    for digest, blob in zip(digests, blobs):
        (store / digest).write_bytes(blob)
    with rafs.open(str(tmp_path / "merged"), blob_dir=str(store)) as image:
        assert image.read("/bin/tool") == LOWER["bin/tool"]
        assert image.read("/usr/lib/new.so") == UPPER["usr/lib/new.so"]
        assert sorted(image.listdir("/usr/lib")) == ["new.so"]
