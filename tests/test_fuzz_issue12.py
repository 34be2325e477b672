"""The mutation fuzzer and the atheris targets over issue 12's inputs: tar headers, configs, OCI layouts.

Structure-aware tar header mutants (each header's size field and type flag, checksum kept right) of
the reference's tar fixtures are built in a capped child; hostile configuration documents go through
``parse_config``, the blob locator and nydusify's backend config; ``fuzz/fuzz_config.py`` takes its
seeds and runs under atheris.
"""

from __future__ import annotations

import collections
import importlib
import os
import subprocess
import sys

import pytest

from rafs.errors import RafsError
from rafs.io.config import locator_from_config
from rafs.io.push import load_backend_config
from rafs.testing import CONFIG_SEEDS, bit_flips, config_mutants, tar_header_mutants, truncations

from capped_layers import build_layers, escaped
from conftest import FIXTURES, ROOT
from test_fuzz_mutants import DEEP

FUZZ = ROOT / "fuzz"
TAR_FIXTURES = ["tar/all-entry-type.tar"] + (["tar/all-entry-type-macos.tar"] if DEEP else [])


@pytest.mark.parametrize("name", TAR_FIXTURES)
def test_tar_header_mutants_build_or_fail_cleanly(tmp_path, name):
    layer = (FIXTURES / name).read_bytes()
    results = build_layers(tmp_path, list(tar_header_mutants(layer)), seconds=5.0)
    assert not escaped(results)
    assert collections.Counter(results.values())["ok"] > 0         # the mutants are not all refused at once


def _config_outcome(document: bytes) -> str:
    try:
        repr(locator_from_config(document))
        outcome = "ok"
    except RafsError as exc:
        outcome = type(exc).__name__
    try:
        load_backend_config(config=document.decode("utf-8", "surrogateescape"))
    except RafsError:
        pass
    return outcome


def test_config_seeds_parse():
    for name in ("v1.json", "v2.json", "v2.toml"):
        assert _config_outcome(CONFIG_SEEDS[name]) == "ok", name
    assert load_backend_config(config=CONFIG_SEEDS["backend.json"].decode())["bucket_name"] == "b"


def test_config_mutants_are_refused_cleanly():
    escapes = {}
    for description, document in config_mutants():
        try:
            _config_outcome(document)
        except Exception as exc:  # noqa: BLE001 - what escapes is what the test reports
            escapes.setdefault(type(exc).__name__, description)
    assert not escapes, escapes


@pytest.fixture(scope="module")
def config_target():
    sys.path.insert(0, str(FUZZ))
    try:
        yield importlib.import_module("fuzz_config")
    finally:
        sys.path.remove(str(FUZZ))


def test_config_target_takes_its_seeds_and_their_mutants(config_target):
    for data in CONFIG_SEEDS.values():
        config_target.TestOneInput(data)
        for _, mutant in list(truncations(data, 5)) + list(bit_flips(data, 20)):
            config_target.TestOneInput(mutant)


def test_atheris_surveys_the_config_target(tmp_path):
    """A short libFuzzer run in survey mode (every new kind of crash saved, the run goes on)."""
    pytest.importorskip("atheris")
    crashes = tmp_path / "crashes"
    result = subprocess.run([sys.executable, str(FUZZ / "fuzz_config.py"), str(tmp_path / "corpus"), "-runs=200"],
                            capture_output=True, text=True, timeout=300,
                            env={**os.environ, "RAFS_FUZZ_CRASH_DIR": str(crashes)})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Done 200 runs" in result.stderr
    assert set(CONFIG_SEEDS) <= set(os.listdir(tmp_path / "corpus"))        # seeded
    for crash in crashes.iterdir() if crashes.is_dir() else ():
        assert crash.name.startswith("crash-")


# -- OCI image layouts -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def layouts(tmp_path_factory):
    """A one-layer OCI layout (a few small files) and its Nydus conversion."""
    import io
    import tarfile

    from rafs.oci import convert
    from oci_layers import oci_image, oci_layout
    base = tmp_path_factory.mktemp("oci-mutants")
    layer = base / "layer.tar"
    with tarfile.open(layer, "w") as tar:
        for name, data in (("etc/hosts", b"127.0.0.1 localhost\n"), ("bin/sh", b"#!" * 3000)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    source = str(base / "src")
    oci_layout(source, [oci_image(source, [str(layer)])])
    target = str(base / "nydus")
    convert(source, target)
    return source, target


def _oci_escapes(layout, workdir, run) -> dict:
    """What escapes ``run(path)`` for a fixed sample of the layout's mutations (all of them when deep)."""
    from rafs.testing import mutated_layout, oci_layout_mutations
    from test_fuzz_mutants import pick
    mutations = oci_layout_mutations(layout)
    assert len(mutations) > 50
    before = _contents(layout)
    escapes = {}
    for number, mutation in enumerate(pick(mutations, 60, seed=12)):
        path = mutated_layout(layout, mutation, workdir / "mutant")
        try:
            run(path, workdir / f"out{number}")
        except RafsError:
            pass
        except Exception as exc:  # noqa: BLE001 - what escapes is what the test reports
            escapes.setdefault(f"{type(exc).__name__}: {str(exc)[:80]}", mutation.description)
    assert _contents(layout) == before          # the mutants' hard links never wrote into the original
    return escapes


def _contents(top) -> dict:
    return {os.path.join(d, n): open(os.path.join(d, n), "rb").read() for d, _, names in os.walk(top) for n in names}


def test_mutated_oci_layouts_convert_or_fail_cleanly(layouts, tmp_path):
    from rafs.oci import convert
    escapes = _oci_escapes(layouts[0], tmp_path, convert)
    assert not escapes, escapes


def test_mutated_nydus_layouts_check_or_fail_cleanly(layouts, tmp_path):
    from rafs.oci.check import check_image
    escapes = _oci_escapes(layouts[1], tmp_path, lambda path, _: check_image(path))
    assert not escapes, escapes
