"""``drsformer info``: the architecture a model or checkpoint has, its size and its cost."""

from __future__ import annotations

import argparse
import json

from ..archs.cost import describe, format_description
from .args import add_model, model_from_args, parse_size


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model(parser)
    parser.add_argument("--size", type=parse_size, default=(256, 256), help="input size for FLOPs: N or HxW")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")


def run(args: argparse.Namespace) -> int:
    model, source = model_from_args(args)
    info = describe(model, *args.size)
    print(json.dumps(info, indent=2) if args.json else format_description(info, source))
    return 0
