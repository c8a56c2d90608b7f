#!/usr/bin/env bash
# Train with DistributedDataParallel on this machine's GPUs:
#   bash scripts/dist_train.sh 4 options/train/Rain200H.yml [--set KEY=VALUE ...] [--resume auto]
# For several machines, run torchrun yourself with --nnodes, --node_rank and --rdzv_endpoint.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
if [ $# -lt 2 ]; then
  echo "usage: bash scripts/dist_train.sh GPUS OPTIONS.yml [drsformer train arguments]" >&2
  exit 2
fi
GPUS="$1"
OPT="$2"
shift 2
exec torchrun --standalone --nproc_per_node="$GPUS" -m drsformer.train -opt "$OPT" "$@"
