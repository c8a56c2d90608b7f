"""``drsformer bench``: time the model, and compare the fast path with the paper's reference formulation.

Method: build the model once, warm up, then time ``repeat`` iterations one by one (CUDA events on GPU, the
monotonic clock on CPU) and report the median. With two paths (``--compare``) the timed iterations alternate
between them, so a slow drift of the machine affects both equally.
"""

from __future__ import annotations

import copy
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from .archs import DRSformer

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


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


@dataclass
class BenchResult:
    path: str
    times_ms: list[float] = field(default_factory=list)
    peak_memory_mb: float = float("nan")

    @property
    def median_ms(self) -> float:
        return statistics.median(self.times_ms)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:  # Linux: writing 5 resets the process's peak resident set size (VmHWM)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def _peak_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


class _Runner:
    """One path: a model (possibly compiled), its optimizer in train mode, and one step function."""

    def __init__(self, name: str, model: DRSformer, settings: BenchSettings, image: torch.Tensor) -> None:
        self.name = name
        self.settings = settings
        self.device = image.device
        self.image = image
        self.model = model
        dtype = PRECISIONS[settings.precision]
        self.autocast = torch.autocast(self.device.type, dtype=dtype, enabled=dtype is not None)
        self.net: Callable[[torch.Tensor], torch.Tensor] = torch.compile(model) if settings.compile else model
        if settings.mode == "train":
            model.train()
            self.optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
            self.scaler = torch.amp.GradScaler(self.device.type, enabled=settings.precision == "fp16")
            self.target = torch.rand_like(image)
        else:
            model.eval()

    def step(self) -> None:
        if self.settings.mode == "train":
            self.optimizer.zero_grad(set_to_none=True)
            with self.autocast:
                loss = F.l1_loss(self.net(self.image), self.target)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            with torch.inference_mode(), self.autocast:
                self.net(self.image)

    def timed_step(self) -> float:
        if self.device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            self.step()
            end.record()
            end.synchronize()
            return start.elapsed_time(end)
        begin = time.perf_counter()
        self.step()
        return (time.perf_counter() - begin) * 1000

    def output(self) -> torch.Tensor:
        with torch.inference_mode(), self.autocast:
            was_training = self.model.training
            self.model.eval()
            out = self.net(self.image).float()
            self.model.train(was_training)
        return out


def run(model: DRSformer, settings: BenchSettings, paths: list[str]) -> tuple[list[BenchResult], float | None]:
    """Times each of ``paths`` ("fast", "reference") on copies of ``model`` with identical weights.

    Returns one result per path and, when two paths ran, the largest absolute difference between their
    outputs on the benchmark input (inference mode, the benchmark's precision).
    """
    device = torch.device(settings.device)
    memory_format = torch.channels_last if settings.channels_last else torch.contiguous_format
    generator = torch.Generator().manual_seed(settings.seed)
    image = torch.rand(
        settings.batch, model.config["inp_channels"], settings.height, settings.width, generator=generator
    )
    image = image.to(device).contiguous(memory_format=memory_format)
    runners = []
    for path in paths:
        replica = copy.deepcopy(model) if len(paths) > 1 else model
        replica = replica.set_impl(path).to(device, memory_format=memory_format)
        runners.append(_Runner(path, replica, settings, image))
    results = [BenchResult(r.name) for r in runners]

    difference = None
    if len(runners) > 1:
        outputs = [r.output() for r in runners]
        difference = max((o - outputs[0]).abs().max().item() for o in outputs[1:])

    for runner, result in zip(runners, results, strict=True):
        _sync(device)
        _reset_peak(device)
        for _ in range(max(settings.warmup, 1)):
            runner.step()
        _sync(device)
        result.peak_memory_mb = _peak_mb(device)
    for _ in range(settings.repeat):
        for runner, result in zip(runners, results, strict=True):
            result.times_ms.append(runner.timed_step())
    return results, difference


def environment(device: str) -> dict[str, Any]:
    env = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu": platform.processor() or platform.machine(),
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
            }
            for r in results
        ],
        "max_output_difference": difference,
    }
    return json.dumps(payload, indent=2)
