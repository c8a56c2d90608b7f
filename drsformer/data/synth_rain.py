"""Synthetic rain: rainy/clean training pairs from any clean photos.

Rain is built the way it is usually painted by hand: sparse random seed pixels, motion-blurred along the fall
direction into streaks, a few layers at different depths (density, length, width, brightness), screened onto the
photo, optionally over a light veil of haze. Everything is a handful of whole-image numpy/OpenCV operations, and all
randomness comes from the ``rng`` passed in, so a seed reproduces the output byte for byte.
"""

from __future__ import annotations

import math
import os
import zlib
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from ..errors import ConfigError
from .io import list_images, match_files, read_image, to_uint8, write_image

BLENDS = ("screen", "additive")
ANGLE_RANGE = (-30.0, 30.0)  # default fall angle, degrees from vertical, drawn once per image
LENGTH_RANGE = (0.04, 0.09)  # default main streak length, as a fraction of the shorter image side
MIN_LENGTH = 3.0  # pixels; shorter streaks read as noise, not rain
LAYER_ANGLE_JITTER = 3.0  # degrees; wind is not perfectly uniform with depth
LAYER_LENGTH_JITTER = 0.15  # relative
AIRLIGHT_RANGE = (0.75, 0.9)  # light grey veil colour for haze
DROP_MIN_BRIGHTNESS = 0.4  # each seed's brightness is uniform in [this, 1], so streaks are not all alike


@dataclass(frozen=True)
class Density:
    """Preset for one rain strength; ``seed_fraction`` is per pixel, for the main layer."""

    seed_fraction: float
    intensity: tuple[float, float]  # peak streak brightness in [0, 1], drawn per image
    layers: int
    haze: float


DENSITIES = {
    "light": Density(seed_fraction=0.0012, intensity=(0.35, 0.5), layers=1, haze=0.0),
    "medium": Density(seed_fraction=0.003, intensity=(0.45, 0.65), layers=2, haze=0.05),
    "heavy": Density(seed_fraction=0.007, intensity=(0.55, 0.8), layers=3, haze=0.15),
}


@dataclass(frozen=True)
class Layer:
    """One depth of rain, relative to the main layer: nearer drops are longer, wider, sparser."""

    density: float
    length: float
    width_sigma: float  # Gaussian blur across the streak, pixels; 0 keeps it one pixel wide
    brightness: float


# Main layer first; ``layers=n`` uses the first n.
LAYERS = (
    Layer(density=1.0, length=1.0, width_sigma=0.5, brightness=1.0),
    Layer(density=1.6, length=0.55, width_sigma=0.0, brightness=0.6),  # fine, distant drizzle
    Layer(density=0.25, length=1.5, width_sigma=1.1, brightness=0.8),  # few large drops close to the lens
)


def line_kernel(length: float, angle: float) -> np.ndarray:
    """Motion-blur kernel: an anti-aliased line segment of ``length`` pixels through the centre, summing to 1.

    ``angle`` is in degrees from vertical; positive angles lean the line so that rain falls toward the right.
    """
    radius = int(math.ceil(length / 2)) + 1
    y, x = np.mgrid[-radius : radius + 1, -radius : radius + 1].astype(np.float32)
    theta = math.radians(angle)
    dx, dy = math.sin(theta), math.cos(theta)  # fall direction, image y pointing down
    along = x * dx + y * dy
    across = x * dy - y * dx
    # Coverage falls off linearly within one pixel of the segment's sides and ends.
    kernel = np.clip(1.0 - np.abs(across), 0.0, 1.0) * np.clip(length / 2 + 0.5 - np.abs(along), 0.0, 1.0)
    return kernel / kernel.sum()


def streak_layer(
    shape: tuple[int, int], rng: np.random.Generator, seed_fraction: float, length: float, angle: float, sigma: float
) -> np.ndarray:
    """H x W float32 streaks, each as bright as its drop (0.4..1) along its centre; overlaps add up."""
    kernel = line_kernel(length, angle)
    pad = kernel.shape[0] // 2
    height, width = shape[0] + 2 * pad, shape[1] + 2 * pad  # seeds beyond the border streak into the image
    u = rng.random((height, width), dtype=np.float32)
    # Seeds where u < fraction; u / fraction is then uniform in [0, 1) and sets each drop's brightness.
    brightness = DROP_MIN_BRIGHTNESS + (1.0 - DROP_MIN_BRIGHTNESS) * (u / seed_fraction)
    seeds = np.where(u < seed_fraction, brightness, 0.0).astype(np.float32)
    # The blur spreads a seed over ~length pixels; scaling back by the kernel's peak restores its brightness.
    streaks = cv2.filter2D(seeds, -1, kernel / kernel.max(), borderType=cv2.BORDER_CONSTANT)
    if sigma > 0:
        streaks = cv2.GaussianBlur(streaks, (0, 0), sigma, borderType=cv2.BORDER_CONSTANT)
        # A one-pixel line keeps the centre weight of the 1-D Gaussian as its peak; undo that dimming.
        peak = cv2.getGaussianKernel(2 * math.ceil(3 * sigma) + 1, sigma).max()
        np.divide(streaks, peak, out=streaks)  # in place, as /= (the float32 streaks stay float32)
    return streaks[pad : pad + shape[0], pad : pad + shape[1]]


def add_rain(
    clean: np.ndarray,
    rng: np.random.Generator,
    density: str = "medium",
    angle: float | None = None,
    length: float | None = None,
    layers: int | None = None,
    blend: str = "screen",
    haze: float | None = None,
) -> np.ndarray:
    """The H x W x 3 uint8 RGB ``clean`` image with synthetic rain; same ``rng`` state, same output.

    ``angle`` (degrees from vertical, positive falls to the right) and ``length`` (pixels, main layer) are drawn
    from the rng when None; each layer then jitters them slightly. ``layers``, ``haze`` (0..1, veil toward a light
    grey airlight) default to the ``density`` preset. ``blend`` is ``screen`` (1-(1-a)(1-b)) or ``additive``.
    """
    if clean.ndim != 3 or clean.shape[2] != 3 or clean.dtype != np.uint8:
        raise ConfigError(f"expected an H x W x 3 uint8 RGB image, got {clean.shape} {clean.dtype}")
    if density not in DENSITIES:
        raise ConfigError(f"density must be one of {', '.join(DENSITIES)}, got {density!r}")
    if blend not in BLENDS:
        raise ConfigError(f"blend must be one of {', '.join(BLENDS)}, got {blend!r}")
    preset = DENSITIES[density]
    layers = preset.layers if layers is None else layers
    haze = preset.haze if haze is None else haze
    if not 1 <= layers <= len(LAYERS):
        raise ConfigError(f"layers must be 1..{len(LAYERS)}, got {layers}")
    if not 0.0 <= haze <= 1.0:
        raise ConfigError(f"haze must be in [0, 1], got {haze}")
    if length is not None and length <= 0:
        raise ConfigError(f"length must be positive, got {length}")

    shape = clean.shape[:2]
    # Per-image draws come first, in a fixed order, so presets with the same seed share angle and length.
    angle = rng.uniform(*ANGLE_RANGE) if angle is None else angle
    length = rng.uniform(*LENGTH_RANGE) * min(shape) if length is None else length
    intensity = rng.uniform(*preset.intensity)
    airlight = rng.uniform(*AIRLIGHT_RANGE)

    rain = np.zeros(shape, np.float32)
    for layer in LAYERS[:layers]:
        layer_angle = angle + rng.uniform(-LAYER_ANGLE_JITTER, LAYER_ANGLE_JITTER)
        layer_length = max(MIN_LENGTH, length * layer.length * (1 + rng.uniform(-1, 1) * LAYER_LENGTH_JITTER))
        fraction = preset.seed_fraction * layer.density
        streaks = streak_layer(shape, rng, fraction, layer_length, layer_angle, layer.width_sigma)
        rain += layer.brightness * streaks
    rain = np.clip(rain * intensity, 0.0, 1.0)[:, :, None]

    image = clean.astype(np.float32) / 255.0
    image = image * (1.0 - haze) + airlight * haze  # the veil lies behind the streaks
    image = 1.0 - (1.0 - image) * (1.0 - rain) if blend == "screen" else image + rain
    return np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)


def pair_rng(seed: int, name: str, k: int) -> np.random.Generator:
    """Generator for copy ``k`` of file ``name``: independent of which other files are being processed."""
    return np.random.default_rng([seed, zlib.crc32(name.encode()), k])


def synthesize_folder(
    clean_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    density: str = "medium",
    angle: float | None = None,
    length: float | None = None,
    seed: int = 0,
    blend: str = "screen",
    haze: float | None = None,
    per_image: int = 1,
    progress: bool = True,
) -> int:
    """Writes ``out_dir/input/<stem>.png`` (rainy) and ``out_dir/target/<stem>.png`` (clean) for every image.

    With ``per_image > 1`` the pairs are ``<stem>_r{k}.png``. Returns the number of pairs written. Raises
    ``ConfigError`` for an empty folder or two files with the same stem, ``ImageReadError`` naming a corrupt file.
    """
    if per_image < 1:
        raise ConfigError(f"per_image must be at least 1, got {per_image}")
    paths = list_images(clean_dir)
    if not paths:
        raise ConfigError(f"{clean_dir}: no images found")
    match_files(paths, paths).check(clean_dir, clean_dir)  # two files with one stem would write the same outputs

    out_dir = Path(out_dir)
    written = 0
    for path in tqdm(paths, desc="synth-rain", unit="img", disable=not progress):
        clean = to_uint8(read_image(path))
        for k in range(per_image):
            rainy = add_rain(clean, pair_rng(seed, path.name, k), density, angle, length, blend=blend, haze=haze)
            name = f"{path.stem}.png" if per_image == 1 else f"{path.stem}_r{k}.png"
            write_image(out_dir / "input" / name, rainy)
            write_image(out_dir / "target" / name, clean)
            written += 1
    return written


def make_example_strip(clean: np.ndarray, seed: int = 0, panel_width: int = 320) -> np.ndarray:
    """Side-by-side clean | light | medium | heavy of one uint8 RGB image, labelled, each panel ``panel_width`` wide.

    Rain is drawn at full resolution, then panels are downscaled; all densities share the seed (and so the angle).
    """
    panels = [clean] + [add_rain(clean, np.random.default_rng(seed), density) for density in DENSITIES]
    height = round(clean.shape[0] * panel_width / clean.shape[1])
    gap = np.full((height, 4, 3), 255, np.uint8)
    strip = []
    for label, panel in zip(["clean", *DENSITIES], panels, strict=True):
        small = cv2.resize(panel, (panel_width, height), interpolation=cv2.INTER_AREA)
        for color, thickness in (((0, 0, 0), 3), ((255, 255, 255), 1)):  # outlined text reads on any background
            cv2.putText(small, label, (6, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5, color, thickness, cv2.LINE_AA)
        strip += [small, gap]
    return np.concatenate(strip[:-1], axis=1)
