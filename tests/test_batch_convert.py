"""``rafs convert --batch-size``: every converted layer packs its small files into batch chunks (what
nydusify passes on to nydus-image create), and the image reads back as the source."""

from __future__ import annotations

import json
import os

import pytest

import rafs
from rafs.cli.main import main as cli
from rafs.model import BlobFeatures
from rafs.oci.check import check_image

from oci_layers import apply_layers, directory_view, image_view, make_layers, oci_image, oci_layout
from test_oci import bootstrap_of, document


@pytest.fixture(scope="module")
def layout(tmp_path_factory):
    base = tmp_path_factory.mktemp("oci-batch")
    plain = make_layers(str(base / "plain"))
    expected = apply_layers(plain, str(base / "expected"))
    path = str(base / "layout")
    desc = oci_image(path, plain)
    oci_layout(path, [desc])
    return path, expected


def test_convert_with_batch_size(layout, tmp_path):
    source, expected = layout
    target = str(tmp_path / "nydus")
    assert cli(["convert", "--source", source, "--target", target, "--batch-size", "0x10000"]) == 0
    manifest = document(target, json.load(open(os.path.join(target, "index.json")))["manifests"][0])
    boot = bootstrap_of(target, manifest, tmp_path / "boot")
    with rafs.open(boot, blob_dir=os.path.join(target, "blobs", "sha256"), validate=True) as image:
        assert image.blobs and all(b.has(BlobFeatures.BATCH) for b in image.blobs)
        got, want = image_view(image), directory_view(expected)
        assert sorted(got) == sorted(want)
        for path in want:
            assert got[path] == want[path], path
        assert list(image.check(verify_data=True)) == []
    report = check_image(target, source=source)
    assert report.ok, report.problems


def test_convert_refuses_a_bad_batch_size(layout, tmp_path, capsys):
    source, _ = layout
    assert cli(["convert", "--source", source, "--target", str(tmp_path / "a"), "--batch-size", "0x10000",
                "--fs-version", "5"]) != 0
    assert "`--batch-size` with non-zero value conflicts with `--fs-version 5`" in capsys.readouterr().err
    assert cli(["convert", "--source", source, "--target", str(tmp_path / "b"), "--batch-size", "0x200000"]) != 0
    assert "batch size 0x200000 is bigger than chunk size 0x100000" in capsys.readouterr().err
