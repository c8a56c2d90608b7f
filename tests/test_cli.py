"""The drsformer command: info and bench, in process (the handlers are plain functions)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import TINY

from drsformer.archs import DRSformer
from drsformer.cli import main, parse_size

TINY_ARGS = ["--dim", "8", "--num-blocks", "1", "1", "1", "1", "--heads", "1", "2", "4", "8"]


def test_info_reports_paper_size_and_flops(capsys) -> None:
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "33,655,424 (33.66 M)" in out
    assert "485.96 G (242.98 GMACs)" in out  # the paper's ~486 GFLOPs at 1x3x256x256
    assert main(["info", "--variant", "drsformer_no_mefc", "--json", "--size", "64x96"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["parameters"] == 32_610_304 and info["input"] == [1, 3, 64, 96]
    assert info["config"]["mefc"] is False and info["flops_fast_path"] < info["flops"]


def test_info_from_weights(tmp_path, capsys) -> None:
    model = DRSformer(**TINY, mefc=False)
    torch.save({"params": model.state_dict()}, tmp_path / "w.pth")
    assert main(["info", "--weights", str(tmp_path / "w.pth"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["config"] == model.config


def test_bad_weights_is_one_line_error(tmp_path, capsys) -> None:
    (tmp_path / "bad.pth").write_bytes(b"not a checkpoint at all")
    assert main(["info", "--weights", str(tmp_path / "bad.pth")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("drsformer info: error:") and "bad.pth" in err and "\n" not in err


@pytest.mark.parametrize("mode", ["infer", "train"])
def test_bench_compare_writes_json(tmp_path, capsys, mode: str) -> None:
    out_json = tmp_path / "bench.json"
    argv = [
        "bench",
        *TINY_ARGS,
        "--size",
        "32",
        "--batch",
        "2",
        "--mode",
        mode,
        "--device",
        "cpu",
        "--compare",
        "--warmup",
        "1",
        "--repeat",
        "2",
        "--json",
        str(out_json),
    ]
    assert main(argv) == 0
    table = capsys.readouterr().out
    assert "speed-up of fast over reference" in table and "ms/iter" in table
    report = json.loads(out_json.read_text())
    assert [r["path"] for r in report["results"]] == ["reference", "fast"]
    assert all(len(r["times_ms"]) == 2 and r["median_ms"] > 0 for r in report["results"])
    assert report["max_output_difference"] < 1e-4
    assert report["settings"]["mode"] == mode and report["model"]["dim"] == 8


def test_bench_single_path_options(capsys) -> None:
    argv = [
        "bench",
        *TINY_ARGS,
        "--size",
        "16x24",
        "--attention",
        "reference",
        "--precision",
        "bf16",
        "--channels-last",
        "--warmup",
        "1",
        "--repeat",
        "1",
        "--device",
        "cpu",
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "reference" in out and "bf16" in out and "channels_last" in out


def test_bench_without_cuda_is_a_clear_error(capsys, monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["bench", *TINY_ARGS, "--device", "cuda"]) == 2
    assert "no CUDA device" in capsys.readouterr().err


def test_parse_size() -> None:
    assert parse_size("128") == (128, 128)
    assert parse_size("64x96") == (64, 96)
    with pytest.raises(Exception, match="size must be"):
        parse_size("big")


def test_module_entry_point_runs() -> None:
    result = subprocess.run([sys.executable, "-m", "drsformer", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "bench" in result.stdout and "info" in result.stdout


def test_setup_never_imports_torch() -> None:
    root = Path(__file__).parents[1]
    code = (
        "import sys; sys.modules['torch'] = None; sys.argv = ['setup.py', '--name'];"
        "exec(compile(open('setup.py').read(), 'setup.py', 'exec'))"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "drsformer" in result.stdout
