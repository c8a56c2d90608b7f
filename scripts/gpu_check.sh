#!/usr/bin/env bash
# Every CUDA path in one prepared command, for a short GPU slot: the CUDA tests (pytest -m cuda: NaN rollback in
# fp16 and bf16, exact tiling against the CPU and at every level boundary with slowed copies, one storage for a
# self-ensemble, page-locked host maps, bench on the GPU it is given, --tile auto, a deterministic resume, a
# process group), drsformer bench --compare for inference at 256x256 (fp32, bf16) and training at 8 x 128x128
# (fp32, bf16, channels-last, activation checkpointing), one MSFN and the whole model in both MSFN formulations,
# the full model on a 4K photo through exact tiles of 512 (maps in host memory, then on the GPU) and of 768 (the
# three must agree), and 50 iterations of the full model through drsformer train in bf16 on synthetic pairs
# (images/s, peak memory), with and without train.deterministic.
#
#   scripts/gpu_check.sh [OUT_DIR] [--device cuda|cpu] [--quick] [--tests EXPR] [--compile]
#
# Writes OUT_DIR/report.md (GPU, driver, torch, each figure, each pass/fail) after every check, and one log per
# check; exits 1 if a check failed. On one H200 (2026-12-04) the checks took about 6.5 minutes, the CUDA tests 2 of
# them. --tests EXPR runs only the CUDA tests pytest -k EXPR selects. --compile adds bf16 + torch.compile for
# inference (100 s there, most of it compiling) and training (more than 200 s; it did not finish within the slot),
# last, so a run cut off at a time limit keeps every other row. With --device cpu --quick it runs the same code
# on the CPU (a width-8 model, a few iterations) in about 2 minutes; a CI test does, so it cannot rot.
# Python: $PYTHON, else the project's .venv when there is one, else python3 (a GPU machine's own PyTorch).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ -z "${PYTHON:-}" ]; then
  if [ -x "$ROOT/.venv/bin/python" ]; then PYTHON="$ROOT/.venv/bin/python"; else PYTHON=python3; fi
fi
exec "$PYTHON" "$ROOT/scripts/gpu_check.py" "$@"
