"""What the fuzz entry points share: running a target under atheris (coverage-guided, libFuzzer) with
rafs instrumented, and seeding a corpus from the reference's fixtures.

A target takes the fuzzer's bytes and returns normally when rafs either accepted them or raised a
:class:`rafs.RafsError`; anything else escapes and libFuzzer records the input as a crash. Hangs and
memory are bounded by libFuzzer's ``-timeout=`` and ``-rss_limit_mb=`` flags.
"""

from __future__ import annotations

import os
import pathlib
import sys

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


def main(target, seeds=()) -> None:
    """``python fuzz/<name>.py [CORPUS_DIR] [libFuzzer flags]``: fuzz ``target`` with atheris."""
    import atheris
    args = list(sys.argv)
    corpus = next((a for a in args[1:] if not a.startswith("-")), None)
    if corpus is not None and seeds and not os.path.isfile(corpus):     # a file is an input to replay
        seed_corpus(corpus, seeds)
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
