"""Coverage-guided fuzzing of data blobs' tails: bytes -> the tar-header section walk, the ToC, every
ToC entry's extraction, the inline bootstrap and the blob id, as ``rafs blob-info`` reads them.

    python fuzz/fuzz_toc.py /tmp/corpus-toc -max_total_time=600
"""

from __future__ import annotations

from _harness import instrumented, main

with instrumented():
    # the parsers exercise_blob imports lazily are imported here, so that they are instrumented
    import rafs.blob.describe  # noqa: F401
    import rafs.blob.meta  # noqa: F401
    import rafs.blob.tar_header  # noqa: F401
    import rafs.blob.toc  # noqa: F401
    from rafs.testing.exercise import exercise_blob

SEEDS = ["toc/2fa78cad554b75ac91a4a125ed148d0ddeb25efa4aaa8bd80e5dc292690a4dca",
         "blobs/be7d77eeb719f70884758d1aa800ed0fb09d701aaec469964e9d54325f0d5fef"]


def TestOneInput(data: bytes) -> None:  # noqa: N802
    exercise_blob(data, what="fuzz input")


if __name__ == "__main__":
    main(TestOneInput, SEEDS)
