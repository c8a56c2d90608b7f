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


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    """A checkpoint of a TINY DRSformer with MEFC, in the published layout."""
    from drsformer.archs import DRSformer

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "tiny.pth"
    torch.save({"params": DRSformer(**TINY).state_dict()}, path)
    return path


def load_reference(name: str) -> dict:
    return torch.load(DATA / f"{name}.pt", weights_only=True)


def make_pairs(root: Path, n: int = 6, size: tuple[int, int] = (32, 40), seed: int = 0, offset: int = 40) -> Path:
    """``root/input`` and ``root/target`` PNG pairs: random clean images, inputs brighter by ``offset``."""
    import numpy as np

    from drsformer.data.io import write_image

    rng = np.random.default_rng(seed)
    for i in range(n):
        gt = rng.integers(0, 256 - offset, (*size, 3), dtype=np.uint8)
        write_image(root / "target" / f"{i}.png", gt)
        write_image(root / "input" / f"{i}.png", gt + np.uint8(offset))
    return root
