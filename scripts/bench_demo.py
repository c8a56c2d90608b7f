"""Checks the demo's claim: at least +4 dB Y-PSNR on the held-out photos within the default budget.

    python scripts/bench_demo.py [--minutes 5] [--runs 1] [--out /tmp/drsformer-bench-demo]

Runs the demo (:func:`drsformer.demo.run.run_demo`, what `drsformer demo` runs) once per seed and prints a table of
the budget, iterations, PSNR before and after, the gain and the wall time. Exits with status 1 when any run
gains less than the threshold. This is a benchmark, not a test: its result depends on the machine's speed.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from drsformer.demo.run import DemoSettings, run_demo


def run() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--runs", type=int, default=1, help="seeds 0 .. runs-1")
    parser.add_argument("--threshold", type=float, default=4.0, help="required gain in dB (4)")
    parser.add_argument("--out", default="/tmp/drsformer-bench-demo")
    args = parser.parse_args()
    rows = []
    for seed in range(args.runs):
        out = Path(args.out) / f"seed{seed}"
        start = time.perf_counter()
        summary = run_demo(DemoSettings(out, args.minutes, seed=seed, progress=False))
        rows.append((seed, summary, time.perf_counter() - start))
    print(
        f"\n{'seed':>4} {'minutes':>7} {'iters':>6} {'PSNR before':>11} {'PSNR after':>10} {'gain dB':>8} {'wall s':>7}"
    )
    for seed, s, wall in rows:
        print(
            f"{seed:>4} {s['budget_minutes']:>7g} {s['iterations']:>6} {s['psnr_before']:>11.2f} "
            f"{s['psnr_after']:>10.2f} {s['psnr_gain']:>+8.2f} {wall:>7.0f}"
        )
    failed = [seed for seed, s, _ in rows if s["psnr_gain"] < args.threshold]
    if failed:
        print(f"gain below {args.threshold} dB for seed(s) {failed}", file=sys.stderr)
        return 1
    print(f"every run gained at least {args.threshold} dB")
    return 0


if __name__ == "__main__":
    sys.exit(run())
