#!/usr/bin/env bash
# Installs everything ssljax needs on a fresh Debian/Ubuntu machine with Python 3.10-3.12:
#   the Debian package with the embedded data set (Fashion-MNIST), the Python packages with tested
#   bounds (pyproject.toml), and the one-time preparation of that data set as a local TFDS data set.
# Usage: bash scripts/install.sh [--test]     (--test adds the test runner)
#        GPU: after this, pip install -e ".[gpu]"  (jax with CUDA 12)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"

if ! dpkg -s dataset-fashion-mnist >/dev/null 2>&1; then
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq dataset-fashion-mnist
fi

extras=""
[ "${1:-}" = "--test" ] && extras="[test]"
$PY -m pip install -q --disable-pip-version-check -e ".${extras}" 2>&1 | grep -v "Running pip as the 'root' user" || true
$PY -m pip check >/dev/null 2>&1 || $PY -m pip check || true
$PY -c "import jax, flax, optax, orbax.checkpoint, tensorflow_datasets, ml_collections, clu" \
  || { echo "install.sh: the Python packages did not install; see the pip output above." >&2; exit 1; }

$PY scripts/prepare_data.py
