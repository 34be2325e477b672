"""Start-up of ``import rafs`` and the ``rafs`` command: only what a command needs is imported."""

from __future__ import annotations

import argparse
import importlib
import json
import subprocess
import sys

import pytest

from rafs.cli.main import COMMAND_MODULES, COMMANDS, command_of


def imported_after(code: str) -> set[str]:
    """The modules a fresh interpreter holds after running ``code``."""
    out = subprocess.run([sys.executable, "-c", code + "\nimport json, sys; print(json.dumps(sorted(sys.modules)))"],
                         capture_output=True, text=True, check=True).stdout
    return set(json.loads(out.splitlines()[-1]))


def test_import_rafs_loads_neither_readers_nor_fsspec():
    modules = imported_after("import rafs")
    assert not {"fsspec", "asyncio", "rafs.image", "rafs.builder.builder", "zstandard"} & modules


def test_a_command_imports_only_its_module(tmp_path):
    modules = imported_after("from rafs.cli.main import build_parser\nbuild_parser('create')")
    assert "rafs.cli.create" in modules
    assert not {"rafs.cli.inspect", "rafs.cli.convert", "rafs.cli.mount", "rafs.oci", "fsspec",
                "rafs.builder.tar", "rafs.image"} & modules
    # and a build from the command line still works without them
    src = tmp_path / "src"
    src.mkdir()
    (src / "file").write_bytes(b"data")
    code = (f"from rafs.cli.main import main\nassert main(['create', {str(src)!r}, '-B', {str(tmp_path / 'boot')!r}, "
            f"'-D', {str(tmp_path)!r}]) == 0")
    assert "fsspec" not in imported_after(code)


def test_command_table_matches_what_modules_register():
    registered: dict[str, str] = {}
    available = set()
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"rafs.cli.{name}")
        except ModuleNotFoundError:
            continue
        available.add(name)
        sub = argparse.ArgumentParser().add_subparsers()
        module.register(sub)
        registered.update({command: name for command in sub.choices})
    assert registered == {command: module for command, module in COMMANDS.items() if module in available}


@pytest.mark.parametrize("argv,command", [
    (["create", "src"], "create"),
    (["-l", "debug", "check", "boot"], "check"),
    (["--log-level=warn", "pack", "--name", "x"], "pack"),
    (["--help"], None),
    ([], None),
    (["no-such-command"], None),
    (["--log", "debug", "inspect"], None),          # an abbreviation: every module, argparse decides
])
def test_command_of(argv, command):
    assert command_of(argv) == command


def test_help_lists_every_command():
    out = subprocess.run([sys.executable, "-m", "rafs", "--help"], capture_output=True, text=True, check=True).stdout
    for command in COMMANDS:
        if command != "pack":
            assert f"    {command}" in out, command


def test_codec_libraries_load_on_first_use():
    # crc32c alone costs ~20 ms at import (importlib.metadata); `rafs create --help` touches no chunk data.
    codec_libraries = {"crc32c", "blake3", "lz4", "lz4.block", "zstandard"}
    assert not codec_libraries & imported_after("from rafs.cli.main import build_parser\nbuild_parser('create')")
    modules = imported_after("from rafs.blob import codecs\nassert codecs.compress('zstd', bytes(100))")
    assert "zstandard" in modules and not {"crc32c", "blake3", "lz4"} & modules
    modules = imported_after("from rafs.blob import codecs\ncodecs.chunk_processor('none', 'blake3')(b'x')")
    assert {"crc32c", "blake3"} <= modules and not {"zstandard", "lz4"} & modules
