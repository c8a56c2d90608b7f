"""Launching on a Slurm cluster: from this node's ``SLURM_*`` variables to its ``torchrun`` command.

``scripts/slurm_train.sh`` runs, on every node of the allocation (one ``srun`` task per node)::

    python -m drsformer.cluster slurm -- -opt options/train/Rain200H.yml --set ...

which prints the ``torchrun`` command for that node (shell-quoted), and executes it. The logic lives here so
that it is tested without Slurm (``tests/test_cluster.py`` sets fake variables).

Rendezvous is static by default: the first host of ``SLURM_JOB_NODELIST`` is the master, and each node's rank
is its ``SLURM_NODEID``, so global rank 0 (which writes the run folder and decides what to resume) is always on
the allocation's first node. ``--rdzv c10d`` uses torchrun's c10d rendezvous instead (ranks in arrival order:
keep the run folder on a shared file system then).
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import sys
from collections.abc import Mapping, Sequence

from .errors import ConfigError

DEFAULT_PORT_BASE = 20000  # the rendezvous port is this plus the job id modulo 20000, unless MASTER_PORT is set


def expand_nodelist(text: str) -> list[str]:
    """Slurm's compact host list as names: ``gpu[01-03,07],login2`` -> gpu01, gpu02, gpu03, gpu07, login2."""
    hosts: list[str] = []
    for match in re.finditer(r"([^,\[]+)(?:\[([^\]]*)\])?", text.strip()):
        prefix, ranges = match.group(1), match.group(2)
        if ranges is None:
            hosts.append(prefix)
            continue
        for part in ranges.split(","):
            low, _, high = part.partition("-")
            if not low.isdigit() or (high and not high.isdigit()):
                raise ConfigError(f"SLURM_JOB_NODELIST={text!r}: cannot read the range {part!r}")
            for number in range(int(low), int(high or low) + 1):
                hosts.append(f"{prefix}{number:0{len(low)}d}")
    if not hosts:
        raise ConfigError(f"SLURM_JOB_NODELIST={text!r}: names no host")
    return hosts


def _int(env: Mapping[str, str], *names: str) -> int | None:
    for name in names:
        value = env.get(name, "").strip()
        if value:
            match = re.match(r"\d+", value)  # SLURM_TASKS_PER_NODE may read "8(x2)"; GPU counts "gpu:8" below
            if not match:
                raise ConfigError(f"{name}={value!r} is not a number")
            return int(match.group(0))
    return None


def gpus_per_node(env: Mapping[str, str]) -> int:
    """The GPUs Slurm gave this node: ``SLURM_GPUS_ON_NODE``, else the ids in ``CUDA_VISIBLE_DEVICES``, else
    ``SLURM_GPUS_PER_NODE`` (``8`` or ``a100:8``), else 1."""
    count = _int(env, "SLURM_GPUS_ON_NODE")
    if count:
        return count
    visible = env.get("CUDA_VISIBLE_DEVICES", "").strip()
    if visible:
        return len([v for v in visible.split(",") if v.strip()])
    per_node = env.get("SLURM_GPUS_PER_NODE", "").strip()
    if per_node:
        return int(per_node.rsplit(":", 1)[-1].split("(")[0])
    return 1


def torchrun_command(
    env: Mapping[str, str], train_args: Sequence[str], rdzv: str = "static", max_restarts: int = 0
) -> list[str]:
    """The ``torchrun`` command line of this node (``env``: its environment inside ``srun``)."""
    nodelist = env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST")
    if not nodelist:
        raise ConfigError("SLURM_JOB_NODELIST is not set: run this inside a Slurm allocation (sbatch or salloc)")
    hosts = expand_nodelist(nodelist)
    nnodes = _int(env, "SLURM_JOB_NUM_NODES", "SLURM_NNODES") or len(hosts)
    node_rank = _int(env, "SLURM_NODEID")
    if node_rank is None:
        raise ConfigError("SLURM_NODEID is not set: start one task per node with srun --ntasks-per-node=1")
    job = _int(env, "SLURM_JOB_ID") or 0
    port = _int(env, "MASTER_PORT") or DEFAULT_PORT_BASE + job % 20000
    command = ["torchrun", "--nnodes", str(nnodes), "--nproc_per_node", str(gpus_per_node(env))]
    if rdzv == "static":
        command += ["--node_rank", str(node_rank), "--master_addr", hosts[0], "--master_port", str(port)]
    elif rdzv == "c10d":
        command += ["--rdzv_backend", "c10d", "--rdzv_endpoint", f"{hosts[0]}:{port}", "--rdzv_id", str(job)]
    else:
        raise ConfigError(f"--rdzv: expected static or c10d, got {rdzv!r}")
    command += ["--max-restarts", str(max_restarts), "-m", "drsformer.train", *train_args]
    if "--resume" not in train_args:
        command += ["--resume", "auto"]  # a requeued job continues; the first run starts fresh (one line says so)
    return command


def main(argv: Sequence[str] | None = None) -> int:
    """``slurm [--rdzv static|c10d] [--max-restarts N] -- TRAIN ARGS``: prints this node's torchrun command."""
    argv = list(sys.argv[1:] if argv is None else argv)
    split = argv.index("--") if "--" in argv else len(argv)
    parser = argparse.ArgumentParser(prog="python -m drsformer.cluster", description=__doc__.splitlines()[0])
    parser.add_argument("scheduler", choices=["slurm"])
    parser.add_argument("--rdzv", choices=["static", "c10d"], default="static")
    parser.add_argument("--max-restarts", type=int, default=0, help="torchrun's worker-group restarts")
    args = parser.parse_args(argv[:split])
    try:
        command = torchrun_command(os.environ, argv[split + 1 :], args.rdzv, args.max_restarts)
    except ConfigError as err:
        print(f"drsformer cluster: error: {err}", file=sys.stderr)
        return 2
    print(shlex.join(command))
    return 0


if __name__ == "__main__":
    sys.exit(main())
