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
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
from collections import Counter
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from ..errors import PrepareError
from .io import ImageReadError, is_image_file, list_images, read_image, write_image

SPLITS = ("train", "test")
SHOWN = 5  # names listed per problem in reports
SEARCH_DEPTH = 4  # how many folder levels below --src are searched for the release's folders

# Folders that hold images: never searched inside (SPA-Data's real_world/ alone has ~600k files).
IMAGE_FOLDERS = frozenset(
    {"rain", "norain", "x2", "rainy_image", "ground_truth", "gt", "input", "target", "train2018new"}
    | {"real_world", "real_world_gt"}
)


# ----------------------------------------------------------------------------------------------------------------
# Dataset names


@dataclass(frozen=True)
class DatasetSpec:
    """One benchmark: canonical name, paper title, published pair counts and accepted spellings."""

    name: str
    title: str
    expected: Mapping[str, int]
    aliases: tuple[str, ...]
    layout: str  # the release layout, for error messages


DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        DatasetSpec(
            "Rain200L",
            "Rain200L",
            {"train": 1800, "test": 200},
            ("rain200l", "rain200light"),
            "folders holding rain/X2/norain-{i}x2.png and norain/norain-{i}.png whose names say train or test "
            "(rain_data_train_Light, rain_data_test_Light)",
        ),
        DatasetSpec(
            "Rain200H",
            "Rain200H",
            {"train": 1800, "test": 200},
            ("rain200h", "rain200heavy"),
            "folders holding rain/X2/norain-{i}x2.png and norain/norain-{i}.png whose names say train or test "
            "(rain_data_train_Heavy, rain_data_test_Heavy)",
        ),
        DatasetSpec(
            "DID",
            "DID-Data",
            {"train": 12000, "test": 1200},
            ("did", "diddata", "didmdn", "rain1200"),
            "Rain_Heavy/, Rain_Medium/, Rain_Light/ (each with train2018new/{i}.jpg) and a test folder such as "
            "DID-MDN-test/{i}.jpg, every image rainy left half | clean right half",
        ),
        DatasetSpec(
            "DDN",
            "DDN-Data",
            {"train": 12600, "test": 1400},
            ("ddn", "ddndata", "rain1400", "rain12600", "rain14000"),
            "train and test folders (names with train/12600 and test/1400) each holding rain/{i}_{j}.jpg and "
            "norain/{i}.jpg (or rainy_image/ and ground_truth/)",
        ),
        DatasetSpec(
            "SPA",
            "SPA-Data",
            {"train": 638492, "test": 1000},
            ("spa", "spadata", "spanet", "realrain"),
            "real_world.txt (rainy and clean path per line) for training and real_test_1000/rain/{k}.png + "
            "real_test_1000/gt/{k}gt.png for testing",
        ),
    )
}
PAIRED_LAYOUT = "or already-paired train/input + train/target (and/or test/input + test/target)"


def _squash(name: str) -> str:
    return re.sub(r"[\s_\-.]", "", name.lower())


def resolve_name(name: str) -> str:
    """Canonical dataset name (``Rain200L``, ``Rain200H``, ``DID``, ``DDN``, ``SPA``) for any accepted spelling."""
    key = _squash(name)
    for spec in DATASETS.values():
        if key in {_squash(spec.name), _squash(spec.title), *spec.aliases}:
            return spec.name
    known = ", ".join(f"{s.name} ({s.title})" for s in DATASETS.values())
    raise PrepareError(f"unknown dataset {name!r}; known datasets: {known} (case-insensitive)")


# ----------------------------------------------------------------------------------------------------------------
# Report


def _first(items: list[str]) -> str:
    shown = ", ".join(items[:SHOWN])
    return shown + (f", ... ({len(items)} in all)" if len(items) > SHOWN else "")


@dataclass
class SplitReport:
    """One split's outcome. Names are paths relative to ``src`` (or to ``dst`` for stale entries)."""

    split: str
    expected: int | None
    source: str | None = None  # the folders or list file read; None when the split was not found
    written: int = 0
    missing_target: list[str] = field(default_factory=list)  # rainy images without a clean image
    missing_input: list[str] = field(default_factory=list)  # clean images without a rainy image
    unreadable: list[str] = field(default_factory=list)  # images that could not be decoded (DID-Data)
    skipped: list[str] = field(default_factory=list)  # files whose names do not fit the layout
    stale: list[str] = field(default_factory=list)  # entries in dst from before that this run did not replace

    @property
    def missing(self) -> int:
        return len(self.missing_target) + len(self.missing_input) + len(self.unreadable)

    @property
    def ok(self) -> bool:
        """Found, nothing missing, and the published count (when one is given) reached exactly."""
        count_ok = self.expected is None or self.written == self.expected
        return self.source is not None and count_ok and self.missing == 0

    def notes(self) -> list[str]:
        """Human-readable lines about what was read and what went wrong."""
        if self.source is None:
            return [f"{self.split}: no {self.split} folder found in the source"]
        lines = [f"{self.split}: read {self.source}"]
        problems = (
            (self.missing_target, "rainy image(s) without a clean image"),
            (self.missing_input, "clean image(s) without a rainy image"),
            (self.unreadable, "unreadable image(s), not written"),
            (self.skipped, "file(s) not fitting the layout, ignored"),
            (self.stale, "older entr(ies) in the destination left in place"),
        )
        lines += [f"{self.split}: {len(names)} {what}: {_first(names)}" for names, what in problems if names]
        if self.expected is not None and self.written != self.expected:
            lines.append(f"{self.split}: {self.written} pairs written, the published split has {self.expected}")
        return lines

    def to_dict(self) -> dict:
        def listing(names: list[str]) -> dict:
            return {"count": len(names), "first": names[:SHOWN]}

        return {
            "split": self.split,
            "source": self.source,
            "written": self.written,
            "expected": self.expected,
            "missing": self.missing,
            "ok": self.ok,
            "missing_target": listing(self.missing_target),
            "missing_input": listing(self.missing_input),
            "unreadable": listing(self.unreadable),
            "skipped": listing(self.skipped),
            "stale": listing(self.stale),
        }


def _table(rows: list[tuple[str, ...]], numeric: tuple[int, ...]) -> list[str]:
    """Rows as aligned text columns; the ``numeric`` columns are right-aligned."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]

    def cell(i: int, text: str) -> str:
        return text.rjust(widths[i]) if i in numeric else text.ljust(widths[i])

    return ["  ".join(cell(i, text) for i, text in enumerate(row)).rstrip() for row in rows]


@dataclass
class PrepareReport:
    """What ``prepare_dataset`` did: per split counts and problems, and how files were placed."""

    dataset: str
    src: str
    dst: str
    splits: dict[str, SplitReport]
    placed: dict[str, int] = field(default_factory=dict)  # hardlink / symlink / copy / png counts
    fallback: str | None = None  # why hard links were abandoned, if they were

    @property
    def ok(self) -> bool:
        return all(report.ok for report in self.splits.values())

    def format(self) -> str:
        """A short table (dataset, split, pairs written, expected, missing) followed by notes."""
        header = ("dataset", "split", "written", "expected", "missing", "status")
        rows = [header]
        for report in self.splits.values():
            status = "ok" if report.ok else ("not found" if report.source is None else "CHECK")
            expected = "-" if report.expected is None else str(report.expected)
            rows.append((self.dataset, report.split, str(report.written), expected, str(report.missing), status))
        lines = _table(rows, numeric=(2, 3, 4))
        placed = ", ".join(f"{n} {how}" for how, n in sorted(self.placed.items())) or "nothing"
        lines.append(f"{self.src} -> {self.dst}: files placed: {placed}")
        if self.fallback:
            lines.append(f"hard links failed ({self.fallback}); used symbolic links to absolute paths instead")
        for report in self.splits.values():
            lines += ["  " + note for note in report.notes()]
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {
            "dataset": self.dataset,
            "src": self.src,
            "dst": self.dst,
            "ok": self.ok,
            "placed": dict(self.placed),
            "fallback": self.fallback,
            "splits": {split: report.to_dict() for split, report in self.splits.items()},
        }


# ----------------------------------------------------------------------------------------------------------------
# Plans: what to write for one split


@dataclass(frozen=True)
class LinkPair:
    """A rainy and a clean file to place as ``input/name`` and ``target/name``."""

    name: str
    rainy: Path
    clean: Path


@dataclass(frozen=True)
class CutPair:
    """One side-by-side image (rainy left, clean right) to cut into ``input/name`` and ``target/name``."""

    name: str
    source: Path


@dataclass
class SplitPlan:
    source: str
    jobs: list[LinkPair | CutPair] = field(default_factory=list)
    missing_target: list[str] = field(default_factory=list)
    missing_input: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


KeyFn = Callable[[str], object | None]  # file stem -> pairing key, or None when the name does not fit


def _pair(
    rainy: list[Path],
    clean: list[Path],
    rainy_key: KeyFn,
    clean_key: KeyFn,
    out_name: Callable[[Path, object], str],
    rel: Callable[[Path], str],
    source: str,
) -> SplitPlan:
    """Pairs rainy and clean files by key; several rainy files may share one clean file."""
    plan = SplitPlan(source)
    clean_by_key: dict[object, Path] = {}
    for path in clean:
        key = clean_key(path.stem)
        if key is None or key in clean_by_key:
            plan.skipped.append(rel(path))
        else:
            clean_by_key[key] = path
    used_keys: set[object] = set()
    names: set[str] = set()
    for path in rainy:
        key = rainy_key(path.stem)
        name = None if key is None else out_name(path, key)
        if name is None or name in names:
            plan.skipped.append(rel(path))
        elif key not in clean_by_key:
            plan.missing_target.append(rel(path))
        else:
            names.add(name)
            used_keys.add(key)
            plan.jobs.append(LinkPair(name, path, clean_by_key[key]))
    plan.missing_input = [rel(path) for key, path in clean_by_key.items() if key not in used_keys]
    return plan


def _matcher(pattern: str) -> KeyFn:
    """Key function: the integer in the pattern's first group (case-insensitive full match), or None."""
    compiled = re.compile(pattern, re.IGNORECASE)

    def key(stem: str) -> int | None:
        match = compiled.fullmatch(stem)
        return int(match.group(1)) if match else None

    return key


# ----------------------------------------------------------------------------------------------------------------
# Searching the source tree


class _Tree:
    """Folders under ``root`` down to ``depth`` levels (image folders are listed but not searched inside)."""

    def __init__(self, root: Path, depth: int, exclude: Path | None) -> None:
        self.root = root
        self.children: dict[Path, dict[str, Path]] = {}
        excluded = os.path.realpath(exclude) if exclude is not None else None
        level = [root]
        for current_depth in range(depth + 1):
            following = []
            for folder in level:
                kids = self._list(folder, excluded)
                self.children[folder] = kids
                if current_depth < depth:
                    following += [kid for low, kid in kids.items() if low not in IMAGE_FOLDERS]
            level = following

    @staticmethod
    def _list(folder: Path, excluded: str | None) -> dict[str, Path]:
        kids: dict[str, Path] = {}
        try:
            with os.scandir(folder) as entries:
                for entry in entries:
                    if entry.name.startswith(".") or not entry.is_dir():
                        continue
                    if excluded is not None and os.path.realpath(entry.path) == excluded:
                        continue
                    kids.setdefault(entry.name.lower(), Path(entry.path))
        except OSError:  # unreadable folder: nothing to find there
            pass
        return kids

    def folders(self) -> list[Path]:
        return sorted(self.children)

    def child(self, folder: Path, *names: str) -> Path | None:
        """The first sub-folder of ``folder`` named like one of ``names`` (case-insensitive)."""
        kids = self.children.get(folder, {})
        return next((kids[n] for n in names if n in kids), None)

    def lineage(self, folder: Path) -> list[str]:
        """Names from ``folder`` up to the root, innermost first."""
        parts = list(folder.relative_to(self.root).parts)[::-1]
        return parts + [self.root.name]

    def rel(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix() if path != self.root else "."


def _split_of(tree: _Tree, folder: Path, words: Mapping[str, tuple[str, ...]]) -> str | None:
    """train or test, from the innermost folder name on the way up that names exactly one of them."""
    for name in tree.lineage(folder):
        low = name.lower()
        hits = {split for split, keys in words.items() if any(k in low for k in keys)}
        if len(hits) == 1:
            return hits.pop()
    return None


SPLIT_WORDS = {"train": ("train",), "test": ("test",)}


def _one_per_split(
    tree: _Tree, candidates: list[Path], words: Mapping[str, tuple[str, ...]], what: str
) -> dict[str, Path]:
    """Assigns candidate folders to splits; several for one split, or none classifiable, is an error."""
    by_split: dict[str, list[Path]] = {}
    unclassified = []
    for folder in candidates:
        split = _split_of(tree, folder, words)
        if split is None:
            unclassified.append(folder)
        else:
            by_split.setdefault(split, []).append(folder)
    for split, folders in by_split.items():
        if len(folders) > 1:
            names = ", ".join(tree.rel(f) for f in folders)
            raise PrepareError(
                f"{tree.root}: several {split} folders with {what}: {names}; point --src at one release or "
                "move the others away"
            )
    if unclassified and not by_split:
        names = ", ".join(tree.rel(f) for f in unclassified)
        keys = " / ".join(w for keys in words.values() for w in keys)
        raise PrepareError(
            f"{tree.root}: found {what} in {names} but cannot tell train from test (no folder name on the way up "
            f"contains {keys}); rename the folder so that its name says which split it is"
        )
    return {split: folders[0] for split, folders in by_split.items()}


def _has_images(folder: Path) -> bool:
    with os.scandir(folder) as entries:
        return any(is_image_file(e.name) and e.is_file() for e in entries)


# ----------------------------------------------------------------------------------------------------------------
# The five layouts


def _variant(tree: _Tree, folder: Path) -> str | None:
    """'H' or 'L' when the path names one Rain200 variant (Heavy/Light, 200H/100L, RainTrainH ...)."""
    text = "/".join(tree.lineage(folder)).lower()
    heavy = "heavy" in text or re.search(r"(?:100|200|train)h(?![a-z0-9])", text) is not None
    light = "light" in text or re.search(r"(?:100|200|train)l(?![a-z0-9])", text) is not None
    return "H" if heavy and not light else "L" if light and not heavy else None


def _plan_rain200(tree: _Tree, spec: DatasetSpec) -> dict[str, SplitPlan]:
    wanted = spec.name[-1]  # 'L' or 'H'
    candidates = [
        folder
        for folder in tree.folders()
        if tree.child(folder, "rain") and tree.child(folder, "norain") and _variant(tree, folder) in (None, wanted)
    ]
    folders = _one_per_split(tree, candidates, SPLIT_WORDS, "rain/ and norain/")
    plans = {}
    number = r"0*(\d+)"
    for split, folder in folders.items():
        rain = tree.child(folder, "rain")
        x2 = next((rain / n for n in ("X2", "x2") if (rain / n).is_dir()), rain)  # rain/X2/ or rain/ itself
        plans[split] = _pair(
            list_images(x2),
            list_images(tree.child(folder, "norain")),
            _matcher(rf"(?:no)?rain-{number}(?:x2)?"),
            _matcher(rf"norain-{number}"),
            lambda path, key: f"{key}{path.suffix.lower()}",
            tree.rel,
            f"{tree.rel(x2)} + {tree.rel(tree.child(folder, 'norain'))}",
        )
    return plans


def _plan_ddn(tree: _Tree, spec: DatasetSpec) -> dict[str, SplitPlan]:
    rainy_names, clean_names = ("rainy_image", "rain"), ("ground_truth", "norain")
    candidates = [f for f in tree.folders() if tree.child(f, *rainy_names) and tree.child(f, *clean_names)]
    words = {"train": ("train", "12600"), "test": ("test", "1400")}
    folders = _one_per_split(tree, candidates, words, "rain/ and norain/ (or rainy_image/ and ground_truth/)")
    plans = {}
    for split, folder in folders.items():
        rainy, clean = tree.child(folder, *rainy_names), tree.child(folder, *clean_names)
        plans[split] = _pair(
            list_images(rainy),
            list_images(clean),
            _matcher(r"0*(\d+)_\d+"),
            _matcher(r"0*(\d+)"),
            lambda path, key: path.name,  # each rainy image keeps its name; its clean image is linked under it
            tree.rel,
            f"{tree.rel(rainy)} + {tree.rel(clean)}",
        )
    return plans


DID_LEVELS = ("rain_heavy", "rain_medium", "rain_light")


def _plan_did(tree: _Tree, spec: DatasetSpec) -> dict[str, SplitPlan]:
    plans = {}
    levels: dict[str, list[Path]] = {}
    for folder in tree.folders():
        if folder.name.lower() in DID_LEVELS:
            images = tree.child(folder, "train2018new") or folder
            levels.setdefault(folder.name.lower(), []).append(images)
    for level, found in levels.items():
        if len(found) > 1:
            names = ", ".join(tree.rel(f) for f in found)
            raise PrepareError(f"{tree.root}: several {level} folders: {names}; point --src at one DID-Data release")
    if levels:
        plan = SplitPlan(" + ".join(tree.rel(found[0]) for found in levels.values()))
        for level, (images,) in sorted(levels.items()):
            prefix = level.split("_")[-1]
            plan.jobs += [CutPair(f"{prefix}_{path.stem}.png", path) for path in list_images(images)]
        plans["train"] = plan
    test = _did_test_folder(tree)
    if test is not None:
        plans["test"] = SplitPlan(tree.rel(test), [CutPair(f"{p.stem}.png", p) for p in list_images(test)])
    return plans


def _did_test_folder(tree: _Tree) -> Path | None:
    """The folder of side-by-side test images: named with 'test', outside the training folders."""
    candidates = [
        folder
        for folder in tree.folders()
        if "test" in folder.name.lower()
        and not any(name.lower() in DID_LEVELS for name in tree.lineage(folder))
        and _has_images(folder)
    ]
    if len(candidates) > 1:  # prefer the 1200-image set (DID-MDN-test, Test1200) over others
        preferred = [f for f in candidates if f.name.lower() == "did-mdn-test" or "1200" in f.name]
        candidates = preferred if len(preferred) == 1 else candidates
    if len(candidates) > 1:
        names = ", ".join(tree.rel(f) for f in candidates)
        raise PrepareError(
            f"{tree.root}: several DID-Data test folders: {names}; keep only the 1200-image one (DID-MDN-test)"
        )
    return candidates[0] if candidates else None


def _plan_spa(tree: _Tree, spec: DatasetSpec) -> dict[str, SplitPlan]:
    plans = {}
    lists = [f / "real_world.txt" for f in tree.folders() if (f / "real_world.txt").is_file()]
    if len(lists) > 1:
        names = ", ".join(tree.rel(f) for f in lists)
        raise PrepareError(f"{tree.root}: several real_world.txt files: {names}; point --src at one SPA-Data release")
    if lists:
        plans["train"] = _plan_spa_list(lists[0], tree.rel)
    candidates = [f for f in tree.folders() if tree.child(f, "rain") and tree.child(f, "gt")]
    tests = [f for f in candidates if _split_of(tree, f, SPLIT_WORDS) == "test"]
    if len(tests) > 1:
        names = ", ".join(tree.rel(f) for f in tests)
        raise PrepareError(f"{tree.root}: several test folders with rain/ and gt/: {names}; keep real_test_1000 only")
    if tests:
        test = tests[0]
        rain, gt = tree.child(test, "rain"), tree.child(test, "gt")
        plans["test"] = _pair(
            list_images(rain),
            list_images(gt),
            _matcher(r"(\d+)"),
            _matcher(r"(\d+)gt"),
            lambda path, key: path.name,
            tree.rel,
            f"{tree.rel(rain)} + {tree.rel(gt)}",
        )
    return plans


def _list_path(folder: Path, text: str) -> Path:
    """A path from a list file, relative to the list's folder even when written as /a/b or ./a/b."""
    text = text.replace("\\", "/")
    while text.startswith(("/", "./")):
        text = text[1:] if text.startswith("/") else text[2:]
    return folder / text


def _plan_spa_list(list_file: Path, rel: Callable[[Path], str]) -> SplitPlan:
    """Pairs from real_world.txt: each line is 'rainy clean'. Missing files are found when linking."""
    plan = SplitPlan(rel(list_file))
    pairs = []
    with open(list_file, encoding="utf-8", errors="replace") as lines:
        for number, line in enumerate(lines, 1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != 2:
                plan.skipped.append(f"{rel(list_file)} line {number}: expected 'rainy clean', got {line.strip()!r}")
                continue
            pairs.append((_list_path(list_file.parent, fields[0]), _list_path(list_file.parent, fields[1])))
    # Rainy file names are unique in the release (video_frame_x_y); fall back to the flattened path if not.
    unique = len({rainy.name for rainy, _ in pairs}) == len(pairs)
    names: set[str] = set()
    for rainy, clean in pairs:
        name = rainy.name if unique else rainy.relative_to(list_file.parent).as_posix().replace("/", "_")
        if name in names:  # the same rainy image listed twice
            plan.skipped.append(f"{rel(rainy)} (listed more than once)")
            continue
        names.add(name)
        plan.jobs.append(LinkPair(name, rainy, clean))
    return plan


def _plan_paired(tree: _Tree) -> dict[str, SplitPlan]:
    """Already-paired input/ and target/ folders with matching names (e.g. the DRSformer authors' downloads)."""
    candidates = [f for f in tree.folders() if tree.child(f, "input") and tree.child(f, "target")]
    if not candidates:
        return {}
    plans = {}
    for split, folder in _one_per_split(tree, candidates, SPLIT_WORDS, "input/ and target/").items():
        rainy, clean = tree.child(folder, "input"), tree.child(folder, "target")
        plans[split] = _pair(
            list_images(rainy),
            list_images(clean),
            lambda stem: stem,
            lambda stem: stem,
            lambda path, key: path.name,
            tree.rel,
            f"{tree.rel(rainy)} + {tree.rel(clean)}",
        )
    return plans


PLANNERS: dict[str, Callable[[_Tree, DatasetSpec], dict[str, SplitPlan]]] = {
    "Rain200L": _plan_rain200,
    "Rain200H": _plan_rain200,
    "DID": _plan_did,
    "DDN": _plan_ddn,
    "SPA": _plan_spa,
}


# ----------------------------------------------------------------------------------------------------------------
# Writing


class _Placer:
    """Puts a source file at a destination path: hard link, else symbolic link, or a copy when asked."""

    def __init__(self, copy: bool) -> None:
        self.copy = copy
        self.hardlinks = not copy
        self.fallback: str | None = None
        self.counts: Counter[str] = Counter()

    def place(self, source: Path, target: Path) -> None:
        _clear(target)  # never write through an existing entry: it may be a hard link into the source
        if self.copy:
            shutil.copy2(source, target)
            self.counts["copied"] += 1
            return
        if self.hardlinks:
            try:
                os.link(source, target)
                self.counts["hard links"] += 1
                return
            except (FileNotFoundError, FileExistsError):
                raise
            except OSError as err:  # e.g. another file system, or links not supported: symlinks from now on
                self.hardlinks = False
                self.fallback = err.strerror or str(err)
        if not source.is_file():
            raise FileNotFoundError(source)
        os.symlink(os.path.abspath(source), target)
        self.counts["symbolic links"] += 1


def _clear(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        raise PrepareError(f"{path}: is a folder where an image should go; remove it and run again")


def _cut(job: CutPair, input_dir: Path, target_dir: Path) -> bool:
    """Writes the left half as input and the right half as target (PNG); False when the image is unreadable."""
    try:
        image = read_image(job.source)
    except ImageReadError:
        return False
    half = image.shape[1] // 2  # an odd last column is dropped so that both halves have the same size
    for folder, part in ((input_dir, image[:, :half]), (target_dir, image[:, half : 2 * half])):
        _clear(folder / job.name)
        write_image(folder / job.name, part)
    return True


def _link(job: LinkPair, input_dir: Path, target_dir: Path, placer: _Placer) -> str | None:
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


def _existing(folder: Path) -> list[str]:
    return sorted(os.listdir(folder)) if folder.is_dir() else []


def _write_split(
    dataset: str,
    plan: SplitPlan,
    report: SplitReport,
    dst: Path,
    placer: _Placer,
    rel: Callable[[Path], str],
    progress: bool,
    workers: int,
) -> None:
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
            for job, ok in zip(cuts, pool.map(lambda j: _cut(j, input_dir, target_dir), cuts), strict=True):
                if ok:
                    written.add(job.name)
                    placer.counts["PNG halves"] += 2
                else:
                    report.unreadable.append(rel(job.source))
                bar.update()
    report.written = len(written)
    report.stale = sorted((set(_existing(input_dir)) | set(_existing(target_dir))) - written)  # only with overwrite


def _check_destination(dst: Path, splits: list[str], overwrite: bool) -> None:
    for split in splits:
        for side in ("input", "target"):
            entries = _existing(dst / split / side)
            if entries and not overwrite:
                raise PrepareError(
                    f"{dst / split / side}: already holds {len(entries)} entries; pass --overwrite "
                    "(overwrite=True) to replace them, or choose another --dst"
                )


# ----------------------------------------------------------------------------------------------------------------
# Entry points


def prepare_dataset(
    name: str,
    src: str | os.PathLike,
    dst: str | os.PathLike,
    copy: bool = False,
    progress: bool = True,
    overwrite: bool = False,
    expected: Mapping[str, int | None] | None = None,
    workers: int | None = None,
) -> PrepareReport:
    """Converts the release of benchmark ``name`` under ``src`` into ``dst/{train,test}/{input,target}``.

    Never writes to ``src``. Raises :class:`PrepareError` for an unknown name, an unrecognisable source layout,
    or a non-empty destination without ``overwrite``; count mismatches and missing counterparts are only
    reported. ``expected`` overrides the published pair counts per split (``None`` for a split: no comparison).
    """
    spec = DATASETS[resolve_name(name)]
    src, dst = Path(src), Path(dst)
    if not src.is_dir():
        raise PrepareError(f"{src}: no such folder; --src must be the folder the {spec.title} release is in")
    if dst.exists() and not dst.is_dir():
        raise PrepareError(f"{dst}: exists and is not a folder; choose another --dst")
    if os.path.realpath(src) == os.path.realpath(dst):
        raise PrepareError(f"{dst}: same folder as --src; choose a separate --dst (the source is never changed)")
    tree = _Tree(src, SEARCH_DEPTH, exclude=dst)
    plans = PLANNERS[spec.name](tree, spec) or _plan_paired(tree)
    if not plans:
        raise PrepareError(
            f"{src}: no {spec.title} layout found within {SEARCH_DEPTH} folder levels; expected {spec.layout}, "
            f"{PAIRED_LAYOUT}"
        )
    _check_destination(dst, [split for split in SPLITS if split in plans], overwrite)
    counts = {**spec.expected, **(expected or {})}
    placer = _Placer(copy)
    workers = workers or min(8, os.cpu_count() or 1)
    splits = {}
    for split in SPLITS:
        report = SplitReport(split, counts.get(split))
        plan = plans.get(split)
        if plan is not None:
            report.source = plan.source
            report.missing_target, report.missing_input = list(plan.missing_target), list(plan.missing_input)
            report.skipped = list(plan.skipped)
            _write_split(spec.name, plan, report, dst, placer, tree.rel, progress, workers)
        splits[split] = report
    return PrepareReport(spec.name, str(src), str(dst), splits, dict(placer.counts), placer.fallback)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``drsformer prepare``: NAME, --src, --dst, --copy, --overwrite, --no-progress."""
    names = ", ".join(f"{s.name} ({s.title})" for s in DATASETS.values())
    parser.add_argument("name", metavar="NAME", help=f"benchmark: {names}; case-insensitive")
    parser.add_argument("--src", required=True, metavar="RAW", help="folder holding the release as unpacked")
    parser.add_argument("--dst", metavar="DIR", help="output folder (default: datasets/NAME)")
    parser.add_argument("--copy", action="store_true", help="copy files instead of hard-linking them")
    parser.add_argument("--overwrite", action="store_true", help="replace entries in a non-empty destination")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    """Runs ``drsformer prepare`` and prints the report; returns 0 (count mismatches are reported, not fatal)."""
    dst = args.dst or os.path.join("datasets", resolve_name(args.name))
    report = prepare_dataset(
        args.name,
        args.src,
        dst,
        copy=args.copy,
        progress=not getattr(args, "no_progress", False),
        overwrite=args.overwrite,
    )
    print(report.format())
    return 0
