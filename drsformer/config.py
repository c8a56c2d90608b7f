"""Training options: YAML files with overlays, ``--set`` overrides, and validation that names every bad key.

* ``load_options(path, overrides)`` reads a file with ``yaml.SafeLoader`` (plain data only). A file may start
  from others with ``base: other.yml`` (or a list, merged in order; paths relative to the file): mappings merge
  key by key, any other value (lists included) replaces. Then each ``a.b.c=VALUE`` override is applied, VALUE
  parsed the same way (``[1,1,1,1]``, ``2e3``, ``true``, ``~``).
* ``resolve_options(raw)`` checks every key against :data:`SCHEMA` (through the engine in
  :mod:`drsformer.schema`) and the registered classes a ``type:`` names, fills defaults (the paper's recipe),
  then checks ranges and combinations, and returns plain nested dicts. An unknown key or a wrong type is
  a :class:`~drsformer.errors.ConfigError` naming the key path, with the closest valid key when there is one.
  Keys of the authors' files that mean nothing here are accepted and reported once each by ``ignored``.
"""

from __future__ import annotations

import copy
import inspect
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .benchmarks import check_protocol
from .errors import ConfigError, MissingPathError
from .precision import PRECISIONS
from .registry import (
    ARCH_REGISTRY,
    DATASET_REGISTRY,
    LOSS_REGISTRY,
    METRIC_REGISTRY,
    OPTIMIZER_REGISTRY,
    SCHEDULER_REGISTRY,
    check_kwargs,
    suggest,
)
from .schema import REQUIRED, Field, Ignored, Mapping, Section, Typed, Validator, join, type_name

WEIGHTS_FORMATS = ("pth", "safetensors")  # logger.weights_format: how a run saves net_g_* (the suffix)


class _SafeLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` (plain data only) that also reads ``1e-4`` and ``2e3`` as numbers, as YAML 1.2 does;
    PyYAML's YAML 1.1 rules need ``1.0e-4`` and would give the string ``'1e-4'``."""


_SafeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def safe_load(text: str) -> Any:
    """``yaml.safe_load`` with YAML 1.2 exponent floats (see :class:`_SafeLoader`)."""
    return yaml.load(text, Loader=_SafeLoader)  # noqa: S506 (a SafeLoader subclass)


# ----------------------------------------------------------------------------------------------------------------
# Reading files and overrides


def read_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """The mapping in an options file; any file that does not parse is a :class:`ConfigError` naming it."""
    path = Path(path)
    if not path.is_file():
        raise MissingPathError(f"{path}: no such options file")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 text (byte {err.start}); options files are YAML text") from None
    except OSError as err:
        raise ConfigError(f"{path}: cannot read ({err.strerror or err})") from None
    try:
        data = safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"{path}:{where} not valid YAML ({problem})") from None
    except (ValueError, RecursionError) as err:  # a timestamp like 2023-13-45, or nesting too deep to parse
        raise ConfigError(f"{path}: not valid YAML ({type(err).__name__}: {str(err)[:120]})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of options at the top level, found {type(data).__name__}")
    return data


def merge(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    """``overlay`` on top of ``base``: mappings merge recursively, other values replace. Inputs are not changed."""
    out = copy.deepcopy(base)
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _load_with_bases(path: Path, chain: tuple[Path, ...]) -> dict[str, Any]:
    if path.resolve() in chain:
        raise ConfigError(f"{path}: 'base' files include each other ({' -> '.join(p.name for p in chain)})")
    data = read_yaml(path)
    bases = data.pop("base", None)
    if bases is None:
        return data
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise ConfigError(f"{path}: base: expected a file name or a list of file names, got {bases!r}")
    merged: dict[str, Any] = {}
    for name in bases:
        base = path.parent / name
        if not base.is_file():
            raise MissingPathError(f"{path}: base: {name}: no such options file ({base})")
        merged = merge(merged, _load_with_bases(base, (*chain, path.resolve())))
    return merge(merged, data)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b.c=VALUE`` -> (['a', 'b', 'c'], yaml.safe_load(VALUE))."""
    key, sep, value = text.partition("=")
    parts = key.strip().split(".")
    if not sep or not all(parts):
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE with a dotted key, e.g. train.total_iter=2e3")
    try:
        parsed = safe_load(value) if value.strip() else None
    except yaml.YAMLError as err:
        raise ConfigError(f"--set {text!r}: the value is not valid YAML ({str(err).splitlines()[0]})") from None
    return parts, parsed


def apply_override(options: dict[str, Any], parts: list[str], value: Any) -> None:
    node = options
    for depth, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            where = ".".join(parts[: depth + 1])
            raise ConfigError(f"--set {'.'.join(parts)}: {where} is {child!r}, not a section")
        node = child
    node[parts[-1]] = value


def load_options(path: str | os.PathLike, overrides: Iterable[str] = ()) -> dict[str, Any]:
    """The merged options of ``path`` (with its ``base`` files) and the ``KEY=VALUE`` ``overrides``."""
    options = _load_with_bases(Path(path), ())
    for text in overrides:
        apply_override(options, *parse_override(text))
    return options


def read_training_options(path: str | os.PathLike, overrides: Iterable[str] = ()) -> Resolved:
    """:func:`load_options` then :func:`resolve_options`; a key or value error also names the file."""
    raw = load_options(path, overrides)
    try:
        return resolve_options(raw)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None


# ----------------------------------------------------------------------------------------------------------------
# The training schema


@dataclass(frozen=True)
class DatasetSection:
    """A ``datasets.<phase>`` section: loader keys (:data:`TRAIN_LOADER_KEYS`, :data:`VAL_LOADER_KEYS`) plus the
    dataset class's own keys, checked against its arguments."""

    phase: str
    optional: bool = False

    def validate(self, validator: Validator, value: Any, present: bool, where: str) -> dict[str, Any] | None:
        if not present:
            if self.optional:
                return None
            raise ConfigError(f"{where}: missing required section")
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a dataset section, got {type_name(value)} {value!r}")
        loader_keys = TRAIN_LOADER_KEYS if self.phase == "train" else VAL_LOADER_KEYS
        dataset_type = value.get("type", "PairedImageDataset")
        target = DATASET_REGISTRY.get(dataset_type, where)
        given = {k: v for k, v in value.items() if k not in loader_keys and k not in ("type", "phase")}
        try:
            check_kwargs(target, given, where)
        except ConfigError as err:
            # Loader keys are valid too: say so in the suggestion.
            key = str(err).split(":")[0].rsplit(".", 1)[-1]
            if "unknown key" in str(err):
                valid = [*loader_keys, *[p for p in inspect.signature(target).parameters if p != "phase"]]
                raise ConfigError(f"{join(where, key)}: unknown key{suggest(key, valid)}") from None
            raise
        loader = validator.section(loader_keys, {k: v for k, v in value.items() if k in loader_keys}, where)
        return {"type": dataset_type, "phase": self.phase, **given, **loader}


def _f(kind: str, default: Any = REQUIRED, *choices: Any, nullable: bool = False) -> Field:
    return Field(kind, default, tuple(choices), nullable)


def _maybe(kind: str, default: Any = None) -> Field:
    return Field(kind, default, (), nullable=True)


# Loader keys of a training dataset section; every other key goes to the dataset class.
TRAIN_LOADER_KEYS: dict[str, Any] = {
    "use_shuffle": _f("bool", True),
    "num_worker_per_gpu": _f("int", 4),
    "batch_size_per_gpu": _maybe("int"),
    "mini_batch_sizes": _maybe("ints"),
    "iters": _maybe("ints"),
    "gt_sizes": _maybe("ints"),
    "pin_memory": _f("bool", True),
    "persistent_workers": _f("bool", True),
    "prefetch_factor": _f("int", 2),
    "dataset_enlarge_ratio": Ignored("epochs are not used: the sampler streams samples for total_iter iterations"),
    "prefetch_mode": Ignored("the DataLoader prefetches (prefetch_factor, pin_memory, persistent_workers)"),
}
VAL_LOADER_KEYS: dict[str, Any] = {
    "num_worker_per_gpu": _f("int", 1),
    "batch_size_per_gpu": Ignored("validation runs one whole image at a time"),
    "use_shuffle": Ignored("validation reads every image once, in order"),
}

SCHEMA: dict[str, Any] = {
    "name": _f("str"),
    "manual_seed": _f("int", 0),
    "model_type": Ignored("there is one model type: the DRSformer image-restoration loop"),
    "scale": Ignored("deraining keeps the image size"),
    "num_gpu": Ignored("the number of processes comes from torchrun (--nproc_per_node)"),
    "is_train": Ignored("set by the command (train or test)"),
    "dist": Ignored("set by the launcher (torchrun)"),
    "dist_params": Ignored("torchrun sets the rendezvous; the backend is NCCL on GPUs and gloo on CPUs"),
    "datasets": Section({"train": DatasetSection("train")}),
    "network_g": Typed(ARCH_REGISTRY, {"type": "DRSformer"}),
    "path": Section(
        {
            "pretrain_network_g": _maybe("str"),
            "strict_load_g": _f("bool", True),
            "param_key_g": _f("str", "params"),
            "resume_state": _maybe("str"),
            "experiments_root": _maybe("str"),
            "root": Ignored("the run folder is path.experiments_root"),
            "models": Ignored("models are saved under path.experiments_root/models"),
            "training_states": Ignored("states are saved under path.experiments_root/training_states"),
            "log": Ignored("logs are written to path.experiments_root"),
            "visualization": Ignored("validation images go to TensorBoard and path.experiments_root/visualization"),
        },
        optional=True,
    ),
    "train": Section(
        {
            "total_iter": _f("int"),
            "warmup_iter": _f("int", -1),
            "use_grad_clip": _f("bool", False),
            "grad_clip_norm": _maybe("float"),
            "scheduler": Typed(SCHEDULER_REGISTRY, runtime=("optimizer",), positional=1, optional=True),
            "optim_g": Typed(
                OPTIMIZER_REGISTRY, {"type": "AdamW", "lr": 3e-4, "weight_decay": 1e-4, "betas": [0.9, 0.999]}, 1
            ),
            "pixel_opt": Typed(LOSS_REGISTRY, {"type": "L1Loss", "loss_weight": 1.0, "reduction": "mean"}),
            "mixing_augs": Section(
                {"mixup": _f("bool", False), "mixup_beta": _f("float", 1.2), "use_identity": _f("bool", False)},
                optional=True,
            ),
            "precision": _f("str", "fp32", *PRECISIONS),
            "grad_accum_steps": _f("int", 1),
            "effective_batch_size": _maybe("int"),
            "compile": _f("bool", False),
            "channels_last": _f("bool", False),
            "activation_checkpointing": _f("bool", False),
            "ema_decay": _f("float", 0.0),
            "max_bad_steps": _f("int", 5),
            "max_skipped_steps": _f("int", 20),
            "max_rollbacks": _f("int", 3),
            "tf32": _f("bool", True),
            "deterministic": _f("bool", False),
            "time_budget": _maybe("float"),
            "optim_d": Ignored("there is no discriminator"),
        }
    ),
    "val": Section(
        {
            "val_freq": _f("int", 5000),
            "protocol": _maybe("str"),
            "save_img": _f("bool", False),
            "tile": _maybe("int"),
            "tile_overlap": Ignored("tiles are exact (drsformer.tiling), so they need no overlap"),
            "self_ensemble": _f("bool", False),
            "plateau_patience": _f("int", 5),
            "grid_images": _f("int", 4),
            "metrics": Mapping(
                Typed(METRIC_REGISTRY),
                {"psnr": {"type": "calculate_psnr"}, "ssim": {"type": "calculate_ssim"}},
            ),
            "window_size": Ignored("the model pads every image to a multiple of 8 itself"),
            "rgb2bgr": Ignored("images are read and written as RGB"),
            "use_image": Ignored("metrics are computed on the 8-bit images a PNG would store"),
            "max_minibatch": Ignored("validation runs one whole image at a time"),
        },
        optional=True,
    ),
    "logger": Section(
        {
            "print_freq": _f("int", 100),
            "save_checkpoint_freq": _f("int", 5000),
            "use_tb_logger": _f("bool", True),
            "keep_checkpoints": _f("int", 3),
            "weights_format": _f("str", "pth", *WEIGHTS_FORMATS),
            "wandb": Ignored("logs go to TensorBoard and log.jsonl"),
        },
        optional=True,
    ),
}


# ----------------------------------------------------------------------------------------------------------------
# Validation


@dataclass
class Resolved:
    """Validated options (plain nested dicts with defaults filled) and the ignored keys found."""

    options: dict[str, Any]
    ignored: list[tuple[str, str]] = field(default_factory=list)  # (key path, why)


def resolve_options(raw: dict[str, Any]) -> Resolved:
    """Validates ``raw`` (from :func:`load_options`) and fills the defaults."""
    validator = Validator()
    schema = dict(SCHEMA)
    datasets = raw.get("datasets") or {}
    if isinstance(datasets, dict):
        # Any number of validation sets: val, val_1, val_rain200h ... (BasicSR's convention).
        extra = {k: DatasetSection("val", optional=True) for k in datasets if str(k).startswith("val")}
        schema["datasets"] = Section({"train": DatasetSection("train"), **extra})
    options = validator.section(schema, raw, "")
    options["datasets"] = {k: v for k, v in options["datasets"].items() if v is not None}
    _check_combinations(options)
    train_data = options["datasets"]["train"]
    if train_data["mini_batch_sizes"] is not None and train_data["batch_size_per_gpu"] is not None:
        validator.ignored.append(
            (
                "datasets.train.batch_size_per_gpu",
                "mini_batch_sizes is the batch per process (the published loop loaded batch_size_per_gpu crops "
                "and kept mini_batch_sizes of them)",
            )
        )
    return Resolved(options, validator.ignored)


# Options that must be at least 1 (or 0), by key path.
AT_LEAST = {
    "train.total_iter": 1,
    "train.grad_accum_steps": 1,
    "train.max_bad_steps": 1,
    "train.max_skipped_steps": 1,
    "train.max_rollbacks": 0,
    "val.val_freq": 1,
    "val.plateau_patience": 1,
    "val.grid_images": 0,
    "logger.print_freq": 1,
    "logger.save_checkpoint_freq": 1,
    "logger.keep_checkpoints": 1,
}


def _check_combinations(options: dict[str, Any]) -> None:
    for key, low in AT_LEAST.items():
        section, name = key.split(".")
        if options[section][name] < low:
            raise ConfigError(f"{key}: must be at least {low}, got {options[section][name]}")
    train = options["train"]
    if train["grad_clip_norm"] is not None and train["grad_clip_norm"] <= 0:
        raise ConfigError(
            f"train.grad_clip_norm: must be positive (leave it unset for no clipping), got {train['grad_clip_norm']}"
        )
    if train["time_budget"] is not None and train["time_budget"] <= 0:
        raise ConfigError(f"train.time_budget: must be positive seconds, got {train['time_budget']}")
    val = options["val"]
    if val["tile"] is not None and val["tile"] != 0:
        from .inference import InferenceSettings  # the one check of inference settings

        InferenceSettings(train["precision"], val["tile"], val["self_ensemble"]).check("val.tile")
    if val["protocol"] is not None:
        check_protocol(val["protocol"], "val.protocol")
    if not 0 <= train["ema_decay"] < 1:
        raise ConfigError(f"train.ema_decay: must be in [0, 1) (0 turns EMA off), got {train['ema_decay']}")
    if train["effective_batch_size"] is not None and train["grad_accum_steps"] != 1:
        raise ConfigError(
            "train.effective_batch_size: sets the accumulation itself; remove train.grad_accum_steps, or this key"
        )
    data = options["datasets"]["train"]
    progressive = [k for k in ("mini_batch_sizes", "iters", "gt_sizes") if data[k] is not None]
    if progressive and len(progressive) != 3:
        missing = sorted({"mini_batch_sizes", "iters", "gt_sizes"} - set(progressive))
        raise ConfigError(f"datasets.train: progressive training needs {', '.join(missing)} as well")
    if not progressive and data["batch_size_per_gpu"] is None:
        raise ConfigError("datasets.train.batch_size_per_gpu: missing (or give mini_batch_sizes, iters, gt_sizes)")
    if not progressive and data.get("gt_size") is None:
        raise ConfigError("datasets.train.gt_size: missing required key (the crop size)")


def dump_options(options: dict[str, Any], path: str | os.PathLike) -> None:
    """Writes resolved options as YAML (readable by :func:`load_options`)."""
    from .files import write_bytes_atomic

    text = yaml.safe_dump(options, sort_keys=False, default_flow_style=None, width=120)
    write_bytes_atomic(path, text.encode("utf-8"))


def describe_differences(old: dict[str, Any], new: dict[str, Any], path: str = "") -> list[str]:
    """Dotted keys whose values differ between two resolved option trees."""
    out = []
    for key in sorted(set(old) | set(new), key=str):
        where = join(path, str(key))
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += describe_differences(a, b, where)
        elif a != b:
            out.append(where)
    return out


def parse_overrides(groups: Sequence[Sequence[str]] | None) -> list[str]:
    """Flattens repeated ``--set A=1 B=2`` groups from argparse (``action='append', nargs='+'``)."""
    return [item for group in groups or () for item in group]
