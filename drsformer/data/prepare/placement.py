"""Putting planned pairs into ``dst/<split>/{input,target}``: hard link, symbolic link, copy, or cut DID halves.

Every entry is made under a temporary name beside its final one and renamed over it, so an interrupted run never
leaves a half-written file under a final name, and an existing entry (possibly a hard link into the source) is
replaced, never written through.
"""

from __future__ import annotations

import os
import shutil
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tqdm import tqdm

from ...errors import PrepareError
from ...files import atomic_path
from ..io import ImageReadError, read_image, write_image
from .planners import CutPair, LinkPair, SplitPlan
from .report import SplitReport


def _refuse_folder(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        raise PrepareError(f"{path}: is a folder where an image should go; remove it and run again")


class Placer:
    """Puts a source file at a destination path: hard link, else symbolic link, or a copy when asked."""

    def __init__(self, copy: bool) -> None:
        self.copy = copy
        self.hardlinks = not copy
        self.fallback: str | None = None  # why hard links were abandoned
        self.counts: Counter[str] = Counter()

    def _make(self, source: Path, tmp: Path) -> str:
        """Creates ``tmp`` as the chosen kind of entry for ``source``; FileNotFoundError when source is absent."""
        if self.copy:
            shutil.copy2(source, tmp)
            return "copied"
        if self.hardlinks:
            try:
                os.link(source, tmp)
                return "hard links"
            except FileNotFoundError:
                raise
            except OSError as err:  # e.g. another file system, or links not supported: symlinks from now on
                self.hardlinks = False
                self.fallback = err.strerror or str(err)
        if not source.is_file():
            raise FileNotFoundError(source)
        os.symlink(os.path.abspath(source), tmp)
        return "symbolic links"

    def place(self, source: Path, target: Path) -> None:
        """Makes ``target`` an entry for ``source`` atomically; raises FileNotFoundError when source is absent."""
        _refuse_folder(target)
        with atomic_path(target, sync=self.copy) as tmp:  # a copy's data is new; a link has none
            how = self._make(source, tmp)
        self.counts[how] += 1


def _cut(job: CutPair, input_dir: Path, target_dir: Path) -> bool:
    """Writes the left half as input and the right half as target (PNG); False when the image is unreadable."""
    try:
        image = read_image(job.source)
    except ImageReadError:
        return False
    half = image.shape[1] // 2  # an odd last column is dropped so that both halves have the same size
    for folder, part in ((input_dir, image[:, :half]), (target_dir, image[:, half : 2 * half])):
        _refuse_folder(folder / job.name)
        write_image(folder / job.name, part)  # atomic: a temporary file renamed over the old entry
    return True


def _link(job: LinkPair, input_dir: Path, target_dir: Path, placer: Placer) -> str | None:
    """Places one pair; returns 'input' or 'target' when that source file is missing (nothing is left behind)."""
    try:
        placer.place(job.rainy, input_dir / job.name)
    except FileNotFoundError:
        return "input"
    try:
        placer.place(job.clean, target_dir / job.name)
    except FileNotFoundError:
        (input_dir / job.name).unlink()
        return "target"
    return None


def existing(folder: Path) -> list[str]:
    """Entry names in ``folder`` (none when it does not exist), sorted."""
    return sorted(os.listdir(folder)) if folder.is_dir() else []


def write_split(
    dataset: str,
    plan: SplitPlan,
    report: SplitReport,
    dst: Path,
    placer: Placer,
    rel: Callable[[Path], str],
    progress: bool,
    workers: int,
) -> None:
    """Carries out ``plan`` into ``dst/<split>/{input,target}``, recording in ``report`` what was written."""
    input_dir, target_dir = dst / report.split / "input", dst / report.split / "target"
    input_dir.mkdir(parents=True, exist_ok=True)
    target_dir.mkdir(parents=True, exist_ok=True)
    written: set[str] = set()
    links = [job for job in plan.jobs if isinstance(job, LinkPair)]
    cuts = [job for job in plan.jobs if isinstance(job, CutPair)]
    with tqdm(total=len(plan.jobs), desc=f"{dataset} {report.split}", unit="pair", disable=not progress) as bar:
        for job in links:
            lost = _link(job, input_dir, target_dir, placer)
            if lost == "input":  # name the clean image left without its rainy image (or both when both are absent)
                absent = "" if job.clean.is_file() else f" (and {rel(job.rainy)})"
                report.missing_input.append(rel(job.clean) + absent)
            elif lost == "target":
                report.missing_target.append(rel(job.rainy))
            else:
                written.add(job.name)
            bar.update()
        with ThreadPoolExecutor(max_workers=workers) as pool:  # decoding and PNG encoding release the GIL
            for cut, ok in zip(cuts, pool.map(lambda j: _cut(j, input_dir, target_dir), cuts), strict=True):
                if ok:
                    written.add(cut.name)
                    placer.counts["PNG halves"] += 2
                else:
                    report.unreadable.append(rel(cut.source))
                bar.update()
    report.written = len(written)
    report.stale = sorted((set(existing(input_dir)) | set(existing(target_dir))) - written)  # only with overwrite


def check_destination(dst: Path, splits: list[str], overwrite: bool) -> None:
    """Raises :class:`PrepareError` when a split's destination folder already holds entries and not ``overwrite``."""
    for split in splits:
        for side in ("input", "target"):
            entries = existing(dst / split / side)
            if entries and not overwrite:
                raise PrepareError(
                    f"{dst / split / side}: already holds {len(entries)} entries; pass --overwrite "
                    "(overwrite=True) to replace them, or choose another --dst"
                )
