"""scripts/gpu_check.sh runs on the CPU (--device cpu --quick), so the one command a GPU session runs stays working."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_gpu_self_check_runs_every_check_on_the_cpu(tmp_path) -> None:
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    command = ["bash", str(ROOT / "scripts" / "gpu_check.sh"), str(tmp_path / "report"), "--device", "cpu", "--quick"]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = (tmp_path / "report" / "report.md").read_text()
    rows = [line for line in report.splitlines() if line.startswith("| ") and not line.startswith("| check")]
    checks = [row.split(" | ")[0].lstrip("| ") for row in rows]
    assert len(rows) == 12 and all(" | pass | " in row for row in rows), report
    assert checks[0].startswith("CUDA tests") and "17 passed" in rows[0]
    assert (
        sum(c.startswith("bench infer") for c in checks) == 2 and sum(c.startswith("bench train") for c in checks) == 4
    )
    assert any("train.deterministic" in c for c in checks) and "images/s" in rows[-2]
    assert any(c.startswith("MSFN pair-grouped") and "forward + backward" in r and "max difference" in r
               for c, r in zip(checks, rows, strict=True))  # fmt: skip
    assert any(c.startswith("MSFN formulations in the whole model") and "training step" in r
               and "max relative difference" in r for c, r in zip(checks, rows, strict=True))  # fmt: skip
    assert any(c.startswith("exact tiles of 128") and r.count(" maps: ") == 3 and "max difference" in r
               for c, r in zip(checks, rows, strict=True))  # fmt: skip
    assert len(list((tmp_path / "report").glob("*.log"))) == 11  # one log per check


def test_the_report_is_on_disk_after_each_check(tmp_path) -> None:
    """A run stopped at a time limit keeps the rows of the checks that finished."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "scripts" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    check = module.Check(tmp_path, "cpu", quick=True)
    check.add("first", True, "1 s")
    assert "| first | pass | 1 s |" in (tmp_path / "report.md").read_text()
    check.add("second", False, "")
    report = (tmp_path / "report.md").read_text()
    assert "| second | **FAIL** |" in report and "2 checks" in report and not check.passed
