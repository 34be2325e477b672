"""Coverage-guided fuzzing of tar layers: bytes -> ``read_tar`` read in place (seekable) and as a
stream (spooled), then the first bytes of every file, as ``rafs create -t tar-rafs`` reads a layer.
Every length a header declares must be bounded: a crash is anything but a RafsError, a hang or
libFuzzer's memory limit.

    python fuzz/fuzz_tar_layer.py /tmp/corpus-tar -max_total_time=600
"""

from __future__ import annotations

import io
import logging

from _harness import instrumented, main

with instrumented():
    from rafs.builder.tar import read_tar
    from rafs.errors import RafsError

SEEDS = ["tar/all-entry-type.tar", "tar/all-entry-type-macos.tar", "tar/empty.tar",
         "zran/zran-single-stream.tar.gz"]
READ_LIMIT = 1 << 16          # a sparse file may hold gigabytes of holes: the target reads its start


class _Stream(io.RawIOBase):
    """The input as a pipe: readable, not seekable."""

    def __init__(self, data: bytes):
        self._data = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        return self._data.readinto(buffer)


def TestOneInput(data: bytes) -> None:  # noqa: N802
    for source in (io.BytesIO(data), _Stream(data)):
        try:
            with read_tar(source) as layer:
                for node in layer.files:
                    with node.data() as f:
                        f.read(READ_LIMIT)
        except RafsError:
            pass


if __name__ == "__main__":
    # dropped-xattr warnings, one per mutant, would slow the run down (only in a fuzzing process: tests
    # import this module, and a disabled level would silence every warning after them)
    logging.disable(logging.WARNING)
    main(TestOneInput, SEEDS)
