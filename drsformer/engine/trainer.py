"""The training loop: build everything from resolved options, then step, accumulate, clip, EMA, guard,
validate, log and save until ``train.total_iter``.

Iteration ``i`` counts optimizer steps from 1. It uses the scheduler's value at step ``i - 1`` (the scheduler
is stepped before every iteration but the first, as the published loop does); ``warmup_iter`` scales the rate
linearly before that. A non-finite loss or gradient skips the step; ``train.max_bad_steps`` of them in a row
reload the newest training state with half the learning rate (at most ``train.max_rollbacks`` times).
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import signal
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from .. import benchmarks
from ..archs import from_checkpoint
from ..archs.checkpoint import extract_state_dict, read_checkpoint
from ..config import describe_differences, dump_options
from ..data.paired import SkippedFiles
from ..data.sampler import check_resume_position
from ..errors import CheckpointError, ConfigError, TrainingError
from ..inference import PRECISIONS, restore
from ..registry import ARCH_REGISTRY, LOSS_REGISTRY, METRIC_REGISTRY, OPTIMIZER_REGISTRY, SCHEDULER_REGISTRY
from . import checkpoint as ckpt
from . import distributed
from .data import (
    Schedule,
    build_dataset,
    build_schedule,
    check_crops_fit,
    mixup,
    mixup_seed,
    train_loader,
    validation_shard,
)
from .logger import RunLogger

DEFAULT_CLIP_NORM = 0.01  # the published loop clips at 0.01 when use_grad_clip is true
PLATEAU_DB = 0.01


def run_folder(options: dict[str, Any]) -> Path:
    root = options["path"]["experiments_root"]
    return Path(root) if root else Path("experiments") / options["name"]


# ----------------------------------------------------------------------------------------------------------------
# Pieces


class EMA:
    """Exponential moving average of the parameters (buffers copied): ``ema = decay * ema + (1 - decay) * p``."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.module = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        ema = list(self.module.parameters())
        live = [p.detach() for p in model.parameters()]
        torch._foreach_lerp_(ema, live, 1.0 - self.decay)
        for target, source in zip(self.module.buffers(), model.buffers(), strict=True):
            target.copy_(source)


@dataclass
class Progress:
    """Counters that a training state carries besides the tensors."""

    iteration: int = 0
    lr_factor: float = 1.0  # halved by each NaN rollback
    rollbacks: int = 0
    bad_steps_total: int = 0
    best_psnr: float = -math.inf
    best_iter: int = 0
    val_history: list[float] = field(default_factory=list)
    plateau_warned_at: int = 0

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class ValSet:
    name: str
    dataset: Any
    protocol: str
    indices: list[int]


class StopRequest:
    """Turns SIGINT/SIGTERM into a request honoured between iterations (a second SIGINT stops at once)."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopRequest:
        if threading_is_main():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, _frame: Any) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def threading_is_main() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


# ----------------------------------------------------------------------------------------------------------------
# The trainer


class Trainer:
    """One training run. ``run()`` trains to the end and returns the run folder."""

    def __init__(self, options: dict[str, Any], resume: str | None = None, device: str | None = None) -> None:
        self.options = options
        self.train_opt = options["train"]
        self.dist = distributed.init(device)
        self.device = self.dist.device
        self.run_dir = run_folder(options)
        self.seed = options["manual_seed"]
        self.progress = Progress()
        self.precision = self.train_opt["precision"]
        self._resume_path = self._find_resume(resume)
        self.skipped_files = SkippedFiles()
        self.ddp: DistributedDataParallel | None = None

    # -- set-up ---------------------------------------------------------------------------------------------------
    def _find_resume(self, resume: str | None) -> Path | str | None:
        resume = resume or self.options["path"]["resume_state"]
        if resume == "auto":
            return "auto"
        if resume:
            path = Path(resume)
            if not path.is_file():
                raise ConfigError(f"--resume {resume}: no such training state")
            return path
        existing = ckpt.newest_state(self.run_dir)
        if existing is not None:
            raise ConfigError(
                f"{self.run_dir} already holds training states (newest: {existing.name}); continue it with "
                "--resume auto, or start a new run under another name (--set name=...)"
            )
        return None

    def _read_resume_state(self, notes: list[tuple[str, str]]) -> dict[str, Any] | None:
        """The state to resume from; with ``auto``, the newest readable one (unreadable ones noted, kept)."""
        if self._resume_path == "auto":
            found = ckpt.newest_readable_state(
                self.run_dir, warn=lambda text: notes.append(("warning", text)), move_aside=self.dist.is_main
            )
            if found is None:
                self._resume_path = None
                notes.append(("info", f"--resume auto: no training state in {self.run_dir}, starting a new run"))
                return None
            self._resume_path, state = found
            return state
        return ckpt.load_state(self._resume_path) if self._resume_path is not None else None

    def build(self, progress_bar: bool = False) -> None:
        options, train = self.options, self.train_opt
        notes: list[tuple[str, str]] = []
        state = self._read_resume_state(notes)
        self.logger = RunLogger(
            self.run_dir,
            enabled=self.dist.is_main,
            use_tensorboard=options["logger"]["use_tb_logger"],
            total_iter=train["total_iter"],
            start_iter=state["iteration"] if state else 0,
            progress=progress_bar,
        )
        for level, text in notes:
            getattr(self.logger, level)(text)
        torch.manual_seed(self.seed)
        self.model: nn.Module = ARCH_REGISTRY.build(dict(options["network_g"]), where="network_g")
        if options["path"]["pretrain_network_g"]:
            self._load_pretrained()
        if train["activation_checkpointing"]:
            if not hasattr(self.model, "set_activation_checkpointing"):
                raise ConfigError("train.activation_checkpointing: this network does not support it")
            self.model.set_activation_checkpointing(True)
        memory_format = torch.channels_last if train["channels_last"] else torch.contiguous_format
        self.memory_format = memory_format
        self.model.to(self.device, memory_format=memory_format)
        self.ema = EMA(self.model, train["ema_decay"]) if train["ema_decay"] > 0 else None

        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = OPTIMIZER_REGISTRY.build(train["optim_g"], params, where="train.optim_g")
        for group in self.optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])
        scheduler_opt = train["scheduler"]
        self.scheduler = (
            SCHEDULER_REGISTRY.build(scheduler_opt, where="train.scheduler", optimizer=self.optimizer)
            if scheduler_opt
            else None
        )
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")
        self.loss_fn = LOSS_REGISTRY.build(train["pixel_opt"], where="train.pixel_opt").to(self.device)
        self.clip_norm = train["grad_clip_norm"] or (DEFAULT_CLIP_NORM if train["use_grad_clip"] else None)

        data = options["datasets"]["train"]
        self.schedule: Schedule = build_schedule(options, self.dist.world_size)
        self.train_set = build_dataset(data, "datasets.train")
        check_crops_fit(self.train_set, self.schedule, "datasets.train")
        self.val_sets = self._build_val_sets()
        self.metrics = {
            label: METRIC_REGISTRY.build(opt, where=f"val.metrics.{label}")
            for label, opt in options["val"]["metrics"].items()
        }

        if state is not None:
            self._apply_state(state, self._resume_path)
        self.net: nn.Module = self.model
        if self.dist.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.ddp = DistributedDataParallel(self.model, device_ids=ids)
            self.net = self.ddp
        if train["compile"]:
            self.net = torch.compile(self.net)

    def _load_pretrained(self) -> None:
        path_opt = self.options["path"]
        path, key = path_opt["pretrain_network_g"], path_opt["param_key_g"]
        where = "path.pretrain_network_g"
        if path_opt["strict_load_g"]:
            loaded = from_checkpoint(path, key=key)
            ours = getattr(self.model, "config", None)
            if ours is not None and loaded.config != ours:
                differ = [k for k in ours if loaded.config.get(k) != ours[k]]
                shown = ", ".join(f"{k}: {loaded.config.get(k)!r} (network_g has {ours[k]!r})" for k in differ)
                raise ConfigError(
                    f"{where}: {path} was trained as a different DRSformer ({shown}); set those network_g keys, "
                    "or strict_load_g: false to load only the matching tensors"
                )
            self.model.load_state_dict(loaded.state_dict())
        else:
            state = extract_state_dict(read_checkpoint(path), key=key, source=path)
            own = self.model.state_dict()
            usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
            self.model.load_state_dict(usable, strict=False)
            self.logger.info(
                f"{where}: loaded {len(usable)} of {len(own)} tensors from {path} (strict_load_g: false; "
                f"{len(own) - len(usable)} keep their initial values)"
            )

    def _build_val_sets(self) -> list[ValSet]:
        sets = []
        for key, section in self.options["datasets"].items():
            if key == "train":
                continue
            dataset = build_dataset(section, f"datasets.{key}")
            name = section.get("name") or key
            protocol = self.options["val"]["protocol"]
            if protocol is None:
                bench = benchmarks.find(str(name)) or benchmarks.find(Path(section["dataroot_gt"]).parent.parent.name)
                protocol = bench.protocol if bench else "restormer"
            if protocol not in benchmarks.PROTOCOLS:
                raise ConfigError(f"val.protocol: expected one of {', '.join(benchmarks.PROTOCOLS)}, got {protocol!r}")
            sets.append(ValSet(str(name), dataset, protocol, validation_shard(dataset, self.dist)))
        return sets

    # -- resume and save -------------------------------------------------------------------------------------------
    def _apply_state(self, state: dict[str, Any], path: Path) -> None:
        check_resume_position(state["sampler"], self.dist.world_size, str(path))
        try:
            self.model.load_state_dict(state["params"])
            if self.ema is not None:
                if state.get("params_ema") is None:
                    raise CheckpointError(f"{path}: has no EMA weights but train.ema_decay is set")
                self.ema.module.load_state_dict(state["params_ema"])
            self.optimizer.load_state_dict(state["optimizer"])
            if self.scheduler is not None and state["scheduler"] is not None:
                self.scheduler.load_state_dict(state["scheduler"])
            self.scaler.load_state_dict(state["scaler"])
            progress = Progress(**state["progress"])
        except (RuntimeError, ValueError, KeyError, TypeError) as err:
            raise CheckpointError(
                f"{path}: does not fit this run's model or optimizer ({str(err).splitlines()[0]}); "
                "was it made with other network_g or train.optim_g options?"
            ) from None
        ckpt.restore_rng_states(state["rng"])
        self.progress = progress
        changed = [k for k in describe_differences(state["options"], self.options) if not k.startswith("path.")]
        if changed:
            self.logger.warning(f"resuming with options that differ from the saved run's: {', '.join(changed)}")
        self.logger.info(f"resumed from {path} at iteration {self.progress.iteration}")

    def _state(self) -> dict[str, Any]:
        iteration = self.progress.iteration
        return {
            "iteration": iteration,
            "epoch": self.sampler.epoch_at(self.schedule.micro_steps_before(iteration)),
            "sampler": self.sampler.position(self.schedule.micro_steps_before(iteration)),
            "params": ckpt.cpu_state(self.model.state_dict()),
            "params_ema": ckpt.cpu_state(self.ema.module.state_dict()) if self.ema else None,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler else None,
            "scaler": self.scaler.state_dict(),
            "rng": ckpt.rng_states(),
            "progress": self.progress.to_dict(),
            "options": self.options,
        }

    def save(self) -> Path | None:
        """Weights and training state at the current iteration (main process), then retention."""
        path = None
        if self.dist.is_main:
            models = self.run_dir / "models"
            ema = self.ema.module.state_dict() if self.ema else None
            path = ckpt.save_weights(models, self.progress.iteration, self.model.state_dict(), ema)
            ckpt.save_state(self.run_dir / "training_states", self.progress.iteration, self._state())
            ckpt.prune_run(self.run_dir, self.options["logger"]["keep_checkpoints"])
        self._last_saved = self.progress.iteration
        distributed.barrier()
        return path

    # -- one optimizer step ---------------------------------------------------------------------------------------
    def _set_learning_rate(self, iteration: int) -> float:
        groups = self.optimizer.param_groups
        if self.scheduler is not None:
            if iteration > 1:
                for group, value in zip(groups, self.scheduler.get_last_lr(), strict=True):
                    group["lr"] = value  # undo the warm-up / rollback scaling before the scheduler steps
                with warnings.catch_warnings():  # it complains when the first steps were skipped as non-finite
                    warnings.simplefilter("ignore", UserWarning)
                    self.scheduler.step()
            values = list(self.scheduler.get_last_lr())
        else:
            values = [group["initial_lr"] for group in groups]
        warmup = self.train_opt["warmup_iter"]
        if 0 < iteration < warmup:
            values = [group["initial_lr"] * iteration / warmup for group in groups]
        for group, value in zip(groups, values, strict=True):
            group["lr"] = value * self.progress.lr_factor
        return groups[0]["lr"]

    def _autocast(self) -> contextlib.AbstractContextManager:
        dtype = PRECISIONS[self.precision]
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=dtype)

    def _next_batch(self) -> tuple[dict[str, Any], float]:
        start = time.perf_counter()
        batch = next(self.batches)
        return batch, time.perf_counter() - start

    def step(self, iteration: int) -> dict[str, Any]:
        """One optimizer iteration (``accum`` micro-batches). Returns loss, grad norm, counts and timings."""
        accum = self.schedule.accum_at(iteration - 1)
        micro_start = self.schedule.micro_steps_before(iteration - 1)
        mix = self.train_opt["mixing_augs"]
        self.optimizer.zero_grad(set_to_none=True)
        loss_sum = torch.zeros((), device=self.device)
        images, wait = 0, 0.0
        for k in range(accum):
            batch, waited = self._next_batch()
            wait += waited
            for name in self.skipped_files.update(batch):
                self.logger.warning(f"unreadable training pair replaced by another (skip_corrupt): {name}")
            lq = batch["lq"].to(self.device, non_blocking=True).contiguous(memory_format=self.memory_format)
            gt = batch["gt"].to(self.device, non_blocking=True).contiguous(memory_format=self.memory_format)
            if mix["mixup"]:
                seed = mixup_seed(self.seed, self.dist.rank, micro_start + k)
                lq, gt = mixup(lq, gt, seed, mix["mixup_beta"], mix["use_identity"])
            sync = k == accum - 1 or self.ddp is None
            with contextlib.nullcontext() if sync else self.ddp.no_sync():
                with self._autocast():
                    loss = self.loss_fn(self.net(lq), gt)
                self.scaler.scale(loss / accum).backward()
            loss_sum += loss.detach().float()
            images += lq.shape[0]
        loss_value = loss_sum / accum
        self.scaler.unscale_(self.optimizer)
        max_norm = self.clip_norm if self.clip_norm is not None else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)
        finite = bool(torch.isfinite(loss_value)) and (self.precision == "fp16" or bool(torch.isfinite(grad_norm)))
        bad = distributed.any_process(not finite, self.device)
        if bad:
            self.optimizer.zero_grad(set_to_none=True)
            if self.scaler.is_enabled():
                self.scaler.update()  # unscale_ recorded the overflow: the scale shrinks, nothing steps
        else:
            self.scaler.step(self.optimizer)
            self.scaler.update()
            if self.ema is not None:
                self.ema.update(self.model)
        return {
            "loss": float(loss_value),
            "grad_norm": float(grad_norm),
            "bad": bad,
            "images": images,
            "data_wait": wait,
        }

    # -- validation ------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def validate(self, iteration: int) -> dict[str, float]:
        model = self.ema.module if self.ema is not None else self.model
        was_training = model.training
        model.eval()
        val_opt = self.options["val"]
        results: dict[str, float] = {}
        for index, vset in enumerate(self.val_sets):
            sums = torch.zeros(len(self.metrics) + 1, dtype=torch.float64, device=self.device)
            grids = []
            for i in vset.indices:
                item = vset.dataset[i]
                lq = item["lq"][None].to(self.device)
                gt = item["gt"][None].to(self.device)
                restored = restore(
                    model,
                    lq,
                    precision=self.precision,
                    **self._inference_options(val_opt),
                )
                for j, fn in enumerate(self.metrics.values()):
                    sums[j] += fn(restored, gt, vset.protocol).sum().double()
                sums[-1] += 1
                if self.dist.is_main and len(grids) < val_opt["grid_images"]:
                    grids.append(torch.cat([lq, restored, gt]).clamp(0, 1).cpu())
                if val_opt["save_img"]:
                    self._save_val_image(vset.name, iteration, item["lq_path"], restored)
            distributed.all_reduce_sum(sums)
            count = max(1, int(sums[-1].item()))
            means = {label: float(sums[j] / count) for j, label in enumerate(self.metrics)}
            suffix = "" if index == 0 else f"_{vset.name}"
            results.update({f"{label}{suffix}": value for label, value in means.items()})
            self.logger.record("val", iteration, {"dataset": vset.name, "protocol": vset.protocol, **means})
            shown = ", ".join(f"{label} {value:.4f}" for label, value in means.items())
            self.logger.info(f"validation {vset.name} ({count} images, {vset.protocol}) at {iteration}: {shown}")
            self._log_grids(vset.name, grids, iteration)
        model.train(was_training)
        return results

    @staticmethod
    def _inference_options(val_opt: dict[str, Any]) -> dict[str, Any]:
        options: dict[str, Any] = {}
        if val_opt["tile"]:
            options.update(tile=val_opt["tile"], tile_overlap=val_opt["tile_overlap"])
        if val_opt["self_ensemble"]:
            options["self_ensemble"] = True
        return options

    def _save_val_image(self, name: str, iteration: int, lq_path: str, restored: torch.Tensor) -> None:
        from ..data.io import write_image

        image = (restored[0].permute(1, 2, 0).cpu().numpy() * 255).round().clip(0, 255).astype("uint8")
        write_image(self.run_dir / "visualization" / name / str(iteration) / (Path(lq_path).stem + ".png"), image)

    def _log_grids(self, name: str, grids: list[torch.Tensor], iteration: int) -> None:
        if not grids or not self.dist.is_main:
            return
        from torchvision.utils import make_grid

        for k, triple in enumerate(grids):  # input | output | target
            self.logger.images(f"val_{name}/{k}", make_grid(triple, nrow=3, padding=4, pad_value=1.0), iteration)

    def _check_plateau(self, psnr: float, iteration: int) -> None:
        history = self.progress.val_history
        history.append(psnr)
        patience = self.options["val"]["plateau_patience"]
        if len(history) <= patience or self.progress.plateau_warned_at >= len(history) - patience:
            return
        if max(history[-patience:]) < max(history[:-patience]) + PLATEAU_DB:
            self.progress.plateau_warned_at = len(history)
            self.logger.warning(
                f"validation PSNR has not improved for {patience} evaluations (now {psnr:.2f} dB, best "
                f"{self.progress.best_psnr:.2f} dB at {self.progress.best_iter}); a run stuck near the rainy "
                "input's PSNR (users of the published code report 13.08 dB with MEFC) usually needs a lower "
                "train.optim_g.lr or train.use_grad_clip, or its input/target folders are mispaired"
            )

    # -- the loop --------------------------------------------------------------------------------------------------
    def _start_data(self) -> None:
        self.sampler, self.batches = train_loader(
            self.train_set,
            self.schedule,
            self.options["datasets"]["train"],
            self.dist,
            self.seed,
            self.progress.iteration,
        )

    def _rollback(self, iteration: int, bad_in_row: int) -> None:
        found = ckpt.newest_readable_state(self.run_dir, warn=self.logger.warning, move_aside=self.dist.is_main)
        newest = found[0] if found else None
        what = f"{bad_in_row} steps in a row (iterations {iteration - bad_in_row + 1}..{iteration}) had a non-finite"
        if newest is None:
            raise TrainingError(
                f"{what} loss or gradient, before any checkpoint was saved; lower train.optim_g.lr, set "
                "train.use_grad_clip: true, or try train.precision: fp32/bf16"
            )
        if self.progress.rollbacks >= self.train_opt["max_rollbacks"]:
            raise TrainingError(
                f"{what} loss or gradient again after {self.progress.rollbacks} rollback(s) with halved learning "
                f"rates; stopping. The last good state is {newest}; lower train.optim_g.lr or check the data"
            )
        rollbacks, factor = self.progress.rollbacks + 1, self.progress.lr_factor * 0.5
        bad_total = self.progress.bad_steps_total
        distributed.barrier()
        self._apply_state(found[1], newest)
        self.progress.rollbacks, self.progress.lr_factor = rollbacks, factor
        self.progress.bad_steps_total = bad_total
        self.logger.warning(
            f"{what} loss or gradient; reloaded {newest.name} (iteration {self.progress.iteration}) and halved the "
            f"learning rate (factor {factor:g}, rollback {rollbacks} of at most {self.train_opt['max_rollbacks']})"
        )

    def run(self, progress_bar: bool = True) -> Path:
        try:
            self.build(progress_bar)
        except BaseException:
            distributed.shutdown()
            raise
        start = self.progress.iteration
        if self.dist.is_main:
            dump_options(self.options, self.run_dir / "options.yml")
        self._announce()
        self._last_saved = start
        try:
            with StopRequest() as stop:
                self._loop(stop)
        except torch.cuda.OutOfMemoryError:
            raise TrainingError(
                f"out of GPU memory at iteration {self.progress.iteration + 1} (batch "
                f"{self.schedule.batch_at(self.progress.iteration)} per process); set train.grad_accum_steps "
                "(or effective_batch_size) with a smaller datasets.train.mini_batch_sizes / batch_size_per_gpu, or "
                "train.activation_checkpointing: true, or train.precision: bf16"
            ) from None
        finally:
            self.logger.close()
            distributed.shutdown()
        return self.run_dir

    def _announce(self) -> None:
        d, s = self.dist, self.schedule
        per_step = [b.batch_size * a * d.world_size for b, a in zip(s.stages, s.accum, strict=True)]
        self.logger.info(
            f"run folder {self.run_dir}; {d.world_size} process(es) on {d.device.type}; "
            f"{sum(p.numel() for p in self.model.parameters()):,} parameters; {len(self.train_set)} training pairs; "
            f"batch per step {per_step} (batch x accumulation x processes); precision {self.precision}"
        )

    def _loop(self, stop: StopRequest) -> None:
        total = self.train_opt["total_iter"]
        print_freq = self.options["logger"]["print_freq"]
        save_freq = self.options["logger"]["save_checkpoint_freq"]
        val_freq = self.options["val"]["val_freq"]
        self._start_data()
        budget = self.train_opt["time_budget"]
        began = time.monotonic()
        bad_in_row = 0
        window = {"loss": 0.0, "steps": 0, "images": 0, "wait": 0.0, "start": time.perf_counter()}
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        while self.progress.iteration < total:
            iteration = self.progress.iteration + 1
            lr = self._set_learning_rate(iteration)
            result = self.step(iteration)
            if result["bad"]:
                bad_in_row += 1
                self.progress.bad_steps_total += 1
                self.logger.warning(
                    f"iteration {iteration}: non-finite loss or gradient (loss {result['loss']}, grad norm "
                    f"{result['grad_norm']}); step skipped ({bad_in_row} in a row, {self.progress.bad_steps_total} "
                    "in all)"
                )
                self.logger.record("skip", iteration, {"loss": result["loss"], "grad_norm": result["grad_norm"]})
                if bad_in_row >= self.train_opt["max_bad_steps"]:
                    self._rollback(iteration, bad_in_row)
                    bad_in_row = 0
                    self._start_data()
                    continue
            else:
                bad_in_row = 0
            self.progress.iteration = iteration
            out_of_time = budget is not None and distributed.any_process(
                time.monotonic() - began >= budget, self.device
            )
            last = iteration == total or out_of_time
            window["steps"] += 1
            window["images"] += result["images"] * self.dist.world_size
            window["wait"] += result["data_wait"]
            if not result["bad"]:
                window["loss"] += result["loss"]
            self.logger.advance(1, {"loss": f"{result['loss']:.4f}", "lr": f"{lr:.2e}"})
            if iteration % print_freq == 0 or last:
                self._log_window(iteration, lr, result, window)
            if self.val_sets and (iteration % val_freq == 0 or last):
                self._after_validation(iteration, self.validate(iteration))
            if (iteration % save_freq == 0 or last) and self._last_saved != iteration:
                self.save()
            if last and self.dist.enabled:
                self._check_replicas(iteration)
            if out_of_time:
                self.logger.info(f"time budget of {budget:g} s used up at iteration {iteration} of {total}")
                break
            if distributed.any_process(stop.requested, self.device):
                if self._last_saved != iteration:
                    self.save()
                self.logger.warning(
                    f"stopped at iteration {iteration}; the state is saved in {self.run_dir / 'training_states'}; "
                    "continue with --resume auto"
                )
                raise KeyboardInterrupt

    @torch.no_grad()
    def _check_replicas(self, iteration: int) -> None:
        """Compares every process's weights with the main process's and records the largest difference."""
        difference = torch.zeros((), dtype=torch.float64, device=self.device)
        for tensor in self.model.state_dict().values():
            reference = tensor.detach().clone()
            torch.distributed.broadcast(reference, src=0)
            difference = torch.maximum(difference, (tensor.double() - reference.double()).abs().max())
        torch.distributed.all_reduce(difference, op=torch.distributed.ReduceOp.MAX)
        value = float(difference)
        self.logger.record("replicas", iteration, {"processes": self.dist.world_size, "max_difference": value})
        if value != 0:
            self.logger.warning(f"the {self.dist.world_size} processes hold weights that differ by up to {value:.3g}")

    def _log_window(self, iteration: int, lr: float, result: dict[str, Any], window: dict[str, Any]) -> None:
        elapsed = time.perf_counter() - window["start"]
        stats = torch.tensor([window["loss"], window["steps"]], dtype=torch.float64, device=self.device)
        distributed.all_reduce_sum(stats)
        values = {
            "lr": lr,
            "loss": float(stats[0] / max(stats[1], 1)),
            "grad_norm": result["grad_norm"],
            "images_per_s": window["images"] / max(elapsed, 1e-9),
            "data_wait_s": window["wait"] / max(window["steps"], 1),
            "seconds_per_iter": elapsed / max(window["steps"], 1),
        }
        if self.device.type == "cuda":
            values["peak_memory_mb"] = torch.cuda.max_memory_allocated(self.device) / 2**20
        self.logger.record("train", iteration, values)
        self.logger.info(
            f"iter {iteration}: loss {values['loss']:.5f}, lr {lr:.3e}, grad norm {values['grad_norm']:.4g}, "
            f"{values['images_per_s']:.2f} images/s, waiting for data {values['data_wait_s'] * 1000:.1f} ms/iter"
        )
        window.update(loss=0.0, steps=0, images=0, wait=0.0, start=time.perf_counter())

    def _after_validation(self, iteration: int, results: dict[str, float]) -> None:
        label = "psnr" if "psnr" in results else next(iter(results), None)
        if label is None:
            return
        psnr = results[label]
        if psnr > self.progress.best_psnr:
            self.progress.best_psnr, self.progress.best_iter = psnr, iteration
            if self._last_saved != iteration:
                self.save()
            if self.dist.is_main:
                ckpt.save_best(self.run_dir / "models", self.run_dir / "models" / f"net_g_{iteration}.pth")
                self.logger.info(f"best {label} so far: {psnr:.4f} at iteration {iteration} (models/net_g_best.pth)")
        self._check_plateau(psnr, iteration)


def train(options: dict[str, Any], resume: str | None = None, device: str | None = None, progress: bool = True) -> Path:
    """Trains to ``train.total_iter`` and returns the run folder."""
    if os.environ.get("WORLD_SIZE", "1") != "1" and device is None and not torch.cuda.is_available():
        device = "cpu"
    return Trainer(options, resume, device).run(progress_bar=progress)
