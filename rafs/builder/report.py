"""The build report: what a build or a merge produced, and the document ``--output-json`` writes
(src/bin/nydus-image/main.rs ``OutputSerializer``) with its ``trace`` of phase times and events."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

from .. import __version__
from ..model import Blob


@dataclass
class BuildResult:
    """What a build produced: paths (None when written to file objects), blob ids in blob-table
    order, sizes, and ``output``, the document ``nydus-image create --output-json`` writes."""

    bootstrap: str | None
    blob: str | None
    blob_ids: list[str]
    bootstrap_size: int
    blob_size: int | None
    fs_version: int
    compressor: str
    blobs: list[Blob] = field(default_factory=list)
    output: dict = field(default_factory=dict)
    blob_id: str | None = None           # the blob this build wrote (the last one), None if none

    def to_json(self) -> str:
        """The ``--output-json`` document (:attr:`output`) as indented JSON text."""
        return json.dumps(self.output, indent=2)


class Trace:
    """The ``trace`` section of --output-json: phase times (seconds) and counted events."""

    def __init__(self):
        self.consumed_time: dict[str, float] = {}
        self.registered_events: dict[str, object] = {}

    def timed(self, name: str):
        """A context manager adding the seconds spent inside it to ``consumed_time[name]``."""
        trace = self

        class _Timer:
            def __enter__(self):
                self.start = time.perf_counter()

            def __exit__(self, *exc):
                trace.consumed_time[name] = round(time.perf_counter() - self.start, 6)

        return _Timer()

    def as_dict(self) -> dict:
        """The trace as nydus-image's output JSON holds it: ``consumed_time`` and ``registered_events``."""
        return {"consumed_time": dict(self.consumed_time), "registered_events": dict(self.registered_events)}


def output_document(blob_ids: list[str], trace: Trace, fs_version: int, compressor: str) -> dict:
    """What ``--output-json`` holds (src/bin/nydus-image/main.rs ``OutputSerializer``); the
    ``bootstrap`` path is filled in once the output is in place."""
    return {
        "version": f"rafs-{__version__}",
        "bootstrap": "",
        "blobs": blob_ids,
        "external_bootstrap": "",
        "external_blobs": [],
        "trace": trace.as_dict(),
        "fs_version": str(fs_version),
        "compressor": compressor,
    }


@dataclass
class MergeResult:
    """What a merge produced; ``output`` is the ``--output-json`` document."""

    bootstrap: str | None
    blob_ids: list[str]
    blobs: list[Blob]
    bootstrap_size: int
    fs_version: int
    compressor: str
    output: dict = field(default_factory=dict)

    to_json = BuildResult.to_json
