#!/usr/bin/env bash
# Sets up the environment if needed, then shows the model and times the fast path against the paper's
# reference formulation on the full DRSformer (random weights, CPU unless a GPU is present).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$ROOT"
drsformer info
drsformer bench --compare --size 128 --repeat 5 "$@"
