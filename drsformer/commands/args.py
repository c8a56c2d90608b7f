"""The options several commands share, each written once: the model (weights, which weights inside the file, or
an architecture with random weights), the device, the precision, the tile and image sizes."""

from __future__ import annotations

import argparse
import inspect
import sys
from typing import TYPE_CHECKING, Any

from ..precision import PRECISIONS

if TYPE_CHECKING:
    from ..archs import DRSformer  # for annotations; the functions import archs when they run

WEIGHTS_KEY_HELP = (
    "weights inside the checkpoint: params or params_ema (default: the ones its training run validated, "
    "params_ema with EMA, else params)"
)


def parse_size(text: str) -> tuple[int, int]:
    """``256`` or ``256x320`` (height x width)."""
    try:
        parts = [int(p) for p in text.lower().split("x")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must be N or HxW, got {text!r}") from None
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2 or min(parts) < 1:
        raise argparse.ArgumentTypeError(f"size must be N or HxW with positive numbers, got {text!r}")
    return parts[0], parts[1]


def parse_tile(text: str) -> int | str:
    """``auto``, or a tile size in pixels (0: whole images)."""
    if text.strip().lower() == "auto":
        return "auto"
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected auto or a number of pixels, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"tile must be auto, 0 (whole images) or positive, got {value}")
    return value


def add_weights_key(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """``--params-key``: None by default, which :func:`drsformer.archs.checkpoint.weights_key` resolves."""
    parser.add_argument("--params-key", default=None, help=WEIGHTS_KEY_HELP)


def add_device(parser: argparse.ArgumentParser, default: str | None = None) -> None:
    """``--device cpu|cuda|cuda:N``, checked by :func:`drsformer.devices.resolve_device` when the command runs."""
    shown = default or "cuda when available"
    parser.add_argument("--device", default=default, help=f"cpu, cuda or cuda:N (default: {shown})")


def add_precision(parser: argparse.ArgumentParser, default: str | None = "fp32", help: str = "") -> None:
    """``--precision`` with the names of :mod:`drsformer.precision`."""
    text = help or "fp32, or bf16/fp16 autocast"
    parser.add_argument(
        "--precision", choices=PRECISIONS, default=default, help=f"{text} (default {default or 'fp32'})"
    )


# Constructor arguments offered as options of a model built with random weights, with how argparse reads them.
_ARCHITECTURE_OPTIONS: dict[str, dict[str, Any]] = {
    "dim": dict(type=int),
    "num_blocks": dict(type=int, nargs=4, metavar="N"),
    "heads": dict(type=int, nargs=4, metavar="N"),
    "ffn_expansion_factor": dict(type=float),
    "bias": dict(action="store_true", default=None),
    "LayerNorm_type": dict(choices=["WithBias", "BiasFree"], flag="--layernorm-type"),
}


def add_model(parser: argparse.ArgumentParser) -> None:
    """``--weights`` (with ``--params-key``), or ``--variant`` plus architecture options; defaults are the
    constructor's own."""
    from ..archs import VARIANTS, DRSformer

    defaults = {n: p.default for n, p in inspect.signature(DRSformer).parameters.items()}
    group = parser.add_argument_group("model (weights, or an architecture to build with random weights)")
    group.add_argument("--weights", help="checkpoint (.pth, .safetensors); architecture inferred from its keys")
    add_weights_key(group)
    docs = {name: (factory.__doc__ or "").splitlines()[0].rstrip(".") for name, factory in VARIANTS.items()}
    group.add_argument(
        "--variant",
        choices=sorted(VARIANTS),
        default="drsformer",
        help="; ".join(f"{name}: {doc}" for name, doc in docs.items()),
    )
    for name, spec in _ARCHITECTURE_OPTIONS.items():
        spec = dict(spec)
        flag = spec.pop("flag", "--" + name.replace("_", "-"))
        default = defaults[name]
        shown = list(default) if isinstance(default, tuple) else default
        group.add_argument(flag, dest=name, default=spec.pop("default", None), help=f"default {shown}", **spec)


def model_from_args(args: argparse.Namespace) -> tuple[DRSformer, str]:
    """The model :func:`add_model`'s options describe, and a label for where it came from. A checkpoint's weights
    are chosen by the one rule (:func:`drsformer.archs.checkpoint.weights_key`); its note goes to stderr."""
    from ..archs import VARIANTS
    from ..archs.checkpoint import load_model

    if args.weights:
        model, note = load_model(args.weights, args.params_key)
        if note:
            print(f"{args.weights}: {note}", file=sys.stderr)
        return model, args.weights
    given = {name: getattr(args, name) for name in _ARCHITECTURE_OPTIONS if getattr(args, name) is not None}
    return VARIANTS[args.variant](**given), f"{args.variant} (random weights)"
