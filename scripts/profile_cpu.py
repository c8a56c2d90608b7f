"""Where a CPU forward (or training step) spends its time: every convolution by kind, every part of the network,
and the other operators, at several sizes. Prints tables, so that speed work starts from figures.

    python scripts/profile_cpu.py                          # the default model, 128 and 256, the fast path
    python scripts/profile_cpu.py --sizes 128,256,512 --impl reference
    python scripts/profile_cpu.py --mode train --sizes 128
    python scripts/profile_cpu.py --sizes 256 --precision bf16  # under autocast, as derain --precision bf16

The whole iteration is first timed with nothing attached. Then:

- **Convolutions** (inference): each ``F.conv2d`` call is timed with a clock around it and grouped by kind from
  its weight's shape: 1x1, depth-wise (one input channel per group), pair-grouped (MSFN's ``dwconv3x3_1``/
  ``dwconv5x5_1`` in the reference formulation: two input channels per group) and dense (every other kernel).
  ``torch.profiler``'s self times are not used for them: they came out 1.2-1.8x the clock's for the same calls
  (depth-wise 3x3 at 19 GFLOP/s against 34), and summed to more than the whole iteration.
- **Parts of the network**: each attention, feed-forward network, pair of layer norms, MEFC, up- and
  down-sampling, per stage, timed by forward hooks (in training, their forward passes only), with the
  convolutions' share of each. What no part covers (skip concatenations, residual adds, the channel
  reductions after the skips) is the last row.
- **Other operators**: ``torch.profiler``'s self CPU time for the operators that are not convolutions. Read it as a
  ranking: the profiler inflates short operators.
- In training, the convolutions' backward too, from ``torch.profiler`` (the clock cannot see inside autograd).
- **The floor** (fp32 inference): the iteration's matrix products (1x1 and dense convolutions, ``mm``/``bmm``) at
  this CPU's measured rate for a large fp32 matrix product, plus its depth-wise convolutions at the longer of their
  arithmetic at that rate and their maps read and written once at its measured copy bandwidth; everything else
  counted as free. An iteration of these operators does not get below it, however they are arranged, so it
  bounds any speed-up target. (On a shared VM the rates move: both are measured before and after the
  iterations, and the faster of each is used.)

GFLOP counts a multiply and an add per weight per output pixel (twice that for a backward). Under autocast
(``--precision bf16``) each convolution's clock includes autocast's casts of its weight and bias.
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict

import torch
import torch.nn.functional as F
from torch import nn

from drsformer.archs.blocks import TransformerBlock
from drsformer.archs.variants import VARIANTS
from drsformer.memory import prepare_host_memory
from drsformer.precision import PRECISIONS, autocast
from drsformer.timing import cpu_description

CONVOLUTIONS = ("aten::mkldnn_convolution", "aten::convolution_backward")
MATRIX_PRODUCTS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm")
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


def conv_flops(weight_shape: torch.Size | list[int], out_shape: torch.Size | list[int]) -> float:
    """Multiplies and adds of a convolution, from its weight (out, in per group, kh, kw) and output shapes."""
    o, per_group, kh, kw = weight_shape
    n, _, h, w = out_shape
    return 2.0 * o * per_group * kh * kw * n * h * w


def is_matrix_product(kind: str) -> bool:
    """Whether a convolution kind is a matrix product per pixel (1x1, dense), not a per-channel filter."""
    return kind.startswith(("1x1", "dense"))


def matrix_product_gflop(events, repeat: int) -> float:
    """GFLOP per iteration of the ``mm``/``bmm`` products among ``torch.profiler`` events (``with_flops=True``)."""
    return sum(event.flops for event in events if event.key in MATRIX_PRODUCTS) / 1e9 / repeat


def _best_seconds(work, runs: int) -> float:
    work()  # warm-up
    best = float("inf")
    for _ in range(runs):
        begun = time.perf_counter()
        work()
        best = min(best, time.perf_counter() - begun)
    return best


def machine_rates(side: int = 2048, megabytes: int = 256, runs: int = 5) -> tuple[float, float]:
    """This CPU's fp32 matrix-product rate in GFLOP/s (``side`` x ``side`` products) and its memory bandwidth in
    GB/s read plus written (copying ``megabytes``), each the best of ``runs``, at the current thread count."""
    a, b = torch.rand(side, side), torch.rand(side, side)
    product = _best_seconds(lambda: torch.mm(a, b), runs)
    source = torch.rand(megabytes * 2**20 // 4)
    target = torch.empty_like(source)
    copy = _best_seconds(lambda: target.copy_(source), runs)
    return 2 * side**3 / product / 1e9, 2 * source.nbytes / copy / 1e9


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
        flops = 0.0 if kind == WEIGHT_GRADIENTS else conv_flops(weight, image)  # the output keeps the image's size
        entry = kinds[kind]
        entry[0] += event.self_cpu_time_total / 1e6 / repeat
        entry[1] += flops * calls * (2 if backward else 1) / 1e9
        entry[2] += calls
    return kinds


def block_parts(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(label, module) for each part the per-module table times, in the network's order: per stage, the
    attention, the feed-forward network and the layer norms of its Transformer blocks; MEFC, the embedding, the
    up- and down-sampling and the output convolution as themselves."""
    parts = []
    for step in getattr(model, "plan", ()):
        module = model.get_submodule(step.module)
        if step.kind != "block":
            parts.append((f"{step.module} ({type(module).__name__})", module))
            continue
        assert isinstance(module, TransformerBlock)
        stage = step.module.rsplit(".", 1)[0]
        parts.append((f"{stage}: attention ({type(module.attn).__name__})", module.attn))
        parts.append((f"{stage}: feed-forward ({type(module.ffn).__name__})", module.ffn))
        parts += [(f"{stage}: layer norms", module.norm1), (f"{stage}: layer norms", module.norm2)]
    return parts


class ClockedParts:
    """Times every convolution (``F.conv2d``, which ``nn.Conv2d`` calls too) with a clock, by kind, and the
    forward pass of each part of the network with hooks, crediting each convolution to the part it runs in."""

    def __init__(self, model: nn.Module, clock_convolutions: bool) -> None:
        self.model = model
        self.clock_convolutions = clock_convolutions
        self.kinds: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0])  # seconds, GFLOP, calls
        self.filter_bytes = 0  # input and output bytes of the per-channel (not matrix-product) convolutions
        self.parts: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0])  # seconds, conv seconds, calls
        self.resolution: dict[str, int] = {}
        self._open: list[tuple[str, float]] = []
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._conv2d = F.conv2d

    def _timed_conv2d(self, x: torch.Tensor, weight: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        begun = time.perf_counter()
        out = self._conv2d(x, weight, *args, **kwargs)
        seconds = time.perf_counter() - begun
        kind = conv_kind(list(weight.shape))
        entry = self.kinds[kind]
        if not is_matrix_product(kind):
            self.filter_bytes += x.nbytes + out.nbytes
        entry[0] += seconds
        entry[1] += conv_flops(weight.shape, out.shape) / 1e9
        entry[2] += 1
        if self._open:
            self.parts[self._open[-1][0]][1] += seconds
        return out

    def __enter__(self) -> ClockedParts:
        for label, module in block_parts(self.model):
            self._handles.append(module.register_forward_pre_hook(self._pre_hook(label)))
            self._handles.append(module.register_forward_hook(self._post_hook(label)))
        if self.clock_convolutions:
            F.conv2d = self._timed_conv2d  # type: ignore[assignment]  # same call signature
        return self

    def __exit__(self, *exc: object) -> None:
        F.conv2d = self._conv2d
        for handle in self._handles:
            handle.remove()

    def _pre_hook(self, label: str):
        def hook(module: nn.Module, inputs: tuple) -> None:
            self.resolution.setdefault(label, inputs[0].shape[-1])
            self._open.append((label, time.perf_counter()))

        return hook

    def _post_hook(self, label: str):
        def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            opened, begun = self._open.pop()
            assert opened == label  # the parts do not nest
            entry = self.parts[label]
            entry[0] += time.perf_counter() - begun
            entry[2] += 1

        return hook


def run_once(model: nn.Module, image: torch.Tensor, mode: str, precision: str = "fp32") -> None:
    if mode == "infer":
        with torch.inference_mode(), autocast("cpu", precision):
            model(image)
    else:
        model.zero_grad(set_to_none=True)
        with autocast("cpu", precision):
            loss = (model(image).float() - image).abs().mean()
        loss.backward()


def print_convolutions(kinds: dict[str, list[float]], whole: float, title: str) -> None:
    print(f"\n{title}\n")
    print("| convolution | time | share | GFLOP | rate |")
    print("|---|---:|---:|---:|---:|")
    for kind, (seconds, gflop, calls) in sorted(kinds.items(), key=lambda item: -item[1][0]):
        work = f"{gflop:.1f} | {gflop / seconds:.0f} GFLOP/s" if gflop else " | "  # kernel sizes unknown: blank
        print(f"| {kind} ({calls:.0f} calls) | {seconds:.3f} s | {seconds / whole:.0%} | {work} |")


def print_parts(clocked: ClockedParts, repeat: int, whole: float, mode: str) -> None:
    what = "forward passes only, by forward hooks" if mode == "train" else "forward hooks; convolutions clocked"
    print(f"\nBy part of the network ({what}):\n")
    print("| part | resolution | calls | time | share | of which convolutions |")
    print("|---|---:|---:|---:|---:|---:|")
    covered = 0.0
    for label, (seconds, conv_seconds, calls) in sorted(clocked.parts.items(), key=lambda item: -item[1][0]):
        seconds, conv_seconds = seconds / repeat, conv_seconds / repeat
        covered += seconds
        side = clocked.resolution[label]
        convs = f"{conv_seconds:.3f} s" if clocked.clock_convolutions else ""
        print(f"| {label} | {side}² | {calls / repeat:.0f} | {seconds:.3f} s | {seconds / whole:.0%} | {convs} |")
    if mode == "infer":
        rest = whole - covered
        print(f"| between the parts (skips, residual adds, reductions) | | | {rest:.3f} s | {rest / whole:.0%} | |")


def print_floor(
    product_gflop: float, filter_gflop: float, filter_bytes: float, whole: float, rates: tuple[float, float]
) -> None:
    product_rate, bandwidth = rates
    products = product_gflop / product_rate
    filter_arithmetic = filter_gflop / product_rate
    filter_traffic = filter_bytes / 1e9 / bandwidth
    floor = products + max(filter_arithmetic, filter_traffic)
    print(
        f"\nThe floor on this CPU, {torch.get_num_threads()} threads: fp32 matrix products at {product_rate:.1f} "
        f"GFLOP/s (2048² products), memory at {bandwidth:.1f} GB/s (a 256 MB copy, read plus written); each the "
        "best of 5 runs before the iterations and 5 after:\n"
    )
    filtering = "depth-wise (and pair-grouped) convolutions"
    print("| work | amount | time at those rates |")
    print("|---|---:|---:|")
    print(f"| matrix products: 1x1 and dense convolutions, mm, bmm | {product_gflop:.1f} GFLOP | {products:.3f} s |")
    print(f"| {filtering}: their arithmetic | {filter_gflop:.1f} GFLOP | {filter_arithmetic:.3f} s |")
    print(f"| {filtering}: each map read and written once | {filter_bytes / 1e9:.2f} GB | {filter_traffic:.3f} s |")
    print(
        f"| the products and the larger depth-wise row, everything else free | | {floor:.3f} s: the iteration "
        f"takes {whole / floor:.2f}x that |"
    )


def profile(model: nn.Module, size: int, mode: str, repeat: int, top: int, precision: str = "fp32") -> None:
    image = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    floor_wanted = mode == "infer" and precision == "fp32"
    rates_before = machine_rates() if floor_wanted else (0.0, 0.0)
    run_once(model, image, mode, precision)  # warm-up: allocator and oneDNN primitives
    begun = time.perf_counter()
    for _ in range(repeat):
        run_once(model, image, mode, precision)
    whole = (time.perf_counter() - begun) / repeat
    impl = model.layout_impl
    print(f"\n### 1x3x{size}x{size}, {mode}, {precision}, {impl} path: {whole:.2f} s per iteration (mean of {repeat})")

    with ClockedParts(model, clock_convolutions=mode == "infer") as clocked:
        begun = time.perf_counter()
        for _ in range(repeat):
            run_once(model, image, mode, precision)
        clocked_whole = (time.perf_counter() - begun) / repeat
    cpu = [torch.profiler.ProfilerActivity.CPU]
    with torch.profiler.profile(activities=cpu, record_shapes=True, with_flops=mode == "infer") as prof:
        for _ in range(repeat):
            run_once(model, image, mode, precision)

    if mode == "infer":
        kinds = {kind: [s / repeat, g / repeat, c / repeat] for kind, (s, g, c) in clocked.kinds.items()}
        title = f"Convolutions, each call clocked ({clocked_whole:.2f} s per iteration with the clocks on):"
    else:
        kinds = conv_table(prof.key_averages(group_by_input_shape=True), repeat)
        title = "Convolutions and their backward (torch.profiler's self times, which run high):"
    print_convolutions(kinds, whole, title)
    print_parts(clocked, repeat, whole, mode)

    print("\nOther operators (torch.profiler's self CPU time: a ranking, it inflates short operators):\n")
    print("| operator | calls | time |")
    print("|---|---:|---:|")
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    for event in [e for e in events if e.key not in CONVOLUTIONS][:top]:
        seconds = event.self_cpu_time_total / 1e6 / repeat
        print(f"| `{event.key}` | {event.count // repeat} | {seconds:.3f} s |")

    if floor_wanted:  # the rates measured before the iterations and after, the faster of each (a lower floor)
        rates_after = machine_rates()
        rates = (max(rates_before[0], rates_after[0]), max(rates_before[1], rates_after[1]))
        products = matrix_product_gflop(prof.key_averages(), repeat)
        products += sum(gflop for kind, (_, gflop, _) in kinds.items() if is_matrix_product(kind))
        filters = sum(gflop for kind, (_, gflop, _) in kinds.items() if not is_matrix_product(kind))
        print_floor(products, filters, clocked.filter_bytes / repeat, whole, rates)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default="drsformer", choices=sorted(VARIANTS))
    parser.add_argument("--sizes", default="128,256")
    parser.add_argument("--impl", default="fast", choices=("fast", "reference"))
    parser.add_argument("--mode", default="infer", choices=("infer", "train"))
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--top", type=int, default=12, help="operators to list besides the convolutions")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--precision", default="fp32", choices=PRECISIONS, help="bf16/fp16: under torch.autocast")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    prepare_host_memory(inference=args.mode == "infer")  # as derain, test and bench do
    torch.manual_seed(0)
    model = VARIANTS[args.variant](impl=args.impl)
    model.train(args.mode == "train")
    print(f"{args.variant}, {torch.get_num_threads()} threads, torch {torch.__version__}, {cpu_description()}")
    for size in (int(s) for s in args.sizes.split(",")):
        profile(model, size, args.mode, args.repeat, args.top, args.precision)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
