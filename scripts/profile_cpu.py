"""Where a CPU forward (or training step) spends its time: every convolution timed by kind, and the operators
``torch.profiler`` sees, at several sizes. Prints one table per size, so that speed work starts from figures.

    python scripts/profile_cpu.py                          # the default model, 128 and 256, the fast path
    python scripts/profile_cpu.py --sizes 128,256,512 --impl reference
    python scripts/profile_cpu.py --mode train --sizes 128

Convolutions are timed with forward hooks (a pre-hook and a hook around each ``nn.Conv2d``, so the time is the
module's own) and grouped by kind: 1x1, depth-wise (one input channel per group), pair-grouped (MSFN's
``dwconv3x3_1``/``dwconv5x5_1``: two input channels per group), and dense (every other kernel). Functional
convolutions of the fast path (``F.conv2d`` on split weights) are not modules: they show in the operator table.
GFLOP counts 2 multiply-adds per weight per output pixel. The operator table is ``torch.profiler``'s self CPU
time, summed over the timed iterations, for the operators that take the most.
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict
from dataclasses import dataclass, field

import torch
from torch import nn

from drsformer.archs.variants import VARIANTS


def conv_kind(conv: nn.Conv2d) -> str:
    per_group = conv.in_channels // conv.groups
    if conv.kernel_size == (1, 1) and conv.groups == 1:
        return "1x1 convolutions"
    if per_group == 1:
        return f"depth-wise {conv.kernel_size[0]}x{conv.kernel_size[1]} convolutions"
    if per_group == 2:
        return f"pair-grouped {conv.kernel_size[0]}x{conv.kernel_size[1]} convolutions (MSFN)"
    return "other convolutions"


@dataclass
class ConvTimes:
    seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    flops: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    started: dict[int, float] = field(default_factory=dict)

    def attach(self, model: nn.Module) -> list:
        handles = []
        for conv in model.modules():
            if isinstance(conv, nn.Conv2d):
                handles.append(conv.register_forward_pre_hook(self._start))
                handles.append(conv.register_forward_hook(self._stop))
        return handles

    def _start(self, module: nn.Module, inputs) -> None:
        self.started[id(module)] = time.perf_counter()

    def _stop(self, module: nn.Module, inputs, output: torch.Tensor) -> None:
        assert isinstance(module, nn.Conv2d)
        kind = conv_kind(module)
        self.seconds[kind] += time.perf_counter() - self.started.pop(id(module))
        weights_per_output = module.weight[0].numel()
        self.flops[kind] += 2 * weights_per_output * output.numel()


def run_once(model: nn.Module, image: torch.Tensor, mode: str) -> None:
    if mode == "infer":
        with torch.inference_mode():
            model(image)
    else:
        loss = (model(image) - image).abs().mean()
        loss.backward()


def profile(model: nn.Module, size: int, mode: str, repeat: int, top: int) -> None:
    image = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    run_once(model, image, mode)  # warm-up: allocator and oneDNN primitives
    times = ConvTimes()
    handles = times.attach(model)
    begun = time.perf_counter()
    for _ in range(repeat):
        run_once(model, image, mode)
    whole = (time.perf_counter() - begun) / repeat
    for handle in handles:
        handle.remove()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(repeat):
            run_once(model, image, mode)
    impl = model.layout_impl
    print(f"\n### 1x3x{size}x{size}, {mode}, {impl} path: {whole:.2f} s per iteration (mean of {repeat})\n")
    print("| what | time | share | GFLOP | rate |")
    print("|---|---:|---:|---:|---:|")
    if mode == "infer":  # module hooks time the forward only
        for kind in sorted(times.seconds, key=times.seconds.get, reverse=True):
            seconds, gflop = times.seconds[kind] / repeat, times.flops[kind] / repeat / 1e9
            print(f"| {kind} (modules) | {seconds:.3f} s | {seconds / whole:.0%} | {gflop:.1f} | "
                  f"{gflop / seconds:.0f} GFLOP/s |")  # fmt: skip
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    for event in events[:top]:
        seconds = event.self_cpu_time_total / 1e6 / repeat
        print(f"| `{event.key}` ({event.count // repeat} calls) | {seconds:.3f} s | {seconds / whole:.0%} | | |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default="drsformer", choices=sorted(VARIANTS))
    parser.add_argument("--sizes", default="128,256")
    parser.add_argument("--impl", default="fast", choices=("fast", "reference"))
    parser.add_argument("--mode", default="infer", choices=("infer", "train"))
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--top", type=int, default=12, help="operators to list")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = VARIANTS[args.variant](impl=args.impl)
    model.train(args.mode == "train")
    print(f"{args.variant}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    for size in (int(s) for s in args.sizes.split(",")):
        profile(model, size, args.mode, args.repeat, args.top)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
