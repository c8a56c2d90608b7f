"""What ``drsformer prepare`` did, per split and in all, as a text table with notes or as a dict."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from ..io import name_list

SHOWN = 5  # names listed per problem in reports


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
    skipped: list[str] = field(default_factory=list)  # files whose names do not fit the layout, or repeat a key
    stale: list[str] = field(default_factory=list)  # entries in dst from before that this run did not replace

    @property
    def missing(self) -> int:
        """Images left without a counterpart, plus unreadable ones."""
        return len(self.missing_target) + len(self.missing_input) + len(self.unreadable)

    @property
    def ok(self) -> bool:
        """Found, nothing missing, and the published count (when one is given) reached exactly."""
        count_ok = self.expected is None or self.written == self.expected
        return self.source is not None and count_ok and self.missing == 0

    @property
    def status(self) -> str:
        """``ok``, ``not found`` or ``CHECK``, as the report's table shows it."""
        return "ok" if self.ok else ("not found" if self.source is None else "CHECK")

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
        lines += [f"{self.split}: {len(names)} {what}: {name_list(names, SHOWN)}" for names, what in problems if names]
        if self.expected is not None and self.written != self.expected:
            lines.append(f"{self.split}: {self.written} pairs written, the published split has {self.expected}")
        return lines

    def to_dict(self) -> dict:
        """JSON-ready summary; each list of names is given as its count and first few names."""

        def listing(names: list[str]) -> dict:
            return {"count": len(names), "first": names[:SHOWN]}

        return {
            "split": self.split,
            "source": self.source,
            "written": self.written,
            "expected": self.expected,
            "missing": self.missing,
            "ok": self.ok,
            "status": self.status,
            "missing_target": listing(self.missing_target),
            "missing_input": listing(self.missing_input),
            "unreadable": listing(self.unreadable),
            "skipped": listing(self.skipped),
            "stale": listing(self.stale),
        }


def table(rows: Sequence[tuple[str, ...]], numeric: tuple[int, ...]) -> list[str]:
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
    placed: dict[str, int] = field(default_factory=dict)  # hard links / symbolic links / copied / PNG halves
    fallback: str | None = None  # why hard links were abandoned, if they were
    ignored: list[str] = field(default_factory=list)  # folders that fit the layout but were not used, and why

    @property
    def ok(self) -> bool:
        """True only when every split is ok (found, complete, and of the expected size)."""
        return all(report.ok for report in self.splits.values())

    def format(self) -> str:
        """A short table (dataset, split, pairs written, expected, missing, status) followed by notes."""
        rows = [("dataset", "split", "written", "expected", "missing", "status")]
        for report in self.splits.values():
            expected = "-" if report.expected is None else str(report.expected)
            rows.append((self.dataset, report.split, str(report.written), expected, str(report.missing), report.status))
        lines = table(rows, numeric=(2, 3, 4))
        placed = ", ".join(f"{n} {how}" for how, n in sorted(self.placed.items())) or "nothing"
        lines.append(f"{self.src} -> {self.dst}: files placed: {placed}")
        if self.fallback:
            lines.append(f"hard links failed ({self.fallback}); used symbolic links to absolute paths instead")
        for report in self.splits.values():
            lines += ["  " + note for note in report.notes()]
        lines += [f"  not used: {why}" for why in self.ignored]
        return "\n".join(lines)

    def to_dict(self) -> dict:
        """JSON-ready summary of the whole run."""
        return {
            "dataset": self.dataset,
            "src": self.src,
            "dst": self.dst,
            "ok": self.ok,
            "placed": dict(self.placed),
            "fallback": self.fallback,
            "ignored": list(self.ignored),
            "splits": {split: report.to_dict() for split, report in self.splits.items()},
        }
