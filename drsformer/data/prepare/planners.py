"""One planner per release layout: where a split's files are, and which pairs to write from them.

A plan lists jobs (files to link as a pair, or DID-Data images to cut in half) plus what could not be paired.
:func:`plan_release` runs the benchmark's own layout first, then the already-paired ``input/`` + ``target/``
layout for any split still missing, and uses a folder given with ``--train-dir`` / ``--test-dir`` as is.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ...benchmarks import Benchmark
from ...errors import PrepareError
from ..io import Matching, list_images, match_files, name_list
from .discovery import SPLITS, SplitNames, Tree, assign

PAIRED_LAYOUT = "or already-paired train/input + train/target (and/or test/input + test/target)"


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
    """What to write for one split, and the problems already known before writing."""

    source: str  # the folders or list file read, relative to --src
    jobs: list[LinkPair | CutPair] = field(default_factory=list)
    missing_target: list[str] = field(default_factory=list)
    missing_input: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def _number(pattern: str) -> Callable[[str], int | None]:
    """Key function: the integer in the pattern's first group (case-insensitive full match), or None."""
    compiled = re.compile(pattern, re.IGNORECASE)

    def key(stem: str) -> int | None:
        match = compiled.fullmatch(stem)
        return int(match.group(1)) if match else None

    return key


def _from_matching(
    tree: Tree, matching: Matching, out_name: Callable[[Path], str], rainy: Path, clean: Path
) -> SplitPlan:
    """A plan linking each matched pair under ``out_name(rainy file)``, with the unmatched files named."""
    plan = SplitPlan(f"{tree.rel(rainy)} + {tree.rel(clean)}")
    plan.jobs = [LinkPair(out_name(r), r, c) for r, c in matching.pairs]
    plan.missing_target = [tree.rel(p) for p in matching.inputs_without_target]
    plan.missing_input = [tree.rel(p) for p in matching.targets_without_input]
    plan.skipped = [tree.rel(p) for p in matching.unfit]
    plan.skipped += [f"{tree.rel(b)} (same pairing key as {a.name}, which was used)" for a, b in matching.duplicates]
    return plan


def _same_name(path: Path) -> str:
    return path.name


class Layout:
    """How one kind of release stores a split. Subclasses say what a split folder holds and how to pair it."""

    strict = True  # the content does not say the split, so folder names must (see discovery.assign)

    def holds(self, split: str) -> str:
        """What a split's folder holds, for messages."""
        raise NotImplementedError

    def fits(self, tree: Tree, folder: Path, split: str) -> bool:
        """True when ``folder`` holds this layout's files for ``split``."""
        raise NotImplementedError

    def plan(self, tree: Tree, folders: list[Path], split: str) -> SplitPlan:
        """The jobs for ``split`` from the folders :meth:`find` returned (or one override folder)."""
        raise NotImplementedError

    def find(self, tree: Tree, names: SplitNames, splits: list[str]) -> tuple[dict[str, list[Path]], list[str]]:
        """The folders of each wanted split found under the tree's root, and notes on folders not used."""
        candidates = [folder for folder in tree.folders() if self.fits(tree, folder, splits[0])]
        chosen, notes = assign(tree, candidates, names, self.holds(splits[0]), splits, self.strict)
        return {split: [folder] for split, folder in chosen.items()}, notes


class Rain200(Layout):
    """``rain/X2/norain-{i}x2.png`` (or directly in ``rain/``) and ``norain/norain-{i}.png``; output ``{i}.png``."""

    def holds(self, split: str) -> str:
        return "rain/ and norain/"

    def fits(self, tree: Tree, folder: Path, split: str) -> bool:
        return tree.child(folder, "rain") is not None and tree.child(folder, "norain") is not None

    def plan(self, tree: Tree, folders: list[Path], split: str) -> SplitPlan:
        (folder,) = folders
        rain, norain = tree.child(folder, "rain"), tree.child(folder, "norain")
        assert rain is not None and norain is not None  # the folder fits()
        x2 = tree.child(rain, "X2") or rain  # rain/X2/ or rain/ itself
        rainy_key, clean_key = _number(r"(?:no)?rain-0*(\d+)(?:x2)?"), _number(r"norain-0*(\d+)")
        matching = match_files(list_images(x2), list_images(norain), rainy_key, clean_key)
        return _from_matching(tree, matching, lambda p: f"{rainy_key(p.stem)}{p.suffix.lower()}", x2, norain)


class DDN(Layout):
    """``rain/{i}_{j}.jpg`` + ``norain/{i}.jpg`` (or ``rainy_image/`` + ``ground_truth/``); 14 rainy per clean."""

    RAINY, CLEAN = ("rainy_image", "rain"), ("ground_truth", "norain")

    def holds(self, split: str) -> str:
        return "rain/ and norain/ (or rainy_image/ and ground_truth/)"

    def fits(self, tree: Tree, folder: Path, split: str) -> bool:
        return tree.child(folder, *self.RAINY) is not None and tree.child(folder, *self.CLEAN) is not None

    def plan(self, tree: Tree, folders: list[Path], split: str) -> SplitPlan:
        (folder,) = folders
        rainy, clean = tree.child(folder, *self.RAINY), tree.child(folder, *self.CLEAN)
        assert rainy is not None and clean is not None  # the folder fits()
        matching = match_files(
            list_images(rainy), list_images(clean), _number(r"0*(\d+)_\d+"), _number(r"0*(\d+)"), shared_targets=True
        )
        # Each rainy image keeps its name; its clean image is linked under each of those names.
        return _from_matching(tree, matching, _same_name, rainy, clean)


class DID(Layout):
    """Side-by-side images (rainy left, clean right): ``Rain_Heavy/train2018new/{i}.jpg`` ... and a test folder."""

    strict = False  # any image folder is a candidate for the test split; most are not

    def __init__(self, bench: Benchmark) -> None:
        self.level_names = bench.train_dirs  # Rain_Heavy, Rain_Medium, Rain_Light
        self.levels = tuple(name.lower() for name in bench.train_dirs)

    def holds(self, split: str) -> str:
        return f"{', '.join(n + '/' for n in self.level_names)} or side-by-side images"

    def fits(self, tree: Tree, folder: Path, split: str) -> bool:
        listing = tree.listing(folder)
        return folder.name.lower() in self.levels or any(lv in listing.kids for lv in self.levels) or listing.has_images

    def _image_folders(self, tree: Tree, folder: Path) -> list[tuple[Path, str]]:
        """(folder of images, output name prefix): a rain level, the levels inside ``folder``, or ``folder``."""
        level = folder.name.lower()
        if level in self.levels:
            return [(tree.child(folder, "train2018new") or folder, level.split("_")[-1] + "_")]
        kids = tree.listing(folder).kids
        inside = sorted(level for level in self.levels if level in kids)
        if inside:
            return [pair for level in inside for pair in self._image_folders(tree, kids[level])]
        return [(folder, "")]

    def plan(self, tree: Tree, folders: list[Path], split: str) -> SplitPlan:
        places = [pair for folder in folders for pair in self._image_folders(tree, folder)]
        plan = SplitPlan(" + ".join(tree.rel(images) for images, _ in places))
        for images, prefix in places:
            plan.jobs += [CutPair(f"{prefix}{path.stem}.png", path) for path in list_images(images)]
        return plan

    def find(self, tree: Tree, names: SplitNames, splits: list[str]) -> tuple[dict[str, list[Path]], list[str]]:
        found: dict[str, list[Path]] = {}
        notes: list[str] = []
        if "train" in splits:  # each rain level's own folder, wherever it is
            levels: dict[str, list[Path]] = {}
            for folder in tree.folders():
                if folder.name.lower() in self.levels and not names.is_foreign(tree.below(folder)):
                    levels.setdefault(folder.name.lower(), []).append(folder)
            for level, folders in levels.items():
                if len(folders) > 1:
                    listed = name_list([tree.rel(f) for f in folders])
                    raise PrepareError(
                        f"{tree.root}: several {level} folders: {listed}; point --src at one DID-Data release, or "
                        "pass --train-dir"
                    )
            if levels:
                found["train"] = [levels[level][0] for level in sorted(levels)]
        if "test" in splits:
            candidates = [f for f in tree.folders() if tree.listing(f).has_images]
            chosen, notes = assign(tree, candidates, names, "side-by-side images", ["test"], self.strict)
            found.update({split: [folder] for split, folder in chosen.items()})
        return found, notes


class SPA(Layout):
    """Training pairs listed in ``real_world.txt``; test pairs ``real_test_1000/rain/{k}.png`` + ``gt/{k}gt.png``."""

    strict = False  # only folders named as test are read; the list file says training by itself

    def __init__(self, bench: Benchmark) -> None:
        self.lists = tuple(name for name in bench.train_dirs if name.lower().endswith(".txt"))  # real_world.txt

    def holds(self, split: str) -> str:
        return " or ".join(self.lists) if split == "train" else "rain/ and gt/"

    def _list_in(self, path: Path) -> Path | None:
        if path.is_file():
            return path
        return next((path / name for name in self.lists if (path / name).is_file()), None)

    def _found_list(self, path: Path) -> Path:
        """:meth:`_list_in` of a folder that fits() the training split, which has one."""
        found = self._list_in(path)
        assert found is not None
        return found

    def fits(self, tree: Tree, folder: Path, split: str) -> bool:
        if split == "train":
            return self._list_in(folder) is not None
        return tree.child(folder, "rain") is not None and tree.child(folder, "gt") is not None

    def plan(self, tree: Tree, folders: list[Path], split: str) -> SplitPlan:
        (folder,) = folders
        if split == "train":
            return _plan_list(tree, self._found_list(folder))
        rain, gt = tree.child(folder, "rain"), tree.child(folder, "gt")
        assert rain is not None and gt is not None  # the folder fits()
        matching = match_files(list_images(rain), list_images(gt), _number(r"(\d+)"), _number(r"(\d+)gt"))
        return _from_matching(tree, matching, _same_name, rain, gt)

    def find(self, tree: Tree, names: SplitNames, splits: list[str]) -> tuple[dict[str, list[Path]], list[str]]:
        found: dict[str, list[Path]] = {}
        notes: list[str] = []
        if "train" in splits:
            holders = [f for f in tree.folders() if self.fits(tree, f, "train") and not names.is_foreign(tree.below(f))]
            if len(holders) > 1:
                listed = name_list([tree.rel(self._found_list(f)) for f in holders])
                raise PrepareError(
                    f"{tree.root}: several training lists: {listed}; point --src at one SPA-Data release, or pass "
                    "--train-dir"
                )
            if holders:
                found["train"] = holders
        if "test" in splits:
            candidates = [f for f in tree.folders() if self.fits(tree, f, "test")]
            chosen, notes = assign(tree, candidates, names, self.holds("test"), ["test"], self.strict)
            found.update({split: [folder] for split, folder in chosen.items()})
        return found, notes


def _list_path(folder: Path, text: str) -> Path:
    """A path from a list file, relative to the list's folder even when written as /a/b or ./a/b."""
    text = text.replace("\\", "/")
    while text.startswith(("/", "./")):
        text = text[1:] if text.startswith("/") else text[2:]
    return folder / text


def _plan_list(tree: Tree, list_file: Path) -> SplitPlan:
    """Pairs from a list file, one 'rainy clean' per line. Missing files are found when linking."""
    plan = SplitPlan(tree.rel(list_file))
    pairs = []
    with open(list_file, encoding="utf-8", errors="replace") as lines:
        for number, line in enumerate(lines, 1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != 2:
                plan.skipped.append(
                    f"{tree.rel(list_file)} line {number}: expected 'rainy clean', got {line.strip()!r}"
                )
                continue
            pairs.append((_list_path(list_file.parent, fields[0]), _list_path(list_file.parent, fields[1])))
    # Rainy file names are unique in the release (video_frame_x_y); fall back to the flattened path if not.
    unique = len({rainy.name for rainy, _ in pairs}) == len(pairs)
    names: set[str] = set()
    for rainy, clean in pairs:
        name = rainy.name if unique else rainy.relative_to(list_file.parent).as_posix().replace("/", "_")
        if name in names:  # the same rainy image listed twice
            plan.skipped.append(f"{tree.rel(rainy)} (listed more than once)")
            continue
        names.add(name)
        plan.jobs.append(LinkPair(name, rainy, clean))
    return plan


class Paired(Layout):
    """Already-paired ``input/`` and ``target/`` folders with matching file names; names kept."""

    def holds(self, split: str) -> str:
        return "input/ and target/"

    def fits(self, tree: Tree, folder: Path, split: str) -> bool:
        return tree.child(folder, "input") is not None and tree.child(folder, "target") is not None

    def plan(self, tree: Tree, folders: list[Path], split: str) -> SplitPlan:
        (folder,) = folders
        rainy, clean = tree.child(folder, "input"), tree.child(folder, "target")
        assert rainy is not None and clean is not None  # the folder fits()
        matching = match_files(list_images(rainy), list_images(clean))
        return _from_matching(tree, matching, _same_name, rainy, clean)


def layout_for(bench: Benchmark) -> Layout | None:
    """The release layout of ``bench``, or None for a benchmark read only in the already-paired layout."""
    layouts: dict[str, Callable[[], Layout]] = {
        "Rain200L": Rain200,
        "Rain200H": Rain200,
        "DID": lambda: DID(bench),
        "DDN": DDN,
        "SPA": lambda: SPA(bench),
    }
    make = layouts.get(bench.name)
    return make() if make is not None else None


def _plan_override(tree: Tree, layout: Layout | None, bench: Benchmark, split: str, folder: Path) -> SplitPlan:
    """The plan for a folder given with --train-dir / --test-dir: the release layout, else input/ + target/."""
    option = f"--{split}-dir"
    if not folder.exists():
        raise PrepareError(
            f"{folder}: no such folder; {option} must be the folder holding the {bench.title} {split} split"
        )
    for candidate in (layout, Paired()):
        if candidate is not None and candidate.fits(tree, folder, split):
            return candidate.plan(tree, [folder], split)
    wanted = f"{layout.holds(split)} nor " if layout is not None else ""
    raise PrepareError(
        f"{folder}: holds neither {wanted}input/ and target/; point {option} at the {bench.title} {split} folder"
    )


def plan_release(tree: Tree, bench: Benchmark, overrides: dict[str, Path]) -> tuple[dict[str, SplitPlan], list[str]]:
    """Plans for the splits found (override folders as given, the rest searched), and notes on folders not used.

    Raises :class:`PrepareError` when folders compete for one split or none of them says its split.
    """
    layout = layout_for(bench)
    plans = {split: _plan_override(tree, layout, bench, split, folder) for split, folder in overrides.items()}
    notes: list[str] = []
    for candidate, names in ((layout, SplitNames.of(bench)), (Paired(), SplitNames.of(bench, generic=True))):
        wanted = [split for split in SPLITS if split not in plans]
        if candidate is None or not wanted:
            continue
        found, more = candidate.find(tree, names, wanted)
        notes += more
        plans.update({split: candidate.plan(tree, folders, split) for split, folders in found.items()})
    return {split: plans[split] for split in SPLITS if split in plans}, notes
