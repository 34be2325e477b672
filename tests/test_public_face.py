"""The public face (issue 13): what ``rafs`` exports, the public modules, and the CLI using only those.

The ``rafs`` command is the first user of the library: it imports ``rafs`` and the modules
``rafs.PUBLIC_MODULES`` names, nothing internal, so everything it does a library caller can do too.
"""

from __future__ import annotations

import ast
import importlib
import pathlib

import pytest

import rafs
from rafs import options

CLI = pathlib.Path(rafs.__file__).parent / "cli"


def _imported_modules(path: pathlib.Path) -> list[tuple[int, str, list[str]]]:
    """(line, absolute module, names imported from it) of every import in the CLI module ``path``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                base = "rafs.cli".split(".")[:len("rafs.cli".split(".")) - node.level + 1]
                module = ".".join(base + ([module] if module else []))
            found.append((node.lineno, module, [alias.name for alias in node.names]))
    return found


def test_cli_imports_only_the_public_face():
    allowed = set(rafs.PUBLIC_MODULES)
    wrong = []
    for path in sorted(CLI.glob("*.py")):
        for line, module, names in _imported_modules(path):
            if module.split(".")[0] != "rafs" or module.startswith("rafs.cli"):
                continue
            if module == "rafs":
                wrong += [f"{path.name}:{line}: rafs.{n}" for n in names
                          if n not in rafs.__all__ and f"rafs.{n}" not in allowed and not hasattr(rafs, n)]
            elif module not in allowed:
                wrong.append(f"{path.name}:{line}: {module}")
    assert not wrong, "the CLI reaches past the public face:\n" + "\n".join(wrong)


def test_the_import_checker_sees_relative_and_nested_imports(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("from ..build import builder\ndef f():\n    from rafs.io.push import Pusher\n")
    assert [m for _, m, _ in _imported_modules(probe)] == ["rafs.build", "rafs.io.push"]


@pytest.mark.parametrize("name", rafs.__all__)
def test_every_exported_name_resolves(name):
    assert getattr(rafs, name) is not None


@pytest.mark.parametrize("module", rafs.PUBLIC_MODULES)
def test_every_public_module_imports_and_is_documented(module):
    importlib.import_module(module)
    assert module in rafs.__doc__
    architecture = pathlib.Path(rafs.__file__).parent.parent / "docs" / "architecture.md"
    assert f"`{module}`" in architecture.read_text()


def test_path_errors_are_exported_without_shadowing_builtins():
    assert issubclass(rafs.FileNotFoundError, FileNotFoundError) and rafs.PathError is rafs.errors.PathError
    assert rafs.BackendError is rafs.errors.BackendError
    assert not {"FileNotFoundError", "NotADirectoryError", "IsADirectoryError"} & set(rafs.__all__)


def test_builder_loaders_cover_the_path_source_types():
    from rafs.builder import builder
    assert tuple(builder.SOURCE_TYPES)[:len(options.SOURCE_TYPES)] == options.SOURCE_TYPES
    assert set(options.TAR_SOURCE_TYPES) <= set(options.SOURCE_TYPES)


def test_cli_choices_come_from_the_options():
    """Every ``choices=`` the library's checks also know is the tuple of rafs.options."""
    from rafs.cli.main import build_parser
    offered = {}
    for command, parser in build_parser()._subparsers._group_actions[0].choices.items():
        for action in parser._actions:
            if action.choices and action.option_strings:
                offered[(command, action.option_strings[-1])] = tuple(action.choices)
    assert offered[("create", "--source-type")] == options.SOURCE_TYPES
    assert offered[("create", "--compressor")] == offered[("convert", "--compressor")] == options.COMPRESSORS
    assert offered[("build", "--fs-version")] == tuple(str(v) for v in options.FS_VERSIONS)
    assert offered[("create", "--whiteout-spec")] == options.WHITEOUT_SPECS
    assert offered[("merge", "--prefetch-policy")] == options.PREFETCH_POLICIES
    assert offered[("mount", "--fs-driver")] == options.FS_DRIVERS
    assert offered[("build", "--backend-type")] == options.PUSH_BACKEND_TYPES
    assert offered[("stat", "--digester")] == offered[("create", "--digester")] == options.DIGESTERS


def test_image_write_tar_to_a_path_and_a_file(tmp_path):
    import io
    import tarfile
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "a").write_bytes(b"hello")
    rafs.Builder(tree).write(bootstrap=tmp_path / "boot", blob_dir=tmp_path)
    with rafs.open(tmp_path / "boot", blob_dir=tmp_path) as image:
        count = image.write_tar(tmp_path / "out.tar")
        buffer = io.BytesIO()
        assert image.write_tar(buffer) == count == 1
        assert image.describe(with_stats=False)["blobs"] == image.blob_summaries()
        assert image.tree_stats()["files"] == 1
    assert (tmp_path / "out.tar").read_bytes() == buffer.getvalue()
    with tarfile.open(tmp_path / "out.tar") as tar:
        assert tar.extractfile("a").read() == b"hello"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".rafs-tmp")]


# -- library errors name parameters, the CLI names flags -------------------------------------------------

def test_parameter_errors_name_parameters_and_the_cli_words_them_as_flags():
    from rafs.cli.flags import message, naming
    exc = rafs.ParameterError("{output} is required unless {localfs_dir} is given ({value!r})", value="a{b}")
    assert str(exc) == "output is required unless localfs_dir is given ('a{b}')"
    assert isinstance(exc, rafs.InvalidArgumentError)
    assert message(exc) == "--output is required unless --localfs-dir is given ('a{b}')"
    with pytest.raises(rafs.InvalidArgumentError) as raised:
        with naming(path="--apisock"):
            raise rafs.ParameterError("{path} {value}: exists", value="/run/x")
    assert str(raised.value) == "--apisock /run/x: exists"


def test_cli_mount_says_apisock(tmp_path, capsys):
    from rafs.cli.main import main
    tree = tmp_path / "tree"
    tree.mkdir()
    rafs.Builder(tree).write(bootstrap=tmp_path / "boot", blob_dir=tmp_path)
    (tmp_path / "mnt").mkdir()
    plain = tmp_path / "plain"
    plain.write_text("")
    argv = ["mount", "-B", str(tmp_path / "boot"), "-D", str(tmp_path), "-M", str(tmp_path / "mnt"),
            "--apisock", str(plain)]
    assert main(argv) == 2
    assert f"rafs mount: error: --apisock {plain}: exists and is not a socket" in capsys.readouterr().err


def test_export_default_output_names_parameters():
    from rafs.export import default_output
    with pytest.raises(rafs.ParameterError, match="^output is required unless localfs_dir is given$"):
        default_output("boot", None)
    assert default_output("/x/boot", "/d") == "/d/boot.disk"


def test_export_default_output_in_the_cli_words():
    from rafs.cli.flags import message
    from rafs.export import default_output
    with pytest.raises(rafs.ParameterError) as raised:
        default_output("boot", None)
    assert message(raised.value) == "--output is required unless --localfs-dir is given"


def test_api_socket_errors_name_the_parameter_in_the_library_and_the_flag_in_the_cli(tmp_path):
    from rafs.serve.api import ApiServer, Daemon
    plain = tmp_path / "plain"
    plain.write_text("")
    with pytest.raises(rafs.ParameterError, match=f"^path {plain}: exists and is not a socket$"):
        ApiServer(plain, Daemon())


def test_builder_errors_name_parameters_and_create_says_flags(tmp_path, capsys):
    from rafs.cli.main import main
    tree = tmp_path / "tree"
    tree.mkdir()
    with pytest.raises(rafs.ParameterError, match="^blob_layout mapped needs fs_version 6 and compressor none"):
        rafs.Builder(tree, blob_layout="mapped", compressor="zstd")
    with pytest.raises(rafs.ParameterError, match="^both blob and blob_dir are missing"):
        rafs.Builder(tree).write(bootstrap=tmp_path / "boot")
    assert main(["create", "--blob-layout", "mapped", "--compressor", "zstd", "-B", str(tmp_path / "b"),
                 "-b", str(tmp_path / "blob"), str(tree)]) == 2
    assert "error: --blob-layout mapped needs --fs-version 6 and --compressor none" in capsys.readouterr().err
