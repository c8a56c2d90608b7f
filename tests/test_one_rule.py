"""Each rule behaves the same in every command that has it: which weights inside a checkpoint, device strings,
precision names, and which protocol scores a set."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch
import yaml
from conftest import TINY, make_pairs

from drsformer.archs import DRSformer
from drsformer.cli import build_parser, main
from drsformer.data.io import write_image
from drsformer.precision import PRECISIONS

# ---------------------------------------------------------------- the weights inside a checkpoint


@pytest.fixture(scope="module")
def run_weights(tmp_path_factory):
    """A training run's weight file: params, params_ema and which of them the run validated."""
    folder = tmp_path_factory.mktemp("run")
    torch.manual_seed(1)
    params, ema = DRSformer(**TINY, mefc=False).state_dict(), DRSformer(**TINY, mefc=False).state_dict()
    path = folder / "net_g_best.pth"
    torch.save({"params": params, "params_ema": ema, "validated": "params_ema"}, path)
    plain = folder / "published.pth"
    torch.save({"params": params}, plain)
    photo = folder / "photo.png"
    write_image(photo, np.random.default_rng(0).integers(0, 256, (24, 24, 3), dtype=np.uint8))
    make_pairs(folder / "Rain200H", n=1, size=(24, 24))
    return folder


def _command_args(command: str, folder, weights) -> list[str]:
    return {
        "derain": ["derain", "--weights", str(weights), "-i", str(folder / "photo.png"), "-o", str(folder / "out"),
                   "--overwrite", "--quiet"],
        "test": ["test", "--weights", str(weights), "--data", f"Rain200H={folder / 'Rain200H'}",
                 "--out", str(folder / "results"), "--quiet"],
        "export": ["export", "--weights", str(weights), "-o", str(folder / "copy.pth")],
        "bench": ["bench", "--weights", str(weights), "--size", "16", "--warmup", "0", "--repeat", "1"],
        "info": ["info", "--weights", str(weights), "--size", "16"],
        "serve": ["serve", "--weights", str(weights)],  # only with a device it refuses: it would serve forever
    }[command]  # fmt: skip


WEIGHTS_COMMANDS = ["derain", "test", "export", "bench", "info", "serve"]


def test_every_command_that_reads_weights_takes_params_key() -> None:
    choices = build_parser()._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    having = sorted(n for n, p in choices.items() if any("--params-key" in a.option_strings for a in p._actions))
    assert having == sorted(WEIGHTS_COMMANDS)


@pytest.mark.parametrize("command", [c for c in WEIGHTS_COMMANDS if c != "serve"])  # serve: in test_serve.py
def test_the_weights_a_run_validated_are_the_default_everywhere(command: str, run_weights, capsys) -> None:
    assert main(_command_args(command, run_weights, run_weights / "net_g_best.pth")) == 0
    assert "using params_ema: the weights this run validated" in capsys.readouterr().err
    assert main(_command_args(command, run_weights, run_weights / "published.pth")) == 0
    assert "using params_ema" not in capsys.readouterr().err
    asked = [*_command_args(command, run_weights, run_weights / "net_g_best.pth"), "--params-key", "params"]
    assert main(asked) == 0
    assert "using params_ema" not in capsys.readouterr().err


# ---------------------------------------------------------------- device strings

DEVICE_COMMANDS = ["train", "demo", "test", "derain", "bench", "serve"]


def _device_args(command: str, folder, device: str) -> list[str]:
    weights = str(folder / "published.pth")
    if command == "train":
        options = folder / "train.yml"
        options.write_text(yaml.safe_dump({
            "name": "x", "datasets": {"train": {"dataroot_lq": str(folder / "Rain200H/input"),
                                                 "dataroot_gt": str(folder / "Rain200H/target"),
                                                 "batch_size_per_gpu": 1, "gt_size": 16}},
            "network_g": {"type": "DRSformer", **TINY}, "train": {"total_iter": 1},
            "path": {"experiments_root": str(folder / "train_run")},
        }))  # fmt: skip
        return ["train", "-opt", str(options), "--no-progress", "--device", device]
    if command == "demo":
        return ["demo", "--out", str(folder / "demo"), "--device", device]
    return [*_command_args(command, folder, weights), "--device", device]


def test_every_command_that_runs_a_model_takes_a_device() -> None:
    choices = build_parser()._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    having = sorted(n for n, p in choices.items() if any("--device" in a.option_strings for a in p._actions))
    assert having == sorted(DEVICE_COMMANDS)
    for name in DEVICE_COMMANDS:
        action = next(a for a in choices[name]._actions if "--device" in a.option_strings)
        assert action.choices is None and "cuda:N" in action.help  # any cpu|cuda|cuda:N, checked in one place


@pytest.mark.parametrize("command", DEVICE_COMMANDS)
@pytest.mark.parametrize(
    "device, message",
    [
        ("gpu", "unknown device 'gpu'; use cpu, cuda or cuda:N"),
        ("cuda:x", "unknown device 'cuda:x'; use cpu, cuda or cuda:N"),
        *([] if torch.cuda.is_available() else [("cuda:1", "cuda:1 asked for, but PyTorch sees no CUDA GPU")]),
    ],
)
def test_device_strings_are_checked_alike_by_every_command(command, device, message, run_weights, capsys) -> None:
    assert main(_device_args(command, run_weights, device)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err and err[-1].startswith(f"drsformer {command}: error: ") and message in err[-1]


# ---------------------------------------------------------------- precision names


def test_every_precision_option_offers_the_same_names() -> None:
    choices = build_parser()._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    found = {}
    for name, parser in choices.items():
        for action in parser._actions:
            if "--precision" in action.option_strings:
                found[name] = tuple(action.choices)
    assert set(found) == {"test", "derain", "bench", "export", "serve"} and set(found.values()) == {PRECISIONS}


@pytest.mark.parametrize(
    "schema",
    ["drsformer.config.training:SCHEMA.train.precision", "drsformer.config.testing:SCHEMA.precision"],
)
def test_options_files_take_the_same_precision_names(schema: str) -> None:
    import importlib

    module, path = schema.split(":")
    node = importlib.import_module(module).SCHEMA
    for key in path.split(".")[1:]:
        node = node.fields[key] if hasattr(node, "fields") else node[key]
    assert tuple(node.choices) == PRECISIONS


# ---------------------------------------------------------------- the protocol of a set


def _validation_options(tmp_path, name: str, protocol: str | None) -> argparse.Namespace:
    from drsformer.config import resolve_options
    from drsformer.engine.validation import protocol_for

    make_pairs(tmp_path / "sets" / name, n=1, size=(24, 24))
    raw = {
        "name": "x",
        "datasets": {
            "train": {"dataroot_lq": "a", "dataroot_gt": "b", "batch_size_per_gpu": 1, "gt_size": 16},
            "val": {"name": name, "dataroot_lq": str(tmp_path / "sets" / name / "input"),
                    "dataroot_gt": str(tmp_path / "sets" / name / "target")},
        },
        "train": {"total_iter": 1},
        "val": {"protocol": protocol},
    }  # fmt: skip
    options = resolve_options(raw).options
    return protocol_for(options, "val", options["datasets"]["val"])


def _test_protocol(tmp_path, name: str, protocol: str | None, capsys) -> str:
    make_pairs(tmp_path / "sets" / name, n=1, size=(24, 24))
    torch.save({"params": DRSformer(**TINY).state_dict()}, tmp_path / "w.pth")
    argv = ["test", "--weights", str(tmp_path / "w.pth"), "--data", f"{name}={tmp_path / 'sets' / name}",
            "--out", str(tmp_path / "out"), "--quiet", *(["--protocol", protocol] if protocol else [])]  # fmt: skip
    if main(argv) != 0:
        raise RuntimeError(capsys.readouterr().err.strip().splitlines()[-1])
    return next(line for line in capsys.readouterr().out.splitlines() if line.startswith(f"| {name} |")).split()[3]


def _evaluate_protocol(tmp_path, name: str, protocol: str | None, capsys) -> str:
    folder = make_pairs(tmp_path / "sets" / name, n=1, size=(24, 24))
    argv = ["evaluate", "--restored", str(folder / "input"), "--gt", str(folder / "target"), "--quiet",
            "--dataset", name, *(["--protocol", protocol] if protocol else [])]  # fmt: skip
    if main(argv) != 0:
        raise RuntimeError(capsys.readouterr().err.strip().splitlines()[-1])
    return capsys.readouterr().out.split(" protocol")[0].rsplit(" ", 1)[-1]


@pytest.mark.parametrize("where", ["validation", "test", "evaluate"])
def test_one_rule_chooses_the_protocol_everywhere(tmp_path, where: str, capsys) -> None:
    """The protocol given wins; else the paper's for the benchmark the set names; else an error, never a guess."""

    def protocol(name: str, chosen: str | None) -> str:
        if where == "validation":
            return _validation_options(tmp_path, name, chosen)
        if where == "test":
            return _test_protocol(tmp_path, name, chosen, capsys)
        return _evaluate_protocol(tmp_path, name, chosen, capsys)

    assert protocol("DDN", None) == "rcdnet" and protocol("Rain200H", None) == "restormer"
    assert protocol("DDN", "skimage") == "skimage"
    if where == "evaluate":  # --dataset must name a benchmark; without one, --protocol must be given
        with pytest.raises(RuntimeError, match="unknown --dataset 'Mine'"):
            protocol("Mine", None)
        return
    assert protocol("Mine", "restormer") == "restormer"
    with pytest.raises(Exception, match="unknown dataset name 'Mine', so its protocol is unknown"):
        protocol("Mine", None)
