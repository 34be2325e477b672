"""``--help`` offers only what works (issue 16): every choice any subcommand's help lists is run.

The help text of every command is parsed for options with a ``{a,b,...}`` list of choices; each choice
is then used in a real command line that must succeed. A choice list the table below does not know
(a new option, or a new choice in an old one) fails the test until it is exercised here or named with
the test that exercises it elsewhere.
"""

from __future__ import annotations

import io
import os
import re
import tarfile

import pytest

import rafs
from rafs.cli.main import build_parser
from rafs.cli.main import main as rafs_main

# Choices run by other tests against real servers or mounts (test module: what it runs)
COVERED_ELSEWHERE = {
    ("unpack", "--backend-type"): {"s3": "test_cli_dropin.py::test_unpack_through_s3",
                                   "http-proxy": "test_cli_dropin.py::test_unpack_through_a_backend"},
    ("build", "--backend-type"): {"s3": "test_s3.py::pushed_guide_image"},
    ("compact", "--backend-type"): {b: "test_compact.py::test_compact_reads_blobs_through_a_backend"
                                    for b in ("s3", "http-proxy")},
    ("optimize", "--backend-type"): {b: "test_optimize.py::test_optimize_reads_blobs_through_a_backend"
                                     for b in ("s3", "http-proxy")},
    ("mount", "--fs-driver"): {"fuse": "test_fuse.py", "erofs": "test_ondemand.py"},
}


def offered_choices() -> dict[tuple[str, str], list[str]]:
    """(command, first long option) -> the choices its ``--help`` lists, for every command."""
    found: dict[tuple[str, str], list[str]] = {}
    parsers = {}
    for command, parser in build_parser()._subparsers._group_actions[0].choices.items():
        parsers.setdefault(id(parser), (command, parser))       # an alias (pack) is its command (build)
    for command, parser in parsers.values():
        text = parser.format_help()
        options = text.split("options:", 1)[1]
        for line in options.splitlines():
            match = re.match(r"\s+(-[^ ]+(?: \{[^}]*\})?(?:, -[^ ]+(?: \{[^}]*\})?)*)", line)
            if not match or "{" not in match.group(1):
                continue
            longs = re.findall(r"(--[\w-]+) \{([^}]*)\}", match.group(1))
            if longs:
                option, choices = longs[0]
                found[(command, option)] = choices.split(",")
    return found


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """A small tree, the same as tar and tar.gz, and an image built from it."""
    base = tmp_path_factory.mktemp("choices")
    tree = base / "tree"
    (tree / "dir").mkdir(parents=True)
    (tree / "dir" / "a").write_bytes(b"a" * 5000)
    (tree / "b").write_bytes(os.urandom(9000))
    (tree / "dir" / ".wh.gone").write_bytes(b"")
    for name, mode in (("layer.tar", "w"), ("layer.tar.gz", "w:gz")):
        with tarfile.open(base / name, mode) as tar:
            tar.add(tree, arcname=".")
    (base / "blobs").mkdir()
    rafs.Builder(tree).write(bootstrap=base / "boot", blob_dir=base / "blobs")
    return base


def _create(option: str, choice: str, base, tmp) -> list[str]:
    source = str(base / "tree")
    extra = [option, choice]
    if option == "--type":
        source = {"tar-rafs": base / "layer.tar", "targz-rafs": base / "layer.tar.gz",
                  "estargz-rafs": base / "layer.tar.gz", "targz-ref": base / "layer.tar.gz",
                  "estargz-ref": base / "layer.tar.gz", "tar-ref": base / "layer.tar",
                  "tar-tarfs": base / "layer.tar"}.get(choice, source)
        if choice == "tar-tarfs":           # the tar is the blob: --blob is refused, as the reference does
            return ["create", *extra, "-B", str(tmp / "boot"), "-D", str(tmp), str(source)]
    if option == "--blob-layout" and choice == "mapped":
        extra += ["--compressor", "none"]
    return ["create", *extra, "-B", str(tmp / "boot"), "-b", str(tmp / "blob"), str(source)]


def _merge(option: str, choice: str, base, tmp) -> list[str]:
    return ["merge", option, choice, "-B", str(tmp / "merged"), str(base / "boot")]


def _build(option: str, choice: str, base, tmp) -> list[str]:
    return ["build", option, choice, "--name", "img", "--source-dir", str(base / "tree"), "--output-dir", str(tmp)]


def _inspect(option: str, choice: str, base, tmp) -> list[str]:
    return ["inspect", str(base / "boot"), option, choice]


def _convert(option: str, choice: str, base, tmp) -> list[str]:
    from oci_layers import oci_image, oci_layout
    layout = tmp / "oci"
    if not layout.exists():
        oci_layout(str(layout), [oci_image(str(layout), [str(base / "layer.tar.gz")])])
    return ["convert", "--source", str(layout), "--target", str(tmp / "nydus"), option, choice]


def _export(option: str, choice: str, base, tmp) -> list[str]:
    return ["export", "--block", "-B", str(base / "boot"), "-D", str(base / "blobs"), "-O", str(tmp / "disk"),
            "--verity", option, choice]


def _stat(option: str, choice: str, base, tmp) -> list[str]:
    return ["stat", "-B", str(base / "boot"), option, choice, "-J", str(tmp / "stat.json")]


RUNNERS = {"create": _create, "merge": _merge, "build": _build, "inspect": _inspect, "convert": _convert,
           "export": _export, "stat": _stat}


def test_help_is_parsed():
    """The parser of the help text finds the lists it must find (it is not silently finding nothing)."""
    offered = offered_choices()
    assert offered[("create", "--compressor")] == ["none", "lz4_block", "zstd"]
    assert offered[("unpack", "--backend-type")] == ["s3", "http-proxy"]
    assert offered[("check", "--log-level")] == ["trace", "debug", "info", "warn", "error"]
    assert ("create", "--type") in offered      # inspect --request is free-form: tests/test_inspect_requests.py


@pytest.mark.parametrize("key", sorted(k for k in offered_choices() if k[1] != "--log-level"), ids="-".join)
def test_every_offered_choice_works(key, sources, tmp_path, monkeypatch):
    command, option = key
    choices = offered_choices()[key]
    elsewhere = COVERED_ELSEWHERE.get(key, {})
    runner = RUNNERS.get(command)
    untested = [c for c in choices if c not in elsewhere and runner is None]
    assert not untested, f"rafs {command} --help offers {option} {untested}: exercise them in this test"
    for choice in choices:
        if choice in elsewhere:
            continue
        work = tmp_path / re.sub(r"\W", "_", choice)
        work.mkdir()
        monkeypatch.setattr("sys.stdin", io.StringIO("/dir\n"))       # prefetch patterns, when asked for
        argv = runner(option, choice, sources, work)
        assert rafs_main(argv) == 0, f"offered but failing: rafs {' '.join(argv)}"


@pytest.mark.parametrize("command", sorted({c for c, _ in offered_choices()}))
def test_every_log_level_is_accepted(command, sources, capsys):
    """The global ``--log-level`` choices, after every command (parsed), and each one used in a run."""
    offered = offered_choices()[(command, "--log-level")]
    assert offered == ["trace", "debug", "info", "warn", "error"]
    parser = build_parser(command)
    for level in offered:
        with pytest.raises(SystemExit) as exc:
            parser.parse_args([command, "--log-level", level, "--help"])
        assert exc.value.code == 0
    if command == "inspect":
        for level in offered:
            assert rafs_main(["inspect", str(sources / "boot"), "--log-level", level]) == 0


def test_library_only_source_types_stay_out_of_create_help():
    """The builder's table holds an in-memory source type (``Builder.from_tree``, which rafs.testing
    builds with); ``rafs create --type`` still offers only the types that read a path (it once offered
    an in-memory one too)."""
    from rafs.builder import builder
    assert builder.TREE_SOURCE_TYPE in builder.SOURCE_TYPES
    assert offered_choices()[("create", "--type")] == ["dir-rafs", "directory", "tar-rafs", "targz-rafs",
                                                        "estargz-rafs", "targz-ref", "tar-ref", "estargz-ref",
                                                        "tar-tarfs"]
