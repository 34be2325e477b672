"""Bars of the commands test_progress.py checks only through the library's callbacks: ``rafs convert``
and ``rafs build --backend-push`` draw one on a terminal and nothing through a pipe (issue 16)."""

from __future__ import annotations

import json
import os

from s3server import moto_server, s3, s3_proxy  # noqa: F401  (pytest fixtures)
from test_progress import run_on_pty, run_piped


def test_convert_draws_a_bar_on_a_terminal_only(tmp_path):
    from oci_layers import make_layers, oci_image, oci_layout
    layout = str(tmp_path / "oci")
    oci_layout(layout, [oci_image(layout, make_layers(str(tmp_path / "layers"), compress="gzip"))])
    code, out = run_on_pty(["convert", "--source", layout, "--target", str(tmp_path / "nydus1")])
    assert code == 0, out
    assert "converting" in out and "100%|" in out, out
    done = run_piped(["convert", "--source", layout, "--target", str(tmp_path / "nydus2")])
    assert done.returncode == 0, done.stderr
    assert b"converting" not in done.stderr and b"%|" not in done.stderr and b"\r" not in done.stderr


def test_build_push_draws_a_bar_on_a_terminal_only(s3, tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    (source / "big").write_bytes(os.urandom(1 << 20))
    config = json.dumps(s3.backend_config())
    argv = ["build", "--name", "img", "--source-dir", str(source), "--backend-push", "--backend-type", "s3",
            "--backend-config", config]
    code, out = run_on_pty(argv + ["--output-dir", str(tmp_path / "o1")])
    assert code == 0, out
    assert "pushing" in out and "100%|" in out, out
    done = run_piped(argv + ["--output-dir", str(tmp_path / "o2")])
    assert done.returncode == 0, done.stderr
    assert b"pushing" not in done.stderr and b"%|" not in done.stderr and b"\r" not in done.stderr
