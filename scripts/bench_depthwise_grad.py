"""The weight gradient of a depth-wise convolution two ways, in one process, alternating: PyTorch's kernel
(``torch.ops.aten.convolution_backward`` asked for the weight's gradient only) and
``drsformer.archs.depthwise.depthwise_weight_gradient`` (a forward convolution with the output gradient as its kernel).
Prints one table: medians of ``--repeat`` calls after two warm-ups, and each one's largest error against float64.

    python scripts/bench_depthwise_grad.py
    python scripts/bench_depthwise_grad.py --shapes 127x128 96x256 --dtype bfloat16

The default shapes are the full model's at a 128² crop: MSFN segments of 127 channels at 128², MEFC's 96 channels at
128², and MSFN segments at 64²; inputs and gradients NHWC, as the CPU fast path runs them.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from functools import partial

import torch
from torch import Tensor

from drsformer.archs.depthwise import depthwise_weight_gradient
from drsformer.memory import keep_freed_memory

KERNELS = ((3, 1), (5, 1), (7, 1), (3, 2), (5, 2), (7, 2))  # (size, dilation): the MSFN's and MEFC's


def pytorchs(grad: Tensor, x: Tensor, weight: Tensor, padding: int, dilation: int) -> Tensor:
    return torch.ops.aten.convolution_backward(
        grad, x, weight, None, [1, 1], [padding] * 2, [dilation] * 2, False, [0, 0], x.shape[1], [False, True, False]
    )[1]


def timed(run: Callable[[], Tensor], times: list[float]) -> Tensor:
    start = time.perf_counter()
    out = run()
    times.append(time.perf_counter() - start)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", default=["127x128", "96x128", "127x64"], help="CHANNELSxSIDE")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    keep_freed_memory()
    dtype = getattr(torch, args.dtype)
    print(f"{torch.get_num_threads()} threads, torch {torch.__version__}, {args.dtype}, batch {args.batch}\n")
    print("| channels x side | kernel | PyTorch | as a forward conv | speed-up | error PyTorch | error ours |")
    print("|---|---|---:|---:|---:|---:|---:|")
    generator = torch.Generator().manual_seed(0)
    for shape in args.shapes:
        channels, side = (int(v) for v in shape.split("x"))
        size = (args.batch, channels, side, side)
        x, grad = (torch.randn(size, generator=generator).to(memory_format=torch.channels_last) for _ in range(2))
        x, grad = x.to(dtype), grad.to(dtype)
        for kernel, dilation in KERNELS:
            weight = torch.randn(channels, 1, kernel, kernel, dtype=dtype, generator=generator)
            padding = dilation * (kernel - 1) // 2
            runs = {
                "pytorch": partial(pytorchs, grad, x, weight, padding, dilation),
                "ours": partial(
                    depthwise_weight_gradient, grad, x, (kernel, kernel), (padding, padding), (dilation, dilation)
                ),
            }
            times: dict[str, list[float]] = {name: [] for name in runs}
            for run in runs.values():
                run(), run()
            outputs = {}
            for i in range(args.repeat):
                for name in list(runs) if i % 2 == 0 else list(runs)[::-1]:
                    outputs[name] = timed(runs[name], times[name])
            exact = pytorchs(grad.double(), x.double(), weight.double(), padding, dilation)
            scale = exact.abs().max().item()
            error = {name: (out.double() - exact).abs().max().item() / scale for name, out in outputs.items()}
            median = {name: statistics.median(t) * 1e3 for name, t in times.items()}
            label = f"{kernel}x{kernel}" + (f", dilation {dilation}" if dilation > 1 else "")
            speed_up = median["pytorch"] / median["ours"]
            print(f"| {channels} x {side}² | {label} | {median['pytorch']:.1f} ms | {median['ours']:.1f} ms | "
                  f"{speed_up:.2f}x | {error['pytorch']:.1e} | {error['ours']:.1e} |")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
