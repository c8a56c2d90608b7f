"""The one table of precisions and the one autocast helper: names, dtypes, and what each name runs.

``fp32`` runs as is; ``bf16`` and ``fp16`` run under ``torch.autocast`` to that dtype (fp16 training also uses a
gradient scaler, see :mod:`drsformer.engine.step`). Everything that accepts ``--precision`` or
``train.precision`` checks it here.
"""

from __future__ import annotations

import torch

from .errors import ConfigError

PRECISIONS: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def check_precision(name: str, key: str = "--precision") -> str:
    """``name`` when it is a known precision; else a :class:`ConfigError` naming ``key``."""
    if name not in PRECISIONS:
        raise ConfigError(f"{key}: unknown precision {name!r}; choose from {', '.join(PRECISIONS)}")
    return name


def autocast(device: torch.device | str, precision: str) -> torch.autocast:
    """``torch.autocast`` for ``precision`` on ``device``'s type (disabled for fp32)."""
    dtype = PRECISIONS[check_precision(precision)]
    return torch.autocast(torch.device(device).type, dtype=dtype or torch.float32, enabled=dtype is not None)
