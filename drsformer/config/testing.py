"""Test options: what a test options file (``options/test/*.yml``) may hold, and the plan it makes with the
command line: which sets, in which folders, scored how, restored by which weights.

    name: Rain200H
    weights: pretrained/Rain200H.pth        # for every set (a set may name its own)
    datasets:
      Rain200H: datasets/Rain200H/test      # a folder, or {path, weights, params_key, protocol}

A set's protocol follows :func:`drsformer.benchmarks.resolve_protocol`: ``--protocol``, else the set's own
``protocol``, else the file's, else the paper's for the benchmark the set's name names. A set without ground
truth (no ``target/``) needs none.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import benchmarks
from ..benchmarks import Benchmark
from ..errors import ConfigError
from ..precision import PRECISIONS
from .load import load_options as load_yaml_options
from .schema import Field, Ignored, ListOf, Mapping, Section, check_section


def _optional(kind: str) -> Field:
    return Field(kind, None, nullable=True)


DATASET_SCHEMA: dict[str, Any] = {
    "path": Field("str"),
    "weights": _optional("str"),
    "params_key": _optional("str"),
    "protocol": _optional("str"),
}
SCHEMA: dict[str, Any] = {
    "name": _optional("str"),
    "weights": _optional("str"),
    "params_key": _optional("str"),  # default: what the file says its run validated, else params
    "protocol": _optional("str"),
    "out": Field("str", "results"),
    "json": _optional("str"),
    "device": _optional("str"),
    "precision": Field("str", "fp32", PRECISIONS),
    "self_ensemble": Field("bool", False),
    "tile": _optional("int"),
    "tile_overlap": Ignored("tiles are exact, so they need no overlap"),
    "batch": Ignored("exact tiling runs one tile at a time"),
    "report": Field("bool", False),
    "compare_to": _optional("str"),
    "datasets": Mapping(Section(DATASET_SCHEMA)),
    "models": ListOf(Section({"name": Field("str"), "weights": Field("str"), "params_key": _optional("str")})),
}
# Settings a command-line flag of the same name overrides: all but the name, the datasets and the models.
FLAG_SETTINGS = tuple(
    k for k, v in SCHEMA.items() if k not in ("name", "datasets", "models") and not isinstance(v, Ignored)
)


@dataclass
class TestSet:
    """One test set: where it is, how it is scored, which weights restore it."""

    name: str
    root: Path
    protocol: str | None  # None: not known yet, which is fine for a set without ground truth
    weights: str
    params_key: str | None = None  # None: the file's validated weights, else params
    benchmark: Benchmark | None = None
    origin: str = ""  # where the set was named (file key or flag), for messages
    pairs: list[tuple[Path, Path | None]] = field(default_factory=list)  # (input, target or None), once checked
    targetless: bool = False  # no target/: scored with the no-reference metrics
    model: str | None = None  # the ``models`` entry that restores it, in a file that compares several

    __test__ = False  # not a pytest test class, whatever its name


def load_options(path: str | os.PathLike) -> dict[str, Any]:
    """A test options file (``base:`` overlays allowed), every key checked and defaults filled; errors name the
    file and the key. ``datasets.NAME`` may be a folder or a mapping with ``path``."""
    data = load_yaml_options(path)
    datasets = data.get("datasets")
    if isinstance(datasets, dict):
        data["datasets"] = {str(k): {"path": v} if isinstance(v, str) else v for k, v in datasets.items()}
    try:
        return check_section(SCHEMA, data)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None


def parse_data(text: str) -> tuple[str, str]:
    """``NAME=DIR`` from ``--data``; anything else is a :class:`ConfigError` showing the expected form."""
    name, sep, folder = text.partition("=")
    if not sep or not name.strip() or not folder.strip():
        raise ConfigError(
            f"--data {text!r}: expected NAME=DIR, e.g. --data Rain200H=datasets/Rain200H/test "
            "(DIR holds input/ and target/)"
        )
    return name.strip(), folder.strip()


def plan_sets(
    options_file: str | None, flags: dict[str, Any], data: list[str] | None = None
) -> tuple[list[TestSet], dict[str, Any]]:
    """The sets to run and the merged settings: the file's values (``options_file``, or none), overridden by the
    command-line ``flags`` that were given (None: not given); ``data`` are ``--data NAME=DIR`` entries."""
    source = load_options(options_file) if options_file else check_section(SCHEMA, {})
    where_file = f"{options_file}: " if options_file else ""
    settings = {k: v for k, v in source.items() if k != "datasets"}
    settings.update({key: flags[key] for key in FLAG_SETTINGS if flags.get(key) is not None})
    # Keyed by catalogue name, so --data DID=DIR replaces the folder of the file's DID entry (any spelling),
    # keeping its weights.
    entries: dict[str, dict[str, Any]] = {}
    given = [(name, dict(entry, origin=f"{where_file}datasets.{name}")) for name, entry in source["datasets"].items()]
    for text in data or []:
        name, folder = parse_data(text)
        given.append((name, {"path": folder, "origin": f"--data {text}"}))
    for name, entry in given:
        bench = benchmarks.find(name)
        key = bench.name if bench else name
        entries[key] = {**entries.get(key, {}), **entry}
    if not entries:
        raise ConfigError("no datasets to test: give -opt FILE or --data NAME=DIR (DIR holds input/ and target/)")
    models = source["models"]
    if models and flags.get("weights"):
        raise ConfigError(f"{where_file}models: --weights would replace every model's weights; leave it out")
    sets = []
    for name, entry in entries.items():
        bench = benchmarks.find(name)
        chosen = flags.get("protocol") or entry.get("protocol") or source.get("protocol")
        # An unknown name without a protocol is an error only for a set with ground truth (see evaluation.sets).
        protocol = (
            benchmarks.resolve_protocol(chosen, [name], "--protocol", entry["origin"]) if chosen or bench else None
        )
        for model in models or [None]:
            if model is not None:
                weights, params_key, label = model["weights"], model["params_key"], model["name"]
            else:
                weights = flags.get("weights") or entry.get("weights") or settings.get("weights")
                params_key = flags.get("params_key") or entry.get("params_key") or settings["params_key"]
                label = None
            if not weights:
                raise ConfigError(
                    f"{entry['origin']}: no weights; give --weights FILE, or weights: in the options file "
                    f"(for all datasets or under datasets.{name})"
                )
            test_set = TestSet(name, Path(entry["path"]), protocol, weights, params_key, bench, entry["origin"])
            test_set.model = label
            sets.append(test_set)
    return sets, settings
