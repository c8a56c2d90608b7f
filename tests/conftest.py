"""Shared fixtures: the tiny model configuration, tiny checkpoints, input/target pairs, the reference files."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
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


# ---------------------------------------------------------------- checkpoints


def save_tiny(path: Path, seed: int = 0, mefc: bool = True, **entries: object):
    """A TINY DRSformer initialised from ``seed``, saved as ``{'params': ..., **entries}`` (the published layout);
    returns the path and the model (in eval mode)."""
    from drsformer.archs import DRSformer

    torch.manual_seed(seed)
    model = DRSformer(**TINY, mefc=mefc).eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"params": model.state_dict(), **entries}, path)
    return path, model


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    """A checkpoint of a TINY DRSformer with MEFC, in the published layout."""
    return save_tiny(tmp_path_factory.mktemp("weights") / "tiny.pth")[0]


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    """A checkpoint of a TINY DRSformer without MEFC, and the model it holds."""
    return save_tiny(tmp_path_factory.mktemp("weights") / "tiny_no_mefc.pth", mefc=False)


# ---------------------------------------------------------------- input/target pairs

Rain = Callable[[np.ndarray, np.random.Generator, int], np.ndarray]
BRIGHTER = 40  # make_pairs' default: inputs 40 levels brighter than their targets


def brighter(offset: int = 40) -> Rain:
    """The input is the target brightened by ``offset`` (clipped)."""
    return lambda clean, rng, i: np.clip(clean.astype(int) + offset, 0, 255).astype(np.uint8)


def inverted(clean: np.ndarray, rng: np.random.Generator, i: int) -> np.ndarray:
    """The input is the target's negative: nothing in it is shared by chance with another pair."""
    return 255 - clean


def noisy(*amounts: int, low: int | None = None) -> Rain:
    """The input is the target plus uniform noise of the i-th ``amounts`` (the last one repeats): ``-a..a``, or
    ``low..a`` when ``low`` is given."""

    def rain(clean: np.ndarray, rng: np.random.Generator, i: int) -> np.ndarray:
        high = amounts[min(i, len(amounts) - 1)]
        noise = rng.integers(-high if low is None else low, high + 1, clean.shape)
        return np.clip(clean.astype(int) + noise, 0, 255).astype(np.uint8)

    return rain


def make_pairs(
    root: Path,
    n: int = 6,
    size: tuple[int, int] = (32, 40),
    seed: int = 0,
    rain: Rain | None = None,
    sizes: Sequence[tuple[int, int]] | None = None,
    name: str = "{i}",
    input_name: str = "{}",
    levels: tuple[int, int] = (0, 216),
) -> Path:
    """``root/input`` and ``root/target`` PNG pairs with equal names (``name`` of the index; ``input_name`` of that
    for the input): random clean images of ``size`` (or each of ``sizes``) with pixel values in ``levels``, and
    their rainy versions made by ``rain`` (default: :func:`brighter` by :data:`BRIGHTER`)."""
    from drsformer.data.io import write_image

    rain = rain or brighter(BRIGHTER)
    rng = np.random.default_rng(seed)
    shapes = list(sizes) if sizes is not None else [size] * n
    for i, (height, width) in enumerate(shapes):
        clean = rng.integers(*levels, (height, width, 3), dtype=np.uint8)
        stem = name.format(i=i)
        write_image(root / "target" / f"{stem}.png", clean)
        write_image(root / "input" / f"{input_name.format(stem)}.png", rain(clean, rng, i))
    return root
