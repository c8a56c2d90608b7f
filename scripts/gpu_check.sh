#!/usr/bin/env bash
# Every CUDA path in one prepared command, for a short GPU slot: the CUDA tests (pytest -m cuda: NaN rollback in
# fp16 and bf16, exact tiling against the CPU and at every level boundary with slowed copies, one storage for a
# self-ensemble, page-locked host maps, bench on the GPU it is given, --tile auto, a deterministic resume, a
# process group), drsformer bench --compare for inference at 256x256 (fp32, bf16, bf16 + compile) and training
# at 8 x 128x128 (fp32, bf16, bf16 + compile, channels-last, activation checkpointing), the full model on a 4K
# photo through exact tiles of 512 with the maps in host memory (time, peak GPU memory, pinned host memory) and
# of 768 with the maps on the GPU (the two must agree), and 50 iterations of the full model through drsformer
# train in bf16 on synthetic pairs (images/s, peak memory), with and without train.deterministic.
#
#   scripts/gpu_check.sh [OUT_DIR] [--device cuda|cpu] [--quick]
#
# Writes OUT_DIR/report.md (GPU, driver, torch, each figure, each pass/fail) after every check, and one log per
# check; exits 1 if a check failed. At most 8 minutes on one H100/H200. With --device cpu --quick it runs the same code on the CPU
# (a width-8 model, a few iterations, no torch.compile) in under 2 minutes; a CI test does, so it cannot rot.
# Python: $PYTHON, else the project's .venv when there is one, else python3 (a GPU machine's own PyTorch).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ -z "${PYTHON:-}" ]; then
  if [ -x "$ROOT/.venv/bin/python" ]; then PYTHON="$ROOT/.venv/bin/python"; else PYTHON=python3; fi
fi
exec "$PYTHON" "$ROOT/scripts/gpu_check.py" "$@"
