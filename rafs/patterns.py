"""Reading the files that list paths to prefetch: ``rafs create/convert --prefetch-patterns FILE`` and ``rafs
optimize --prefetch-files FILE`` take what ``rafs mount --access-pattern-file`` writes
(:mod:`rafs.serve.trace`): absolute paths one a line, or JSON access records with a ``path`` each."""

from __future__ import annotations

import json
import os

from .errors import InvalidArgumentError

MAX_LIST_SIZE = 64 << 20      # bytes of a list file read at most


def read_list_file(path, option: str) -> bytes:
    """The bytes of a list file, refused past MAX_LIST_SIZE; errors name ``option``."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_LIST_SIZE + 1)
    except OSError as exc:
        raise InvalidArgumentError(f"{option} {path}: {exc.strerror or exc}") from None
    if len(data) > MAX_LIST_SIZE:
        raise InvalidArgumentError(f"{option} {path}: larger than {MAX_LIST_SIZE >> 20} MiB")
    return data


def read_pattern_file(path, *, option: str = "--prefetch-patterns") -> list[str]:
    """The patterns in a pattern file: one path a line, or the JSON records :func:`rafs.serve.trace.write_pattern_file`
    writes (and ``/api/v1/metrics/pattern`` serves), their ``path`` fields in order."""
    data = read_list_file(path, option)
    if data.lstrip()[:1] == b"[":
        try:
            records = json.loads(data)
        except ValueError as exc:
            raise InvalidArgumentError(f"{option} {path}: not valid JSON ({exc})") from None
        if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
            raise InvalidArgumentError(f"{option} {path}: expected a JSON list of access records")
        paths = [r.get("path") for r in records]
        if not all(isinstance(p, str) for p in paths):
            raise InvalidArgumentError(f"{option} {path}: every access record needs a \"path\" (nydusd's own "
                                       "records name inodes only: take them from rafs mount's API or trace)")
        return paths
    return [os.fsdecode(line) for line in data.splitlines() if line.strip()]
