"""What the fuzz entry points share: running a target under atheris (coverage-guided, libFuzzer) with
rafs instrumented, and seeding a corpus from the reference's fixtures.

A target takes the fuzzer's bytes and returns normally when rafs either accepted them or raised a
:class:`rafs.RafsError`; anything else escapes and libFuzzer records the input as a crash. Hangs and
memory are bounded by libFuzzer's ``-timeout=`` and ``-rss_limit_mb=`` flags.

libFuzzer stops at the first crash. For a survey, set ``RAFS_FUZZ_CRASH_DIR``: each escaping
exception is then saved there once per kind (exception type and the rafs line it left from) as
``crash-<kind>``, and the run goes on.
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import sys
import traceback

FIXTURES = pathlib.Path(os.environ.get("RAFS_SHARED", pathlib.Path(__file__).resolve().parents[2] / "shared")) \
    / "fixtures" / "nydus"


def seed_corpus(directory: str, paths) -> None:
    """Copy the seed files that exist into ``directory`` (created) unless it already has inputs."""
    target = pathlib.Path(directory)
    target.mkdir(parents=True, exist_ok=True)
    if any(target.iterdir()):
        return
    for path in paths:
        path = FIXTURES / path
        if path.is_file():
            (target / path.name).write_bytes(path.read_bytes())


def seed_documents(directory: str, documents: dict[str, bytes]) -> None:
    """Write ``documents`` (``{file name: bytes}``) into ``directory`` (created) unless it has inputs."""
    target = pathlib.Path(directory)
    target.mkdir(parents=True, exist_ok=True)
    if any(target.iterdir()):
        return
    for name, data in documents.items():
        (target / name).write_bytes(data)


def surveying(target, crash_dir: str):
    """``target`` saving each new kind of escaping exception under ``crash_dir`` instead of stopping."""
    seen = set()
    os.makedirs(crash_dir, exist_ok=True)

    def run(data: bytes) -> None:
        try:
            target(data)
        except Exception as exc:  # noqa: BLE001 - recording what escapes is the point
            frames = [f for f in traceback.extract_tb(exc.__traceback__) if "/rafs/" in f.filename]
            where = f"{frames[-1].filename.rsplit('/rafs/', 1)[-1]}:{frames[-1].lineno}" if frames else "?"
            kind = f"{type(exc).__name__}@{where}"
            if kind not in seen:
                seen.add(kind)
                name = kind.replace("/", "_").replace(":", "_")
                pathlib.Path(crash_dir, f"crash-{name}").write_bytes(data)
                print(f"NEW CRASH KIND {kind} ({hashlib.sha1(data).hexdigest()})", file=sys.stderr, flush=True)
    return run


def main(target, seeds=(), documents: dict[str, bytes] | None = None) -> None:
    """``python fuzz/<name>.py [CORPUS_DIR] [libFuzzer flags]``: fuzz ``target`` with atheris; an empty
    corpus is seeded from the fixtures ``seeds`` and the generated ``documents``."""
    import atheris
    args = list(sys.argv)
    corpus = next((a for a in args[1:] if not a.startswith("-")), None)
    if corpus is not None and seeds and not os.path.isfile(corpus):     # a file is an input to replay
        seed_corpus(corpus, seeds)
    if corpus is not None and documents:
        seed_documents(corpus, documents)
    if os.environ.get("RAFS_FUZZ_CRASH_DIR"):
        target = surveying(target, os.environ["RAFS_FUZZ_CRASH_DIR"])
    if not any(a.startswith("-timeout=") for a in args):
        args.append("-timeout=20")
    if not any(a.startswith("-rss_limit_mb=") for a in args):
        args.append("-rss_limit_mb=1024")
    atheris.Setup(args, target)
    atheris.Fuzz()


def instrumented():
    """A context manager instrumenting the rafs modules imported inside it (a no-op without atheris)."""
    try:
        import atheris
    except ImportError:
        import contextlib
        return contextlib.nullcontext()
    return atheris.instrument_imports(include=["rafs"])
