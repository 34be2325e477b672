#!/usr/bin/env bash
# The main job on bundled sample data: build a RAFS image from samples/origin-root-dir (the tree of
# the users' guide), inspect it, check it, and read every file back.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
mkdir -p samples/origin-root-dir/dir_1/subdir_b      # git keeps no empty directories
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
set -x
"$PYTHON" -m rafs create samples/origin-root-dir --bootstrap "$out/image-basic-01.meta" --blob-dir "$out" \
    --fs-version 6 --compressor zstd --whiteout-spec oci --output-json "$out/output.json"
cat "$out/output.json"
"$PYTHON" -m rafs inspect "$out/image-basic-01.meta"
"$PYTHON" -m rafs check "$out/image-basic-01.meta" -D "$out"
"$PYTHON" samples/read_back.py "$out/image-basic-01.meta" "$out"
