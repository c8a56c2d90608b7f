"""glibc's default handling of freed memory against :func:`drsformer.memory.keep_freed_memory`, in one process,
alternating, for the full model on CPU. Prints one table.

    python scripts/bench_host_memory.py --sizes 256 512 --modes infer
    python scripts/bench_host_memory.py --sizes 128 --modes train --batch 2

Huge pages are on for both (``THP_MEM_ALLOC_ENABLE=1``, as ``derain`` asks for them), unless the environment sets
them. The setting is switched before each iteration, the two alternating (ABBA) so that a drift in the machine's
speed falls on both; each figure is the median of ``--repeat`` iterations after one warm-up. "peak MB" is the
process's resident high-water mark over each setting's own iterations; memory kept by the other setting's
iteration just before counts too, so the default's peak is an upper bound.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")  # before the first large tensor

import torch  # noqa: E402

from drsformer.archs.variants import VARIANTS  # noqa: E402
from drsformer.memory import keep_freed_memory, peak_mb, reset_peak  # noqa: E402

SETTINGS = {"glibc default": False, "kept for reuse": True}


def iteration(model: torch.nn.Module, image: torch.Tensor, train: bool) -> None:
    if not train:
        with torch.inference_mode():
            model(image)
        return
    model.zero_grad(set_to_none=True)
    (model(image) - image).abs().mean().backward()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[256])
    parser.add_argument("--modes", nargs="+", default=["infer"], choices=("infer", "train"))
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=4)
    args = parser.parse_args(argv)
    if not keep_freed_memory(False):
        parser.error("glibc's mallopt is not available here (or MALLOC_* variables are set): nothing to compare")
    torch.manual_seed(0)
    model = VARIANTS["drsformer"]()
    print(f"{torch.get_num_threads()} threads, torch {torch.__version__}, THP_MEM_ALLOC_ENABLE="
          f"{os.environ['THP_MEM_ALLOC_ENABLE']}\n")  # fmt: skip
    print("| size | mode | glibc default | kept for reuse | speed-up | peak MB (default / kept) |")
    print("|---:|---|---:|---:|---:|---:|")
    for mode in args.modes:
        model.train(mode == "train")
        for size in args.sizes:
            image = torch.rand(args.batch, 3, size, size, generator=torch.Generator().manual_seed(1))
            iteration(model, image, mode == "train")  # warm-up
            times: dict[str, list[float]] = {name: [] for name in SETTINGS}
            peaks = dict.fromkeys(SETTINGS, 0.0)
            names = list(SETTINGS)
            for i in range(args.repeat):
                for name in names if i % 2 == 0 else names[::-1]:
                    keep_freed_memory(SETTINGS[name])
                    reset_peak()
                    start = time.perf_counter()
                    iteration(model, image, mode == "train")
                    times[name].append(time.perf_counter() - start)
                    peaks[name] = max(peaks[name], peak_mb())
            default, kept = (statistics.median(times[name]) for name in SETTINGS)
            print(f"| {size}² x{args.batch} | {mode} | {default:.2f} s | {kept:.2f} s | {default / kept:.2f}× | "
                  f"{peaks['glibc default']:.0f} / {peaks['kept for reuse']:.0f} |", flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
