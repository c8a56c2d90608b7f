"""drsformer train: the authors' options file, exact resume after SIGKILL, DDP with gloo, schedules, accumulation,
the NaN guard, mixed precision, and the errors raised before the first step."""

import contextlib
import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import DATA, TINY, make_pairs

from drsformer.archs import DRSformer, from_checkpoint
from drsformer.archs.variants import VARIANTS
from drsformer.cli import main
from drsformer.config import load_options, resolve_options
from drsformer.engine.build import GRAD_STRIDE_WARNING
from drsformer.engine.trainer import Trainer
from drsformer.errors import ConfigError, TrainingError
from drsformer.losses import L1Loss
from drsformer.optim import CosineAnnealingRestartCyclicLR, CosineAnnealingRestartLR
from drsformer.registry import ARCH_REGISTRY, LOSS_REGISTRY, METRIC_REGISTRY

TINY_NET = ["network_g.dim=8", "network_g.num_blocks=[1,1,1,1]", "network_g.heads=[1,2,4,8]"]


def _records(run_dir: Path, kind: str) -> list[dict]:
    lines = (run_dir / "log.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == kind]


def _tiny_options(tmp_path: Path, **sections) -> Path:
    """A small options file over 6 training pairs and 2 validation pairs (made once per folder)."""
    if not (tmp_path / "data").exists():
        make_pairs(tmp_path / "data" / "train", n=6)
        make_pairs(tmp_path / "data" / "test", n=2, seed=1)
    options = {
        "name": "tiny",
        "manual_seed": 3,
        "datasets": {
            "train": {
                "dataroot_lq": str(tmp_path / "data/train/input"),
                "dataroot_gt": str(tmp_path / "data/train/target"),
                "geometric_augs": True,
                "num_worker_per_gpu": 0,
                "batch_size_per_gpu": 2,
                "gt_size": 16,
            },
            "val": {
                "dataroot_lq": str(tmp_path / "data/test/input"),
                "dataroot_gt": str(tmp_path / "data/test/target"),
            },
        },
        "network_g": {"type": "DRSformer", "dim": 8, "num_blocks": [1, 1, 1, 1], "heads": [1, 2, 4, 8], "mefc": False},
        "path": {"experiments_root": str(tmp_path / "run")},
        "train": {"total_iter": 6},
        "val": {"val_freq": 3, "protocol": "restormer"},
        "logger": {"print_freq": 1, "save_checkpoint_freq": 3, "use_tb_logger": False},
    }
    for section, values in sections.items():
        options[section] = {**options.get(section, {}), **values}
    path = tmp_path / "tiny.yml"
    path.write_text(yaml.safe_dump(options))
    return path


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["params"]


# ---------------------------------------------------------------- the authors' file, through the CLI


def test_authors_options_file_trains_validates_and_saves_loadable_weights(tmp_path, capsys) -> None:
    make_pairs(tmp_path / "Datasets/train/Rain200H", n=4)
    make_pairs(tmp_path / "Datasets/test/Rain200H", n=2, seed=1)
    overrides = [
        *(
            f"datasets.{s}.dataroot_{k}={tmp_path}/Datasets/{p}/Rain200H/{d}"
            for s, p in (("train", "train"), ("val", "test"))
            for k, d in (("lq", "input"), ("gt", "target"))
        ),
        *TINY_NET,
        "datasets.train.gt_size=16 datasets.train.gt_sizes=[16] datasets.train.num_worker_per_gpu=0",
        f"train.total_iter=4 val.val_freq=2 logger.print_freq=2 path.experiments_root={tmp_path}/run",
    ]
    argv = ["train", "-opt", str(DATA / "authors_deraining.yml"), "--no-progress"]
    for item in overrides:
        argv += ["--set", *item.split()]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "info: model_type is ignored here" in err and "info: val.rgb2bgr is ignored here" in err
    assert err.count("info: logger.wandb") == 1
    run = tmp_path / "run"
    validations = _records(run, "val")
    assert [v["iter"] for v in validations] == [2, 4]
    assert all(math.isfinite(v["psnr"]) and v["protocol"] == "restormer" for v in validations)
    train = _records(run, "train")
    assert {"iter", "lr", "loss", "grad_norm", "images_per_s", "data_wait_s"} <= set(train[-1])
    model = from_checkpoint(run / "models" / "net_g_latest.pth")
    assert model.config["dim"] == 8 and model.config["mefc"] is True
    saved = yaml.safe_load((run / "options.yml").read_text())
    assert saved["train"]["total_iter"] == 4 and saved["datasets"]["train"]["mini_batch_sizes"] == [4]
    assert (run / "train.log").read_text().count("validation") == 2


# ---------------------------------------------------------------- exact resume


FAULTS = Path(__file__).with_name("train_with_faults.py")  # drsformer train with faults at exact points


def _train_process(options: Path, *extra: str, kill_at: int = 0, signal_at: int = 0) -> subprocess.Popen:
    command = [sys.executable, str(FAULTS), "-opt", str(options), "--no-progress", *extra]
    env = {**os.environ, "FAULT_KILL_AT": str(kill_at), "FAULT_SIGNAL_AT": str(signal_at)}
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)


def test_a_run_killed_after_a_save_resumes_to_bit_identical_weights(tmp_path) -> None:
    options = _tiny_options(
        tmp_path,
        train={"total_iter": 16, "ema_decay": 0.9, "mixing_augs": {"mixup": True, "use_identity": True}},
        val={"val_freq": 8},
        logger={"print_freq": 4, "save_checkpoint_freq": 4, "use_tb_logger": True},
    )
    reference = _train_process(options, "--set", f"path.experiments_root={tmp_path}/whole")
    assert reference.wait(timeout=300) == 0, reference.stdout.read()

    killed = _train_process(options, kill_at=8)
    killed.communicate(timeout=300)
    assert killed.returncode == -signal.SIGKILL
    states = tmp_path / "run" / "training_states"
    assert sorted(int(p.stem) for p in states.glob("*.state")) == [4, 8]

    resumed = _train_process(options, "--resume", "auto")
    output = resumed.communicate(timeout=300)[0]
    assert resumed.returncode == 0, output
    assert f"resumed from {states / '8.state'}" in output
    whole = torch.load(tmp_path / "whole/models/net_g_latest.pth", weights_only=True)
    again = torch.load(tmp_path / "run/models/net_g_latest.pth", weights_only=True)
    for key in ("params", "params_ema"):
        assert all(torch.equal(whole[key][k], again[key][k]) for k in whole[key]), key
    assert whole["validated"] == "params_ema"  # the run validated its EMA weights: test and derain take them
    # log.jsonl holds each iteration once, as if the run had never stopped.
    iterations = [r["iter"] for r in _records(tmp_path / "run", "train")]
    assert iterations == [4, 8, 12, 16]


def test_resume_auto_passes_over_unreadable_states_and_keeps_them(tmp_path, capsys) -> None:
    options = _tiny_options(tmp_path, train={"total_iter": 6}, val={"val_freq": 6}, logger={"save_checkpoint_freq": 2})
    assert main(["train", "-opt", str(options), "--no-progress"]) == 0
    run = tmp_path / "run"
    uninterrupted = _weights(run / "models/net_g_latest.pth")
    states = run / "training_states"
    damaged = {
        "6.state": (states / "6.state").read_bytes()[:5000],  # cut short
        "4.state": bytearray((states / "4.state").read_bytes()),
    }
    damaged["4.state"][len(damaged["4.state"]) // 2] ^= 0x10  # one flipped bit in the tensor data
    for name, data in damaged.items():
        (states / name).write_bytes(bytes(data))
    capsys.readouterr()

    assert main(["train", "-opt", str(options), "--no-progress", "--resume", "auto"]) == 0
    log = (run / "train.log").read_text()
    for name in ("6.state", "4.state"):
        (line,) = [line for line in log.splitlines() if f"{name}: unreadable" in line]
        assert f"kept as {name}.unreadable" in line
        assert (states / f"{name}.unreadable").read_bytes() == bytes(damaged[name])  # never deleted or changed
    assert f"resumed from {states / '2.state'}" in log
    again = _weights(run / "models/net_g_latest.pth")
    assert all(torch.equal(uninterrupted[k], again[k]) for k in uninterrupted)

    for state in states.glob("*.state"):
        state.write_bytes(b"not a state")
    assert main(["train", "-opt", str(options), "--no-progress", "--resume", "auto"]) == 2
    assert "no training state can be read (6.state, 4.state, 2.state)" in capsys.readouterr().err


def test_resume_auto_without_a_state_starts_a_new_run(tmp_path) -> None:
    options = _tiny_options(tmp_path, train={"total_iter": 2})
    assert main(["train", "-opt", str(options), "--no-progress", "--resume", "auto"]) == 0
    assert "--resume auto: no training state in" in (tmp_path / "run/train.log").read_text()


def test_a_state_saved_with_another_world_size_is_refused(tmp_path) -> None:
    options = _tiny_options(tmp_path, train={"total_iter": 3})
    assert main(["train", "-opt", str(options), "--no-progress"]) == 0
    state_path = tmp_path / "run/training_states/3.state"
    state = torch.load(state_path, weights_only=True)
    state["sampler"]["world_size"] = 4
    torch.save(state, state_path)
    resolved = resolve_options(load_options(options, ["train.total_iter=6"])).options
    with pytest.raises(ConfigError, match=r"saved by a run on 4 process\(es\) and this run has 1"):
        Trainer(resolved, resume="auto").run(progress_bar=False)


def test_a_second_run_into_the_same_folder_must_say_resume(tmp_path, capsys) -> None:
    options = _tiny_options(tmp_path, train={"total_iter": 3})
    assert main(["train", "-opt", str(options), "--no-progress"]) == 0
    assert main(["train", "-opt", str(options), "--no-progress"]) == 2
    assert "already holds training states (newest: 3.state); continue it with --resume auto" in capsys.readouterr().err


# ---------------------------------------------------------------- several processes


def test_two_gloo_processes_under_torchrun_end_with_the_same_weights(tmp_path) -> None:
    # Two micro-batches of 2 crops per process and step: DDP's no_sync runs on the first one.
    options = _tiny_options(tmp_path, train={"total_iter": 4, "effective_batch_size": 8}, val={"val_freq": 2})
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    command += ["-m", "drsformer.train", "-opt", str(options), "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    run = tmp_path / "run"
    (replicas,) = _records(run, "replicas")
    assert replicas["processes"] == 2 and replicas["max_difference"] == 0.0
    assert "2 process(es) on cpu" in (run / "train.log").read_text()
    assert "batch per step [8] (batch x accumulation x processes)" in (run / "train.log").read_text()
    # Validation is sharded (one image per process) and the sums all-reduced: both images are counted.
    assert "validation val (2 images" in (run / "train.log").read_text()
    assert result.stdout.count("done: weights in") == 1  # only rank 0 reports
    assert GRAD_STRIDE_WARNING not in result.stderr


@pytest.mark.parametrize("variant", ["drsformer", "restormer"])
def test_cpu_weight_gradients_differ_from_their_weights_in_size_one_dimensions_only(variant) -> None:
    # What silencing DDP's layout warning on CPU rests on (drsformer.engine.build.wrap_ddp).
    model = VARIANTS[variant](**TINY) if variant == "drsformer" else VARIANTS[variant](dim=8, num_blocks=[1, 1, 1, 1])
    image = torch.rand(2, 3, 16, 16)
    (model(image) - image).abs().mean().backward()
    differing = 0
    for name, weight in model.named_parameters():
        assert weight.grad is not None, name
        if weight.grad.stride() != weight.stride():
            differing += 1
            pairs = zip(weight.grad.stride(), weight.stride(), weight.shape, strict=True)
            assert all(a == b for a, b, size in pairs if size > 1), name
    assert differing > 0  # the warning's cause is still there (else the filter can go)


def _torchrun(*args: str, cwd: Path | None = None, env: dict | None = None) -> subprocess.Popen:
    command = [sys.executable, "-m", "torch.distributed.run", "--monitor-interval", "0.5", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=cwd)


def _kill_all(process: subprocess.Popen) -> str:
    """Kills torchrun and its workers (which hold its output open), and returns what they printed."""
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            pid, ppid = int(stat.parent.name), int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        parents.setdefault(ppid, []).append(pid)
    family, queue = [], [process.pid]
    while queue:
        pid = queue.pop()
        family.append(pid)
        queue += parents.get(pid, [])
    for pid in family:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return process.communicate()[0]


def _same(a: Path, b: Path) -> bool:
    first, second = _weights(a), _weights(b)
    return first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


def test_an_elastic_restart_after_a_killed_worker_ends_with_bit_identical_weights(tmp_path) -> None:
    """torchrun --max-restarts 1: worker 1 is killed right after the save of iteration 4; torchrun restarts the
    group, the workers re-form it (a store prefix per round) and resume from 4 by themselves."""
    options = _tiny_options(tmp_path, train={"total_iter": 8}, val={"val_freq": 100},
                            logger={"print_freq": 4, "save_checkpoint_freq": 4})  # fmt: skip
    common = ["--standalone", "--nproc_per_node", "2"]
    whole = _torchrun(*common, str(FAULTS), "-opt", str(options), "--no-progress",
                      "--set", f"path.experiments_root={tmp_path}/whole")  # fmt: skip
    assert whole.wait(timeout=300) == 0, whole.stdout.read()
    elastic = _torchrun(*common, "--max-restarts", "1", str(FAULTS), "-opt", str(options), "--no-progress",
                        env={"FAULT_KILL_AT": "4", "FAULT_KILL_RANK": "1"})  # fmt: skip
    output = elastic.communicate(timeout=300)[0]
    assert elastic.returncode == 0, output
    log = (tmp_path / "run" / "train.log").read_text()
    assert "elastic restart 1: the processes re-formed their group" in log
    assert f"resumed from {tmp_path / 'run' / 'training_states' / '4.state'} at iteration 4" in log
    assert _same(tmp_path / "whole/models/net_g_latest.pth", tmp_path / "run/models/net_g_latest.pth")


def test_out_of_memory_in_one_processs_validation_stops_every_process(tmp_path) -> None:
    """Rank 1 runs out of memory on its validation image while rank 0 scores its own: both agree on the failure
    in the collective that sums the scores, save the iteration together and stop, instead of rank 0 waiting in
    that collective for the 30-minute timeout."""
    options = _tiny_options(tmp_path, train={"total_iter": 4}, val={"val_freq": 2},
                            logger={"print_freq": 1, "save_checkpoint_freq": 4})  # fmt: skip
    run = _torchrun("--standalone", "--nproc_per_node", "2", str(FAULTS), "-opt", str(options), "--no-progress",
                    env={"FAULT_VAL_OOM_RANK": "1"})  # fmt: skip
    try:
        output = run.communicate(timeout=120)[0]
    except subprocess.TimeoutExpired:
        pytest.fail("the processes hung after one of them failed in validation: " + _kill_all(run)[-2000:])
    assert run.returncode != 0
    assert "validation of val at iteration 2: out of memory (injected)" in output
    assert "validation of val at iteration 2 failed in 1 other process(es)" in output
    assert sorted(p.name for p in (tmp_path / "run/training_states").glob("*.state")) == ["2.state"]


def test_two_nodes_with_their_own_disks_resume_from_the_main_nodes_state(tmp_path) -> None:
    """Two torchrun "nodes" on this machine, each in its own folder (run folders on local disks). Killed after
    the save of iteration 4 and restarted, node 1 has no state of its own: the main process sends it its own."""
    import socket

    options = _tiny_options(tmp_path, train={"total_iter": 8}, val={"val_freq": 100},
                            logger={"print_freq": 4, "save_checkpoint_freq": 4},
                            path={"experiments_root": "run"})  # fmt: skip

    def both(label: str, *extra: str, kill_at: int = 0) -> list[subprocess.Popen]:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        nodes = []
        for rank in (0, 1):
            folder = tmp_path / label / f"node{rank}"
            folder.mkdir(parents=True, exist_ok=True)
            args = ["--nnodes", "2", "--node_rank", str(rank), "--nproc_per_node", "1", "--master_addr", "127.0.0.1",
                    "--master_port", str(port), str(FAULTS), "-opt", str(options), "--no-progress"]  # fmt: skip
            nodes.append(_torchrun(*args, *extra, cwd=folder, env={"FAULT_KILL_AT": str(kill_at)}))
        return nodes

    whole = both("whole")
    assert [p.wait(timeout=300) for p in whole] == [0, 0], whole[0].stdout.read() + whole[1].stdout.read()
    killed = both("cut", kill_at=4)
    assert all(p.wait(timeout=300) != 0 for p in killed)  # node 0's worker died; node 1's lost its peer
    node0, node1 = tmp_path / "cut" / "node0" / "run", tmp_path / "cut" / "node1" / "run"
    assert (node0 / "training_states" / "4.state").is_file() and not (node1 / "training_states").exists()
    resumed = both("cut", "--resume", "auto")
    outputs = [p.communicate(timeout=300)[0] for p in resumed]
    assert [p.returncode for p in resumed] == [0, 0], outputs
    assert "resumed from run/training_states/4.state at iteration 4" in (node0 / "train.log").read_text()
    assert not (node1 / "training_states").exists()  # only the main process writes
    assert _same(tmp_path / "whole/node0/run/models/net_g_latest.pth", node0 / "models/net_g_latest.pth")


@pytest.mark.parametrize("how", ["SIGUSR1", "stop file"])
def test_a_stop_request_saves_exits_75_and_resumes_exactly(tmp_path, how: str) -> None:
    """Slurm's warning before a time limit (SIGUSR1, or the stop file the sbatch script touches): the run saves
    at the end of its iteration and exits with 75 (EX_TEMPFAIL), which the script's requeue logic tests."""
    options = _tiny_options(tmp_path, train={"total_iter": 8}, val={"val_freq": 100},
                            logger={"print_freq": 4, "save_checkpoint_freq": 4})  # fmt: skip
    whole = _train_process(options, "--set", f"path.experiments_root={tmp_path}/whole")
    assert whole.wait(timeout=300) == 0
    if how == "SIGUSR1":
        stopped = _train_process(options, signal_at=3)
    else:
        stop_file = tmp_path / "stop"
        stop_file.touch()
        command = [sys.executable, "-m", "drsformer.train", "-opt", str(options), "--no-progress"]
        env = {**os.environ, "DRSFORMER_STOP_FILE": str(stop_file)}
        stopped = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    output = stopped.communicate(timeout=300)[0]
    at = 3 if how == "SIGUSR1" else 1
    assert stopped.returncode == 75, output
    assert f"stopped at iteration {at} ({'SIGUSR1'}); the state of iteration {at} is saved" in output
    resumed = _train_process(options, "--resume", "auto")
    assert resumed.wait(timeout=300) == 0
    assert _same(tmp_path / "whole/models/net_g_latest.pth", tmp_path / "run/models/net_g_latest.pth")


def test_a_deterministic_run_on_cpu(tmp_path) -> None:
    options = _tiny_options(tmp_path, train={"total_iter": 2, "deterministic": True}, val={"val_freq": 2})
    before = torch.are_deterministic_algorithms_enabled()
    assert main(["train", "-opt", str(options), "--no-progress"]) == 0
    assert torch.are_deterministic_algorithms_enabled() == before  # process-wide settings are put back
    assert _records(tmp_path / "run", "val")


# ---------------------------------------------------------------- learning rates


def _lr_values(scheduler_class, steps: int, **kwargs) -> list[float]:
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=3e-4)
    scheduler = scheduler_class(optimizer, **kwargs)
    values = [scheduler.get_last_lr()[0]]
    for _ in range(steps):
        optimizer.step()
        scheduler.step()
        values.append(scheduler.get_last_lr()[0])
    return values


def test_cyclic_cosine_values_at_every_cycle_edge() -> None:
    values = _lr_values(
        CosineAnnealingRestartCyclicLR, 302, periods=[92, 208], restart_weights=[1, 1], eta_mins=[3e-4, 1e-6]
    )
    assert all(v == pytest.approx(3e-4, abs=1e-15) for v in values[:93])  # steps 0..92: the constant cycle
    # Step 93 opens the cosine cycle: 1e-6 + (3e-4 - 1e-6) / 2 * (1 + cos(pi * 1 / 208)).
    assert values[93] == pytest.approx(1e-6 + 0.5 * 299e-6 * (1 + math.cos(math.pi / 208)), rel=1e-12)
    assert values[196] == pytest.approx(1e-6 + 0.5 * 299e-6, rel=1e-12)  # halfway: 104 of 208
    assert values[300] == pytest.approx(1e-6, rel=1e-12)  # the last step of the schedule
    assert values[301] == values[302] == values[300]  # beyond it the rate stays at its final value


def test_restart_cosine_values_at_every_cycle_edge() -> None:
    values = _lr_values(CosineAnnealingRestartLR, 30, periods=[10, 10, 10], restart_weights=[1, 0.5, 0.5], eta_min=1e-7)
    base, low = 3e-4, 1e-7
    assert values[0] == pytest.approx(base) and values[10] == pytest.approx(low)
    assert values[11] == pytest.approx(low + 0.5 * 0.5 * (base - low) * (1 + math.cos(math.pi / 10)))
    assert values[20] == pytest.approx(low) and values[30] == pytest.approx(low)
    assert values[5] == pytest.approx(low + 0.5 * (base - low))


def test_iteration_i_uses_the_schedule_value_at_i_minus_1_and_warmup_scales_it(tmp_path) -> None:
    options = _tiny_options(
        tmp_path,
        train={
            "total_iter": 8,
            "warmup_iter": 3,
            "scheduler": {"type": "CosineAnnealingRestartLR", "periods": [8], "eta_min": 0.0},
        },
        val={"val_freq": 100},
    )
    assert main(["train", "-opt", str(options), "--no-progress"]) == 0
    logged = {r["iter"]: r["lr"] for r in _records(tmp_path / "run", "train")}
    for i in range(1, 9):
        expected = 3e-4 * i / 3 if i < 3 else 0.5 * 3e-4 * (1 + math.cos(math.pi * (i - 1) / 8))
        assert logged[i] == pytest.approx(expected, rel=1e-12), i


# ---------------------------------------------------------------- accumulation


def test_two_accumulated_batches_of_two_equal_one_batch_of_four(tmp_path) -> None:
    make_pairs(tmp_path / "square", n=4, size=(16, 16))  # crops of the full size: no random crop
    weights = {}
    for name, batch, accum in (("accum", 2, 2), ("plain", 4, 1)):
        options = _tiny_options(
            tmp_path,
            train={"total_iter": 1, "grad_accum_steps": accum, "optim_g": {"type": "SGD", "lr": 0.5}},
            val={"val_freq": 100},
        )
        resolved = resolve_options(
            load_options(
                options,
                [
                    f"path.experiments_root={tmp_path}/{name}",
                    f"datasets.train.dataroot_lq={tmp_path}/square/input",
                    f"datasets.train.dataroot_gt={tmp_path}/square/target",
                    "datasets.train.gt_size=16",
                    "datasets.train.geometric_augs=false",
                    "datasets.train.use_shuffle=false",
                    f"datasets.train.batch_size_per_gpu={batch}",
                ],
            )
        ).options
        Trainer(resolved).run(progress_bar=False)
        weights[name] = _weights(tmp_path / name / "models/net_g_latest.pth")
    difference = max((weights["accum"][k] - weights["plain"][k]).abs().max().item() for k in weights["plain"])
    torch.manual_seed(3)  # the runs' seed: their initial weights
    initial = DRSformer(**{k: v for k, v in resolved["network_g"].items() if k != "type"}).state_dict()
    moved = max((weights["plain"][k] - initial[k]).abs().max().item() for k in initial)
    assert difference < 1e-6 and moved > 1e-3  # the step moved the weights, the same way


# ---------------------------------------------------------------- the NaN guard


class NaNOnCalls(L1Loss):
    """L1 loss that returns NaN on the listed calls (1-based), to exercise the guard."""

    def __init__(self, nan_calls: list[int], loss_weight: float = 1.0, reduction: str = "mean") -> None:
        super().__init__(loss_weight, reduction)
        self.nan_calls, self.calls = set(nan_calls), 0

    def forward(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        loss = super().forward(prediction, target)
        return loss * float("nan") if self.calls in self.nan_calls else loss


class ScaledOnCalls(L1Loss):
    """L1 loss times ``factor`` on the listed calls: finite, but its fp16 gradients overflow."""

    def __init__(self, calls: list[int], factor: float, loss_weight: float = 1.0, reduction: str = "mean") -> None:
        super().__init__(loss_weight, reduction)
        self.scaled_calls, self.factor, self.calls = set(calls), factor, 0

    def forward(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        loss = super().forward(prediction, target)
        return loss * self.factor if self.calls in self.scaled_calls else loss


def FailingMetric(fail_at: int):  # noqa: N802 (a metric factory, named as options files name it)
    """PSNR that raises on its ``fail_at``-th image."""
    from drsformer.metrics import torch_metrics

    calls = [0]

    def psnr(restored: torch.Tensor, target: torch.Tensor, protocol: str) -> torch.Tensor:
        calls[0] += 1
        if calls[0] == fail_at:
            raise RuntimeError("metric failed")
        return torch_metrics.psnr(restored, target, protocol)

    return psnr


for _loss in (NaNOnCalls, ScaledOnCalls):
    if _loss.__name__ not in LOSS_REGISTRY:
        LOSS_REGISTRY.add(_loss)
if "FailingMetric" not in METRIC_REGISTRY:
    METRIC_REGISTRY.add(FailingMetric)


def test_a_non_finite_loss_skips_the_step_and_is_counted(tmp_path) -> None:
    options = _tiny_options(tmp_path, train={"total_iter": 6, "pixel_opt": {"type": "NaNOnCalls", "nan_calls": [2]}})
    resolved = resolve_options(load_options(options)).options
    Trainer(resolved).run(progress_bar=False)
    run = tmp_path / "run"
    (skip,) = _records(run, "skip")
    assert skip["iter"] == 2 and skip["loss"] is None
    assert "iteration 2: non-finite loss (loss nan, grad norm nan); step skipped" in (run / "train.log").read_text()
    state = torch.load(run / "training_states/6.state", weights_only=True)
    assert state["progress"]["bad_steps_total"] == 1 and state["progress"]["rollbacks"] == 0
    assert all(torch.isfinite(v).all() for v in _weights(run / "models/net_g_latest.pth").values())


def test_repeated_non_finite_losses_reload_the_last_state_with_half_the_rate(tmp_path) -> None:
    options = _tiny_options(
        tmp_path,
        train={"total_iter": 8, "max_bad_steps": 2, "pixel_opt": {"type": "NaNOnCalls", "nan_calls": [5, 6]}},
        logger={"print_freq": 1, "save_checkpoint_freq": 2, "use_tb_logger": False},
        val={"val_freq": 100},
    )
    resolved = resolve_options(load_options(options)).options
    Trainer(resolved).run(progress_bar=False)
    run = tmp_path / "run"
    log = (run / "train.log").read_text()
    assert "reloaded 4.state (iteration 4) and halved the learning rate (factor 0.5, rollback 1" in log
    rates = {r["iter"]: r["lr"] for r in _records(run, "train")}
    assert rates[4] == pytest.approx(3e-4) and rates[8] == pytest.approx(1.5e-4)
    state = torch.load(run / "training_states/8.state", weights_only=True)
    assert state["progress"]["lr_factor"] == 0.5 and state["progress"]["bad_steps_total"] == 2


def test_a_streak_that_straddles_a_save_rolls_back_to_before_it(tmp_path) -> None:
    """Iterations 3 to 5 fail; the save due at 4 falls inside the streak, so it is not made, and the rollback
    returns to 2 (a state saved at 4 would hold the streak's weights, and every retry would fail alike)."""
    options = _tiny_options(
        tmp_path,
        train={"total_iter": 6, "max_bad_steps": 3, "pixel_opt": {"type": "NaNOnCalls", "nan_calls": [3, 4, 5]}},
        logger={"print_freq": 1, "save_checkpoint_freq": 2, "use_tb_logger": False},
        val={"val_freq": 100},
    )
    Trainer(resolve_options(load_options(options)).options).run(progress_bar=False)
    log = (tmp_path / "run" / "train.log").read_text()
    assert "iteration 4: not saving while steps are failing (since iteration 3)" in log
    assert "iterations 3..5: 3 bad steps; reloaded 2.state (iteration 2) and halved the learning rate" in log
    saves = [int(line.split("net_g_")[1].split(".")[0]) for line in log.splitlines() if "saved net_g_" in line]
    assert saves == [2, 4, 6]  # 4 only after the rollback, from good steps


@pytest.mark.parametrize("calls, rolled_back", [([2, 3], False), ([5, 6, 7], True)])
def test_fp16_overflows_are_counted_and_a_run_of_them_rolls_back(tmp_path, calls, rolled_back: bool) -> None:
    options = _tiny_options(
        tmp_path,
        train={
            "total_iter": 8,
            "precision": "fp16",
            "max_skipped_steps": 3,
            "ema_decay": 0.5,
            "pixel_opt": {"type": "ScaledOnCalls", "calls": calls, "factor": 1e8},
        },
        logger={"print_freq": 1, "save_checkpoint_freq": 4, "use_tb_logger": False},
        val={"val_freq": 100},
    )
    Trainer(resolve_options(load_options(options)).options).run(progress_bar=False)
    run = tmp_path / "run"
    skips = _records(run, "skip")
    assert [r["iter"] for r in skips] == calls and all(r["reason"] == "fp16 overflow" for r in skips)
    assert [r["scale"] for r in skips[:2]] == [2.0**15, 2.0**14]  # each skip halves the scale
    assert _records(run, "train")[0]["loss_scale"] == 2.0**16
    assert all(math.isfinite(r["loss"]) for r in _records(run, "train") if r["iter"] not in calls)
    log = (run / "train.log").read_text()
    assert ("3 steps skipped by the fp16 gradient scaler; reloaded 4.state (iteration 4)" in log) == rolled_back
    state = torch.load(run / "training_states/8.state", weights_only=True)
    assert state["progress"]["skipped_steps_total"] == len(calls) and state["progress"]["bad_steps_total"] == 0


def test_a_failing_validation_loses_no_iterations(tmp_path) -> None:
    """The state of an iteration is saved before its validation runs; a validation that fails (here, a metric
    that raises at its third image) leaves it on disk."""
    options = _tiny_options(
        tmp_path,
        train={"total_iter": 8},
        val={"val_freq": 2, "metrics": {"psnr": {"type": "FailingMetric", "fail_at": 3}}},
        logger={"print_freq": 1, "save_checkpoint_freq": 4, "use_tb_logger": False},
    )
    with pytest.raises(RuntimeError, match="metric failed"):
        Trainer(resolve_options(load_options(options)).options).run(progress_bar=False)
    states = sorted(int(p.stem) for p in (tmp_path / "run/training_states").glob("*.state"))
    assert states == [2, 4]  # 2: validated fine (best, saved); 4: due, saved before the failing validation


def test_non_finite_losses_before_any_save_stop_with_a_message(tmp_path) -> None:
    options = _tiny_options(
        tmp_path,
        train={"total_iter": 8, "max_bad_steps": 3, "pixel_opt": {"type": "NaNOnCalls", "nan_calls": [1, 2, 3]}},
    )
    resolved = resolve_options(load_options(options)).options
    with pytest.raises(TrainingError, match=r"iterations 1..3: 3 bad steps, before any checkpoint was saved"):
        Trainer(resolved).run(progress_bar=False)


# ---------------------------------------------------------------- precision and memory options


@pytest.mark.parametrize("before, after", [("fp16", "bf16"), ("fp32", "fp16"), ("bf16", "fp32")])
def test_resuming_with_another_precision_starts_a_fresh_scaler(tmp_path, before: str, after: str) -> None:
    options = _tiny_options(tmp_path, train={"total_iter": 2, "precision": before}, val={"val_freq": 100})
    assert main(["train", "-opt", str(options), "--no-progress"]) == 0
    resumed = ["--resume", "auto", "--set", "train.total_iter=4", f"train.precision={after}"]
    assert main(["train", "-opt", str(options), "--no-progress", *resumed]) == 0
    log = (tmp_path / "run" / "train.log").read_text()
    assert f"train.precision: 2.state was saved with {before}, this run uses {after}; the gradient scaler starts" in log
    losses = [r["loss"] for r in _records(tmp_path / "run", "train")]
    assert len(losses) == 4 and all(math.isfinite(v) for v in losses)


def test_a_training_step_reads_from_the_device_once(tmp_path, monkeypatch) -> None:
    """One device-to-host read per iteration (the folded flags), plus a few per log line: every other scalar
    stays on the device. Counted as aten._local_scalar_dense calls (item, float, bool) and tolist calls, except
    the data pipeline's own (its index permutations are host tensors)."""
    import traceback

    from torch.utils._python_dispatch import TorchDispatchMode

    from drsformer.engine.signals import StopRequest

    def count() -> None:
        if not any("torch/utils/data" in frame.filename for frame in traceback.extract_stack()):
            reads[0] += 1

    options = _tiny_options(
        tmp_path,
        train={"total_iter": 12, "optim_g": {"type": "SGD", "lr": 0.01}},
        logger={"print_freq": 6, "save_checkpoint_freq": 100, "use_tb_logger": False},
    )
    resolved = resolve_options(load_options(options)).options
    del resolved["datasets"]["val"]
    reads = [0]

    class CountReads(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func is torch.ops.aten._local_scalar_dense.default:
                count()
            return func(*args, **(kwargs or {}))

    tolist = torch.Tensor.tolist

    def counted_tolist(self):
        count()
        return tolist(self)

    trainer = Trainer(resolved)
    trainer.build(progress_bar=False)
    monkeypatch.setattr(torch.Tensor, "tolist", counted_tolist)
    with CountReads():
        trainer._loop(StopRequest())
    trainer.logger.close()
    logs, iterations = 2, 12
    assert reads[0] <= iterations + 3 * logs, reads[0]


# ---------------------------------------------------------------- out of memory


@ARCH_REGISTRY.register()
class OomAbove(DRSformer):
    """A DRSformer that runs out of (simulated) GPU memory on inputs of more than ``pixels`` pixels."""

    def __init__(self, pixels: int, dim: int, num_blocks: list[int], heads: list[int], mefc: bool) -> None:
        super().__init__(dim=dim, num_blocks=num_blocks, heads=heads, mefc=mefc)
        self.pixels = pixels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2] * x.shape[-1] > self.pixels:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return super().forward(x)


@pytest.mark.parametrize(
    "pixels, message",
    [
        (
            100,
            "out of memory in training iteration 1 (2 crops per process on cpu); no state was saved yet. "
            "Lower datasets.train.batch_size_per_gpu",
        ),
        (
            16 * 16,
            "validation of val at iteration 3, 0.png: out of memory on cpu restoring 32x40 pixels; use val.tile "
            "256 (tiles are exact",
        ),
    ],
)
def test_out_of_memory_is_one_line_saying_where_and_what_to_change(tmp_path, capsys, pixels, message) -> None:
    options = _tiny_options(tmp_path, network_g={"type": "OomAbove", "pixels": pixels}, train={"total_iter": 4})
    assert main(["train", "-opt", str(options), "--no-progress"]) == 2
    (error,) = [line for line in capsys.readouterr().err.splitlines() if line.startswith("drsformer train: error:")]
    assert message in error, error
    if pixels > 100:  # validation: the state of its iteration was saved first
        assert (tmp_path / "run" / "training_states" / "3.state").is_file()


# ---------------------------------------------------------------- errors before the first step


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["datasets.train.dataroot_lq=/nowhere/input"], "datasets.train: input folder /nowhere/input does not exist"),
        (["datasets.train.gt_size=64"], "datasets.train.gt_size: crops of 64x64 are larger than"),
        (["train.effective_batch_size=5"], "train.effective_batch_size: 5 does not divide into batches of 2"),
        (["path.pretrain_network_g=/nowhere.pth"], "/nowhere.pth: no such file"),
        (["val.protocol=matlab"], "val.protocol: unknown protocol 'matlab'; choose from restormer, rcdnet, skimage"),
        (["val.tile=4"], "val.tile must be at least 8 pixels"),
        (["logger.print_freq=0"], "logger.print_freq: must be at least 1, got 0"),
        (["logger.save_checkpoint_freq=0"], "logger.save_checkpoint_freq: must be at least 1, got 0"),
        (["logger.keep_checkpoints=0"], "logger.keep_checkpoints: must be at least 1, got 0"),
        (["train.grad_clip_norm=0"], "train.grad_clip_norm: must be positive (leave it unset for no clipping)"),
        (["train.max_bad_steps=0"], "train.max_bad_steps: must be at least 1, got 0"),
        (["train.precision=fp8"], "train.precision: expected one of fp32, bf16, fp16, got 'fp8'"),
    ],
)
def test_setup_errors_name_the_key_before_any_step(tmp_path, capsys, overrides, message: str) -> None:
    options = _tiny_options(tmp_path)
    assert main(["train", "-opt", str(options), "--no-progress", "--set", *overrides]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "run" / "log.jsonl").exists() or not _records(tmp_path / "run", "train")


def test_validation_with_the_skimage_protocol(tmp_path) -> None:
    options = _tiny_options(tmp_path, train={"total_iter": 2}, val={"val_freq": 2, "protocol": "skimage"})
    assert main(["train", "-opt", str(options), "--no-progress"]) == 0
    (record,) = _records(tmp_path / "run", "val")
    assert record["protocol"] == "skimage" and math.isfinite(record["psnr"])


def test_pretrained_weights_of_another_variant_are_refused(tmp_path, capsys) -> None:
    from drsformer.archs import DRSformer

    torch.save({"params": DRSformer(dim=8, num_blocks=[1, 1, 1, 1], mefc=True).state_dict()}, tmp_path / "w.pth")
    options = _tiny_options(tmp_path, path={"pretrain_network_g": str(tmp_path / "w.pth")})
    assert main(["train", "-opt", str(options), "--no-progress"]) == 2
    assert "trained as a different DRSformer (mefc: True (network_g has False))" in capsys.readouterr().err


def test_a_time_budget_ends_the_run_with_a_validation_and_a_save(tmp_path) -> None:
    options = _tiny_options(tmp_path, train={"total_iter": 100_000, "time_budget": 1.0}, val={"val_freq": 100_000})
    assert main(["train", "-opt", str(options), "--no-progress"]) == 0
    run = tmp_path / "run"
    (validation,) = _records(run, "val")
    last = validation["iter"]
    assert 1 <= last < 100_000
    assert (run / f"training_states/{last}.state").exists()
    assert f"time budget of 1 s used up at iteration {last} of 100000" in (run / "train.log").read_text()


def test_a_validation_psnr_that_stops_moving_is_warned_about(tmp_path) -> None:
    options = _tiny_options(
        tmp_path,
        train={"total_iter": 5, "optim_g": {"type": "SGD", "lr": 0.0}},  # the model never changes
        val={"val_freq": 1, "plateau_patience": 2},
    )
    assert main(["train", "-opt", str(options), "--no-progress"]) == 0
    log = (tmp_path / "run" / "train.log").read_text()
    assert log.count("validation PSNR has not improved for 2 evaluations") == 1
    assert "13.08 dB with MEFC" in log
