"""``drsformer export``: the model as an ONNX or torch.export file, checked against PyTorch before it is kept;
or its weights converted between .pth and .safetensors (see :mod:`drsformer.deploy.export`).

    drsformer export --weights pretrained/Rain200H.pth -o rain200h.onnx
    drsformer export --weights net_g_best.pth --format pt2 --precision bf16 -o model.pt2
    drsformer export --weights pretrained/Rain200H.pth -o Rain200H.safetensors
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..archs.checkpoint import load_model
from ..deploy.export import convert_weights, export_graph
from ..errors import ConfigError
from .args import add_precision, add_weights_key, parse_size

FORMATS = ("onnx", "pt2", "safetensors", "pth")
SUFFIXES = {".onnx": "onnx", ".pt2": "pt2", ".safetensors": "safetensors", ".pth": "pth", ".pt": "pth"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--weights", required=True, help="a checkpoint: published .pth, our net_g_*, .safetensors")
    add_weights_key(parser)
    parser.add_argument("-o", "--output", required=True, help="the file to write (.onnx, .pt2, .safetensors, .pth)")
    parser.add_argument("--format", choices=FORMATS, default=None, help="default: from the output's suffix")
    add_precision(parser, help="dtype of the weights and computation inside the graph (input and output stay float32)")
    parser.add_argument("--opset", type=int, default=None, help="ONNX opset (default 18)")
    shape = parser.add_mutually_exclusive_group()
    shape.add_argument("--dynamic", action="store_true", default=True, help="any batch, height and width (the default)")
    shape.add_argument("--size", type=parse_size, default=None, help="fix the input to N or HxW pixels instead")
    parser.add_argument(
        "--check-sizes",
        type=parse_size,
        nargs="+",
        default=None,
        help="sizes to compare the file with PyTorch at (default: 77x131, 96x72 and 57x200 with a batch of 2; "
        "with --size, that size)",
    )


def output_format(output: str, chosen: str | None) -> str:
    suffix = Path(output).suffix.lower()
    fmt = chosen or SUFFIXES.get(suffix)
    if fmt is None:
        raise ConfigError(f"-o {output}: unknown suffix {suffix or '(none)'}; give --format {'|'.join(FORMATS)}")
    return fmt


def run(args: argparse.Namespace) -> int:
    fmt = output_format(args.output, args.format)
    out = Path(args.output)
    if out.is_dir():
        raise ConfigError(f"-o {out}: is a folder; give a file name")
    if fmt == "onnx" and args.precision == "bf16":
        raise ConfigError(
            "--precision bf16: ONNX Runtime has no bf16 kernels for this graph (its CPU provider refuses the file); "
            "export ONNX in fp16 or fp32, or bf16 as --format pt2"
        )
    if args.opset is not None and fmt != "onnx":
        raise ConfigError("--opset applies to --format onnx only")
    if fmt in ("safetensors", "pth") and (args.precision != "fp32" or args.size or args.check_sizes):
        raise ConfigError(
            f"--format {fmt} converts weights as they are: --precision, --size and --check-sizes do not apply"
        )
    model, note = load_model(args.weights, args.params_key)
    if note:
        print(f"{args.weights}: {note}", file=sys.stderr)
    out.parent.mkdir(parents=True, exist_ok=True)
    if fmt in ("safetensors", "pth"):
        convert_weights(model, fmt, out)
        return 0
    sizes = [(1, h, w) for h, w in args.check_sizes] if args.check_sizes else None
    export_graph(model, fmt, out, args.precision, args.size, sizes, args.opset, source=args.weights)
    return 0
