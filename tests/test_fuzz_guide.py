"""The code blocks of docs/fuzzing.md, run as they are written, so the guide stays true: every
```python block is executed, and the test functions it defines are collected here."""

from __future__ import annotations

import re

import pytest

from conftest import ROOT

GUIDE = ROOT / "docs" / "fuzzing.md"
BLOCKS = re.findall(r"```python\n(.*?)```", GUIDE.read_text(), flags=re.S)


def _load() -> dict:
    found = {}
    for number, code in enumerate(BLOCKS):
        namespace = {"__name__": f"fuzzing_guide_block_{number}"}
        exec(compile(code, f"{GUIDE}:block{number}", "exec"), namespace)
        found.update({k: v for k, v in namespace.items() if k.startswith("test_") and callable(v)})
    return found


EXAMPLES = _load()
globals().update(EXAMPLES)


def test_guide_has_its_examples():
    assert len(BLOCKS) >= 3
    assert {"test_fsck_erofs_extracts_what_rafs_builds", "test_fsck_erofs_survives_mutants"} <= set(EXAMPLES)


@pytest.mark.privileged
def test_guide_tools_present(tool):
    """The examples skip without erofs-utils; under RAFS_REQUIRE_PRIVILEGED=1 they must not."""
    tool("fsck.erofs")
