from __future__ import annotations

from pathlib import Path

import pytest
import torch

DATA = Path(__file__).parent / "data"

# A configuration small enough for CPU tests; heads give 2, 4, 4 and 8 channels per head.
TINY = dict(dim=8, num_blocks=[1, 1, 1, 2], heads=[4, 4, 8, 8], ffn_expansion_factor=2.66)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def load_reference(name: str) -> dict:
    return torch.load(DATA / f"{name}.pt", weights_only=True)
