#!/usr/bin/env bash
# Installs mmlib (editable, with its notebook, test and docs extras) into a virtual environment,
# .venv in the repository (MMLIB_VENV=DIR for another place), never into the system Python.
# The environment sees the system's packages (--system-site-packages), so a torch already
# installed there (a CUDA build on a GPU machine) is used as it is; otherwise the CPU build is
# installed. PYTHON=... picks the interpreter that creates it (Python 3.10+). Re-running is a
# no-op once installed. Debian's chromium (for the browser test) is installed when missing and
# we are root with apt-get; otherwise one line says how to get it. Extra arguments go to pip.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${MMLIB_VENV:-.venv}
BASE=${PYTHON:-python3}
PY="$VENV/bin/python"

if [ ! -x "$PY" ]; then
  "$BASE" -c 'import sys; sys.exit(sys.version_info < (3, 10))' \
    || { echo "setup.sh: $BASE is older than Python 3.10; set PYTHON=python3.11 (or newer)" >&2; exit 2; }
  "$BASE" -m venv --system-site-packages "$VENV"
fi

# What the install depends on; the same stamp means there is nothing to do.
stamp="$VENV/.mmlib-setup"
want="$(cat pyproject.toml scripts/setup.sh | cksum) $(pwd)"
installed='import importlib.util as u, sys; sys.exit(not all(map(u.find_spec, ("mmlib", "torch", "playwright", "mkdocs"))))'
if [ "$(cat "$stamp" 2>/dev/null)" = "$want" ] && "$PY" -c "$installed" 2>/dev/null; then
  echo "setup.sh: mmlib already installed in $VENV"
else
  if ! "$PY" -c "import torch" 2>/dev/null; then
    "$PY" -m pip install -q "torch==2.13.0" "$@"
  fi
  "$PY" -m pip install -q -e ".[dev]" "$@"
  echo "$want" > "$stamp"
  echo "setup.sh: mmlib installed in $VENV (run it as $VENV/bin/mmlib, or $VENV/bin/python)"
fi

chromium=${MMLIB_CHROMIUM:-/usr/bin/chromium}
if [ ! -x "$chromium" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) 2>/dev/null \
      || echo "setup.sh: chromium could not be installed; the browser test will be skipped"
  else
    echo "setup.sh: no Chromium at $chromium: the browser test will be skipped (sudo apt-get install chromium, or set MMLIB_CHROMIUM)"
  fi
fi
