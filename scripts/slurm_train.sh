#!/usr/bin/env bash
# Train DRSformer under Slurm, on one node or several: one srun task per node, each running torchrun for the
# node's GPUs. Submit it with the options file and any drsformer train arguments:
#
#   sbatch --nodes 2 --gpus-per-node 8 scripts/slurm_train.sh options/train/Rain200H.yml [--set KEY=VALUE ...]
#   sbatch --nodes 1 --gpus-per-node 4 --time 24:00:00 scripts/slurm_train.sh options/train/SPA.yml
#
# Rendezvous comes from the SLURM_* variables (python -m drsformer.cluster): the first host of the allocation is
# the master and each node's rank is its SLURM_NODEID, so global rank 0 (which writes the run folder and decides
# what to resume) is on the first node. RDZV=c10d uses torchrun's c10d rendezvous instead; MAX_RESTARTS=N lets
# torchrun restart a failed worker group N times (the workers resume from the newest state by themselves).
#
# Requeue: 120 s before the time limit Slurm sends SIGUSR1 to this script (--signal=B:USR1@120). The script
# touches a stop file; every training process checks it between iterations, so the run saves its state and
# stops (exit status 75), and the script then requeues the job (--requeue), which starts again with
# --resume auto. Keep path.experiments_root on storage the next allocation can read.
#
# DRSFORMER_DRY_RUN=1 prints what each node would run instead of running it (the tests use this).
#SBATCH --job-name=drsformer
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=32
#SBATCH --time=24:00:00
#SBATCH --signal=B:USR1@120
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=slurm-%x-%j.out
set -euo pipefail

if [ $# -lt 1 ]; then
  echo "usage: sbatch [sbatch options] $0 OPTIONS.yml [drsformer train arguments]" >&2
  exit 2
fi
PYTHON="${PYTHON:-python}"
JOB="${SLURM_JOB_ID:?run this with sbatch (SLURM_JOB_ID is not set)}"
STOP_FILE="${DRSFORMER_STOP_FILE:-$PWD/.drsformer-stop-$JOB}"
rm -f "$STOP_FILE"
trap 'echo "SIGUSR1: the run saves and stops at the end of its iteration"; touch "$STOP_FILE"' USR1

launcher=("$PYTHON" -m drsformer.cluster slurm --rdzv "${RDZV:-static}" --max-restarts "${MAX_RESTARTS:-0}" -- -opt "$@")
# Each node builds its own torchrun command: SLURM_NODEID differs from node to node.
node_script="export DRSFORMER_STOP_FILE=$(printf %q "$STOP_FILE"); command=\$($(printf '%q ' "${launcher[@]}")) || exit 2"
if [ -n "${DRSFORMER_DRY_RUN:-}" ]; then
  bash -c "$node_script; echo \"node \$SLURM_NODEID: \$command\""
  exit 0
fi
srun --ntasks-per-node=1 --kill-on-bad-exit=1 bash -c "$node_script; eval exec \$command" &
srun_pid=$!
status=0
while true; do  # a trapped signal interrupts wait; keep waiting for the run to save and stop
  if wait "$srun_pid"; then status=0; else status=$?; fi
  kill -0 "$srun_pid" 2>/dev/null || break
done
if [ -e "$STOP_FILE" ]; then
  rm -f "$STOP_FILE"
  echo "stopped before the time limit (exit status $status); requeueing job $JOB"
  scontrol requeue "$JOB"
  exit 0
fi
exit "$status"
