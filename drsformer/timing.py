"""Timing the model (what ``drsformer bench`` runs): inference, or a training step, and the fast path against the
paper's reference formulation.

Method: build the model once, warm up, then time ``repeat`` iterations one by one (CUDA events on the stream of
the model's GPU, the monotonic clock on CPU) and report the median. With two paths the timed iterations
alternate between them, so a slow drift of the machine affects both equally. A training step is the trainer's
own (:class:`drsformer.engine.step.Stepper`: autocast, the fp16 gradient scaler, an AdamW step).
"""

from __future__ import annotations

import copy
import itertools
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from .archs import DRSformer
from .archs.drsformer import IMPL_PARTS, PART_TYPES
from .engine.step import StepOptions, Stepper
from .memory import peak_mb, reset_peak
from .precision import autocast, cpu_computes_natively


@dataclass
class BenchSettings:
    height: int = 128
    width: int = 128
    batch: int = 1
    mode: str = "infer"  # infer | train (forward + backward + AdamW step)
    device: str = "cpu"
    precision: str = "fp32"
    compile: bool = False
    channels_last: bool = False
    warmup: int = 2
    repeat: int = 10
    seed: int = 0
    parts: tuple[str, ...] = IMPL_PARTS  # the parts a path's implementation applies to; the rest run fast
    activation_checkpointing: bool = False


@dataclass
class BenchResult:
    path: str
    times_ms: list[float] = field(default_factory=list)
    peak_memory_mb: float = float("nan")
    observed: dict[str, Any] = field(default_factory=dict)  # what the timed model and input really were

    @property
    def median_ms(self) -> float:
        return statistics.median(self.times_ms)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _Runner:
    """One path: a model (possibly compiled), its optimizer in train mode, and one step function."""

    def __init__(self, name: str, model: DRSformer, settings: BenchSettings, image: torch.Tensor) -> None:
        self.name = name
        self.settings = settings
        self.device = image.device
        self.image = image
        self.model = model.set_activation_checkpointing(settings.activation_checkpointing)
        self.autocast = autocast(self.device, settings.precision)
        self.net: Callable[[torch.Tensor], torch.Tensor] = torch.compile(model) if settings.compile else model
        if settings.mode == "train":
            model.train()
            optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
            memory_format = torch.channels_last if settings.channels_last else torch.contiguous_format
            options = StepOptions(settings.precision, None, memory_format, {"mixup": False}, settings.seed, 0)
            self.stepper = Stepper(model, self.net, optimizer, torch.nn.L1Loss(), options, self.device)
            batch = {"lq": image, "gt": torch.rand_like(image)}
            self.batches = itertools.repeat(batch)
        else:
            model.eval()

    def step(self) -> None:
        if self.settings.mode == "train":
            self.stepper.accumulate(self.batches, accum=1, micro_start=0)
            self.stepper.finish(True)
        else:
            with torch.inference_mode(), self.autocast:
                self.net(self.image)

    def timed_step(self) -> float:
        if self.device.type == "cuda":
            # On the stream the work runs on: the model's device's (an event recorded without a stream would go
            # to the current device's, cuda:0's, and time nothing when the model is on cuda:N).
            stream = torch.cuda.current_stream(self.device)
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record(stream)
            self.step()
            end.record(stream)
            end.synchronize()
            return start.elapsed_time(end)
        begin = time.perf_counter()
        self.step()
        return (time.perf_counter() - begin) * 1000

    def output(self) -> torch.Tensor:
        """The model's output in eval mode, run uncompiled (a compiled model would compile a second, eval graph
        beside the timed one); the fast and reference paths' outputs are compared with it."""
        seen: list[torch.dtype] = []  # the dtype convolutions compute in (autocast changes it)
        hook = self.model.patch_embed.register_forward_hook(lambda _m, _i, out: seen.append(out.dtype))
        with torch.inference_mode(), self.autocast:
            was_training = self.model.training
            self.model.eval()
            out = self.model(self.image)
            self.model.train(was_training)
        hook.remove()
        self.compute_dtype = str(seen[0]).removeprefix("torch.") if seen else "unknown"
        return out.float()

    def observed(self) -> dict[str, Any]:
        """The settings as found on the model and tensors, not as requested."""
        impls = {
            part: sorted({str(getattr(m, "impl")) for m in self.model.modules() if isinstance(m, kind)})  # noqa: B009
            for part, kind in PART_TYPES.items()
        }
        if not hasattr(self, "compute_dtype"):
            self.output()
        return {
            "impl": {part: found[0] if len(found) == 1 else found for part, found in impls.items() if found},
            "layout": self.model.layout_impl,
            "input_channels_last": self.image.is_contiguous(memory_format=torch.channels_last),
            "weights_channels_last": self.model.patch_embed.proj.weight.is_contiguous(
                memory_format=torch.channels_last
            ),
            "compute_dtype": self.compute_dtype,
            "compiled": self.net is not self.model,
            "activation_checkpointing": any(getattr(m, "checkpointing", False) for m in self.model.modules()),
            "training": self.settings.mode == "train",
        }


def run_paths(model: DRSformer, settings: BenchSettings, paths: list[str]) -> tuple[list[BenchResult], float | None]:
    """Times each of ``paths`` ("fast", "reference") on copies of ``model`` with identical weights.

    Returns one result per path and, when two paths ran, the largest absolute difference between their
    outputs on the benchmark input (inference mode, the benchmark's precision).
    """
    device = torch.device(settings.device)
    if device.type == "cuda":
        with torch.cuda.device(device):  # cuda:N is the current device for every call below
            return _run_paths(model, settings, paths, device)
    return _run_paths(model, settings, paths, device)


def _run_paths(
    model: DRSformer, settings: BenchSettings, paths: list[str], device: torch.device
) -> tuple[list[BenchResult], float | None]:
    memory_format = torch.channels_last if settings.channels_last else torch.contiguous_format
    generator = torch.Generator().manual_seed(settings.seed)
    image = torch.rand(
        settings.batch, model.config["inp_channels"], settings.height, settings.width, generator=generator
    )
    image = image.to(device).contiguous(memory_format=memory_format)
    runners = []
    for path in paths:
        replica = copy.deepcopy(model) if len(paths) > 1 else model
        replica = replica.set_impl("fast").set_impl(path, settings.parts)
        # Module.to takes a device and a memory_format together at run time; its typed overloads leave that out.
        replica = replica.to(device, memory_format=memory_format)  # type: ignore[call-overload]
        runners.append(_Runner(path, replica, settings, image))
    results = [BenchResult(r.name) for r in runners]

    difference = None
    if len(runners) > 1:
        outputs = [r.output() for r in runners]
        difference = max((o - outputs[0]).abs().max().item() for o in outputs[1:])

    for runner, result in zip(runners, results, strict=True):
        result.observed = runner.observed()
        reset_peak(device)  # both synchronise CUDA first
        for _ in range(max(settings.warmup, 1)):
            runner.step()
        result.peak_memory_mb = peak_mb(device)
    for _ in range(settings.repeat):
        for runner, result in zip(runners, results, strict=True):
            result.times_ms.append(runner.timed_step())
    return results, difference


def cpu_description() -> str:
    """The CPU as CPU figures depend on it: the architecture, the vector instructions PyTorch dispatches to, and
    the reduced precisions oneDNN computes natively (without them, bf16 and fp16 run emulated and slow)."""
    native = [
        name for name, dtype in (("bf16", torch.bfloat16), ("fp16", torch.float16)) if cpu_computes_natively(dtype)
    ]
    return (
        f"{platform.processor() or platform.machine()}, {torch.backends.cpu.get_cpu_capability()}, "
        f"native {'/'.join(native) if native else 'fp32 only'}"
    )


def environment(device: str) -> dict[str, Any]:
    env = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu": cpu_description(),
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return env


def format_table(settings: BenchSettings, results: list[BenchResult], difference: float | None) -> str:
    size = f"{settings.batch}x{settings.height}x{settings.width}"
    header = (
        f"{'path':<10} {'mode':<6} {'device':<7} {'prec':<5} {'input':<12} "
        f"{'ms/iter':>9} {'images/s':>9} {'peak MB':>9}"
    )
    lines = [header, "-" * len(header)]
    for r in results:
        rate = settings.batch * 1000 / r.median_ms
        lines.append(
            f"{r.path:<10} {settings.mode:<6} {settings.device:<7} {settings.precision:<5} {size:<12} "
            f"{r.median_ms:>9.1f} {rate:>9.2f} {r.peak_memory_mb:>9.0f}"
        )
    extras = []
    if settings.compile:
        extras.append("torch.compile")
    if settings.channels_last:
        extras.append("channels_last")
    if settings.activation_checkpointing:
        extras.append("activation checkpointing")
    if extras:
        lines.append("with " + ", ".join(extras))
    by_path = {r.path: r for r in results}
    if "fast" in by_path and "reference" in by_path:
        speedup = by_path["reference"].median_ms / by_path["fast"].median_ms
        lines.append(f"speed-up of fast over reference: {speedup:.2f}x; max |output difference| {difference:.3g}")
    return "\n".join(lines)


def to_json(settings: BenchSettings, results: list[BenchResult], difference: float | None, config: dict) -> str:
    payload = {
        "settings": asdict(settings),
        "model": config,
        "environment": environment(settings.device),
        "results": [
            {
                "path": r.path,
                "median_ms": r.median_ms,
                "images_per_s": settings.batch * 1000 / r.median_ms,
                "peak_memory_mb": r.peak_memory_mb,
                "times_ms": r.times_ms,
                "observed": r.observed,
            }
            for r in results
        ],
        "max_output_difference": difference,
    }
    return json.dumps(payload, indent=2)
