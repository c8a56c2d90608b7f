"""The ``drsformer`` command: a table of subcommands, each living in its own module.

A subcommand module provides ``add_arguments(parser)`` and ``run(args) -> int``. Errors we raise on purpose
(:class:`~drsformer.errors.DrsformerError`) are printed as one line with exit status 2; anything else is a bug
and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import sys
from collections.abc import Sequence
from typing import Any

from .errors import DrsformerError, RunStopped

# name -> (module, one-line help). Modules are imported when the parser is built.
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("drsformer.demo", "make rainy photos, train a small DRSformer on the CPU for minutes, show the result"),
    "train": ("drsformer.train", "train from a YAML options file (one process, or torchrun for several)"),
    "info": ("drsformer.info", "architecture, parameter count and FLOPs of a model or checkpoint"),
    "bench": ("drsformer.bench", "time inference or training; compare fast and reference paths"),
    "evaluate": (
        "drsformer.metrics.evaluate",
        "Y-channel PSNR/SSIM of restored images as the paper's MATLAB scripts compute them; NIQE/BRISQUE of real "
        "rain without ground truth, as the authors' pyiqa computes them",
    ),
    "prepare": ("drsformer.data.prepare", "turn a benchmark's original release into train|test/{input,target}"),
    "synth-rain": ("drsformer.data.synth_rain", "write rainy/clean training pairs from a folder of clean photos"),
    "test": (
        "drsformer.test",
        "restore benchmark test sets, save the results and print PSNR/SSIM beside the paper's (NIQE/BRISQUE of "
        "input and output for real rain without target/)",
    ),
    "derain": ("drsformer.derain", "derain your own photos of any size (tiling, self-ensemble, alpha, 16-bit)"),
    "export": (
        "drsformer.export",
        "write the model as ONNX or torch.export (checked against PyTorch at several sizes), or convert weights "
        "between .pth and .safetensors",
    ),
}


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


# Constructor arguments offered as --options, with how argparse reads them.
_MODEL_OPTIONS = {
    "dim": dict(type=int),
    "num_blocks": dict(type=int, nargs=4, metavar="N"),
    "heads": dict(type=int, nargs=4, metavar="N"),
    "ffn_expansion_factor": dict(type=float),
    "bias": dict(action="store_true", default=None),
    "LayerNorm_type": dict(choices=["WithBias", "BiasFree"], flag="--layernorm-type"),
}


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """``--weights`` or ``--variant`` plus architecture options; defaults are the constructor's own."""
    from .archs import VARIANTS, DRSformer

    defaults = {n: p.default for n, p in inspect.signature(DRSformer).parameters.items()}
    group = parser.add_argument_group("model (weights, or an architecture to build with random weights)")
    group.add_argument("--weights", help="checkpoint (.pth, .safetensors); architecture inferred from its keys")
    group.add_argument("--params-key", default="params", help="weights inside the checkpoint: params or params_ema")
    docs = {name: (factory.__doc__ or "").splitlines()[0].rstrip(".") for name, factory in VARIANTS.items()}
    group.add_argument(
        "--variant",
        choices=sorted(VARIANTS),
        default="drsformer",
        help="; ".join(f"{name}: {doc}" for name, doc in docs.items()),
    )
    for name, spec in _MODEL_OPTIONS.items():
        spec = dict(spec)
        flag = spec.pop("flag", "--" + name.replace("_", "-"))
        default = defaults[name]
        shown = list(default) if isinstance(default, tuple) else default
        group.add_argument(flag, dest=name, default=spec.pop("default", None), help=f"default {shown}", **spec)


def model_from_args(args: argparse.Namespace) -> tuple[Any, str]:
    """The model the arguments describe, and a label for where it came from."""
    from .archs import VARIANTS, from_checkpoint

    if args.weights:
        return from_checkpoint(args.weights, key=args.params_key), args.weights
    given = {name: getattr(args, name) for name in _MODEL_OPTIONS if getattr(args, name) is not None}
    return VARIANTS[args.variant](**given), f"{args.variant} (random weights)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="drsformer", description="DRSformer single-image deraining")
    commands = parser.add_subparsers(dest="command", required=True, metavar="command")
    for name, (module_name, help_text) in COMMANDS.items():
        module = importlib.import_module(module_name)
        sub = commands.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(sub)
        sub.set_defaults(handler=module.run)
    return parser


def run_command(name: str, handler: Any, args: argparse.Namespace) -> int:
    """Runs a subcommand; our own errors become one line on stderr and exit status 2."""
    try:
        return handler(args)
    except RunStopped as stop:
        print(f"drsformer {name}: {stop}", file=sys.stderr)
        return stop.exit_status
    except DrsformerError as err:
        print(f"drsformer {name}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"drsformer {name}: interrupted", file=sys.stderr)
        return 130


def module_main(name: str, argv: Sequence[str] | None = None) -> int:
    """``python -m drsformer.<module>``: the subcommand ``name`` alone, with the same arguments and errors."""
    module_name, help_text = COMMANDS[name]
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(prog=f"python -m {module_name}", description=help_text)
    module.add_arguments(parser)
    return run_command(name, module.run, parser.parse_args(argv))


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_command(args.command, args.handler, args)


if __name__ == "__main__":
    sys.exit(main())
