#!/usr/bin/env bash
# Sets up the environment if needed, then runs the test suite. Extra arguments go to pytest.
# The page tests (tests/test_serve.py) drive Debian's Chromium; it is installed here when missing.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$ROOT"
if ! command -v chromium >/dev/null 2>&1; then
  echo "installing Debian's chromium for the page tests (apt-get install chromium)"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo -n"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends chromium >/dev/null
fi
python -m pytest -q "$@"
