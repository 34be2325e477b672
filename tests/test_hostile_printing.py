"""Names and blob ids an image carries are printed escaped (issue 12): a name holding a newline cannot
forge a line of ``rafs check`` output, one holding ``ESC [`` cannot drive the terminal.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import rafs
from rafs.model import MAX_DEPTH
from rafs.text import printable

from conftest import ROOT
from test_hostile_depth import _chain

EVIL = "evil\x1b[31m\nFAULT: forged\r\u202eexe.txt"
EVIL_SHOWN = "evil\\x1b[31m\\nFAULT: forged\\r\\u202eexe.txt"


def _rafs(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rafs", *map(str, args)], capture_output=True, text=True,
                          errors="surrogateescape", timeout=120, env={"PYTHONPATH": str(ROOT)})


def _clean(done: subprocess.CompletedProcess) -> None:
    """Nothing the image carried reached the output raw."""
    for text in (done.stdout, done.stderr):
        assert "\x1b" not in text and "\r" not in text and "\u202e" not in text
        assert not any(line.startswith("FAULT: forged") for line in text.splitlines())


@pytest.mark.parametrize(("raw", "shown"), [
    ("plain name", "plain name"),
    (EVIL, EVIL_SHOWN),
    (b"caf\xc3\xa9 \xff\xfe", "café \\xff\\xfe"),              # UTF-8 kept, other bytes escaped
    ("tab\there\x7f\x9b", "tab\\there\\x7f\\x9b"),           # C0, DEL and C1 (CSI) controls
    ("back\\slash", "back\\slash"),
])
def test_printable(raw, shown):
    assert printable(raw) == shown
    assert printable(printable(raw)) == shown                  # escaping twice changes nothing


@pytest.fixture
def evil_image(tmp_path):
    source = tmp_path / "src"
    (source / EVIL).mkdir(parents=True)
    (source / EVIL / "file").write_bytes(b"data")
    (source / b"bad-utf8-\xff".decode("utf-8", "surrogateescape")).write_bytes(b"x")
    (tmp_path / "blobs").mkdir()
    boot = tmp_path / "image.boot"
    rafs.Builder(str(source), fs_version=5, compressor="none").write(bootstrap=str(boot),
                                                                     blob_dir=str(tmp_path / "blobs"))
    return boot, tmp_path / "blobs"


def test_check_verbose_escapes_names(evil_image):
    boot, blobs = evil_image
    done = _rafs("check", "-v", boot, "-D", blobs)
    assert done.returncode == 0, done.stderr
    _clean(done)
    assert f"/{EVIL_SHOWN}/file" in done.stdout
    assert "/bad-utf8-\\xff" in done.stdout


def test_inspect_escapes_a_forged_blob_id(evil_image):
    boot, _ = evil_image
    with rafs.open(boot) as image:
        real = image.blobs[0].blob_id.encode()
    forged = b"\x1b[2J\nFAULT: forged".ljust(len(real), b"x")
    data = boot.read_bytes()
    assert data.count(real) == 1
    boot.write_bytes(data.replace(real, forged))
    done = _rafs("inspect", boot)
    _clean(done)                   # shown escaped, or refused with an escaped message: never raw
    json_done = _rafs("inspect", "--json", boot)
    if json_done.returncode == 0:  # JSON stays exact JSON, the id intact
        assert json.loads(json_done.stdout)["blobs"][0]["blob_id"] == forged.decode()


def test_unpack_error_escapes_the_name(tmp_path):
    bootstrap = _chain(tmp_path, MAX_DEPTH + 1, EVIL.encode(), 5)
    done = _rafs("unpack", bootstrap, "--output", tmp_path / "out.tar")
    assert done.returncode == 1
    _clean(done)
    assert EVIL_SHOWN in done.stderr and len(done.stderr.splitlines()) == 1
