"""The one table of precisions: each name, and what it implies for training, inference and export.

``fp32`` runs as is; ``bf16`` and ``fp16`` run under ``torch.autocast`` to that dtype. fp16 training also needs
a gradient scaler (its gradients underflow otherwise); bf16 has float32's range and needs none. An exported
graph stores its weights and computes in the precision's dtype. Everything that accepts ``--precision``,
``train.precision`` or a test file's ``precision`` checks it here.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch

from .errors import ConfigError


@dataclass(frozen=True)
class Precision:
    name: str
    dtype: torch.dtype  # what autocast computes in (and an exported graph stores its weights in)
    needs_grad_scaler: bool  # training scales the loss (fp16's narrow range)

    @property
    def autocast(self) -> bool:
        return self.dtype != torch.float32


PRECISION_TABLE: dict[str, Precision] = {
    p.name: p
    for p in (
        Precision("fp32", torch.float32, needs_grad_scaler=False),
        Precision("bf16", torch.bfloat16, needs_grad_scaler=False),
        Precision("fp16", torch.float16, needs_grad_scaler=True),
    )
}
PRECISIONS: tuple[str, ...] = tuple(PRECISION_TABLE)


def check_precision(name: str, key: str = "--precision") -> str:
    """``name`` when it is a known precision; else a :class:`ConfigError` naming ``key``."""
    if name not in PRECISION_TABLE:
        raise ConfigError(f"{key}: unknown precision {name!r}; choose from {', '.join(PRECISIONS)}")
    return name


def precision(name: str, key: str = "--precision") -> Precision:
    """The record of ``name`` (checked as :func:`check_precision` does)."""
    return PRECISION_TABLE[check_precision(name, key)]


def needs_grad_scaler(name: str) -> bool:
    """Whether training in ``name`` scales its loss (fp16)."""
    return precision(name).needs_grad_scaler


def autocast(device: torch.device | str, name: str) -> torch.autocast:
    """``torch.autocast`` for precision ``name`` on ``device``'s type (disabled for fp32)."""
    record = precision(name)
    device_type = torch.device(device).type
    if record.autocast and device_type == "cpu" and not cpu_computes_natively(record.dtype):
        warnings.warn(
            f"precision {name}: this CPU has no {name} arithmetic (oneDNN finds no AVX-512 {name.upper()} or AMX), "
            f"so {name} runs emulated, many times slower than fp32 (docs/benchmarks.md); use fp32 here",
            stacklevel=2,
        )
    return torch.autocast(device_type, dtype=record.dtype, enabled=record.autocast)


def cpu_computes_natively(dtype: torch.dtype) -> bool:
    """Whether oneDNN has instructions for ``dtype`` on this CPU (float32 always does). Without them bf16 and fp16
    convolutions were 14-70x slower than float32 (2-core AVX2 VM, docs/benchmarks.md)."""
    probes = {torch.bfloat16: "_is_mkldnn_bf16_supported", torch.float16: "_is_mkldnn_fp16_supported"}
    if dtype not in probes:
        return True
    try:
        return bool(getattr(torch.ops.mkldnn, probes[dtype])())
    except (AttributeError, RuntimeError):  # a build without oneDNN: nothing to warn about that we know of
        return True
