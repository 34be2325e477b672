"""Coverage-guided fuzzing of blob meta (the CI array and its header): bytes -> the nydusd
``.blob.meta`` cache-file decoder, and the same bytes as a data blob whose CI header ends it.

    python fuzz/fuzz_blob_meta.py /tmp/corpus-meta -max_total_time=600
"""

from __future__ import annotations

from _harness import instrumented, main

with instrumented():
    import rafs.blob.codecs  # noqa: F401
    from rafs.blob import layout, meta
    from rafs.errors import RafsError
    from rafs.testing import BytesSource

SEEDS = ["zran/233c72f2b6b698c07021c4da367cfe2dff4f049efbaa885ca0ff760ea297865a.blob.meta"]


def TestOneInput(data: bytes) -> None:  # noqa: N802
    source = BytesSource(data)
    try:
        meta.load_blob_meta_file(source)
    except RafsError:
        pass
    if len(data) >= layout.BLOB_CCT_HEADER_SIZE:
        try:
            meta.read_blob_meta_at(source, len(data) - layout.BLOB_CCT_HEADER_SIZE)
        except RafsError:
            pass


if __name__ == "__main__":
    main(TestOneInput, SEEDS)
