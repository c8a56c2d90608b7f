"""A histogram as a small inline SVG: one or more series of per-image values over shared bins."""

from __future__ import annotations

import math
from dataclasses import dataclass
from html import escape


@dataclass(frozen=True)
class Series:
    """Values to count; ``filled`` draws bars, otherwise an outline over the same bins."""

    label: str
    values: list[float]
    color: str
    filled: bool = True


def nice_width(span: float, bins: int) -> float:
    """A bin width of 1, 2 or 5 times a power of ten giving about ``bins`` bins over ``span``."""
    rough = max(span / bins, 1e-12)
    power = 10.0 ** math.floor(math.log10(rough))
    for factor in (1, 2, 5, 10):
        if factor * power >= rough * 0.999:
            return factor * power
    return 10 * power


def bin_edges(values: list[float], bins: int = 24) -> tuple[float, float, int]:
    """(start, width, count) of bins aligned to multiples of a nice width that cover every value."""
    low, high = min(values), max(values)
    width = nice_width(high - low, bins) if high > low else nice_width(max(abs(low) * 0.01, 0.01), 1)
    start = math.floor(low / width) * width
    count = max(1, math.floor((high - start) / width) + 1)
    return start, width, count


def counts(values: list[float], start: float, width: float, n: int) -> list[int]:
    """How many of ``values`` fall in each of ``n`` bins ``[start + k width, start + (k + 1) width)``."""
    out = [0] * n
    for v in values:
        out[min(n - 1, max(0, math.floor((v - start) / width)))] += 1
    return out


def _fmt(x: float) -> str:
    return f"{x:.6g}"


def histogram_svg(
    series: list[Series],
    title: str,
    marks: list[tuple[float, str]] | None = None,
    size: tuple[int, int] = (560, 210),
    cover_marks: bool = False,
) -> str:
    """The SVG markup of a histogram of ``series`` (infinite and NaN values are left out and said so),
    with dashed vertical ``marks`` (value, label), such as the mean; ``cover_marks`` widens the bins' range to
    show every mark (such as zero in a histogram of differences)."""
    width, height = size
    left, right, top, bottom = 40, 12, 24, 56
    finite = [[v for v in s.values if math.isfinite(v)] for s in series]
    left_out = sum(len(s.values) - len(f) for s, f in zip(series, finite, strict=True))
    everything = [v for f in finite for v in f]
    parts = [
        f'<svg class="hist" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{escape(title)}">',
        f'<text x="{left}" y="15" class="title">{escape(title)}</text>',
    ]
    if not everything:
        parts.append(f'<text x="{left}" y="{height / 2:.0f}">no values to show</text></svg>')
        return "".join(parts)
    shown = [v for v, _ in marks or [] if math.isfinite(v)] if cover_marks else []
    start, step, n = bin_edges(everything + shown)
    per_series = [counts(f, start, step, n) for f in finite]
    peak = max(max(c) for c in per_series) or 1
    plot_w, plot_h = width - left - right, height - top - bottom
    base = top + plot_h

    def x(value: float) -> float:
        return left + plot_w * (value - start) / (n * step)

    def y(count: int) -> float:
        return base - plot_h * count / peak

    bar = plot_w / n
    for s, c in zip(series, per_series, strict=True):
        if s.filled:
            for k, count in enumerate(c):
                if count:
                    parts.append(
                        f'<rect x="{left + k * bar + 0.5:.1f}" y="{y(count):.1f}" width="{max(bar - 1, 0.5):.1f}" '
                        f'height="{base - y(count):.1f}" fill="{s.color}" data-count="{count}">'
                        f"<title>{_fmt(start + k * step)} to {_fmt(start + (k + 1) * step)}: {count}</title></rect>"
                    )
        else:  # an outline over the bins, so a second series stays visible over the first
            points = [f"{left:.1f},{base:.1f}"]
            for k, count in enumerate(c):
                points += [f"{left + k * bar:.1f},{y(count):.1f}", f"{left + (k + 1) * bar:.1f},{y(count):.1f}"]
            points.append(f"{left + n * bar:.1f},{base:.1f}")
            parts.append(
                f'<polyline points="{" ".join(points)}" fill="none" stroke="{s.color}" stroke-width="1.5" '
                f'data-counts="{" ".join(map(str, c))}"/>'
            )
    # axes: counts on the left (0 and the peak), values below at about five nice ticks
    parts.append(f'<line x1="{left}" y1="{base}" x2="{width - right}" y2="{base}" class="axis"/>')
    parts.append(f'<text x="{left - 4}" y="{base:.0f}" text-anchor="end">0</text>')
    parts.append(f'<text x="{left - 4}" y="{top + 8:.0f}" text-anchor="end">{peak}</text>')
    tick = nice_width(n * step, 5)
    k = math.ceil(start / tick - 1e-9)
    while k * tick <= start + n * step + 1e-9 * tick:
        value, k = k * tick, k + 1
        parts.append(f'<line x1="{x(value):.1f}" y1="{base}" x2="{x(value):.1f}" y2="{base + 4}" class="axis"/>')
        parts.append(f'<text x="{x(value):.1f}" y="{base + 16}" text-anchor="middle">{_fmt(value)}</text>')
    for value, label in marks or []:
        if math.isfinite(value):
            xv = min(max(x(value), left), width - right)
            parts.append(f'<line x1="{xv:.1f}" y1="{top}" x2="{xv:.1f}" y2="{base}" class="mark"/>')
            parts.append(f'<text x="{xv + 3:.1f}" y="{top + 8}" class="mark">{escape(label)}</text>')
    legend = []
    for s in series:
        swatch = f'fill="{s.color}"' if s.filled else f'fill="none" stroke="{s.color}"'
        legend.append((s.label, swatch))
    lx = left
    for label, swatch in legend:
        parts.append(f'<rect x="{lx}" y="{height - 16}" width="10" height="10" {swatch}/>')
        parts.append(f'<text x="{lx + 14}" y="{height - 7}">{escape(label)}</text>')
        lx += 24 + 7 * len(label)
    if left_out:
        parts.append(
            f'<text x="{width - right}" y="15" text-anchor="end">{left_out} infinite value(s) not shown</text>'
        )
    parts.append("</svg>")
    return "".join(parts)
