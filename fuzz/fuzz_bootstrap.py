"""Coverage-guided fuzzing of bootstrap parsing: bytes -> ``rafs.open`` + every read path.

    pip install atheris
    python fuzz/fuzz_bootstrap.py /tmp/corpus-bootstrap -max_total_time=600

The corpus directory is seeded with the reference's v5 and v6 bootstraps. Inputs are opened as a
bootstrap (v5, v6, plain EROFS) or, failing that, as a blob with an inline bootstrap; file data reads
hit the v5 fixture's blob directory (chunks of other images are simply missing).
"""

from __future__ import annotations

import io

from _harness import FIXTURES, instrumented, main

with instrumented():
    # everything the read paths import lazily is imported here, so that it is instrumented too
    import rafs.blob.meta  # noqa: F401
    import rafs.blob.toc  # noqa: F401
    import rafs.image.extract  # noqa: F401
    import rafs.image.unpack  # noqa: F401
    import rafs.v5.reader  # noqa: F401
    import rafs.v6.reader  # noqa: F401
    from rafs.testing import exercise

BLOB_DIR = FIXTURES / "repeatable" / "blobs"
SEEDS = ["repeatable/sha256-nocompress-repeatable", "bootstrap/rafs-v6-2.2.boot",
         "toc/2fa78cad554b75ac91a4a125ed148d0ddeb25efa4aaa8bd80e5dc292690a4dca"]


def TestOneInput(data: bytes) -> None:  # noqa: N802 - the name atheris and libFuzzer use
    # a file object, so that an inline-meta blob is also readable as its own data source
    exercise(io.BytesIO(data), what="fuzz input", unpack_limit=1 << 20, max_read_per_file=1 << 20,
             blob_dir=BLOB_DIR if BLOB_DIR.is_dir() else None)


if __name__ == "__main__":
    main(TestOneInput, SEEDS)
