"""Per-image scores kept beside a run's restored images (``scores.json``), and reading another run's for
``drsformer test --compare-to DIR``.

DIR is the ``--out`` folder of another ``drsformer test`` run: ``DIR/<NAME>/`` holds its restored images,
``<stem>.png``, and the ``scores.json`` every run writes there. When that file exists and used the same protocol,
its per-image scores are taken as they are; otherwise the images in ``DIR/<NAME>/`` are scored against this
run's targets with this run's protocol.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...data.io import list_images, name_list
from ...errors import ConfigError, EvaluationError, MissingPathError
from ...files import write_bytes_atomic
from ..folders import score_pair

SCORES_FILE = "scores.json"


def write_scores(folder: Path, entry: dict[str, Any]) -> Path:
    """Writes one dataset's entry of the test report (means, settings, per-image scores) as
    ``<folder>/scores.json``, atomically; returns its path."""
    path = Path(folder) / SCORES_FILE
    write_bytes_atomic(path, json.dumps(entry, indent=1).encode())
    return path


def read_scores(path: Path) -> dict[str, Any]:
    """A ``scores.json`` written by :func:`write_scores`; anything else is an :class:`EvaluationError` naming it."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as err:
        raise EvaluationError(f"{path}: cannot read ({err.strerror or err})") from None
    except ValueError as err:
        raise EvaluationError(f"{path}: not valid JSON ({err}); delete it to score the images instead") from None
    images = data.get("images") if isinstance(data, dict) else None
    if (
        not isinstance(images, list)
        or not all(isinstance(i, dict) and isinstance(i.get("name"), str) for i in images)
        or not isinstance(data.get("protocol"), str)
    ):
        raise EvaluationError(
            f"{path}: not the scores of a drsformer test run (expected protocol and images: [{{name, ...}}]); "
            "delete it to score the images instead"
        )
    return data


@dataclass
class OtherRun:
    """Another run's results for one dataset: its folder, where its scores came from, its per-image scores."""

    folder: Path  # DIR/<NAME>, holding the other run's restored images
    source: str  # for the page: which file the scores came from, or how they were computed
    weights: str | None = None
    images: dict[str, dict[str, Any]] = field(default_factory=dict)  # restored file name -> scores or {"error"}


def check_other_run(root: Path, own_out: Path, names: Sequence[str]) -> None:
    """Checks before any image runs that ``root`` can be compared with for each dataset in ``names``;
    each problem is a one-line error naming the folder or file."""
    root = Path(root)
    if not root.is_dir():
        raise MissingPathError(
            f"--compare-to {root}: no such folder; give the --out folder of another drsformer test run"
        )
    if root.resolve() == Path(own_out).resolve():
        raise ConfigError(
            f"--compare-to {root}: is this run's own --out folder, whose images this run replaces; "
            "give another run's folder, or a different --out"
        )
    for name in names:
        folder = root / name
        if not folder.is_dir():
            present = sorted(p.name for p in root.iterdir() if p.is_dir())
            has = f"it holds {name_list(present)}" if present else "it holds no dataset folders"
            raise MissingPathError(f"{folder}: no such folder; --compare-to {root} has no results for {name} ({has})")
        if (folder / SCORES_FILE).is_file():
            read_scores(folder / SCORES_FILE)
        elif not list_images(folder):
            raise EvaluationError(f"{folder}: holds neither {SCORES_FILE} nor restored images to compare with")


def load_other_run(root: Path, name: str, protocol: str, pairs: Sequence[tuple[Path, Path | None]]) -> OtherRun:
    """The other run's per-image scores for the images of ``pairs`` (input, target): from its ``scores.json``
    when that used ``protocol``, else by scoring ``root/<name>/<stem>.png`` against the targets. An image it
    lacks or cannot read gets ``{"error": ...}``."""
    folder = Path(root) / name
    path = folder / SCORES_FILE
    scores = read_scores(path) if path.is_file() else None
    weights = scores.get("weights") if scores else None
    if scores is not None and scores["protocol"] == protocol:
        run = OtherRun(folder, f"{path}", weights if isinstance(weights, str) else None)
        run.images = {i["name"]: i for i in scores["images"]}
        for failed in scores.get("failed") or []:
            if isinstance(failed, dict) and isinstance(failed.get("name"), str):
                reason = failed.get("error", "did not run")
                run.images.setdefault(f"{Path(failed['name']).stem}.png", {"error": f"did not run: {reason}"})
    else:
        why = f"its {SCORES_FILE} used the {scores['protocol']} protocol" if scores else f"it has no {SCORES_FILE}"
        source = f"the images in {folder}, scored against this run's targets with the {protocol} protocol ({why})"
        run = OtherRun(folder, source, weights if isinstance(weights, str) else None)
        for input_path, target_path in pairs:
            restored = folder / f"{input_path.stem}.png"
            if target_path is None:
                run.images[restored.name] = {"error": f"no ground truth to score {restored} against"}
            elif not restored.is_file():
                run.images[restored.name] = {"error": f"{restored}: no such file"}
            else:
                try:
                    run.images[restored.name] = score_pair((restored, target_path), protocol)
                except EvaluationError as err:
                    run.images[restored.name] = {"error": str(err)}
    return run
