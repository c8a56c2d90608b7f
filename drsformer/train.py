"""``drsformer train -opt FILE`` (also ``python -m drsformer.train`` and ``torchrun ... -m drsformer.train``)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from .commands.args import add_device
from .commands.running import module_main
from .config import parse_overrides, read_training_options

DESCRIPTION = "train from a YAML options file (one process, or torchrun for several)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-opt", "--opt", required=True, metavar="FILE", help="options YAML file")
    parser.add_argument(
        "--set",
        action="append",
        nargs="+",
        metavar="KEY=VALUE",
        help="override options, e.g. --set train.total_iter=2e3 network_g.num_blocks=[1,1,1,1] (repeatable)",
    )
    parser.add_argument(
        "--resume",
        metavar="auto|PATH",
        help="continue a run: 'auto' takes the newest training state in the run folder, or give a .state file",
    )
    add_device(parser)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (logs still go to the run folder)")
    parser.add_argument("--launcher", help=argparse.SUPPRESS)  # accepted for BasicSR scripts; torchrun needs none
    parser.add_argument("--local_rank", "--local-rank", type=int, help=argparse.SUPPRESS)


def run(args: argparse.Namespace) -> int:
    from .engine.trainer import train
    from .memory import prepare_host_memory

    prepare_host_memory(inference=False)
    resolved = read_training_options(args.opt, parse_overrides(args.set))
    if os.environ.get("RANK", "0") == "0":
        for key, why in resolved.ignored:
            print(f"info: {key} is ignored here: {why}", file=sys.stderr)
    run_dir = train(resolved.options, resume=args.resume, device=args.device, progress=not args.no_progress)
    if os.environ.get("RANK", "0") == "0":
        print(f"done: weights in {run_dir / 'models'}, logs in {run_dir}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return module_main("train", "python -m drsformer.train", DESCRIPTION, add_arguments, run, argv)


if __name__ == "__main__":
    sys.exit(main())
