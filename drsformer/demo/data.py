"""The demo's data: rain drawn on scikit-image's bundled photos (inside the installed package, never downloaded);
several seeds and densities per photo for training, whole photos kept out for evaluation."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from ..data.io import read_image, to_uint8, write_image
from ..data.synth_rain import add_rain, pair_rng
from ..errors import MissingPathError

# scikit-image's bundled photos (skimage/data inside the wheel). Training: colour and grey natural images.
TRAIN_PHOTOS = (
    "astronaut.png",
    "hubble_deep_field.jpg",
    "ihc.png",
    "motorcycle_left.png",
    "motorcycle_right.png",
    "camera.png",
    "grass.png",
    "gravel.png",
    "brick.png",
    "coins.png",
    "moon.png",
    "clock_motion.png",
    "retina.jpg",
)
HELD_OUT_PHOTOS = ("chelsea.png", "rocket.jpg", "coffee.png")  # never seen in training
DENSITIES = ("medium", "heavy")
RAINY_VERSIONS = 3  # per photo and density, for training


def bundled_photo(name: str) -> np.ndarray:
    """One of scikit-image's bundled photos as H x W x 3 uint8 RGB."""
    import skimage

    path = Path(skimage.__file__).parent / "data" / name
    if not path.is_file():
        raise MissingPathError(f"{path}: not in this scikit-image installation; reinstall scikit-image")
    return to_uint8(read_image(path))


def resize_short_side(image: np.ndarray, short: int) -> np.ndarray:
    height, width = image.shape[:2]
    scale = short / min(height, width)
    size = (max(8, round(width * scale)), max(8, round(height * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def make_data(root: Path, seed: int, short_side: int) -> dict[str, int]:
    """Writes ``root/{train,test}/{input,target}``; returns the number of pairs per split."""
    counts = {}
    for split, photos, versions, offset in (
        ("train", TRAIN_PHOTOS, RAINY_VERSIONS, 0),
        ("test", HELD_OUT_PHOTOS, 1, 1),
    ):
        count = 0
        for photo in photos:
            clean = resize_short_side(bundled_photo(photo), short_side)
            for density in DENSITIES:
                for k in range(versions):
                    rng = pair_rng(seed * 2 + offset, f"{photo}:{density}", k)
                    name = f"{Path(photo).stem}_{density}_{k}.png"
                    write_image(root / split / "input" / name, add_rain(clean, rng, density))
                    write_image(root / split / "target" / name, clean)
                    count += 1
        counts[split] = count
    return counts
