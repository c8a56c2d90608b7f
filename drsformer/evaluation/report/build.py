"""``report.html`` for one test set: gather the rows, make the thumbnails, rank, render, write atomically."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tqdm import tqdm

from ...errors import ImageReadError, ImageWriteError
from ...files import write_bytes_atomic
from .model import Picture, Row, columns_for, metrics_present, sort_column, worst_first
from .other_run import OtherRun, load_other_run
from .page import PageInfo, render
from .thumbnails import Thumbnails

PAGE = "report.html"
THUMBS = "thumbs"


def gather_rows(
    entry: dict[str, Any], pairs: Sequence[tuple[Path, Path | None]], folder: Path, other: OtherRun | None = None
) -> list[Row]:
    """One row per (input, target) pair, in the pairs' order: the image's scores from ``entry`` (the dataset's
    JSON entry), or its failure; and the pictures to show, not yet with thumbnails."""
    images = {i["name"]: i for i in entry.get("images", [])}
    failed = {f["name"]: f.get("error", "") for f in entry.get("failed", [])}
    rows = []
    for input_path, target_path in pairs:
        restored = f"{input_path.stem}.png"  # what drsformer test saves, and the name in its JSON
        values = images.get(restored)
        row = Row(restored if values is not None else input_path.name, dict(values or {}))
        if values is None:
            row.error = failed.get(input_path.name) or "not in this run's results"
        row.pictures["rainy"] = Picture(input_path)
        row.pictures["derained"] = Picture(folder / restored) if values is not None else Picture(None, error="none")
        if other is not None:
            row.other = other.images.get(restored) or {"error": "not in the other run's results"}
            row.pictures["other"] = Picture(other.folder / restored)
        if target_path is not None:
            row.pictures["target"] = Picture(target_path)
        rows.append(row)
    return rows


def make_thumbnails(rows: list[Row], thumbs: Thumbnails, progress: bool = False) -> None:
    """Fills each picture's thumbnail; a file that is missing or cannot be read leaves its reason instead."""
    for row in tqdm(rows, desc="thumbnails", unit="row", disable=not progress):
        for role, picture in row.pictures.items():
            if picture.path is None:
                continue
            if not picture.path.is_file():
                picture.error = f"{picture.path}: no such file"
                picture.path = None
                continue
            try:
                picture.thumb, picture.size = thumbs.make(picture.path, role, picture.path.stem)
            except (ImageReadError, ImageWriteError) as err:  # the message names the file and what is wrong
                picture.error = str(err)
    thumbs.save()


def write_report(
    entry: dict[str, Any],
    pairs: Sequence[tuple[Path, Path | None]],
    folder: Path,
    other: OtherRun | None = None,
    progress: bool = False,
) -> Path:
    """Writes ``<folder>/report.html`` (atomically) and its thumbnails in ``<folder>/thumbs/``; returns the page.

    ``entry`` is the dataset's entry of the test JSON (``name``, ``protocol``, means, ``images`` with per-image
    scores, ``failed``); ``pairs`` are its (input, target) files, target None for data without ground truth;
    ``folder`` holds the restored ``<stem>.png``. Rows are ranked worst first by the first metric the images
    carry, or by the difference from ``other`` when given.
    """
    folder = Path(folder)
    rows = gather_rows(entry, pairs, folder, other)
    make_thumbnails(rows, Thumbnails(folder / THUMBS), progress)
    metrics = metrics_present(row.values for row in rows)
    columns = columns_for(metrics, rows, other is not None)
    first = sort_column(columns, other is not None)
    roles = [role for role in ("rainy", "derained", "other", "target") if any(role in r.pictures for r in rows)]
    info = PageInfo(
        str(entry.get("name", folder.name)),
        entry,
        metrics,
        columns,
        first,
        roles,
        other.source if other else None,
        other.weights if other else None,
    )
    page = folder / PAGE
    write_bytes_atomic(page, render(info, worst_first(rows, first), folder).encode("utf-8"))
    return page


def report_dataset(
    entry: dict[str, Any],
    pairs: Sequence[tuple[Path, Path | None]],
    folder: Path,
    compare_to: Path | None = None,
    progress: bool = False,
) -> Path:
    """:func:`write_report`, with the other run read from ``compare_to/<name>/`` when given (see
    :mod:`drsformer.evaluation.report.other_run`)."""
    other = None
    if compare_to is not None:
        other = load_other_run(Path(compare_to), entry["name"], entry["protocol"], pairs)
    return write_report(entry, pairs, folder, other, progress)
