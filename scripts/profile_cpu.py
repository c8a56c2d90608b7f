"""Where a CPU forward (or training step) spends its time: every convolution by kind, and the other operators
``torch.profiler`` sees, at several sizes. Prints one table per size, so that speed work starts from figures.

    python scripts/profile_cpu.py                          # the default model, 128 and 256, the fast path
    python scripts/profile_cpu.py --sizes 128,256,512 --impl reference
    python scripts/profile_cpu.py --mode train --sizes 128

The whole iteration is timed without the profiler. Then ``torch.profiler`` (with shapes) records the same
iterations, and every convolution is grouped by kind from its weight's shape: 1x1, depth-wise (one input channel
per group), pair-grouped (MSFN's ``dwconv3x3_1``/``dwconv5x5_1`` in the reference formulation: two input
channels per group) and dense (every other kernel), with their backward in training. GFLOP counts a multiply and
an add per weight per output pixel (twice that for a backward). Then the other operators that take the most self
CPU time.
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict

import torch
from torch import nn

from drsformer.archs.variants import VARIANTS
from drsformer.memory import prepare_host_memory

CONVOLUTIONS = ("aten::mkldnn_convolution", "aten::convolution_backward")
# An output gradient used as the kernel (drsformer.archs.depthwise): its k x k output is not in the shapes.
WEIGHT_GRADIENTS = "depth-wise weight gradients as forward convolutions"


def conv_kind(weight_shape: list[int]) -> str:
    """The kind of a convolution from its weight's shape (out, in per group, kh, kw)."""
    _, per_group, kh, kw = weight_shape
    if per_group == 1 and kh > 7:
        return WEIGHT_GRADIENTS
    if (kh, kw) == (1, 1):
        return "1x1 convolutions" if per_group > 1 else "depth-wise 1x1 convolutions"
    if per_group == 1:
        return f"depth-wise {kh}x{kw} convolutions"
    if per_group == 2:
        return f"pair-grouped {kh}x{kw} convolutions"
    return f"dense {kh}x{kw} convolutions"


def conv_table(events, repeat: int) -> dict[str, list[float]]:
    """kind -> [seconds, GFLOP, calls] per iteration, from the profiler's convolutions grouped by shape (every
    convolution of these networks keeps its input's height and width)."""
    kinds: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0])
    for event in events:
        if event.key not in CONVOLUTIONS:
            continue
        backward = event.key == "aten::convolution_backward"
        shapes = event.input_shapes
        image, weight = (shapes[1], shapes[2]) if backward else (shapes[0], shapes[1])
        if len(image) != 4 or len(weight) != 4:
            continue
        kind = conv_kind(weight) + (", backward" if backward else "")
        calls = event.count / repeat
        flops = (
            0
            if kind == WEIGHT_GRADIENTS
            else 2 * weight[0] * weight[1] * weight[2] * weight[3] * image[0] * image[2] * image[3]
        )
        entry = kinds[kind]
        entry[0] += event.self_cpu_time_total / 1e6 / repeat
        entry[1] += flops * calls * (2 if backward else 1) / 1e9
        entry[2] += calls
    return kinds


def run_once(model: nn.Module, image: torch.Tensor, mode: str) -> None:
    if mode == "infer":
        with torch.inference_mode():
            model(image)
    else:
        model.zero_grad(set_to_none=True)
        (model(image) - image).abs().mean().backward()


def profile(model: nn.Module, size: int, mode: str, repeat: int, top: int) -> None:
    image = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    run_once(model, image, mode)  # warm-up: allocator and oneDNN primitives
    begun = time.perf_counter()
    for _ in range(repeat):
        run_once(model, image, mode)
    whole = (time.perf_counter() - begun) / repeat
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=True) as prof:
        for _ in range(repeat):
            run_once(model, image, mode)
    impl = model.layout_impl
    print(f"\n### 1x3x{size}x{size}, {mode}, {impl} path: {whole:.2f} s per iteration (mean of {repeat})\n")
    print("| what | time | share | GFLOP | rate |")
    print("|---|---:|---:|---:|---:|")
    kinds = conv_table(prof.key_averages(group_by_input_shape=True), repeat)
    for kind, (seconds, gflop, calls) in sorted(kinds.items(), key=lambda item: -item[1][0]):
        work = f"{gflop:.1f} | {gflop / seconds:.0f} GFLOP/s" if gflop else " | "  # kernel sizes unknown: blank
        print(f"| {kind} ({calls:.0f} calls) | {seconds:.3f} s | {seconds / whole:.0%} | {work} |")
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    for event in [e for e in events if e.key not in CONVOLUTIONS][:top]:
        seconds = event.self_cpu_time_total / 1e6 / repeat
        print(f"| `{event.key}` ({event.count // repeat} calls) | {seconds:.3f} s | {seconds / whole:.0%} | | |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default="drsformer", choices=sorted(VARIANTS))
    parser.add_argument("--sizes", default="128,256")
    parser.add_argument("--impl", default="fast", choices=("fast", "reference"))
    parser.add_argument("--mode", default="infer", choices=("infer", "train"))
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--top", type=int, default=12, help="operators to list besides the convolutions")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    prepare_host_memory(inference=args.mode == "infer")  # as derain, test and bench do
    torch.manual_seed(0)
    model = VARIANTS[args.variant](impl=args.impl)
    model.train(args.mode == "train")
    print(f"{args.variant}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    for size in (int(s) for s in args.sizes.split(",")):
        profile(model, size, args.mode, args.repeat, args.top)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
