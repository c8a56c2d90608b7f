#!/usr/bin/env bash
# Train on one GPU (or the CPU): bash scripts/train.sh options/train/Rain200H.yml [--set KEY=VALUE ...] [--resume auto]
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
if [ $# -lt 1 ]; then
  echo "usage: bash scripts/train.sh OPTIONS.yml [drsformer train arguments]" >&2
  exit 2
fi
OPT="$1"
shift
exec python -m drsformer.train -opt "$OPT" "$@"
