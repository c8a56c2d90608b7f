"""The named configurations: the paper's two DRSformers and Restormer (``--variant`` on the command line,
``type:`` in an options file). Every other configuration is ``type: DRSformer`` with its options."""

from __future__ import annotations

from typing import Any

from ..registry import ARCH_REGISTRY, check_kwargs
from .drsformer import DRSformer
from .restormer import Restormer


@ARCH_REGISTRY.register()
def drsformer(**overrides: Any) -> DRSformer:
    """The paper's model with MEFC (Rain200H, DID-Data, DDN-Data): 33,655,424 parameters."""
    check_kwargs(DRSformer, overrides, "drsformer")
    return DRSformer(**{"mefc": True, **overrides})


@ARCH_REGISTRY.register()
def drsformer_no_mefc(**overrides: Any) -> DRSformer:
    """The paper's model without MEFC (Rain200L, SPA-Data): 32,610,304 parameters."""
    check_kwargs(DRSformer, overrides, "drsformer_no_mefc")
    return DRSformer(**{"mefc": False, **overrides})


def restormer(**overrides: Any) -> DRSformer:
    """Restormer (CVPR 2022), the paper's closest baseline, as published: 26,126,644 parameters."""
    check_kwargs(Restormer, overrides, "restormer")
    return Restormer(**overrides)


VARIANTS = {"drsformer": drsformer, "drsformer_no_mefc": drsformer_no_mefc, "restormer": restormer}
