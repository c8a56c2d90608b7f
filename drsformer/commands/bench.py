"""``drsformer bench``: time the model, and compare the fast path with the paper's reference formulation (the
method is :mod:`drsformer.timing`'s)."""

from __future__ import annotations

import argparse

import torch

from ..archs.drsformer import IMPL_PARTS, IMPLS
from ..devices import resolve_device
from ..errors import ConfigError
from ..memory import prepare_host_memory
from ..timing import BenchSettings, cpu_description, format_table, run_paths, to_json
from .args import add_device, add_model, add_precision, model_from_args, parse_size


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model(parser)
    parser.add_argument("--size", type=parse_size, default=(128, 128), help="N or HxW (default 128)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument(
        "--mode",
        choices=["infer", "train"],
        default="infer",
        help="infer: forward only; train: forward + L1 loss + backward + AdamW step",
    )
    add_device(parser)
    add_precision(parser, help="fp32, or bf16/fp16 under torch.autocast (fp16 training with a gradient scaler)")
    parser.add_argument("--compile", action="store_true", help="wrap the model in torch.compile")
    parser.add_argument("--channels-last", action="store_true", help="model and input in channels-last layout")
    parser.add_argument(
        "--activation-checkpointing",
        action="store_true",
        help="recompute each Transformer block in the backward pass (train mode: less memory, more time)",
    )
    parser.add_argument(
        "--impl",
        choices=IMPLS,
        default="fast",
        help="which implementation to time: the fast path or the paper's plain formulation (of --parts)",
    )
    parser.add_argument(
        "--parts",
        default=",".join(IMPL_PARTS),
        help=f"comma-separated parts --impl (and --compare's reference path) applies to; the others run fast "
        f"(default: all of {','.join(IMPL_PARTS)})",
    )
    parser.add_argument(
        "--compare",
        action="store_true",
        help="time reference and fast paths on the same weights; print speed-up and max difference",
    )
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")


def run(args: argparse.Namespace) -> int:
    prepare_host_memory(inference=args.mode == "infer")  # as derain, test and train do
    args.device = str(resolve_device(args.device))
    parts = tuple(p.strip() for p in args.parts.split(",") if p.strip())
    unknown = [p for p in parts if p not in IMPL_PARTS]
    if unknown or not parts:
        raise ConfigError(f"--parts: unknown part(s) {', '.join(unknown) or '(none given)'}; choose from {IMPL_PARTS}")
    torch.manual_seed(args.seed)
    model, source = model_from_args(args)
    settings = BenchSettings(
        height=args.size[0],
        width=args.size[1],
        batch=args.batch,
        mode=args.mode,
        device=args.device,
        precision=args.precision,
        compile=args.compile,
        channels_last=args.channels_last,
        warmup=args.warmup,
        repeat=args.repeat,
        seed=args.seed,
        parts=parts,
        activation_checkpointing=args.activation_checkpointing,
    )
    paths = ["reference", "fast"] if args.compare else [args.impl]
    print(f"benchmarking {source}; {args.warmup} warm-up + {args.repeat} timed iterations per path", flush=True)
    print(f"torch {torch.__version__}; CPU: {cpu_description()}, {torch.get_num_threads()} threads", flush=True)
    results, difference = run_paths(model, settings, paths)
    print(format_table(settings, results, difference))
    if args.json:
        with open(args.json, "w") as f:
            f.write(to_json(settings, results, difference, model.config))
        print(f"wrote {args.json}")
    return 0
