"""A run's training state: what it holds, saving it (weights in the published format, the state, retention,
the best weights), and putting one back for a resume or a rollback.

A state is saved only by the main process, only between steps and never while a bad streak is open (see
:mod:`drsformer.engine.guard`); the files are written atomically (:mod:`drsformer.files`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import describe_differences
from ..data.sampler import check_resume_position
from ..errors import CheckpointError
from . import checkpoint as ckpt
from . import distributed
from .distributed import Distributed
from .logger import RunLogger
from .step import EMA, Stepper


@dataclass
class Progress:
    """Counters that a training state carries besides the tensors."""

    iteration: int = 0
    lr_factor: float = 1.0  # halved by each rollback
    rollbacks: int = 0
    bad_steps_total: int = 0
    skipped_steps_total: int = 0  # fp16: steps the gradient scaler skipped
    best_psnr: float = -math.inf
    best_iter: int = 0
    val_history: list[float] = field(default_factory=list)
    plateau_warned_at: int = 0

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class Parts:
    """The objects a state is taken from and put back into."""

    model: nn.Module
    ema: EMA | None
    optimizer: torch.optim.Optimizer
    scheduler: Any
    stepper: Stepper
    sampler: Any  # ProgressiveBatchSampler (position of the data stream); None before the loader exists
    schedule: Any  # engine.data.Schedule


class StateKeeper:
    """Saves training states into ``run_dir`` and reads them back."""

    def __init__(self, run_dir: Path, options: dict[str, Any], dist: Distributed, logger: RunLogger) -> None:
        self.run_dir, self.options, self.dist, self.logger = run_dir, options, dist, logger
        self.last_saved = -1

    # -- saving ----------------------------------------------------------------------------------------------
    def gather(self, parts: Parts, progress: Progress) -> dict[str, Any]:
        micro = parts.schedule.micro_steps_before(progress.iteration)
        return {
            "iteration": progress.iteration,
            "epoch": parts.sampler.epoch_at(micro),
            "sampler": parts.sampler.position(micro),
            "params": ckpt.cpu_state(parts.model.state_dict()),
            "params_ema": ckpt.cpu_state(parts.ema.module.state_dict()) if parts.ema else None,
            "optimizer": parts.optimizer.state_dict(),
            "scheduler": parts.scheduler.state_dict() if parts.scheduler else None,
            "scaler": parts.stepper.scaler.state_dict(),
            "rng": ckpt.rng_states(),
            "progress": progress.to_dict(),
            "options": self.options,
        }

    def save(self, parts: Parts, progress: Progress) -> None:
        """Weights (``net_g_<iter>`` and ``net_g_latest``, in ``logger.weights_format``) and the training state at
        the current iteration, then retention; every process waits for the main one."""
        if self.dist.is_main:
            ema = parts.ema.module.state_dict() if parts.ema else None
            architecture = getattr(parts.model, "config", None)
            weights = ckpt.save_weights(self.run_dir / "models", progress.iteration, parts.model.state_dict(), ema,
                                        self.weights_format, architecture)  # fmt: skip
            ckpt.save_state(self.run_dir / "training_states", progress.iteration, self.gather(parts, progress))
            ckpt.prune_run(self.run_dir, self.options["logger"]["keep_checkpoints"])
            self.logger.info(f"saved {weights.name} and training_states/{progress.iteration}.state")
        self.last_saved = progress.iteration
        distributed.barrier()

    def mark_best(self, iteration: int) -> None:
        """Points ``net_g_best`` at the weights saved at ``iteration``."""
        if self.dist.is_main:
            models = self.run_dir / "models"
            ckpt.save_best(models, ckpt.weights_path(models, iteration, self.weights_format))

    @property
    def weights_format(self) -> str:
        """``pth`` or ``safetensors`` (``logger.weights_format``)."""
        return self.options["logger"]["weights_format"]

    # -- reading back ------------------------------------------------------------------------------------------
    def newest(self, at_most: int | None = None) -> tuple[Path, dict[str, Any]] | None:
        """The newest readable state (up to iteration ``at_most``); unreadable ones are reported and kept.

        The main process decides, from its own disk, and every process gets that state: from its own disk when
        it holds the same file (a shared file system), else from the main process (nodes with local disks).
        """
        found = None
        if self.dist.is_main:
            found = ckpt.newest_readable_state(self.run_dir, at_most=at_most, warn=self.logger.warning)
        return self.share(found)

    def read(self, path: Path) -> tuple[Path, dict[str, Any]]:
        """The state in ``path`` (``--resume PATH``), read by the main process and shared as :meth:`newest` is."""
        found = (path, ckpt.load_state(path)) if self.dist.is_main else None
        shared = self.share(found)
        assert shared is not None
        return shared

    def share(self, found: tuple[Path, dict[str, Any]] | None) -> tuple[Path, dict[str, Any]] | None:
        """The main process's ``found`` on every process, read from its own copy of the file when it has one."""
        if not self.dist.enabled:
            return found
        digest = ckpt.file_digest(found[0]) if found else None
        decision = distributed.broadcast_object((str(found[0]), digest) if found else None)
        if decision is None:
            return None
        local, digest = Path(decision[0]), decision[1]
        have = self.dist.is_main or (local.is_file() and ckpt.file_digest(local) == digest)
        (someone_lacks,) = distributed.reduce_flags([not have], self.dist.device)
        if someone_lacks:
            data = distributed.broadcast_bytes(local.read_bytes() if self.dist.is_main else None, self.dist.device)
            if not have:
                return local, ckpt.load_state(local, data)
        return found if self.dist.is_main else (local, ckpt.load_state(local))

    def apply(self, state: dict[str, Any], path: Path, parts: Parts) -> Progress:
        """Puts ``state`` back into ``parts``; returns its progress. A state that does not fit this run's model,
        optimizer or number of processes is a :class:`CheckpointError` or ``ConfigError`` naming ``path``."""
        check_resume_position(state["sampler"], self.dist.world_size, str(path))
        saved_precision = state["options"].get("train", {}).get("precision", "fp32")
        precision = self.options["train"]["precision"]
        try:
            parts.model.load_state_dict(state["params"])
            if parts.ema is not None:
                if state.get("params_ema") is None:
                    raise CheckpointError(f"{path}: has no EMA weights but train.ema_decay is set")
                parts.ema.module.load_state_dict(state["params_ema"])
            parts.optimizer.load_state_dict(state["optimizer"])
            if parts.scheduler is not None and state["scheduler"] is not None:
                parts.scheduler.load_state_dict(state["scheduler"])
            if saved_precision == precision:
                parts.stepper.scaler.load_state_dict(state["scaler"])
            progress = Progress(**state["progress"])
        except (RuntimeError, ValueError, KeyError, TypeError) as err:
            raise CheckpointError(
                f"{path}: does not fit this run's model or optimizer ({str(err).splitlines()[0]}); "
                "was it made with other network_g or train.optim_g options?"
            ) from None
        if saved_precision != precision:
            parts.stepper.reset_scaler()
            self.logger.info(
                f"train.precision: {path.name} was saved with {saved_precision}, this run uses {precision}; "
                "the gradient scaler starts afresh"
            )
        ckpt.restore_rng_states(state["rng"])
        changed = [k for k in describe_differences(state["options"], self.options) if not k.startswith("path.")]
        if changed:
            self.logger.warning(f"resuming with options that differ from the saved run's: {', '.join(changed)}")
        self.last_saved = progress.iteration
        return progress


def load_pretrained(model: nn.Module, path_opt: dict[str, Any], logger: RunLogger) -> None:
    """``path.pretrain_network_g`` into ``model``: strictly (the checkpoint must describe the same network), or
    with ``strict_load_g: false`` only the tensors whose names and shapes match."""
    from ..archs import from_checkpoint
    from ..archs.checkpoint import extract_state_dict
    from ..archs.weight_files import read_checkpoint
    from ..errors import ConfigError

    path, key = path_opt["pretrain_network_g"], path_opt["param_key_g"]
    where = "path.pretrain_network_g"
    if path_opt["strict_load_g"]:
        loaded = from_checkpoint(path, key=key)
        ours = getattr(model, "config", None)
        if ours is not None and loaded.config != ours:
            differ = [k for k in ours if loaded.config.get(k) != ours[k]]
            shown = ", ".join(f"{k}: {loaded.config.get(k)!r} (network_g has {ours[k]!r})" for k in differ)
            raise ConfigError(
                f"{where}: {path} was trained as a different DRSformer ({shown}); set those network_g keys, "
                "or strict_load_g: false to load only the matching tensors"
            )
        model.load_state_dict(loaded.state_dict())
        return
    state = extract_state_dict(read_checkpoint(path), key=key, source=path)
    own = model.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    model.load_state_dict(usable, strict=False)
    logger.info(
        f"{where}: loaded {len(usable)} of {len(own)} tensors from {path} (strict_load_g: false; "
        f"{len(own) - len(usable)} keep their initial values)"
    )
