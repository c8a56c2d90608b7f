"""Network architectures. Importing this package registers them in ``ARCH_REGISTRY``."""

from __future__ import annotations

from typing import Any

from torch import nn

from ..errors import CheckpointError
from ..registry import ARCH_REGISTRY
from .checkpoint import from_checkpoint, infer_config
from .drsformer import DRSformer, architecture_name
from .restormer import Restormer
from .variants import VARIANTS, drsformer, drsformer_no_mefc


def build_network(opt: dict[str, Any]) -> nn.Module:
    """Builds ``{'type': 'DRSformer', **kwargs}`` (a YAML ``network_g`` section); unknown keys are errors."""
    return ARCH_REGISTRY.build(dict(opt), where="network_g")


__all__ = [
    "ARCH_REGISTRY",
    "CheckpointError",
    "DRSformer",
    "Restormer",
    "VARIANTS",
    "architecture_name",
    "build_network",
    "drsformer",
    "drsformer_no_mefc",
    "from_checkpoint",
    "infer_config",
]
