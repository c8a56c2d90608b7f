"""``drsformer export``: the model as an ONNX or torch.export file, checked against PyTorch before it is kept;
or its weights converted between .pth and .safetensors.

    drsformer export --weights pretrained/Rain200H.pth -o rain200h.onnx
    drsformer export --weights net_g_best.pth --format pt2 --precision bf16 -o model.pt2
    drsformer export --weights pretrained/Rain200H.pth -o Rain200H.safetensors

ONNX and pt2 files take an N x 3 x H x W float32 image in [0, 1] and return the derained image the same way.
With ``--dynamic`` (the default) batch, height and width are free (at least 8 x 8); ``--size HxW`` fixes them.
After writing, the file is run at three sizes other than the traced one (two not multiples of 8, one batch of
two) and compared with PyTorch (see :mod:`drsformer.deploy.verify`); a file that differs by more than the
bound for its precision is deleted and the command fails. Nothing is written under the final name before the
check passes.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .cli import parse_size
from .errors import ConfigError, ExportError
from .files import atomic_path
from .precision import PRECISIONS

FORMATS = ("onnx", "pt2", "safetensors", "pth")
SUFFIXES = {".onnx": "onnx", ".pt2": "pt2", ".safetensors": "safetensors", ".pth": "pth", ".pt": "pth"}
TRACE_SIZE = (64, 64)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--weights", required=True, help="a checkpoint: published .pth, our net_g_*, .safetensors")
    parser.add_argument(
        "--params-key", default=None, help="params or params_ema (default: the weights the training run validated)"
    )
    parser.add_argument("-o", "--output", required=True, help="the file to write (.onnx, .pt2, .safetensors, .pth)")
    parser.add_argument("--format", choices=FORMATS, default=None, help="default: from the output's suffix")
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="fp32",
        help="dtype of the weights and computation inside the graph (input and output stay float32)",
    )
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


def output_format(args: argparse.Namespace) -> str:
    suffix = Path(args.output).suffix.lower()
    fmt = args.format or SUFFIXES.get(suffix)
    if fmt is None:
        raise ConfigError(f"-o {args.output}: unknown suffix {suffix or '(none)'}; give --format {'|'.join(FORMATS)}")
    return fmt


def run(args: argparse.Namespace) -> int:
    from .archs.checkpoint import load_model

    fmt = output_format(args)
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
        return convert_weights(model, args, fmt, out)
    return export_graph(model, args, fmt, out)


def convert_weights(model, args: argparse.Namespace, fmt: str, out: Path) -> int:
    """Writes the model's weights (published key layout) as .pth or .safetensors and reads them back."""
    from .archs.checkpoint import from_checkpoint
    from .archs.weight_files import save_safetensors
    from .files import save_torch_atomic

    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if fmt == "safetensors":
        save_safetensors(out, state)
    else:
        save_torch_atomic({"params": state}, out)
    back = from_checkpoint(out).state_dict()
    if any(not back[k].equal(v) for k, v in state.items()):
        out.unlink(missing_ok=True)
        raise ExportError(f"{out}: the weights read back differ from the ones written; the file was removed")
    size_mb = out.stat().st_size / 2**20
    print(f"wrote {out} ({fmt}, {len(state)} tensors, {size_mb:.1f} MB): read back bit-identical")
    return 0


def check_sizes(args: argparse.Namespace) -> list[tuple[int, int, int]]:
    from .deploy.verify import DYNAMIC_SIZES

    if args.check_sizes:
        return [(1, h, w) for h, w in args.check_sizes]
    if args.size:
        return [(1, *args.size)]
    return [(1, h, w) for h, w in DYNAMIC_SIZES[:-1]] + [(2, *DYNAMIC_SIZES[-1])]


def export_graph(model, args: argparse.Namespace, fmt: str, out: Path) -> int:
    from .deploy import graph, verify
    from .deploy.runtime import load_exported

    dynamic = args.size is None
    trace_size = args.size or TRACE_SIZE
    if not dynamic and min(trace_size) < graph.MIN_SIDE:
        raise ConfigError(f"--size must be at least {graph.MIN_SIDE}x{graph.MIN_SIDE}, got {trace_size}")
    sizes = check_sizes(args)
    if not dynamic and any((h, w) != tuple(trace_size) or b != 1 for b, h, w in sizes):
        raise ConfigError(f"--size {trace_size[0]}x{trace_size[1]} fixes the input, so --check-sizes must be that size")
    module = graph.ExportedDRSformer(model, args.precision)
    example = graph.example_input(*trace_size, channels=model.config["inp_channels"], dynamic=dynamic)
    shape = "dynamic batch x height x width" if dynamic else f"fixed 1x{trace_size[0]}x{trace_size[1]}"
    print(f"exporting {args.weights} to {fmt} ({args.precision}, {shape}, traced at {trace_size[0]}x{trace_size[1]})")
    start = time.perf_counter()
    with atomic_path(out, suffix="." + fmt) as tmp:  # kept under its name only once it passed the check
        if fmt == "onnx":
            graph.export_onnx(module, example, dynamic, tmp, opset=args.opset or graph.DEFAULT_OPSET)
        else:
            graph.export_pt2(module, example, dynamic, tmp)
        print(f"exported in {time.perf_counter() - start:.0f} s; checking against PyTorch fp32:")
        print(verify.HEADER)
        exported = load_exported(tmp)
        passed, checks = verify.verify(exported, model, sizes, args.precision, report=print)
        del exported
        if not passed:
            raise ExportError(f"{out}: the exported file {verify.failure(checks)}; nothing was kept")
    size_mb = out.stat().st_size / 2**20
    print(f"wrote {out} ({size_mb:.1f} MB): matches PyTorch within {verify.BOUNDS[args.precision]:.0e} at every size")
    return 0
