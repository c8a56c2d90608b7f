"""The ``drsformer`` command: the table of subcommands, each in its own module (:mod:`drsformer.commands`, and
the BasicSR-style entry points :mod:`drsformer.train` and :mod:`drsformer.test`). Nothing imports this module."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from .commands.running import run_command

# name -> (module, one-line help). Modules are imported when the parser is built.
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": (
        "drsformer.commands.demo",
        "make rainy photos, train a small DRSformer on the CPU for minutes, show the result",
    ),
    "train": ("drsformer.train", "train from a YAML options file (one process, or torchrun for several)"),
    "info": ("drsformer.commands.info", "architecture, parameter count and FLOPs of a model or checkpoint"),
    "bench": ("drsformer.commands.bench", "time inference or training; compare fast and reference paths"),
    "evaluate": (
        "drsformer.commands.evaluate",
        "Y-channel PSNR/SSIM of restored images as the paper's MATLAB scripts compute them; NIQE/BRISQUE of real "
        "rain without ground truth, as the authors' pyiqa computes them",
    ),
    "prepare": ("drsformer.commands.prepare", "turn a benchmark's original release into train|test/{input,target}"),
    "synth-rain": ("drsformer.commands.synth_rain", "write rainy/clean training pairs from a folder of clean photos"),
    "test": (
        "drsformer.test",
        "restore benchmark test sets, save the results and print PSNR/SSIM beside the paper's (NIQE/BRISQUE of "
        "input and output for real rain without target/)",
    ),
    "derain": (
        "drsformer.commands.derain",
        "derain your own photos of any size (tiling, self-ensemble, alpha, 16-bit)",
    ),
    "serve": (
        "drsformer.commands.serve",
        "a page on this machine to derain photos from a browser, with a before/after view (needs the serve extra)",
    ),
    "export": (
        "drsformer.commands.export",
        "write the model as ONNX or torch.export (checked against PyTorch at several sizes), or convert weights "
        "between .pth and .safetensors",
    ),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="drsformer", description="DRSformer single-image deraining")
    commands = parser.add_subparsers(dest="command", required=True, metavar="command")
    for name, (module_name, help_text) in COMMANDS.items():
        module = importlib.import_module(module_name)
        sub = commands.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(sub)
        sub.set_defaults(handler=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_command(args.command, args.handler, args)


if __name__ == "__main__":
    sys.exit(main())
