"""Finding a release's split folders under ``--src``: a bounded folder scan and whole-name matching.

A folder belongs to a split when a component of its path (itself first, then its parents up to and including
``--src``) is, as a whole and ignoring case, one of the names the benchmark catalogue lists for that split
(``Benchmark.train_dirs`` / ``test_dirs``). So ``rain_data_test_Heavy/`` is a test folder, while ``latest/`` or
``constraint/`` say nothing. Folders on a path naming another benchmark (``Rain200L/`` when preparing Rain200H)
are passed over.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ... import benchmarks
from ...benchmarks import Benchmark
from ...errors import PrepareError
from ..io import is_image_file, name_list

SPLITS = ("train", "test")
SEARCH_DEPTH = 4  # how many folder levels below --src are searched for the release's folders
GENERIC = {"train": ("train", "training"), "test": ("test", "testing")}  # split names any release may use

# Folders that hold images: listed but never searched inside (SPA-Data's real_world/ alone has ~600k files).
IMAGE_FOLDERS = frozenset(
    {"rain", "norain", "x2", "rainy_image", "ground_truth", "gt", "input", "target", "train2018new"}
    | {"real_world", "real_world_gt"}
)


@dataclass(frozen=True)
class Listing:
    """One folder's sub-folders (by lower-cased name) and whether it holds image files itself."""

    kids: dict[str, Path]
    has_images: bool


def scan(folder: Path, excluded: frozenset[str] = frozenset()) -> Listing:
    """Lists ``folder`` once; hidden entries and the real paths in ``excluded`` are left out."""
    kids: dict[str, Path] = {}
    has_images = False
    try:
        with os.scandir(folder) as entries:
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                if entry.is_dir():
                    if not excluded or os.path.realpath(entry.path) not in excluded:
                        kids.setdefault(entry.name.lower(), Path(entry.path))
                elif not has_images and is_image_file(entry.name) and entry.is_file():
                    has_images = True
    except OSError:  # unreadable or absent folder: nothing to find there
        pass
    return Listing(kids, has_images)


class Tree:
    """Folders under ``root`` down to ``depth`` levels, scanned on first use.

    Image folders (``IMAGE_FOLDERS``) are listed but not searched inside; the ``exclude`` paths (the destination,
    folders given with --train-dir/--test-dir) are left out with everything below them.
    """

    def __init__(self, root: Path, depth: int = SEARCH_DEPTH, exclude: tuple[Path, ...] = ()) -> None:
        self.root = root
        self.depth = depth
        self._abs_root = Path(os.path.abspath(root))
        self._excluded = frozenset(os.path.realpath(path) for path in exclude)
        self._listings: dict[Path, Listing] | None = None

    def _scan_all(self) -> dict[Path, Listing]:
        if self._listings is None:
            self._listings = {}
            level = [self.root]
            for current_depth in range(self.depth + 1):
                following = []
                for folder in level:
                    listing = scan(folder, self._excluded)
                    self._listings[folder] = listing
                    if current_depth < self.depth:
                        following += [kid for low, kid in listing.kids.items() if low not in IMAGE_FOLDERS]
                level = following
        return self._listings

    def folders(self) -> list[Path]:
        """Every searched folder, ``root`` included, sorted by path."""
        return sorted(self._scan_all())

    def listing(self, folder: Path) -> Listing:
        """The folder's listing: from the scan when it was searched, else read now (e.g. an override folder)."""
        cached = self._listings.get(folder) if self._listings is not None else None
        return cached if cached is not None else scan(folder)

    def child(self, folder: Path, *names: str) -> Path | None:
        """The first sub-folder of ``folder`` named like one of ``names`` (case-insensitive)."""
        kids = self.listing(folder).kids
        return next((kids[n.lower()] for n in names if n.lower() in kids), None)

    def lineage(self, folder: Path) -> list[str]:
        """Names from ``folder`` up to the root, innermost first, the root's own name last."""
        return self.below(folder)[::-1] + [self._abs_root.name]

    def below(self, folder: Path) -> list[str]:
        """The components of ``folder``'s path below the root, outermost first."""
        return list(folder.relative_to(self.root).parts)

    def rel(self, path: Path) -> str:
        """``path`` relative to the root for reports, or absolute when it lies outside the root."""
        absolute = Path(os.path.abspath(path))
        try:
            inside = absolute.relative_to(self._abs_root)
        except ValueError:
            return absolute.as_posix()
        return inside.as_posix() if inside.parts else "."


@dataclass(frozen=True)
class SplitNames:
    """Which whole folder names say train or test for one benchmark, and which belong to the others."""

    benchmark: Benchmark
    names: dict[str, tuple[str, ...]]  # split -> accepted names, as the catalogue spells them
    foreign: frozenset[str]  # lower-cased names that only other benchmarks use

    @classmethod
    def of(cls, bench: Benchmark, generic: bool = False) -> SplitNames:
        """The release's own split names; with ``generic``, also train/training/test/testing."""
        names = {"train": bench.train_dirs, "test": bench.test_dirs}
        if generic:
            names = {split: tuple(dict.fromkeys(own + GENERIC[split])) for split, own in names.items()}
        own = {n.lower() for n in bench.train_dirs + bench.test_dirs}
        common = {n for split in SPLITS for n in GENERIC[split]}
        others = {
            n.lower()
            for b in benchmarks.BENCHMARKS.values()
            if b.name != bench.name
            for n in b.train_dirs + b.test_dirs
        }
        return cls(bench, names, frozenset(others - own - common))

    def split_of(self, lineage: list[str]) -> tuple[str, tuple[int, bool]] | None:
        """(split, rank) from the innermost component that is a split name; a lower rank says it more directly.

        The rank is (how many levels above the folder that name is, whether the name is a generic one).
        """
        for distance, part in enumerate(lineage):
            low = part.lower()
            for split, names in self.names.items():
                if low in (n.lower() for n in names):
                    return split, (distance, low in GENERIC[split])
        return None

    def is_foreign(self, parts: list[str]) -> bool:
        """True when a path component names another benchmark or one of its own folders."""
        for part in parts:
            found = benchmarks.find(part)
            if part.lower() in self.foreign or (found is not None and found.name != self.benchmark.name):
                return True
        return False

    def describe(self) -> str:
        """``train: a, b; test: c, d`` for messages."""
        return "; ".join(f"{split}: {', '.join(names)}" for split, names in self.names.items())


def assign(
    tree: Tree,
    candidates: list[Path],
    names: SplitNames,
    what: str,
    splits: tuple[str, ...] | list[str],
    strict: bool,
) -> tuple[dict[str, Path], list[str]]:
    """Picks one candidate folder per wanted split from the folder names on its path.

    Returns the chosen folders and notes on candidates not used. Among several candidates for one split, the one
    whose own name (rather than a parent's) says the split wins, then a release-specific name over a generic one;
    a tie is an error. With ``strict`` (layouts whose content does not say the split), candidates none of which
    names a split are an error too.
    """
    by_split: dict[str, list[tuple[tuple[int, bool], Path]]] = {split: [] for split in SPLITS}
    unnamed: list[Path] = []
    for folder in candidates:
        if names.is_foreign(tree.below(folder)):
            continue
        hit = names.split_of(tree.lineage(folder))
        if hit is None:
            unnamed.append(folder)
        else:
            by_split[hit[0]].append((hit[1], folder))
    if unnamed and strict and not any(by_split.values()):
        raise PrepareError(
            f"{tree.root}: found {what} in {name_list([tree.rel(f) for f in unnamed])} but cannot tell train from "
            f"test (no folder name on the way up is one of {names.describe()}); rename the folders or pass "
            "--train-dir / --test-dir"
        )
    chosen: dict[str, Path] = {}
    notes = [f"{tree.rel(f)}: holds {what} but no folder name on its path says train or test" for f in unnamed]
    for split in splits:
        found = sorted(by_split[split], key=lambda hit: hit[0])
        if not found:
            continue
        best = [folder for rank, folder in found if rank == found[0][0]]
        if len(best) > 1:
            listed = name_list([tree.rel(folder) for _, folder in found])
            raise PrepareError(
                f"{tree.root}: several {split} folders holding {what}: {listed}; point --src at one release, "
                f"or pass --{split}-dir to pick one"
            )
        chosen[split] = best[0]
        notes += [
            f"{tree.rel(folder)}: passed over for {tree.rel(best[0])}, whose name says {split} more directly"
            for _, folder in found[1:]
        ]
    return chosen, notes
