"""Benchmark preparation: turns each deraining benchmark's release layout into paired folders.

``prepare_dataset(name, src, dst)`` reads one release (Rain200L, Rain200H, DID-Data, DDN-Data or SPA-Data, as
downloaded and unpacked under ``src``) and fills::

    dst/train/input/<name>   rainy image
    dst/train/target/<name>  clean image with the same file name
    dst/test/input/<name>
    dst/test/target/<name>

Files are hard-linked (symbolic links when hard links fail, copies with ``copy=True``); only DID-Data, whose
pairs are stored side by side in one image, is decoded and written as two PNG halves. ``src`` is never written
to. The report says, per split, how many pairs were written, how many the benchmark should have, and which
images had no counterpart. Layouts are documented in ``datasets/README.md``.

Modules: ``discovery`` (finding split folders by their names), ``planners`` (one per release layout),
``placement`` (linking, copying, cutting), ``report`` (the table and notes).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from ... import benchmarks
from ...errors import ConfigError, PrepareError
from .discovery import SEARCH_DEPTH, SPLITS, Tree
from .placement import Placer, check_destination, write_split
from .planners import PAIRED_LAYOUT, plan_release
from .report import PrepareReport, SplitReport

__all__ = ["PrepareError", "PrepareReport", "SplitReport", "add_arguments", "prepare_dataset", "run"]


def _benchmark(name: str) -> benchmarks.Benchmark:
    try:
        return benchmarks.get(name)
    except ConfigError as err:  # same text, as the error type callers of prepare expect
        raise PrepareError(str(err)) from None


def prepare_dataset(
    name: str,
    src: str | os.PathLike,
    dst: str | os.PathLike,
    copy: bool = False,
    progress: bool = True,
    overwrite: bool = False,
    expected: Mapping[str, int | None] | None = None,
    workers: int | None = None,
    train_dir: str | os.PathLike | None = None,
    test_dir: str | os.PathLike | None = None,
) -> PrepareReport:
    """Converts the release of benchmark ``name`` under ``src`` into ``dst/{train,test}/{input,target}``.

    ``train_dir`` / ``test_dir`` name a split's release folder directly (it is not searched for, and it may lie
    outside ``src``). Never writes to ``src``. Raises :class:`PrepareError` for an unknown name, an unrecognisable
    source layout, competing or unnamed split folders, or a non-empty destination without ``overwrite``; count
    mismatches and missing counterparts are only reported (``report.ok`` is then False). ``expected`` overrides
    the published pair counts per split (``None`` for a split: no comparison).
    """
    bench = _benchmark(name)
    src, dst = Path(src), Path(dst)
    if not src.is_dir():
        raise PrepareError(f"{src}: no such folder; --src must be the folder the {bench.title} release is in")
    if dst.exists() and not dst.is_dir():
        raise PrepareError(f"{dst}: exists and is not a folder; choose another --dst")
    overrides = {split: Path(path) for split, path in (("train", train_dir), ("test", test_dir)) if path is not None}
    for split, folder in {"src": src, **overrides}.items():
        if os.path.realpath(folder) == os.path.realpath(dst):
            option = "--src" if split == "src" else f"--{split}-dir"
            raise PrepareError(f"{dst}: same folder as {option}; choose a separate --dst (the source is never changed)")
    tree = Tree(src, SEARCH_DEPTH, exclude=(dst, *overrides.values()))
    plans, ignored = plan_release(tree, bench, overrides)
    if not plans:
        raise PrepareError(
            f"{src}: no {bench.title} layout found within {SEARCH_DEPTH} folder levels; expected {bench.layout}, "
            f"{PAIRED_LAYOUT}; or name the split folders with --train-dir / --test-dir"
        )
    check_destination(dst, list(plans), overwrite)
    counts = {**bench.expected_pairs, **(expected or {})}
    placer = Placer(copy)
    workers = workers or min(8, os.cpu_count() or 1)
    splits = {}
    for split in SPLITS:
        report = SplitReport(split, counts.get(split))
        plan = plans.get(split)
        if plan is not None:
            report.source = plan.source
            report.missing_target, report.missing_input = list(plan.missing_target), list(plan.missing_input)
            report.skipped = list(plan.skipped)
            write_split(bench.name, plan, report, dst, placer, tree.rel, progress, workers)
        splits[split] = report
    return PrepareReport(bench.name, str(src), str(dst), splits, dict(placer.counts), placer.fallback, ignored)
