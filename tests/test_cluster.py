"""Cluster life without a cluster: Slurm's variables to torchrun commands (and the sbatch script that uses them,
with fake SLURM_* variables), one GPU per task, and the process group's store across elastic restarts."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
import torch

from drsformer import cluster
from drsformer.engine import distributed
from drsformer.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
SLURM = {"SLURM_JOB_ID": "81234", "SLURM_JOB_NODELIST": "gpu[07-08]", "SLURM_JOB_NUM_NODES": "2", "SLURM_NODEID": "1"}


@pytest.mark.parametrize(
    "text, hosts",
    [
        ("node1", ["node1"]),
        ("gpu[07-09]", ["gpu07", "gpu08", "gpu09"]),
        ("gpu[1,3-4],login2", ["gpu1", "gpu3", "gpu4", "login2"]),
        ("a[098-101]", ["a098", "a099", "a100", "a101"]),  # zero padding kept, widths as written
        ("x-1[1-2],y[5]", ["x-11", "x-12", "y5"]),
    ],
)
def test_slurm_host_lists_expand(text: str, hosts: list[str]) -> None:
    assert cluster.expand_nodelist(text) == hosts


def test_a_host_list_that_cannot_be_read_is_named() -> None:
    with pytest.raises(ConfigError, match=r"SLURM_JOB_NODELIST='gpu\[a-b\]': cannot read the range 'a-b'"):
        cluster.expand_nodelist("gpu[a-b]")


@pytest.mark.parametrize(
    "env, gpus",
    [
        ({"SLURM_GPUS_ON_NODE": "4"}, 4),
        ({"CUDA_VISIBLE_DEVICES": "0,1,2"}, 3),
        ({"SLURM_GPUS_PER_NODE": "a100:8"}, 8),
        ({}, 1),
    ],
)
def test_gpus_per_node(env: dict[str, str], gpus: int) -> None:
    assert cluster.gpus_per_node(env) == gpus


def test_static_rendezvous_puts_rank_zero_on_the_first_node() -> None:
    command = cluster.torchrun_command({**SLURM, "SLURM_GPUS_ON_NODE": "8"}, ["-opt", "x.yml"])
    assert command == [
        "torchrun", "--nnodes", "2", "--nproc_per_node", "8", "--node_rank", "1", "--master_addr", "gpu07",
        "--master_port", str(20000 + 81234 % 20000), "--max-restarts", "0", "-m", "drsformer.train", "-opt", "x.yml",
        "--resume", "auto",
    ]  # fmt: skip


def test_c10d_rendezvous_restarts_and_an_explicit_resume() -> None:
    env = {**SLURM, "MASTER_PORT": "29400"}
    command = cluster.torchrun_command(env, ["-opt", "x.yml", "--resume", "s.state"], rdzv="c10d", max_restarts=3)
    text = shlex.join(command)
    assert "--rdzv_backend c10d --rdzv_endpoint gpu07:29400 --rdzv_id 81234 --max-restarts 3" in text
    assert text.endswith("--resume s.state") and "--resume auto" not in text and "--node_rank" not in text


def test_outside_an_allocation_the_launcher_says_so() -> None:
    with pytest.raises(ConfigError, match="SLURM_JOB_NODELIST is not set"):
        cluster.torchrun_command({}, [])
    with pytest.raises(ConfigError, match="SLURM_NODEID is not set: start one task per node"):
        cluster.torchrun_command({"SLURM_JOB_NODELIST": "a1"}, [])


def test_the_sbatch_script_builds_each_nodes_command_from_fake_slurm_variables(tmp_path) -> None:
    env = {
        "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",
        "PYTHONPATH": str(ROOT),
        "PYTHON": sys.executable,
        "DRSFORMER_DRY_RUN": "1",
        "RDZV": "static",
        **SLURM,
        "SLURM_GPUS_ON_NODE": "4",
    }
    script = ROOT / "scripts" / "slurm_train.sh"
    args = ["bash", str(script), "options/train/SPA.yml", "--set", "name=two words"]
    result = subprocess.run(args, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60)
    assert result.returncode == 0, result.stderr
    line = result.stdout.strip()
    assert line.startswith("node 1: torchrun --nnodes 2 --nproc_per_node 4 --node_rank 1 --master_addr gpu07")
    assert line.endswith("-m drsformer.train -opt options/train/SPA.yml --set 'name=two words' --resume auto")
    missing = subprocess.run(["bash", str(script)], capture_output=True, text=True, env=env, timeout=60)
    assert missing.returncode == 2 and "usage: sbatch" in missing.stderr
    outside = {k: v for k, v in env.items() if k != "SLURM_JOB_ID"}
    result = subprocess.run(args, capture_output=True, text=True, env=outside, cwd=tmp_path, timeout=60)
    assert result.returncode != 0 and "SLURM_JOB_ID is not set" in result.stderr


# ---------------------------------------------------------------- devices and the process group's store


def test_one_gpu_per_task_uses_the_visible_gpu(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert distributed.cuda_device(3) == torch.device("cuda", 0)  # Slurm gave this task GPU 3 as its cuda:0
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert distributed.cuda_device(1) == torch.device("cuda", 1)
    with pytest.raises(ConfigError, match="LOCAL_RANK 3 but only 2 GPU"):
        distributed.cuda_device(3)


def test_each_elastic_round_gets_its_own_keys(monkeypatch) -> None:
    """torchrun's agent hosts the store; the workers of round 1 must not see the keys round 0 left there."""
    agent = torch.distributed.TCPStore("127.0.0.1", 0, 1, is_master=True, timeout=timedelta(seconds=30))
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(agent.port))
    monkeypatch.setenv("TORCHELASTIC_USE_AGENT_STORE", "True")
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "0")
    first = distributed.rendezvous_store(0, 1, timedelta(seconds=30))
    first.set("rank0", "round 0")
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    second = distributed.rendezvous_store(0, 1, timedelta(seconds=30))
    assert not second.check(["rank0"]) and first.get("rank0") == b"round 0"
    assert agent.check(["drsformer/round0/rank0"])  # what a worker of round 0 wrote, kept apart
    monkeypatch.delenv("MASTER_ADDR")
    with pytest.raises(ConfigError, match="MASTER_ADDR/MASTER_PORT are not set; start several processes with torchrun"):
        distributed.rendezvous_store(0, 2, timedelta(seconds=1))


def test_the_launcher_module_prints_a_command(monkeypatch, capsys) -> None:
    for key, value in SLURM.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(os, "environ", dict(os.environ))
    assert cluster.main(["slurm", "--rdzv", "c10d", "--", "-opt", "a.yml"]) == 0
    assert "--rdzv_endpoint gpu07:21234 --rdzv_id 81234" in capsys.readouterr().out
