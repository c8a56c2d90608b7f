"""A test run (what ``drsformer test`` does with its plan): check every set and checkpoint before any image runs,
restore and score each set with its weights, write the scores (and the HTML report when asked), print the table.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..archs import architecture_name
from ..config.testing import TestSet
from ..data.io import name_list
from ..devices import resolve_device
from ..errors import MissingPathError
from ..files import write_bytes_atomic
from ..inference import InferenceSettings
from . import report
from .restoring import restore_set
from .scores import SetScores
from .sets import check_folders
from .tables import format_table, models_table, report_dict


@dataclass
class TestRun:
    """What a test run needs, in typed values."""

    sets: list[TestSet]
    settings: InferenceSettings
    device: torch.device
    out: Path
    json: Path | None = None
    report: bool = False
    compare_to: Path | None = None
    weights: str | None = None  # the one given for every set, for the JSON
    progress: bool = True

    __test__ = False  # not a pytest test class, whatever its name

    @classmethod
    def from_settings(cls, sets: list[TestSet], settings: dict[str, Any], progress: bool = True) -> TestRun:
        """From the merged settings of :func:`drsformer.config.testing.plan_sets`; errors name the key."""
        inference = InferenceSettings(settings["precision"], settings["tile"] or None, settings["self_ensemble"])
        return cls(
            sets,
            inference.check(),
            resolve_device(settings.get("device"), "device"),
            Path(settings["out"]),
            Path(settings["json"]) if settings.get("json") else None,
            bool(settings["report"]),
            Path(settings["compare_to"]) if settings.get("compare_to") else None,
            settings.get("weights"),
            progress,
        )


def load_models(sets: list[TestSet]) -> dict[tuple[str, str | None], nn.Module]:
    """Every distinct (weights, params_key), loaded on the CPU in eval mode; errors name the file."""
    from ..archs.checkpoint import load_model

    for test_set in sets:  # all missing files are reported before the (slow) loading starts
        if not os.path.isfile(test_set.weights):
            raise MissingPathError(f"{test_set.weights}: no such checkpoint (weights for dataset {test_set.name})")
    models: dict[tuple[str, str | None], nn.Module] = {}
    for test_set in sets:
        key = (test_set.weights, test_set.params_key)
        if key not in models:
            model, note = load_model(test_set.weights, test_set.params_key)
            models[key] = model.eval()
            if note:
                print(f"{test_set.weights}: {note}", file=sys.stderr)
    return models


def _describe(test_set: TestSet, model: nn.Module) -> str:
    variant = architecture_name(getattr(model, "config", {})) if hasattr(model, "config") else type(model).__name__
    what = (
        f"{len(test_set.pairs)} images in {test_set.root} (no target/: NIQE and BRISQUE of input and output)"
        if test_set.targetless
        else f"{len(test_set.pairs)} pairs in {test_set.root}, {test_set.protocol} protocol"
    )
    label = f"{test_set.model}: " if test_set.model else ""
    return f"{label}{test_set.name}: {what}, weights {test_set.weights} ({variant})"


def run_tests(run: TestRun) -> int:
    """Runs every set; prints the table (and writes the JSON). Returns 1 when an image could not be processed."""
    for test_set in run.sets:  # every folder and pairing first, then every checkpoint: fail before any image runs
        check_folders(test_set)
    if run.compare_to is not None:
        report.check_other_run(run.compare_to, run.out, [s.name for s in run.sets])
    models = load_models(run.sets)
    print(f"device {run.device}, {run.settings.describe()}; results in {run.out}/", file=sys.stderr)
    results: list[SetScores] = []
    for test_set in run.sets:
        model = models[(test_set.weights, test_set.params_key)].to(run.device)
        print(_describe(test_set, model), file=sys.stderr)
        folder = run.out / test_set.model / test_set.name if test_set.model else run.out / test_set.name
        results.append(restore_set(test_set, model, folder, run.settings, run.device, run.progress))
        if test_set.model:
            results[-1].info["model"] = test_set.model
        model.to("cpu")  # free the GPU for the next set's weights
        entry = results[-1].to_dict()
        report.write_scores(folder, entry)  # what a later --compare-to reads
        if run.report or run.compare_to is not None:
            page = report.report_dataset(entry, test_set.pairs, folder, run.compare_to, run.progress)
            print(f"{test_set.name}: report {page}", file=sys.stderr)
    print(models_table(results) if any(s.model for s in run.sets) else format_table(results))
    if run.json is not None:
        payload = report_dict(results, run.weights, run.settings, str(run.device))
        write_bytes_atomic(run.json, json.dumps(payload, indent=2).encode())
        print(f"wrote {run.json}")
    failed = [f"{r.name}/{name}" for r in results for name, _ in r.failed]
    if failed:
        print(f"drsformer test: {len(failed)} image(s) could not be processed: {name_list(failed)}", file=sys.stderr)
        return 1
    return 0
