"""Byte-identity check: every output rafs writes, compared with golden sha256 digests.

A refactoring must not change one byte of what rafs writes. This script builds a fixed matrix of
images (RAFS v5 and v6, every compressor rafs writes, both digesters and the build options that change
the layout) from deterministic sources, then compares the sha256 of every file each build wrote
(bootstraps, data blobs, blob meta, cache files, merged bootstraps, unpacked tars, exported disks)
with ``tests/data/byte_identity.json``:

* the tests' source tree (``tests/helpers.py`` ``make_source_tree``: every entry type, odd modes,
  owners, xattrs, nanosecond mtimes; needs root for devices, owners and trusted xattrs);
* the trees of the reference fixtures (the v5 and v6 fixtures extracted by rafs), and the fixtures' tars;
* the benchmark trees (``benchmarks/build.py``, ``mount.py``, ``walk.py`` and ``batch.py``'s
  ``generate_tree`` with their default sizes), their mtimes set to one fixed time since the
  generators leave them at the time of generation;
* layered builds on a parent bootstrap, a chunk dictionary, and a merge of two layers;
* ``rafs convert`` of an OCI image layout of two fixture tars.

Every build goes through the command line (``rafs create``, ``merge``, ``unpack``, ``export``, ``convert``) in this
process: its flags are the interface that must not change, whatever moves inside the library.
``tests/test_byte_identity.py`` checks the fast cases (the ones marked ``fast``) on every test run.

    python scripts/byte_identity.py [--fast] [-k SUBSTRING] [--update] [--workdir DIR]

``--update`` rewrites the goldens of the cases run: use it only when an output change is intended,
and say why in the commit.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import os
import pathlib
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from typing import Callable

REPO = pathlib.Path(__file__).resolve().parent.parent
GOLDENS = REPO / "tests" / "data" / "byte_identity.json"
FIXTURES = pathlib.Path(os.environ.get("RAFS_SHARED", REPO.parent / "shared")) / "fixtures" / "nydus"
FIXED_MTIME_NS = 1_700_000_000_123_456_789        # the benchmark trees' mtimes (their generators leave "now")
VERSIONS = (5, 6)
COMPRESSORS = ("none", "lz4_block", "zstd")       # every compressor `rafs create --compressor` accepts


# -- sources ----------------------------------------------------------------------------------------

def _fix_mtimes(top: str) -> None:
    """Every entry under ``top`` (and ``top``) to FIXED_MTIME_NS, deepest first."""
    for parent, dirs, files in os.walk(top, topdown=False):
        for name in dirs + files:
            os.utime(os.path.join(parent, name), ns=(FIXED_MTIME_NS, FIXED_MTIME_NS), follow_symlinks=False)
    os.utime(top, ns=(FIXED_MTIME_NS, FIXED_MTIME_NS))


def _benchmark(module: str, *args, makes_top: bool = False) -> Callable[[str], None]:
    def make(dest: str) -> None:
        sys.path.insert(0, str(REPO / "benchmarks"))
        try:
            generate = __import__(module).generate_tree
        finally:
            sys.path.remove(str(REPO / "benchmarks"))
        if not makes_top:
            os.makedirs(dest)
        generate(dest, *args)
        _fix_mtimes(dest)
    return make


def _source_tree(dest: str) -> None:
    sys.path.insert(0, str(REPO / "tests"))
    try:
        from helpers import make_source_tree
    finally:
        sys.path.remove(str(REPO / "tests"))
    os.makedirs(dest)
    make_source_tree(dest)


def _oci_layout(dest: str) -> None:
    """An OCI image layout of two fixture tars (a plain and a gzip layer), as the tests make one."""
    sys.path.insert(0, str(REPO / "tests"))
    try:
        from oci_layers import oci_image, oci_layout
    finally:
        sys.path.remove(str(REPO / "tests"))
    layers = [str(TARS["all-entry-type.tar"]), str(TARS["zran-two-streams.tar.gz"])]
    desc = oci_image(dest, layers)
    desc["annotations"] = {"org.opencontainers.image.ref.name": "v1"}
    oci_layout(dest, [desc])


def _extracted(bootstrap: pathlib.Path, blob_dir: pathlib.Path) -> Callable[[str], None]:
    def make(dest: str) -> None:
        import rafs
        with rafs.open(bootstrap, blob_dir=blob_dir) as image:
            image.extractall(dest, filter="fully_trusted")
    return make


V5_FIXTURE = (FIXTURES / "repeatable" / "sha256-nocompress-repeatable", FIXTURES / "repeatable" / "blobs")
V6_FIXTURE = (FIXTURES / "bootstrap" / "rafs-v6-2.2.boot", FIXTURES / "blobs")

#: name -> function making the directory tree at the path it is given
TREES: dict[str, Callable[[str], None]] = {
    "source": _source_tree,
    "fixture-v5": _extracted(*V5_FIXTURE),
    "fixture-v6": _extracted(*V6_FIXTURE),
    "bench-build": _benchmark("build", 3000, 60),
    "bench-mount": _benchmark("mount", 3000, 60),
    "bench-walk": _benchmark("walk", 100_000, makes_top=True),
    "bench-batch": _benchmark("batch", 3000),
    "oci-layout": _oci_layout,
}

#: name -> a source file that is used as it is
TARS = {
    "all-entry-type.tar": FIXTURES / "tar" / "all-entry-type.tar",
    "all-entry-type-macos.tar": FIXTURES / "tar" / "all-entry-type-macos.tar",
    "empty.tar": FIXTURES / "tar" / "empty.tar",
    "zran-two-streams.tar.gz": FIXTURES / "zran" / "zran-two-streams.tar.gz",
    "zran-zero-file.tar.gz": FIXTURES / "zran" / "zran-zero-file.tar.gz",
    "bgzip.tar.gz": FIXTURES / "zran" / "bgzip.tar.gz",
}


# -- cases ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Case:
    """One command's outputs. ``steps`` are rafs command lines run in an output directory (``{out}``,
    with empty ``blobs`` and ``cache`` directories), with ``{src:NAME}`` a tree or tar, ``{case:NAME}``
    another case's output directory and ``{layer:NAME}`` its bootstrap named by its blob id; the
    digests are those of every file under ``{out}`` after the steps."""

    name: str
    steps: tuple[tuple[str, ...], ...]
    fast: bool = False
    needs: tuple[str, ...] = field(default=())


def _create(source: str, *options: str) -> tuple[str, ...]:
    return ("create", "-q", "{src:%s}" % source, "-B", "{out}/bootstrap", "-D", "{out}/blobs", *options)


def cases() -> list[Case]:
    out: list[Case] = []

    def add(name, *steps, fast=False, needs=()):
        out.append(Case(name, tuple(steps), fast, tuple(needs)))

    for tree in TREES:
        if tree == "oci-layout":
            continue
        fast = tree in ("source", "fixture-v5", "fixture-v6")
        for version in VERSIONS:
            for compressor in COMPRESSORS:
                add(f"{tree}/v{version}/{compressor}",
                    _create(tree, "-v", str(version), "--compressor", compressor), fast=fast)
    for tar in ("all-entry-type.tar", "all-entry-type-macos.tar"):
        for version in VERSIONS:
            for compressor in COMPRESSORS:
                add(f"{tar}/v{version}/{compressor}",
                    _create(tar, "-t", "tar-rafs", "-v", str(version), "--compressor", compressor),
                    fast=tar == "all-entry-type.tar")
    for version in VERSIONS:
        add(f"empty.tar/v{version}", _create("empty.tar", "-t", "tar-rafs", "-v", str(version)), fast=True)
    for tar in ("zran-two-streams.tar.gz", "zran-zero-file.tar.gz", "bgzip.tar.gz"):
        for version in VERSIONS:
            add(f"{tar}/v{version}/targz-rafs", _create(tar, "-t", "targz-rafs", "-v", str(version)),
                fast=tar == "zran-two-streams.tar.gz")

    # the options that change the layout, on the source tree
    v6_only = {"blob-toc"}
    variants = {
        "sha256": ("--digester", "sha256"),
        "repeatable": ("--repeatable",),
        "blob-toc": ("--features", "blob-toc"),
        "chunk-0x10000": ("--chunk-size", "0x10000"),
        "chunk-0x1000": ("--chunk-size", "0x1000"),
        "prefetch-fs": ("--prefetch-patterns", "{src:prefetch.txt}"),
        "prefetch-blob": ("--prefetch-policy", "blob", "--prefetch-patterns", "{src:prefetch.txt}"),
        "whiteout-overlayfs": ("--whiteout-spec", "overlayfs"),
        "whiteout-none": ("--whiteout-spec", "none"),
        "blob-offset": ("--blob-offset", "4096"),
        "blob-id": ("--blob-id", "0123456789abcdef" * 4),
    }
    for version in VERSIONS:
        for variant, options in variants.items():
            if version == 5 and variant in v6_only:
                continue
            add(f"source/v{version}/{variant}", _create("source", "-v", str(version), *options), fast=True)
    for version in VERSIONS:
        add(f"source/v{version}/inline-meta", ("create", "-q", "{src:source}", "-D", "{out}/blobs",
                                               "-v", str(version), "--blob-inline-meta"), fast=True)
    add("source/v5/aligned-chunk", _create("source", "-v", "5", "--aligned-chunk"), fast=True)
    add("source/v6/mapped", _create("source", "-v", "6", "--compressor", "none", "--blob-layout", "mapped"),
        fast=True)
    for batch in ("0x1000", "0x10000"):
        add(f"source/v6/batch-{batch}", _create("source", "-v", "6", "--chunk-size", "0x100000",
                                                "--batch-size", batch), fast=True)
    add("bench-batch/v6/batch-0x10000", _create("bench-batch", "-v", "6", "--batch-size", "0x10000"))
    for version in VERSIONS:
        add(f"source/v{version}/blob-cache-dir",
            ("create", "-q", "{src:source}", "-B", "{out}/bootstrap", "-v", str(version),
             "--blob-cache-dir", "{out}/cache"), fast=True)

    # layers: a parent bootstrap, a chunk dictionary, a merge; the lower layer is the fixture tar
    for version in VERSIONS:
        lower = f"all-entry-type.tar/v{version}/zstd"
        add(f"source/v{version}/on-parent",
            _create("source", "-v", str(version), "--parent-bootstrap", "{case:%s}/bootstrap" % lower),
            fast=True, needs=(lower,))
        dictionary = f"source/v{version}/zstd"
        add(f"fixture-v{version}/v{version}/chunk-dict",
            _create(f"fixture-v{version}", "-v", str(version),
                    "--chunk-dict", "bootstrap={case:%s}/bootstrap" % dictionary),
            fast=True, needs=(dictionary,))
        upper = f"source/v{version}/zstd"
        add(f"merge/v{version}",
            ("merge", "-q", "{layer:%s}" % lower, "{layer:%s}" % upper, "-B", "{out}/bootstrap"),
            fast=True, needs=(lower, upper))

    # what rafs writes from an image: the tar of `unpack` and the disk of `export`
    for version, (bootstrap, blobs) in ((5, V5_FIXTURE), (6, V6_FIXTURE)):
        add(f"unpack/fixture-v{version}",
            ("unpack", "-q", str(bootstrap), "-D", str(blobs), "--output", "{out}/image.tar"), fast=True)
    for compressor in COMPRESSORS:
        case = f"source/v6/{compressor}"
        add(f"unpack/{case}", ("unpack", "-q", "{case:%s}/bootstrap" % case, "-D", "{case:%s}/blobs" % case,
                               "--output", "{out}/image.tar"), fast=True, needs=(case,))
        add(f"export/{case}", ("export", "-q", "--block", "-B", "{case:%s}/bootstrap" % case,
                               "-D", "{case:%s}/blobs" % case, "-O", "{out}/disk", "--verity"),
            fast=compressor == "zstd", needs=(case,))

    # OCI image conversion: a whole Nydus image layout (manifests, config, blobs, bootstrap layer)
    for name, options in {"v6": (), "v5": ("--fs-version", "5"), "lz4_block": ("--compressor", "lz4_block"),
                          "oci": ("--oci",)}.items():
        add(f"convert/{name}", ("convert", "-q", "--source", "{src:oci-layout}", "--target", "{out}/layout",
                                "--workers", "1", *options), fast=name == "v6")
    return out


# -- running ----------------------------------------------------------------------------------------

def _sha256(path: pathlib.Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def digests(top: pathlib.Path) -> dict[str, str]:
    """relative path -> sha256 of every regular file under ``top``."""
    return {str(path.relative_to(top)): _sha256(path)
            for path in sorted(top.rglob("*")) if path.is_file() and not path.is_symlink()}


class Runner:
    """Makes sources on first use and runs cases (and the cases they need) once each."""

    def __init__(self, workdir: pathlib.Path):
        self.workdir = workdir
        self.sources: dict[str, str] = {}
        self.done: dict[str, pathlib.Path] = {}
        self.by_name = {case.name: case for case in cases()}

    def source(self, name: str) -> str:
        if name not in self.sources:
            if name in TARS:
                self.sources[name] = str(TARS[name])
            elif name == "prefetch.txt":
                path = self.workdir / "prefetch.txt"
                path.write_text("/sub\n/multi\n/small.txt\n/many/f007\n/no/such/path\n")
                self.sources[name] = str(path)
            else:
                path = self.workdir / "trees" / name
                path.parent.mkdir(parents=True, exist_ok=True)
                TREES[name](str(path))
                self.sources[name] = str(path)
        return self.sources[name]

    def layer(self, case_name: str) -> str:
        """The case's bootstrap copied to a file named by its blob id (merge takes a layer's blob id
        from the file name)."""
        out = self.run(self.by_name[case_name])
        (blob_id,) = os.listdir(out / "blobs")
        layers = self.workdir / "layers" / case_name.replace("/", "_")
        layers.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(out / "bootstrap", layers / f"{blob_id}.boot")
        return str(layers / f"{blob_id}.boot")

    def expand(self, arg: str, out: pathlib.Path) -> str:
        arg = arg.replace("{out}", str(out))
        for kind, resolve in (("src", self.source), ("case", lambda n: str(self.run(self.by_name[n]))),
                              ("layer", self.layer)):
            marker = "{%s:" % kind
            while marker in arg:
                start = arg.index(marker)
                end = arg.index("}", start)
                arg = arg[:start] + resolve(arg[start + len(marker):end]) + arg[end + 1:]
        return arg

    def run(self, case: Case) -> pathlib.Path:
        if case.name in self.done:
            return self.done[case.name]
        for needed in case.needs:
            self.run(self.by_name[needed])
        out = self.workdir / "out" / case.name.replace("/", "_")
        for sub in ("blobs", "cache"):      # where -D and --blob-cache-dir write, which must exist
            (out / sub).mkdir(parents=True)
        from rafs.cli.main import main
        for step in case.steps:
            argv = [self.expand(arg, out) for arg in step]
            stdout, stderr = io.StringIO(), io.StringIO()
            with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
                try:
                    status = main(argv)
                except SystemExit as exit_:
                    status = exit_.code
            if status:
                raise RuntimeError(f"{case.name}: rafs {' '.join(argv)} exited {status}:\n{stderr.getvalue()}")
        self.done[case.name] = out
        return out


def load_goldens() -> dict[str, dict[str, str]]:
    return json.loads(GOLDENS.read_text()) if GOLDENS.exists() else {}


def check(selected: list[Case], workdir: pathlib.Path, *, update: bool = False) -> list[str]:
    """Runs ``selected``; returns one line per difference from the goldens (or rewrites them)."""
    runner = Runner(workdir)
    goldens = load_goldens()
    problems = []
    for case in selected:
        got = digests(runner.run(case))
        if update:
            goldens[case.name] = got
        elif case.name not in goldens:
            problems.append(f"{case.name}: no golden digests (run with --update once the output is right)")
        elif got != goldens[case.name]:
            want = goldens[case.name]
            for name in sorted(set(want) | set(got)):
                if want.get(name) != got.get(name):
                    problems.append(f"{case.name}: {name}: golden {want.get(name)}, now {got.get(name)}")
    if update:
        GOLDENS.parent.mkdir(parents=True, exist_ok=True)
        GOLDENS.write_text(json.dumps(dict(sorted(goldens.items())), indent=1) + "\n")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fast", action="store_true", help="only the cases the test suite runs")
    parser.add_argument("-k", dest="match", default="", help="only the cases whose name contains this")
    parser.add_argument("--update", action="store_true", help="rewrite the goldens of the cases run")
    parser.add_argument("--workdir", help="where to build (kept); default a temporary directory")
    parser.add_argument("--list", action="store_true", help="list the cases and exit")
    args = parser.parse_args(argv)
    selected = [case for case in cases() if (case.fast or not args.fast) and args.match in case.name]
    if args.list:
        print("\n".join(f"{case.name}{' (fast)' if case.fast else ''}" for case in selected))
        return 0
    os.umask(0o022)                     # the benchmark generators create files with the umask's modes
    with contextlib.ExitStack() as stack:
        workdir = args.workdir or stack.enter_context(tempfile.TemporaryDirectory(prefix="byte-identity-"))
        problems = check(selected, pathlib.Path(workdir), update=args.update)
    for line in problems:
        print(line)
    print(f"{len(selected)} cases, {'goldens updated' if args.update else f'{len(problems)} differences'}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    sys.exit(main())
