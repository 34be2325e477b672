#!/usr/bin/env bash
# Installs what rafs needs on a Debian machine (as root): Debian packages when missing, then rafs
# itself with its test and FUSE extras. Sourced by scripts/demo.sh and scripts/test.sh.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

DEBIAN_PACKAGES=(
  python3-pip python3-venv python3-dev gcc             # pip, and building wheels a platform lacks
  fuse3                                                 # libfuse3 + fusermount3 (rafs mount, via ctypes)
  erofs-utils                                           # mkfs.erofs / fsck.erofs: independent EROFS writer
  squashfs-tools squashfuse zstd tar util-linux attr    # benchmark anchors, losetup, xattr tools
  docker-registry skopeo apache2-utils                  # registry tests: distribution registry, image pushes, htpasswd -B
  cryptsetup-bin                                        # veritysetup: checks rafs export --verity trees
)

missing=()
if command -v dpkg-query >/dev/null 2>&1; then
  for pkg in "${DEBIAN_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
fi
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

BASE_PYTHON=${PYTHON:-python3}
pip_flags=(-q --disable-pip-version-check --no-warn-script-location)
# rafs always goes into a virtual environment inside the checkout (.venv), never into the machine's
# own interpreter: a system `rafs` or another project's packages are never repointed or upgraded.
if [ ! -x .venv/bin/python ]; then
  "$BASE_PYTHON" -m venv .venv
  echo "setup: created a virtual environment in $PWD/.venv (activate it with: source .venv/bin/activate)" >&2
fi
PYTHON=$PWD/.venv/bin/python
export PYTHON
# editable_mode=compat puts the checkout on sys.path through a plain .pth line; setuptools' default
# import-hook finder instead imports pathlib, urllib.parse and more at every interpreter start (about
# 10-15 ms of each `rafs` command). Plain -e if a setuptools ever drops the mode.
"$PYTHON" -m pip install "${pip_flags[@]}" -e ".[test]" --config-settings editable_mode=compat ||
  "$PYTHON" -m pip install "${pip_flags[@]}" -e ".[test]"
