"""The drsformer command: info and bench, in process (the handlers are plain functions)."""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY

from drsformer.archs import DRSformer
from drsformer.cli import main
from drsformer.commands.args import parse_size
from drsformer.data.io import write_image

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
    for r in report["results"]:  # the figures printed and saved are those of the timed iterations
        assert r["median_ms"] == statistics.median(r["times_ms"]) and len(r["times_ms"]) == 2
        assert r["images_per_s"] == pytest.approx(2 * 1000 / r["median_ms"])
        assert f"{r['median_ms']:.1f}" in table and f"{r['images_per_s']:.2f}" in table
    assert report["environment"]["threads"] == torch.get_num_threads()
    assert report["max_output_difference"] < 1e-4
    assert report["settings"]["mode"] == mode and report["model"]["dim"] == 8


@pytest.mark.parametrize(
    "options, expected",
    [
        (
            ["--impl", "reference", "--precision", "bf16", "--channels-last"],
            dict(impl="reference", layout="reference", input_channels_last=True, compute_dtype="bfloat16"),
        ),
        (
            ["--impl", "reference", "--parts", "attention"],
            dict(impl={"attention": "reference", "ffn": "fast"}, layout="fast", input_channels_last=False),
        ),
        (["--precision", "fp16"], dict(impl="fast", compute_dtype="float16")),
        (["--mode", "train", "--activation-checkpointing"], dict(activation_checkpointing=True, training=True)),
        ([], dict(impl="fast", layout="fast", input_channels_last=False, compute_dtype="float32")),
    ],
)
def test_bench_uses_the_settings_it_reports(tmp_path, capsys, options, expected) -> None:
    out_json = tmp_path / "bench.json"
    argv = ["bench", *TINY_ARGS, "--size", "16x24", "--warmup", "1", "--repeat", "1", "--device", "cpu"]
    assert main([*argv, *options, "--json", str(out_json)]) == 0
    (result,) = json.loads(out_json.read_text())["results"]
    observed = result["observed"]
    for key, value in expected.items():
        if key == "impl" and isinstance(value, str):
            assert set(observed["impl"].values()) == {value}, observed["impl"]
        elif key == "impl":
            assert {k: observed["impl"][k] for k in value} == value
        else:
            assert observed[key] == value, (key, observed)
    assert "16x24" in capsys.readouterr().out


def test_bench_unknown_part_is_one_line_error(capsys) -> None:
    assert main(["bench", *TINY_ARGS, "--parts", "attention,wings", "--repeat", "1"]) == 2
    err = capsys.readouterr().err
    assert "--parts: unknown part(s) wings" in err and err.count("\n") == 1


def test_bench_without_cuda_is_a_clear_error(capsys, monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["bench", *TINY_ARGS, "--device", "cuda"]) == 2
    assert "--device: cuda asked for, but PyTorch sees no CUDA GPU; use cpu" in capsys.readouterr().err


def test_parse_size() -> None:
    assert parse_size("128") == (128, 128)
    assert parse_size("64x96") == (64, 96)
    with pytest.raises(argparse.ArgumentTypeError, match="size must be"):
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


def test_peak_memory_counts_what_was_touched_after_the_reset() -> None:
    """The readings behind every "peak MB" column: the CPU peak rises by what is touched after reset_peak. In a
    fresh process: commands run in this one keep freed memory (keep_freed_memory), which a new block may reuse."""
    code = (
        "import torch; from drsformer.memory import peak_mb, reset_peak, resident_mb\n"
        "before = resident_mb()\n"
        "reset_peak()\n"
        "assert peak_mb() < before + 100\n"
        "block = torch.ones(64 * 2**20)  # 256 MiB, all pages written\n"
        "assert peak_mb() >= before + 200 and resident_mb() >= before + 200\n"
        "del block\n"
        "assert peak_mb() >= before + 200  # a high-water mark: it stays after the memory is freed\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).parents[1])
    assert done.returncode == 0, done.stderr


def test_inference_commands_ask_for_huge_pages_unless_the_user_chose(monkeypatch, capsys) -> None:
    from drsformer.memory import THP_VARIABLE

    bench = ["bench", *TINY_ARGS, "--size", "16", "--warmup", "1", "--repeat", "1", "--device", "cpu"]
    monkeypatch.delenv(THP_VARIABLE, raising=False)
    assert main([*bench, "--mode", "train"]) == 0
    assert THP_VARIABLE not in os.environ  # training: no gain was measured, so it is left alone
    assert main([*bench, "--mode", "infer"]) == 0
    assert os.environ[THP_VARIABLE] == "1"
    monkeypatch.setenv(THP_VARIABLE, "0")  # a user's own setting stays
    assert main([*bench, "--mode", "infer"]) == 0
    assert os.environ[THP_VARIABLE] == "0"
    capsys.readouterr()


def _thp_mode() -> str:
    try:
        text = Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
    except OSError:
        return "never"
    return text.split("[", 1)[1].split("]", 1)[0] if "[" in text else "never"


@pytest.mark.skipif(_thp_mode() == "never", reason="this kernel has transparent huge pages off")
def test_huge_pages_back_large_tensors_once_asked_for() -> None:
    """In a fresh process (PyTorch reads the setting once): a 64 MB tensor lands in huge pages, and not without."""
    code = (
        "import sys, torch; from drsformer.memory import prefer_huge_pages\n"
        "if sys.argv[1] == 'ask': prefer_huge_pages()\n"
        "x = torch.ones(16 * 2**20)\n"
        "print([int(l.split()[1]) for l in open('/proc/self/smaps_rollup') if l.startswith('AnonHugePages')][0])"
    )
    env = {k: v for k, v in os.environ.items() if k != "THP_MEM_ALLOC_ENABLE"}
    huge = {}
    for mode in ("ask", "leave"):
        done = subprocess.run([sys.executable, "-c", code, mode], env=env, capture_output=True, text=True, check=True)
        huge[mode] = int(done.stdout.strip().splitlines()[-1])
    assert huge["ask"] >= 2048  # kB: at least one 2 MB page (the kernel may not find 2 MB blocks for all of it)
    if _thp_mode() == "madvise":  # with "always" the kernel uses them anyway
        assert huge["leave"] < 32 * 1024


KEPT_AFTER_FREE = (
    "import sys, torch; from drsformer.cli import main; from drsformer.memory import resident_mb\n"
    "if sys.argv[1:]: assert main(sys.argv[1:]) == 0\n"
    "x = torch.ones(16 * 2**20); before = resident_mb(); del x\n"
    "print(round(before - resident_mb()))"
)


def _freed_mb(*argv: str, **env: str) -> int:
    """In a fresh process, after ``drsformer ARGV`` (if any): how many MB freeing a 64 MB tensor gives back."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    done = subprocess.run([sys.executable, "-c", KEPT_AFTER_FREE, *argv], env={**clean, **env}, capture_output=True,
                          text=True, cwd=Path(__file__).parents[1])  # fmt: skip
    assert done.returncode == 0, done.stderr
    return int(done.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_commands_keep_freed_memory_for_reuse_unless_the_user_chose(tmp_path) -> None:
    """glibc hands a freed 64 MB block back to the kernel; after derain or bench (either mode) it is kept for the
    next tensor, unless the user set glibc's own MALLOC_* variables."""
    torch.manual_seed(0)
    torch.save({"params": DRSformer(**TINY, mefc=False).state_dict()}, tmp_path / "w.pth")
    write_image(tmp_path / "in" / "1.png", np.zeros((16, 16, 3), np.uint8))
    derain = ["derain", "--weights", str(tmp_path / "w.pth"), "-i", str(tmp_path / "in"), "-o", str(tmp_path / "o"),
              "--quiet"]  # fmt: skip
    bench = ["bench", *TINY_ARGS, "--size", "16", "--warmup", "1", "--repeat", "1", "--device", "cpu"]
    assert _freed_mb() >= 60
    assert _freed_mb(*derain) < 4
    assert _freed_mb(*bench, "--mode", "train") < 4
    assert _freed_mb(*bench, "--mode", "train", MALLOC_MMAP_MAX_="65536") >= 60


def test_derain_and_test_ask_for_huge_pages(tmp_path, monkeypatch, capsys) -> None:
    from drsformer.data.io import write_image
    from drsformer.memory import THP_VARIABLE

    torch.manual_seed(0)
    torch.save({"params": DRSformer(**TINY, mefc=False).state_dict()}, tmp_path / "w.pth")
    image = torch.randint(0, 256, (24, 32, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(1)).numpy()
    for folder in ("input", "target"):
        write_image(tmp_path / "Rain200H" / folder / "1.png", image)
    weights = ["--weights", str(tmp_path / "w.pth")]
    for argv in (
        ["derain", *weights, "-i", str(tmp_path / "Rain200H" / "input"), "-o", str(tmp_path / "out"), "--quiet"],
        ["test", *weights, "--data", f"Rain200H={tmp_path / 'Rain200H'}", "--out", str(tmp_path / "r"), "--quiet"],
    ):
        monkeypatch.delenv(THP_VARIABLE, raising=False)
        assert main(argv) == 0, capsys.readouterr().err
        assert os.environ[THP_VARIABLE] == "1", argv[0]
