#!/usr/bin/env bash
# Sourced by the other scripts: creates (or reuses) the virtual environment and installs the package into it.
# Override the location with DRSFORMER_VENV and the interpreter with PYTHON.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${DRSFORMER_VENV:-$ROOT/.venv}"
PYTHON_BIN="${PYTHON:-python3}"

if [ ! -x "$VENV/bin/python" ]; then
  if ! "$PYTHON_BIN" -c 'import sys; sys.exit(sys.version_info < (3, 10))'; then
    echo "error: $PYTHON_BIN is older than Python 3.10; set PYTHON=/path/to/python3.10+" >&2
    exit 1
  fi
  echo "creating virtual environment in $VENV"
  "$PYTHON_BIN" -m venv "$VENV"
fi

# Reinstall only when the packaging metadata changed (the install is editable, so code changes need nothing).
STAMP="$VENV/.drsformer-install-stamp"
WANT="$(cat "$ROOT/pyproject.toml" "$ROOT/setup.py" | cksum)"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ]; then
  echo "installing drsformer and its dependencies into $VENV (PyTorch is large; the first time takes a while)"
  "$VENV/bin/python" -m pip install --disable-pip-version-check -q -e "$ROOT[dev,export,serve]"
  echo "$WANT" > "$STAMP"
fi
export PATH="$VENV/bin:$PATH"
