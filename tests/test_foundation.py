"""Registries, the benchmark catalogue, checkpoint prefixes, error classes, atomic writes, import layering."""

import itertools
import os
import stat
import subprocess
import sys
import threading

import numpy as np
import pytest
import torch
from conftest import TINY

from drsformer import benchmarks, errors
from drsformer.archs import VARIANTS, DRSformer, from_checkpoint
from drsformer.cli import main
from drsformer.commands.running import run_command
from drsformer.data.io import write_image

REGISTRIES = {
    "ARCH_REGISTRY": ("drsformer.archs", {"DRSformer", "drsformer", "drsformer_no_mefc"}),
    "DATASET_REGISTRY": ("drsformer.data", {"PairedImageDataset", "Dataset_PairedImage"}),
    "LOSS_REGISTRY": ("drsformer.losses", {"L1Loss", "CharbonnierLoss", "PSNRLoss", "FFTLoss"}),
    "METRIC_REGISTRY": ("drsformer.metrics", {"calculate_psnr", "calculate_ssim"}),
    "OPTIMIZER_REGISTRY": ("drsformer.optim", {"Adam", "AdamW", "SGD"}),
    "SCHEDULER_REGISTRY": ("drsformer.optim", {"CosineAnnealingRestartCyclicLR", "CosineAnnealingRestartLR"}),
}


def _fresh_python(code: str) -> str:
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.parametrize("registry", sorted(REGISTRIES))
def test_importing_a_package_fills_its_registry(registry: str) -> None:
    package, expected = REGISTRIES[registry]
    # Read the raw entries (no lookup, which would import the home package itself).
    out = _fresh_python(f"import {package}; from drsformer.registry import {registry} as r; print(sorted(r._entries))")
    assert expected <= set(eval(out))


@pytest.mark.parametrize("registry", sorted(REGISTRIES))
def test_a_lookup_before_the_home_is_imported_says_what_to_import(registry: str) -> None:
    """A registry never imports its home itself (no import cycle through the bottom module); the message says."""
    name = sorted(REGISTRIES[registry][1])[0]
    code = (
        f"from drsformer.registry import {registry} as r\n"
        f"try:\n    r.get({name!r})\nexcept Exception as err:\n    print(err)"
    )
    out = _fresh_python(code)
    assert f"unknown {registry.split('_')[0].lower()} type {name!r}" in out and "first, which registers them" in out


def test_reading_options_fills_every_registry() -> None:
    code = "import drsformer.config, drsformer.registry as r; print([len(x._entries) for x in " + (
        "(r.ARCH_REGISTRY, r.DATASET_REGISTRY, r.LOSS_REGISTRY, r.METRIC_REGISTRY, r.OPTIMIZER_REGISTRY, "
        "r.SCHEDULER_REGISTRY)])"
    )
    assert all(count > 0 for count in eval(_fresh_python(code)))


def test_model_package_does_not_import_the_runners() -> None:
    out = _fresh_python("import sys, drsformer.archs, drsformer.metrics, drsformer.data; print(sorted(sys.modules))")
    loaded = set(eval(out))
    for runner in ("drsformer.inference", "drsformer.engine", "drsformer.cli", "drsformer.train", "drsformer.test"):
        assert runner not in loaded


PREFIXES = ("module.", "_orig_mod.")


@pytest.mark.parametrize("chain", [c for n in range(1, 4) for c in itertools.product(PREFIXES, repeat=n)], ids="".join)
def test_checkpoint_prefixes_in_any_order_are_stripped(chain: tuple[str, ...]) -> None:
    model = DRSformer(**TINY, mefc=False)
    prefix = "".join(chain)  # e.g. torch.compile(DDP(model)) saves _orig_mod.module.<name>
    wrapped = {"params": {prefix + k: v for k, v in model.state_dict().items()}}
    loaded = from_checkpoint(wrapped)
    assert all(
        torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values(), strict=True)
    )


@pytest.mark.parametrize("spelling", ["Rain1200", "DID_Data", "did-data", "rain200heavy", "Rain1400", "SPA-Data"])
def test_every_alias_resolves_in_evaluate_too(tmp_path, spelling: str, capsys) -> None:
    image = np.full((16, 16, 3), 90, np.uint8)
    write_image(tmp_path / "r" / "a.png", image)
    write_image(tmp_path / "g" / "a.png", image)
    argv = ["evaluate", "--restored", str(tmp_path / "r"), "--gt", str(tmp_path / "g"), "--quiet"]
    assert main([*argv, "--dataset", spelling]) == 0
    bench = benchmarks.get(spelling)
    assert f"{bench.name}: 1 pairs, {bench.protocol} protocol" in capsys.readouterr().out


def test_catalogue_holds_the_papers_table() -> None:
    table = {b.name: (b.paper_psnr, b.paper_ssim, b.protocol, b.mefc) for b in benchmarks.BENCHMARKS.values()}
    assert table == {
        "Rain200L": (41.23, 0.9894, "restormer", False),
        "Rain200H": (32.17, 0.9326, "restormer", True),
        "DID": (35.35, 0.9646, "rcdnet", True),
        "DDN": (34.35, 0.9588, "rcdnet", True),
        "SPA": (48.54, 0.9924, "restormer", False),
    }
    with pytest.raises(errors.ConfigError, match="unknown dataset 'Rain300'; known benchmarks: Rain200L, Rain200H"):
        benchmarks.get("Rain300")


def test_error_classes_share_one_base_and_keep_builtin_meaning() -> None:
    kinds = [getattr(errors, n) for n in dir(errors) if n.endswith("Error") and n != "DrsformerError"]
    assert len(kinds) >= 8
    for kind in kinds:
        assert issubclass(kind, errors.DrsformerError)
    assert issubclass(errors.ConfigError, ValueError) and issubclass(errors.ImageReadError, OSError)
    assert issubclass(errors.MissingPathError, FileNotFoundError)


def test_cli_prints_our_errors_in_one_line_and_lets_bugs_raise(capsys) -> None:
    def refuse(_args: object) -> int:
        raise errors.PairingError("folder x: 3 inputs have no target")

    assert run_command("demo", refuse, None) == 2
    assert capsys.readouterr().err == "drsformer demo: error: folder x: 3 inputs have no target\n"

    def bug(_args: object) -> int:
        raise KeyError("a bug keeps its traceback")

    with pytest.raises(KeyError, match="a bug keeps its traceback"):
        run_command("demo", bug, None)


def test_cli_variants_and_defaults_come_from_the_registry(capsys) -> None:
    assert sorted(VARIANTS) == ["drsformer", "drsformer_no_mefc", "restormer"]
    assert main(["info", "--variant", "drsformer_no_mefc", "--dim", "16", "--json", "--size", "32"]) == 0
    config = eval(capsys.readouterr().out.replace("true", "True").replace("false", "False"))["config"]
    assert config == {**DRSformer(dim=16, mefc=False).config}


def test_image_writes_never_touch_the_process_umask(tmp_path, monkeypatch) -> None:
    calls = []
    real_umask = os.umask
    monkeypatch.setattr(os, "umask", lambda mask: calls.append(mask) or real_umask(mask))
    old = real_umask(0o027)
    try:
        image = np.zeros((8, 8, 3), np.uint8)
        threads = [
            threading.Thread(target=lambda i=i: [write_image(tmp_path / f"{i}_{k}.png", image) for k in range(20)])
            for i in range(8)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        real_umask(old)
    assert calls == []
    modes = {stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()}
    assert modes == {0o640} and len(list(tmp_path.iterdir())) == 160  # 0666 & ~0027, no temporary files left
