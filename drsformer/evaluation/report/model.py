"""What a report row holds and which columns a page shows: pure data, no files, no HTML.

A metric column is generic: a key of the per-image dicts, a label and whether higher or lower is better. The
page shows the metrics the images carry (PSNR/SSIM for paired test sets, NIQE/BRISQUE for real rain), the gain
over the rainy input (key ``rainy_<key>``) and, against another run, the per-image difference.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Metric:
    """A per-image score: its key in the JSON, how it is shown, and which direction is better."""

    key: str
    label: str
    higher_is_better: bool
    digits: int
    unit: str = ""

    def format(self, value: float | None, signed: bool = False) -> str:
        """The value as the page prints it; ``-`` for a missing or NaN value."""
        if value is None or math.isnan(value):
            return "-"
        if math.isinf(value):
            return ("+∞" if signed else "∞") if value > 0 else "-∞"
        return f"{value:+.{self.digits}f}" if signed else f"{value:.{self.digits}f}"


# In the order the page prefers them: the first one an image set carries ranks the rows.
METRICS = (
    Metric("psnr", "PSNR", True, 2, " dB"),
    Metric("ssim", "SSIM", True, 4),
    Metric("niqe", "NIQE", False, 3),
    Metric("brisque", "BRISQUE", False, 2),
)
RAINY_PREFIX = "rainy_"  # the rainy input's score under the same protocol: rainy_psnr, rainy_niqe, ...


def metrics_present(images: Iterable[Mapping[str, Any]], known: tuple[Metric, ...] = METRICS) -> list[Metric]:
    """The known metrics that at least one image carries, in the order of ``known``."""
    keys = {key for image in images for key in image}
    return [m for m in known if m.key in keys]


def number(value: Any) -> float | None:
    """A finite or infinite float from a JSON value; None for anything else (missing, NaN, text)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return None if math.isnan(value) else value


def difference(a: float | None, b: float | None) -> float | None:
    """``a - b``; None when either is missing or the result is undefined (inf - inf)."""
    if a is None or b is None:
        return None
    d = a - b
    return None if math.isnan(d) else d


@dataclass
class Picture:
    """One picture of a row: the full-size file, its thumbnail and the thumbnail's size, or why there is none."""

    path: Path | None  # None: there is no such file (a failed image has no derained result)
    thumb: Path | None = None
    size: tuple[int, int] | None = None  # thumbnail width, height
    error: str | None = None


@dataclass
class Row:
    """One image of the test set: its scores in this run (and in the other run), its pictures, or its failure."""

    name: str
    values: dict[str, Any] = field(default_factory=dict)  # this image's dict from the JSON
    other: dict[str, Any] | None = None  # the other run's dict for the same image (compare); None without one
    error: str | None = None  # why the image did not run
    pictures: dict[str, Picture] = field(default_factory=dict)  # role (rainy, derained, other, target) -> picture


@dataclass(frozen=True)
class Column:
    """A sortable number column: the metric it shows and what it computes from a row."""

    id: str  # short name used by the page's script
    label: str
    metric: Metric
    kind: str  # "value": this run's score; "gain": minus the rainy input's; "versus": minus the other run's
    title: str = ""  # tooltip

    def value(self, row: Row) -> float | None:
        own = number(row.values.get(self.metric.key))
        if self.kind == "gain":
            return difference(own, number(row.values.get(RAINY_PREFIX + self.metric.key)))
        if self.kind == "versus":
            return difference(own, number((row.other or {}).get(self.metric.key)))
        return own

    @property
    def signed(self) -> bool:
        return self.kind != "value"

    def goodness(self, value: float | None) -> float:
        """Larger is better whatever the metric's direction; a missing value counts as the worst."""
        if value is None:
            return -math.inf
        return value if self.metric.higher_is_better else -value


def columns_for(metrics: list[Metric], rows: list[Row], compare: bool) -> list[Column]:
    """This run's metrics, their gain over the rainy input where the rows carry it, and their difference from
    the other run when comparing."""
    columns = [Column(f"v{i}", m.label, m, "value", f"{m.label} of the derained image") for i, m in enumerate(metrics)]
    for i, m in enumerate(metrics):
        if any(RAINY_PREFIX + m.key in row.values for row in rows):
            title = f"{m.label} of the derained image minus that of the rainy input"
            columns.append(Column(f"g{i}", f"Δ{m.label} vs rainy", m, "gain", title))
    if compare:
        for i, m in enumerate(metrics):
            title = f"{m.label} of this run minus that of the other run"
            columns.append(Column(f"d{i}", f"Δ{m.label} vs other", m, "versus", title))
    return columns


def sort_column(columns: list[Column], compare: bool) -> Column | None:
    """The column the page is sorted by at first: the difference from the other run when comparing, else the
    first metric."""
    wanted = "versus" if compare else "value"
    return next((c for c in columns if c.kind == wanted), columns[0] if columns else None)


def worst_first(rows: list[Row], column: Column | None) -> list[Row]:
    """Rows from worst to best by ``column``; failed and unscored rows first; ties keep the given order."""
    if column is None:
        return list(rows)
    return sorted(rows, key=lambda row: column.goodness(column.value(row)))


def mean(values: Iterable[float | None]) -> float | None:
    """The mean of the values that are there (math.fsum, as the JSON's means); None when there are none."""
    present = [v for v in values if v is not None]
    return math.fsum(present) / len(present) if present else None
