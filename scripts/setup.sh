#!/usr/bin/env bash
# Installs mmlib and what it needs into the current Python (3.10+), on a fresh machine.
# torch: keep one that is already installed (a CUDA build on a GPU machine); otherwise take
# the CPU build. Extra pip arguments (e.g. --user) are passed through.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! "$PY" -c "import torch" 2>/dev/null; then
  "$PY" -m pip install -q "torch==2.13.0" "$@"
fi
"$PY" -m pip install -q -e ".[dev]" "$@"
