"""A model's size and cost: parameters, and FLOPs counted on shapes only (what ``drsformer info`` prints)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from .drsformer import DRSformer, architecture_name


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_flops(config: Mapping[str, Any], height: int, width: int, impl: str = "reference", batch: int = 1) -> int:
    """Floating-point operations (2 per multiply-add) of one forward pass, counted on shapes only.

    The model is built on the ``meta`` device, so this takes about a second and no memory for any size.
    ``impl="reference"`` counts the paper's formulation; ``"fast"`` counts what the fast path executes.
    """
    with torch.device("meta"):
        model = DRSformer(**{**config, "impl": impl})
        image = torch.empty(batch, config.get("inp_channels", 3), height, width)
    with FlopCounterMode(display=False) as counter:
        model(image)
    return int(counter.get_total_flops())


def describe(model: DRSformer, height: int = 256, width: int = 256) -> dict[str, Any]:
    """Architecture, config, parameter count and FLOPs (paper formulation and fast path) at 1 x C x height x width."""
    flops = count_flops(model.config, height, width, "reference")
    return {
        "architecture": architecture_name(model.config),
        "config": dict(model.config),
        "parameters": count_parameters(model),
        "input": [1, model.config["inp_channels"], height, width],
        "flops": flops,
        "macs": flops // 2,
        "flops_fast_path": count_flops(model.config, height, width, "fast"),
    }


def format_description(info: dict[str, Any], source: str = "") -> str:
    cfg = info["config"]
    lines = [f"{info['architecture']}{' from ' + source if source else ''}"]
    for key, value in cfg.items():
        lines.append(f"  {key:<22} {value}")
    shape = "x".join(map(str, info["input"]))
    lines += [
        f"  {'parameters':<22} {info['parameters']:,} ({info['parameters'] / 1e6:.2f} M)",
        f"  {'FLOPs at ' + shape:<22} {info['flops'] / 1e9:.2f} G ({info['macs'] / 1e9:.2f} GMACs), paper formulation",
        f"  {'':<22} {info['flops_fast_path'] / 1e9:.2f} G executed by the fast path",
    ]
    return "\n".join(lines)


def comparison_table(models: Sequence[tuple[str, Mapping[str, Any]]], height: int = 256, width: int = 256) -> str:
    """A Markdown table of ``(label, config)`` rows: what each is, its parameters, and the GFLOPs of one forward
    pass at ``height`` x ``width`` (the formulation the papers write; counted on shapes, no memory)."""
    lines = [f"| model | architecture | parameters | GFLOPs at {height}x{width} |", "|---|---|---:|---:|"]
    for label, config in models:
        with torch.device("meta"):
            parameters = count_parameters(DRSformer(**config))
        flops = count_flops(config, height, width)
        lines.append(f"| {label} | {architecture_name(config)} | {parameters:,} | {flops / 1e9:.2f} |")
    return "\n".join(lines)
