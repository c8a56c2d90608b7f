"""The demo's two pictures: rainy | derained | clean with their PSNR, and the validation curve against time."""

from __future__ import annotations

import math
from typing import Any

import cv2
import numpy as np

PANEL_WIDTH = 220


def _label(image: np.ndarray, lines: list[str]) -> np.ndarray:
    image = image.copy()
    for i, text in enumerate(lines):
        origin = (6, 18 + 18 * i)
        for color, thickness in (((0, 0, 0), 3), ((255, 255, 255), 1)):  # outlined: readable on any background
            cv2.putText(image, text, origin, cv2.FONT_HERSHEY_SIMPLEX, 0.5, color, thickness, cv2.LINE_AA)
    return image


def comparison_picture(rows: list[dict[str, Any]], panel_width: int = PANEL_WIDTH) -> np.ndarray:
    """rainy | derained | clean for each held-out photo, PSNR written on each panel (uint8 RGB)."""
    gap = 4
    strips = []
    for row in rows:
        panels = []
        for key, title in (("rainy", "rainy"), ("derained", "derained"), ("clean", "clean")):
            image = row[key]
            height = round(image.shape[0] * panel_width / image.shape[1])
            small = cv2.resize(image, (panel_width, height), interpolation=cv2.INTER_AREA)
            text = [title] + ([f"{row[key + '_psnr']:.2f} dB"] if key + "_psnr" in row else ["reference"])
            panels += [_label(small, text), np.full((height, gap, 3), 255, np.uint8)]
        strips += [np.concatenate(panels[:-1], axis=1), None]
    width = max(s.shape[1] for s in strips if s is not None)
    out = []
    for strip in strips:
        out.append(np.full((gap, width, 3), 255, np.uint8) if strip is None else strip)
    return np.concatenate(out[:-1], axis=0)


def _nice_step(rough: float) -> float:
    """1, 2 or 5 times a power of ten, at least ``rough``."""
    power = 10 ** math.floor(math.log10(max(rough, 1e-9)))
    return next(m * power for m in (1, 2, 5, 10) if m * power >= rough)


def curve_picture(points: list[tuple[float, float]], baseline: float, size: tuple[int, int] = (640, 360)) -> np.ndarray:
    """Validation Y-PSNR (dB) against training time (s), with the rainy input's PSNR as a dashed line."""
    points = [(t, v) for t, v in points if math.isfinite(v)]
    width, height = size
    left, right, top, bottom = 60, 20, 30, 45
    image = np.full((height, width, 3), 255, np.uint8)
    times = [t for t, _ in points] or [0.0]
    values = [v for _, v in points] + [baseline]
    t_max = max(max(times), 1e-6)
    low, high = math.floor(min(values) - 0.5), math.ceil(max(values) + 0.5)

    def xy(t: float, v: float) -> tuple[int, int]:
        x = left + (width - left - right) * t / t_max
        y = height - bottom - (height - top - bottom) * (v - low) / max(high - low, 1e-6)
        return round(x), round(y)

    black, grey, blue = (0, 0, 0), (150, 150, 150), (31, 119, 180)
    font = cv2.FONT_HERSHEY_SIMPLEX
    cv2.line(image, (left, height - bottom), (width - right, height - bottom), black, 1)
    cv2.line(image, (left, top), (left, height - bottom), black, 1)
    step = max(1, math.ceil((high - low) / 6))
    for v in range(low, high + 1, step):
        _, y = xy(0, v)
        cv2.line(image, (left - 4, y), (left, y), black, 1)
        cv2.putText(image, f"{v}", (left - 40, y + 4), font, 0.4, black, 1, cv2.LINE_AA)
    tick = _nice_step(t_max / 5)
    for k in range(int(t_max // tick) + 1):
        t = k * tick
        x, _ = xy(t, low)
        cv2.line(image, (x, height - bottom), (x, height - bottom + 4), black, 1)
        cv2.putText(image, f"{t:.0f}", (x - 10, height - bottom + 18), font, 0.4, black, 1, cv2.LINE_AA)
    cv2.putText(image, "training time (s)", (width // 2 - 60, height - 8), font, 0.45, black, 1, cv2.LINE_AA)
    cv2.putText(image, "held-out Y-PSNR (dB)", (left, top - 10), font, 0.45, black, 1, cv2.LINE_AA)
    _, y = xy(0, baseline)
    for x in range(left, width - right, 12):  # dashed: the rainy input
        cv2.line(image, (x, y), (min(x + 6, width - right), y), grey, 1)
    cv2.putText(image, f"rainy input {baseline:.2f} dB", (width - 190, y - 6), font, 0.4, grey, 1, cv2.LINE_AA)
    pixels = [xy(t, v) for t, v in points]
    for a, b in zip(pixels, pixels[1:], strict=False):
        cv2.line(image, a, b, blue, 2, cv2.LINE_AA)
    for p in pixels:
        cv2.circle(image, p, 3, blue, -1, cv2.LINE_AA)
    return image
