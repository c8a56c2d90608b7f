"""Training options: the schema (the paper's recipe as defaults) and validation that names every bad key.

``resolve_options(raw)`` checks every key of options read by :func:`drsformer.config.load.load_options` against
:data:`SCHEMA` (through the engine in :mod:`drsformer.config.schema`) and the registered classes a ``type:``
names, fills defaults, then checks ranges and combinations, and returns plain nested dicts. An unknown key or a
wrong type is a :class:`~drsformer.errors.ConfigError` naming the key path, with the closest valid key when there
is one. Keys of the authors' files that mean nothing here are accepted and reported once each by ``ignored``.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import yaml

from .. import (  # noqa: F401  (fill the registries whose names options use)
    archs,
    losses,
    metrics,
    optim,  # noqa: F401  (fills the optimizer and scheduler registries)
)
from .. import data as _dataset_classes  # noqa: F401  (fills the dataset registry)
from ..benchmarks import check_protocol
from ..errors import ConfigError
from ..precision import PRECISIONS
from ..registry import (
    ARCH_REGISTRY,
    DATASET_REGISTRY,
    LOSS_REGISTRY,
    METRIC_REGISTRY,
    OPTIMIZER_REGISTRY,
    SCHEDULER_REGISTRY,
    check_kwargs,
    suggest,
)
from .load import load_options
from .schema import REQUIRED, Field, Ignored, Mapping, Section, Typed, Validator, join, type_name

WEIGHTS_FORMATS = ("pth", "safetensors")  # logger.weights_format: how a run saves net_g_* (the suffix)


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
        from ..inference import InferenceSettings  # the one check of inference settings

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
    from ..files import write_bytes_atomic

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


def read_training_options(path: str | os.PathLike, overrides: Iterable[str] = ()) -> Resolved:
    """:func:`load_options` then :func:`resolve_options`; a key or value error also names the file."""
    raw = load_options(path, overrides)
    try:
        return resolve_options(raw)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None
