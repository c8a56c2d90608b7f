"""Writing a model as an ONNX or torch.export file, checked against PyTorch before it is kept; or its weights
converted between .pth and .safetensors (what ``drsformer export`` runs).

ONNX and pt2 files take an N x 3 x H x W float32 image in [0, 1] and return the derained image the same way.
Dynamic files (the default) take any batch, height and width (at least 8 x 8); a fixed size is traced once.
After writing, the file is run at sizes other than the traced one and compared with PyTorch (:mod:`.verify`); a
file that differs by more than the bound for its precision is deleted. Nothing is written under the final name
before the check passes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

from torch import nn

from ..archs import DRSformer
from ..errors import ConfigError, ExportError
from ..files import atomic_path, save_torch_atomic
from . import graph, verify
from .runtime import load_exported

TRACE_SIZE = (64, 64)


def default_check_sizes(size: tuple[int, int] | None) -> list[tuple[int, int, int]]:
    """(batch, height, width) to check a file at: the fixed ``size``, or for a dynamic file three sizes none of
    which is the traced one (two not multiples of 8, the last a batch of two)."""
    if size:
        return [(1, *size)]
    sizes = verify.DYNAMIC_SIZES
    return [(1, h, w) for h, w in sizes[:-1]] + [(2, *sizes[-1])]


def convert_weights(model: nn.Module, fmt: str, out: Path, report: Callable[[str], None] = print) -> None:
    """Writes the model's weights (published key layout) as ``.pth`` or ``.safetensors`` and reads them back; a
    file that does not read back bit-identical is removed and an :class:`ExportError`."""
    from ..archs.checkpoint import from_checkpoint
    from ..archs.weight_files import save_safetensors

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
    report(f"wrote {out} ({fmt}, {len(state)} tensors, {size_mb:.1f} MB): read back bit-identical")


def export_graph(
    model: DRSformer,
    fmt: str,
    out: Path,
    precision: str = "fp32",
    size: tuple[int, int] | None = None,
    check_sizes: Sequence[tuple[int, int, int]] | None = None,
    opset: int | None = None,
    source: str = "the model",
    report: Callable[[str], None] = print,
) -> None:
    """Traces ``model`` as ``fmt`` (onnx or pt2) in ``precision``, dynamic or at the fixed ``size``, checks the
    file at ``check_sizes`` (default :func:`default_check_sizes`) and keeps it at ``out`` only if it passes."""
    dynamic = size is None
    trace_size = size or TRACE_SIZE
    if not dynamic and min(trace_size) < graph.MIN_SIDE:
        raise ConfigError(f"--size must be at least {graph.MIN_SIDE}x{graph.MIN_SIDE}, got {trace_size}")
    sizes = list(check_sizes) if check_sizes else default_check_sizes(size)
    if not dynamic and any((h, w) != tuple(trace_size) or b != 1 for b, h, w in sizes):
        raise ConfigError(f"--size {trace_size[0]}x{trace_size[1]} fixes the input, so --check-sizes must be that size")
    module = graph.module_for(model, fmt, precision)
    example = graph.example_input(*trace_size, channels=model.config["inp_channels"], dynamic=dynamic)
    shape = "dynamic batch x height x width" if dynamic else f"fixed 1x{trace_size[0]}x{trace_size[1]}"
    report(f"exporting {source} to {fmt} ({precision}, {shape}, traced at {trace_size[0]}x{trace_size[1]})")
    start = time.perf_counter()
    with atomic_path(out, suffix="." + fmt) as tmp:  # kept under its name only once it passed the check
        if fmt == "onnx":
            graph.export_onnx(module, example, dynamic, tmp, opset=opset or graph.DEFAULT_OPSET)
        else:
            graph.export_pt2(module, example, dynamic, tmp)
        report(f"exported in {time.perf_counter() - start:.0f} s; checking against PyTorch fp32:")
        report(verify.HEADER)
        exported = load_exported(tmp)
        passed, checks = verify.verify(exported, model, sizes, precision, report=report)
        del exported
        if not passed:
            raise ExportError(f"{out}: the exported file {verify.failure(checks)}; nothing was kept")
    size_mb = out.stat().st_size / 2**20
    report(f"wrote {out} ({size_mb:.1f} MB): matches PyTorch within {verify.BOUNDS[precision]:.0e} at every size")
