"""drsformer train: the authors' options file, exact resume after SIGKILL, DDP with gloo, schedules, accumulation,
the NaN guard, mixed precision, and the errors raised before the first step."""

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
from conftest import DATA, make_pairs

from drsformer.archs import from_checkpoint
from drsformer.cli import main
from drsformer.config import load_options, resolve_options
from drsformer.engine.optim import CosineAnnealingRestartCyclicLR, CosineAnnealingRestartLR
from drsformer.engine.trainer import Trainer
from drsformer.errors import ConfigError, TrainingError
from drsformer.losses import L1Loss
from drsformer.registry import LOSS_REGISTRY

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
        "val": {"val_freq": 3},
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


# Runs ``drsformer train`` and kills the process with SIGKILL right after it has written the state of iteration
# ``kill_at`` (a fault injected at an exact point, so the test does not race the run).
KILLED_AFTER_SAVE = """
import os, signal, sys
import drsformer.engine.checkpoint as ckpt
from drsformer.train import main
save = ckpt.save_state
def save_then_die(folder, iteration, state):
    path = save(folder, iteration, state)
    if iteration == int(os.environ["KILL_AT"]):
        os.kill(os.getpid(), signal.SIGKILL)
    return path
ckpt.save_state = save_then_die
sys.exit(main(sys.argv[1:]))
"""


def _train_process(options: Path, *extra: str, kill_at: int = 0) -> subprocess.Popen:
    command = [sys.executable, "-c", KILLED_AFTER_SAVE, "-opt", str(options), "--no-progress", *extra]
    env = {**os.environ, "KILL_AT": str(kill_at)}
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
    options = _tiny_options(tmp_path, train={"total_iter": 4}, val={"val_freq": 2})
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    command += ["-m", "drsformer.train", "-opt", str(options), "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    run = tmp_path / "run"
    (replicas,) = _records(run, "replicas")
    assert replicas["processes"] == 2 and replicas["max_difference"] == 0.0
    assert "2 process(es) on cpu" in (run / "train.log").read_text()
    # Validation is sharded (one image per process) and the sums all-reduced: both images are counted.
    assert "validation val (2 images" in (run / "train.log").read_text()
    assert result.stdout.count("done: weights in") == 1  # only rank 0 reports


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
    initial = max(v.abs().max().item() for v in weights["plain"].values())
    assert difference < 1e-6 and initial > 0


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


if "NaNOnCalls" not in LOSS_REGISTRY:
    LOSS_REGISTRY.add(NaNOnCalls)


def test_a_non_finite_loss_skips_the_step_and_is_counted(tmp_path) -> None:
    options = _tiny_options(tmp_path, train={"total_iter": 6, "pixel_opt": {"type": "NaNOnCalls", "nan_calls": [2]}})
    resolved = resolve_options(load_options(options)).options
    Trainer(resolved).run(progress_bar=False)
    run = tmp_path / "run"
    (skip,) = _records(run, "skip")
    assert skip["iter"] == 2 and skip["loss"] is None
    assert "iteration 2: non-finite loss or gradient" in (run / "train.log").read_text()
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


def test_non_finite_losses_before_any_save_stop_with_a_message(tmp_path) -> None:
    options = _tiny_options(
        tmp_path,
        train={"total_iter": 8, "max_bad_steps": 3, "pixel_opt": {"type": "NaNOnCalls", "nan_calls": [1, 2, 3]}},
    )
    resolved = resolve_options(load_options(options)).options
    with pytest.raises(TrainingError, match=r"3 steps in a row \(iterations 1..3\) had a non-finite loss .* before"):
        Trainer(resolved).run(progress_bar=False)


# ---------------------------------------------------------------- precision and memory options


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_steps_on_cpu_give_finite_losses(tmp_path, precision: str) -> None:
    options = _tiny_options(
        tmp_path, train={"total_iter": 3, "precision": precision, "activation_checkpointing": True}, val={"val_freq": 3}
    )
    assert main(["train", "-opt", str(options), "--no-progress"]) == 0
    losses = [r["loss"] for r in _records(tmp_path / "run", "train")]
    assert len(losses) == 3 and all(math.isfinite(v) for v in losses)
    assert not _records(tmp_path / "run", "skip")
    assert math.isfinite(_records(tmp_path / "run", "val")[0]["psnr"])


# ---------------------------------------------------------------- errors before the first step


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["datasets.train.dataroot_lq=/nowhere/input"], "datasets.train: input folder /nowhere/input does not exist"),
        (["datasets.train.gt_size=64"], "datasets.train.gt_size: crops of 64x64 are larger than"),
        (["train.effective_batch_size=5"], "train.effective_batch_size: 5 does not divide into batches of 2"),
        (["path.pretrain_network_g=/nowhere.pth"], "/nowhere.pth: no such file"),
        (["val.protocol=matlab"], "val.protocol: expected one of restormer, rcdnet, got 'matlab'"),
    ],
)
def test_setup_errors_name_the_key_before_any_step(tmp_path, capsys, overrides, message: str) -> None:
    options = _tiny_options(tmp_path)
    assert main(["train", "-opt", str(options), "--no-progress", "--set", *overrides]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "run" / "log.jsonl").exists() or not _records(tmp_path / "run", "train")


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
