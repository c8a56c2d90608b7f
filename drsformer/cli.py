"""The ``drsformer`` command: argument parsing only; the work happens in the modules it calls."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

import torch

from .archs import CheckpointError, DRSformer, from_checkpoint
from .registry import ConfigError

VARIANTS = {"drsformer": True, "drsformer_no_mefc": False}


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


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model (weights, or an architecture to build with random weights)")
    group.add_argument("--weights", help="checkpoint file; its architecture is inferred from the keys")
    group.add_argument("--params-key", default="params", help="weights inside the checkpoint: params or params_ema")
    group.add_argument(
        "--variant",
        choices=sorted(VARIANTS),
        default="drsformer",
        help="drsformer (with MEFC; Rain200H/DID/DDN) or drsformer_no_mefc (Rain200L/SPA)",
    )
    group.add_argument("--dim", type=int, default=48)
    group.add_argument("--num-blocks", type=int, nargs=4, default=[4, 6, 6, 8], metavar="N")
    group.add_argument("--heads", type=int, nargs=4, default=[1, 2, 4, 8], metavar="N")
    group.add_argument("--ffn-expansion-factor", type=float, default=2.66)
    group.add_argument("--bias", action="store_true")
    group.add_argument("--layernorm-type", choices=["WithBias", "BiasFree"], default="WithBias")


def model_from_args(args: argparse.Namespace) -> tuple[DRSformer, str]:
    """The model the arguments describe, and a label for where it came from."""
    if args.weights:
        return from_checkpoint(args.weights, key=args.params_key), args.weights
    model = DRSformer(
        dim=args.dim,
        num_blocks=args.num_blocks,
        heads=args.heads,
        ffn_expansion_factor=args.ffn_expansion_factor,
        bias=args.bias,
        LayerNorm_type=args.layernorm_type,
        mefc=VARIANTS[args.variant],
    )
    return model, f"{args.variant} (random weights)"


def cmd_info(args: argparse.Namespace) -> int:
    from .info import describe, format_description

    model, source = model_from_args(args)
    info = describe(model, *args.size)
    print(json.dumps(info, indent=2) if args.json else format_description(info, source))
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from . import bench

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device is available to this PyTorch build")
    torch.manual_seed(args.seed)
    model, source = model_from_args(args)
    settings = bench.BenchSettings(
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
    )
    paths = ["reference", "fast"] if args.compare else [args.attention]
    print(f"benchmarking {source}; {args.warmup} warm-up + {args.repeat} timed iterations per path", flush=True)
    results, difference = bench.run(model, settings, paths)
    print(bench.format_table(settings, results, difference))
    if args.json:
        with open(args.json, "w") as f:
            f.write(bench.to_json(settings, results, difference, model.config))
        print(f"wrote {args.json}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .metrics.evaluate import canonical_dataset, evaluate_folders, write_json
    from .metrics.matlab import DATASET_PROTOCOLS

    dataset = canonical_dataset(args.dataset) if args.dataset else None
    protocol = args.protocol or (DATASET_PROTOCOLS[dataset] if dataset else None)
    if protocol is None:
        raise ConfigError("choose --protocol restormer|rcdnet, or --dataset to use the paper's protocol for it")
    if dataset and args.protocol and args.protocol != DATASET_PROTOCOLS[dataset]:
        print(
            f"note: the paper evaluates {dataset} with the {DATASET_PROTOCOLS[dataset]} protocol; "
            f"using {args.protocol} as asked",
            file=sys.stderr,
        )
    report = evaluate_folders(args.restored, args.gt, protocol, args.pair_by, args.workers, not args.quiet, dataset)
    print(report.summary())
    if args.json:
        write_json(report, args.json)
        print(f"wrote {args.json}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="drsformer", description="DRSformer single-image deraining")
    commands = parser.add_subparsers(dest="command", required=True, metavar="command")

    info = commands.add_parser("info", help="architecture, parameter count and FLOPs of a model or checkpoint")
    add_model_arguments(info)
    info.add_argument("--size", type=parse_size, default=(256, 256), help="input size for FLOPs: N or HxW")
    info.add_argument("--json", action="store_true", help="print JSON instead of text")
    info.set_defaults(handler=cmd_info)

    bench = commands.add_parser("bench", help="time inference or training; compare fast and reference paths")
    add_model_arguments(bench)
    bench.add_argument("--size", type=parse_size, default=(128, 128), help="N or HxW (default 128)")
    bench.add_argument("--batch", type=int, default=1)
    bench.add_argument(
        "--mode",
        choices=["infer", "train"],
        default="infer",
        help="infer: forward only; train: forward + L1 loss + backward + AdamW step",
    )
    bench.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    bench.add_argument(
        "--precision",
        choices=["fp32", "bf16", "fp16"],
        default="fp32",
        help="bf16/fp16 run under torch.autocast (fp16 training with a GradScaler)",
    )
    bench.add_argument("--compile", action="store_true", help="wrap the model in torch.compile")
    bench.add_argument("--channels-last", action="store_true", help="model and input in channels-last layout")
    bench.add_argument(
        "--attention",
        choices=["fast", "reference"],
        default="fast",
        help="which implementation to time: the fast path or the paper's plain formulation",
    )
    bench.add_argument(
        "--compare",
        action="store_true",
        help="time reference and fast paths on the same weights; print speed-up and max difference",
    )
    bench.add_argument("--warmup", type=int, default=2)
    bench.add_argument("--repeat", type=int, default=10)
    bench.add_argument("--seed", type=int, default=0)
    bench.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    bench.set_defaults(handler=cmd_bench)

    evaluate = commands.add_parser(
        "evaluate", help="Y-channel PSNR/SSIM of restored images, as the paper's MATLAB scripts compute them"
    )
    evaluate.add_argument("--restored", required=True, help="folder of restored (derained) images")
    evaluate.add_argument("--gt", required=True, help="folder of ground-truth images")
    evaluate.add_argument(
        "--protocol",
        choices=["restormer", "rcdnet"],
        help="restormer: uint8 Y, 2003 SSIM (Rain200L/H, SPA); rcdnet: float Y, 2009 SSIM (DID, DDN)",
    )
    evaluate.add_argument("--dataset", help="Rain200L, Rain200H, DID, DDN or SPA: picks the paper's protocol")
    evaluate.add_argument(
        "--pair-by",
        choices=["stem", "sorted"],
        default="stem",
        help="stem: match file names; sorted: pair by position like the MATLAB scripts",
    )
    evaluate.add_argument("--workers", type=int, default=None, help="processes (default: cores, at most 8)")
    evaluate.add_argument("--json", metavar="FILE", help="write per-image and mean scores as JSON")
    evaluate.add_argument("--quiet", action="store_true", help="no progress bar")
    evaluate.set_defaults(handler=cmd_evaluate)

    from .data import prepare, synth_rain

    prep = commands.add_parser("prepare", help="turn a benchmark's original release into train|test/{input,target}")
    prepare.add_arguments(prep)
    prep.set_defaults(handler=prepare.run)

    synth = commands.add_parser("synth-rain", help="write rainy/clean training pairs from a folder of clean photos")
    synth_rain.add_arguments(synth)
    synth.set_defaults(handler=synth_rain.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except (CheckpointError, ConfigError, ValueError, OSError) as err:
        print(f"drsformer {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
