#!/usr/bin/env bash
# The whole test suite: ruff (the lint rules in pyproject.toml) first, then pytest. Privileged tests
# (kernel EROFS mounts, loop devices, FUSE) run when root; with RAFS_REQUIRE_PRIVILEGED=1 (set by
# .ci/run) they fail instead of skipping.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
"$PYTHON" -m ruff check --quiet .
exec "$PYTHON" -m pytest -q -p no:cacheprovider "$@"
