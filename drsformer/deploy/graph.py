"""What gets traced, and the two exporters.

The traced module takes an N x 3 x H x W float32 batch in [0, 1] and returns the same, whatever the precision
inside: with ``fp16``/``bf16`` the weights are stored in that dtype and the input is cast on entry (layer norm
statistics and the attention's sums stay float32, as in eager mode). Height and width are dynamic by default;
the model's reflect-pad to a multiple of 8 and the crop back are then part of the graph
(:func:`~drsformer.archs.padding.pad_to_multiple`), so any H x W of at least 8 x 8 runs, not just the traced
one. The model is traced in its fast implementation, in the NCHW layout (ONNX has no memory layouts). ONNX
files get two forms of the same maths that ONNX Runtime's CPU kernels run faster: the MSFN in blocked
convolutions (:mod:`.blocked_msfn`) and each layer norm as one LayerNormalization node.
"""

from __future__ import annotations

import copy
import os
import warnings
from pathlib import Path

import torch
from torch import Tensor, nn

from ..archs import DRSformer
from ..archs.blocks import LayerNorm, MixedScaleFeedForward
from ..archs.unet import SIZE_MULTIPLE
from ..errors import ExportError
from ..optional import require
from ..precision import precision as precision_record
from .blocked_msfn import block_msfns

FORMATS = ("onnx", "pt2")
# The smallest side an exported model accepts: the tracer specialises a 1 x 1 map at the lowest level (sides of
# 8 or less), which the padding to 16 of sides 9 to 15 never makes.
MIN_SIDE = SIZE_MULTIPLE + 1
MAX_SIDE = 1 << 15
DEFAULT_OPSET = 18  # the oldest opset the dynamo exporter writes without converting


class ExportedDRSformer(nn.Module):
    """The module that is traced: float32 in and out, the model's own precision inside."""

    def __init__(self, model: DRSformer, precision: str = "fp32", for_onnxruntime: bool = False) -> None:
        super().__init__()
        self.dtype = precision_record(precision).dtype
        model = copy.deepcopy(model).eval().cpu().set_impl("fast")
        model.layout_impl = "reference"  # NCHW throughout: the channels-last relayout is an eager-CPU detail
        for module in model.modules():  # so is the MSFN's pair split
            if isinstance(module, MixedScaleFeedForward):
                module.pair_split = False
        if for_onnxruntime:  # ONNX files: forms ONNX Runtime's CPU kernels run fastest (docs/benchmarks.md)
            block_msfns(model)  # channel counts its blocked convolutions take
            for module in model.modules():  # one LayerNormalization node per layer norm
                if isinstance(module, LayerNorm):
                    module.body.permuted_kernel = True
        self.model = model.to(self.dtype)
        self.config = dict(model.config)

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x.to(self.dtype)).float()


def module_for(model: DRSformer, fmt: str, precision: str = "fp32") -> ExportedDRSformer:
    """The module traced for a file of format ``fmt``: ONNX files get the forms ONNX Runtime runs fastest."""
    return ExportedDRSformer(model, precision, for_onnxruntime=fmt == "onnx")


def example_input(height: int, width: int, channels: int = 3, dynamic: bool = True) -> Tensor:
    """The tracing input: a batch of 2 when dynamic (a traced size of 1 would be specialised as a constant)."""
    batch = 2 if dynamic else 1
    return torch.rand(batch, channels, height, width, generator=torch.Generator().manual_seed(0))


def dynamic_shapes(dynamic: bool) -> dict[str, dict[int, torch.export.Dim]] | None:
    """Batch, height and width free (height and width at least :data:`MIN_SIDE`), or None for a fixed shape."""
    if not dynamic:
        return None
    return {
        "x": {
            0: torch.export.Dim("batch", min=1, max=1024),
            2: torch.export.Dim("height", min=MIN_SIDE, max=MAX_SIDE),
            3: torch.export.Dim("width", min=MIN_SIDE, max=MAX_SIDE),
        }
    }


def trace(module: ExportedDRSformer, example: Tensor, dynamic: bool) -> torch.export.ExportedProgram:
    """``torch.export.export`` of ``module`` on ``example`` (non-strict, as the ONNX exporter also traces)."""
    try:
        with torch.no_grad():
            return torch.export.export(module, (example,), dynamic_shapes=dynamic_shapes(dynamic), strict=False)
    except Exception as err:  # the tracer's own failures: constraint violations, unsupported ops
        raise ExportError(f"torch.export could not trace the model: {type(err).__name__}: {_first_line(err)}") from err


def export_pt2(module: ExportedDRSformer, example: Tensor, dynamic: bool, path: str | os.PathLike) -> None:
    """Writes ``torch.export.save`` of the traced module to ``path``."""
    program = trace(module, example, dynamic)
    torch.export.save(program, os.fspath(path))


def export_onnx(
    module: ExportedDRSformer, example: Tensor, dynamic: bool, path: str | os.PathLike, opset: int = DEFAULT_OPSET
) -> None:
    """Writes an ONNX file through the dynamo exporter (``torch.onnx.export(..., dynamo=True)``), weights inside."""
    require("onnxscript", "exporting ONNX")
    require("onnx", "exporting ONNX")
    program = trace(module, example, dynamic)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            onnx_program = torch.onnx.export(program, (example,), dynamo=True, opset_version=opset, verbose=False)
    except Exception as err:
        raise ExportError(
            f"the ONNX exporter failed at opset {opset}: {type(err).__name__}: {_first_line(err)}"
        ) from err
    assert onnx_program is not None  # dynamo=True returns the program
    onnx_program.save(os.fspath(path), external_data=False)
    _name_io(Path(path))


def _name_io(path: Path) -> None:
    """Names the graph's input ``image`` and output ``derained`` (the exporter names them after the tracer)."""
    onnx = require("onnx", "exporting ONNX")
    model = onnx.load(os.fspath(path))
    renames = {model.graph.input[0].name: "image", model.graph.output[0].name: "derained"}
    for node in model.graph.node:
        node.input[:] = [renames.get(n, n) for n in node.input]
        node.output[:] = [renames.get(n, n) for n in node.output]
    model.graph.input[0].name, model.graph.output[0].name = "image", "derained"
    onnx.save(model, os.fspath(path))


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:200] if text else "no details"
