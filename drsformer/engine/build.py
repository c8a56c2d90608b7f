"""Building a run's parts from its options, through the registries: the network (and its pretrained weights), EMA,
optimizer, scheduler, loss, the DDP and compiled wrappers, the optimizer step, the bad-step guard, the training
data and its schedule, and validation; and the process-wide backend settings a run changes and puts back."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from .. import (  # noqa: F401  (fill the registries the options name)
    archs,
    data,
    losses,
    metrics,
    optim,  # noqa: F401  (fills the optimizer and scheduler registries)
)
from ..errors import ConfigError
from ..precision import needs_grad_scaler
from ..registry import ARCH_REGISTRY, LOSS_REGISTRY, OPTIMIZER_REGISTRY, SCHEDULER_REGISTRY
from .data import Schedule, build_dataset, build_schedule, check_crops_fit
from .distributed import Distributed
from .guard import Guard
from .logger import RunLogger
from .state import Parts, load_pretrained
from .step import EMA, StepOptions, Stepper
from .validation import Validator

DEFAULT_CLIP_NORM = 0.01  # the published loop clips at 0.01 when use_grad_clip is true


@dataclass
class Built:
    """Everything a run's loop works with."""

    model: nn.Module  # the plain network (its parameters are stepped, saved and averaged)
    parts: Parts
    guard: Guard
    schedule: Schedule
    train_set: Any
    validator: Validator


def build_network(options: dict[str, Any], device: torch.device, logger: RunLogger) -> nn.Module:
    """``network_g`` (seeded by ``manual_seed``), its pretrained weights, activation checkpointing, on ``device``."""
    train = options["train"]
    torch.manual_seed(options["manual_seed"])
    model: nn.Module = ARCH_REGISTRY.build(dict(options["network_g"]), where="network_g")
    if options["path"]["pretrain_network_g"]:
        load_pretrained(model, options["path"], logger)
    if train["activation_checkpointing"]:
        enable = getattr(model, "set_activation_checkpointing", None)  # a method of DRSformer, not of nn.Module
        if enable is None:
            raise ConfigError("train.activation_checkpointing: this network does not support it")
        enable(True)
    memory_format = torch.channels_last if train["channels_last"] else torch.contiguous_format
    # Module.to takes a device and a memory_format together at run time; its typed overloads leave that out.
    return model.to(device, memory_format=memory_format)  # type: ignore[call-overload]


# On CPU, oneDNN hands some weight gradients back in the channels-last order (1x1 and depth-wise kernels). Those
# differ from their parameters' strides only in a dimension of size 1, which is the same memory
# (tests/test_train.py checks it), so DDP's warning about them is noise.
GRAD_STRIDE_WARNING = "Grad strides do not match bucket view strides"


def wrap_ddp(model: nn.Module, device: torch.device) -> DistributedDataParallel:
    """``model`` in DDP, one device per process; on CPU without the layout warning above."""
    if device.type == "cpu":
        warnings.filterwarnings("ignore", message=GRAD_STRIDE_WARNING, category=UserWarning)
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def build_run(options: dict[str, Any], dist: Distributed, logger: RunLogger, run_dir: Path) -> Built:
    """The parts of a run described by resolved ``options``, on ``dist.device``."""
    train, device = options["train"], dist.device
    model = build_network(options, device, logger)
    ema = EMA(model, train["ema_decay"]) if train["ema_decay"] > 0 else None
    optimizer = OPTIMIZER_REGISTRY.build(
        train["optim_g"], [p for p in model.parameters() if p.requires_grad], where="train.optim_g"
    )
    for group in optimizer.param_groups:
        group.setdefault("initial_lr", group["lr"])
    scheduler = (
        SCHEDULER_REGISTRY.build(train["scheduler"], where="train.scheduler", optimizer=optimizer)
        if train["scheduler"]
        else None
    )
    loss_fn = LOSS_REGISTRY.build(train["pixel_opt"], where="train.pixel_opt").to(device)
    ddp = wrap_ddp(model, device) if dist.enabled else None
    net = torch.compile(ddp or model) if train["compile"] else ddp or model
    clip = train["grad_clip_norm"] or (DEFAULT_CLIP_NORM if train["use_grad_clip"] else None)
    memory_format = torch.channels_last if train["channels_last"] else torch.contiguous_format
    precision = train["precision"]
    step_options = StepOptions(precision, clip, memory_format, train["mixing_augs"], options["manual_seed"], dist.rank)
    stepper = Stepper(model, net, optimizer, loss_fn, step_options, device, ema, ddp)
    guard = Guard(train["max_bad_steps"], train["max_skipped_steps"], fp16=needs_grad_scaler(precision))

    schedule = build_schedule(options, dist.world_size)
    train_set = build_dataset(options["datasets"]["train"], "datasets.train")
    check_crops_fit(train_set, schedule, "datasets.train")
    validator = Validator(options, dist, logger, run_dir, precision)
    parts = Parts(model, ema, optimizer, scheduler, stepper, None, schedule)
    return Built(model, parts, guard, schedule, train_set, validator)


def configure_backends(device: torch.device, train: dict[str, Any]) -> dict[str, Any]:
    """``train.deterministic``: deterministic algorithms only (an operation without one raises, naming itself),
    cuDNN's deterministic choices and no autotuning. Otherwise on CUDA, cuDNN autotuning (crops have a few
    fixed sizes). ``train.tf32``: TF32 matmuls and convolutions. Returns the settings it replaced."""
    backends = torch.backends
    saved = {
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "cudnn.deterministic": backends.cudnn.deterministic,
        "cudnn.benchmark": backends.cudnn.benchmark,
        "matmul.allow_tf32": backends.cuda.matmul.allow_tf32,
        "cudnn.allow_tf32": backends.cudnn.allow_tf32,
    }
    deterministic = train["deterministic"]
    torch.use_deterministic_algorithms(deterministic)
    backends.cudnn.deterministic = deterministic
    if device.type == "cuda":
        backends.cudnn.benchmark = not deterministic
        backends.cuda.matmul.allow_tf32 = train["tf32"]
        backends.cudnn.allow_tf32 = train["tf32"]
    return saved


def restore_backends(saved: dict[str, Any] | None) -> None:
    """Puts back what :func:`configure_backends` changed (they are process-wide)."""
    if not saved:
        return
    torch.use_deterministic_algorithms(saved["deterministic_algorithms"])
    torch.backends.cudnn.deterministic = saved["cudnn.deterministic"]
    torch.backends.cudnn.benchmark = saved["cudnn.benchmark"]
    torch.backends.cuda.matmul.allow_tf32 = saved["matmul.allow_tf32"]
    torch.backends.cudnn.allow_tf32 = saved["cudnn.allow_tf32"]
