"""Coverage-guided fuzzing of nydusd configurations: bytes -> ``parse_config`` (v1 JSON, v2 JSON or
TOML), the blob locator it makes (every backend's own keys checked, nothing fetched) and its repr,
and nydusify's backend configuration (``--backend-config``), as ``rafs mount --config``,
``rafs create --backend-config`` and ``rafs.open(..., config=...)`` read them. Every input must be
accepted or refused with a RafsError.

    python fuzz/fuzz_config.py /tmp/corpus-config -max_total_time=600
"""

from __future__ import annotations

from _harness import instrumented, main

with instrumented():
    from rafs.errors import RafsError
    from rafs.io.config import locator_from_config, parse_config
    from rafs.io.push import load_backend_config
    from rafs.testing.hostile import CONFIG_SEEDS


def TestOneInput(data: bytes) -> None:  # noqa: N802
    try:
        config = parse_config(data)
        repr(config)
        repr(locator_from_config(config))
    except RafsError:
        pass
    try:
        load_backend_config(config=data.decode("utf-8", "surrogateescape"))
    except RafsError:
        pass


if __name__ == "__main__":
    main(TestOneInput, documents=CONFIG_SEEDS)
