"""Exported files as callables on tensors: N x 3 x H x W float32 in [0, 1] in, the same out.

:class:`OnnxModel` runs an ONNX file in ONNX Runtime, :class:`Pt2Model` a ``torch.export`` file. Both are
``nn.Module`` subclasses without parameters, so :func:`drsformer.inference.restore` runs them as it runs the
PyTorch model (whole images: an exported graph holds the attention's sums over all pixels inside it, so the
exact tiler, which needs those sums between steps, cannot run it).
"""

from __future__ import annotations

import os

import torch
from torch import Tensor, nn

from ..errors import CheckpointError, ConfigError, ExportError
from ..optional import require
from .graph import MIN_SIDE

# --ort-optimization -> onnxruntime.GraphOptimizationLevel member
OPTIMIZATION_LEVELS = {"none": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC", "all": "ORT_ENABLE_ALL"}


def check_side(x: Tensor, path: str) -> None:
    """Exported graphs are traced for sides of at least :data:`MIN_SIDE`; smaller inputs are refused, not guessed."""
    if min(x.shape[-2:]) < MIN_SIDE:
        size = "x".join(map(str, x.shape[-2:]))
        raise ExportError(
            f"{path}: a {size} image is smaller than an exported model takes ({MIN_SIDE} pixels a side); "
            "use --backend pytorch for it"
        )


class OnnxModel(nn.Module):
    """An ONNX file in an ONNX Runtime session (CPU, or CUDA when this onnxruntime build has it)."""

    def __init__(
        self, path: str | os.PathLike, device: str = "cpu", optimization: str = "all", threads: int | None = None
    ) -> None:
        super().__init__()
        ort = require("onnxruntime", "running ONNX files")
        self.path = os.fspath(path)
        if not os.path.isfile(self.path):
            raise CheckpointError(f"{self.path}: no such file")
        if optimization not in OPTIMIZATION_LEVELS:
            raise ConfigError(
                f"ONNX Runtime optimisation {optimization!r} is not one of {', '.join(OPTIMIZATION_LEVELS)}"
            )
        options = ort.SessionOptions()
        options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, OPTIMIZATION_LEVELS[optimization])
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.log_severity_level = 3  # errors only: the CPU provider warns about every fp16 fallback
        # No memory pattern (ORT plans one buffer per input shape): on the full model at 512^2 that peaked at
        # 6.0 GB instead of 10.1, as fast, with identical outputs (docs/benchmarks.md).
        options.enable_mem_pattern = False
        providers = ["CPUExecutionProvider"]
        if torch.device(device).type == "cuda":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise ConfigError(
                    "--device cuda: this onnxruntime has no CUDA provider; install onnxruntime-gpu, or use --device cpu"
                )
            providers.insert(0, "CUDAExecutionProvider")
        try:
            self.session = ort.InferenceSession(self.path, options, providers=providers)
        except Exception as err:  # ONNX Runtime's parser and graph checks: the file's fault
            text = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
            raise CheckpointError(f"{self.path}: not an ONNX model ONNX Runtime can run ({text})") from None
        inputs = self.session.get_inputs()
        if len(inputs) != 1 or len(inputs[0].shape) != 4:
            raise CheckpointError(f"{self.path}: expected one N x C x H x W input, the graph has {len(inputs)} inputs")
        self.input_name = inputs[0].name
        self.device_type = torch.device(device).type
        self.optimization = optimization

    def forward(self, x: Tensor) -> Tensor:
        check_side(x, self.path)
        feed = x.detach().float().cpu().contiguous().numpy()
        try:
            out = torch.from_numpy(self.session.run(None, {self.input_name: feed})[0]).float()
        except Exception as err:  # ONNX Runtime's own exception types; allocation failures become out-of-memory
            text = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
            if "allocat" in text.lower():
                raise RuntimeError(f"ONNX Runtime ran out of memory ({text})") from None
            size = "x".join(map(str, x.shape))
            raise ExportError(f"{self.path}: ONNX Runtime failed on a {size} input ({text})") from None
        return out


class Pt2Model(nn.Module):
    """A ``torch.export.save`` file, loaded with ``torch.export.load``."""

    def __init__(self, path: str | os.PathLike) -> None:
        super().__init__()
        self.path = os.fspath(path)
        if not os.path.isfile(self.path):
            raise CheckpointError(f"{self.path}: no such file")
        try:
            self.program = torch.export.load(self.path)
        except Exception as err:  # the archive reader and the deserialiser: the file's fault
            text = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
            raise CheckpointError(f"{self.path}: not a torch.export file this PyTorch can load ({text})") from None
        self.program_module = self.program.module()

    def forward(self, x: Tensor) -> Tensor:
        check_side(x, self.path)
        with torch.no_grad():
            return self.program_module(x.float().contiguous()).float()


def load_exported(path: str | os.PathLike, **options) -> nn.Module:
    """:class:`OnnxModel` for ``.onnx`` files, :class:`Pt2Model` for ``.pt2``."""
    suffix = os.fspath(path).lower().rsplit(".", 1)[-1]
    if suffix == "onnx":
        return OnnxModel(path, **options)
    if suffix == "pt2":
        return Pt2Model(path)
    raise ConfigError(f"{path}: expected an .onnx or .pt2 file")
