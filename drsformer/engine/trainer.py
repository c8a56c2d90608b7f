"""The training loop. It composes the engine's parts, each with one job:

* :mod:`~drsformer.engine.data`: datasets, the progressive schedule and the loader;
* :mod:`~drsformer.engine.step`: one optimizer step (autocast, fp16 scaler, accumulation, clipping, EMA);
* :mod:`~drsformer.engine.guard`: what counts as a bad step, when to roll back and to which state;
* :mod:`~drsformer.engine.validation`: validation sets, metrics, images, the plateau warning;
* :mod:`~drsformer.engine.state`: training states (save, retention, best, resume, rollback);
* :mod:`~drsformer.engine.logger`: the text log, ``log.jsonl``, TensorBoard and the progress bar.

Each iteration costs one device-to-host read: the step's health flags, the stop request and the time budget,
folded into one reduction over the processes. At iteration ``i`` the run saves (when due) before it validates,
so a failing validation loses nothing.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..data.paired import SkippedFiles
from ..devices import is_out_of_memory
from ..errors import ConfigError, OutOfMemory, RunStopped, TrainingError
from ..precision import needs_grad_scaler
from ..registry import ARCH_REGISTRY, LOSS_REGISTRY, OPTIMIZER_REGISTRY, SCHEDULER_REGISTRY
from . import distributed
from .data import build_dataset, build_schedule, check_crops_fit, train_loader
from .guard import Guard, Verdict
from .logger import LogWindow, RunLogger
from .optim import set_learning_rate
from .state import Parts, Progress, StateKeeper, load_pretrained
from .step import EMA, LOSS_SCALE_FLOOR, StepOptions, Stepper
from .validation import Validator, plateau_warning

DEFAULT_CLIP_NORM = 0.01  # the published loop clips at 0.01 when use_grad_clip is true


def run_folder(options: dict[str, Any]) -> Path:
    root = options["path"]["experiments_root"]
    return Path(root) if root else Path("experiments") / options["name"]


STOP_FILE_ENV = "DRSFORMER_STOP_FILE"  # a path whose appearance asks the run to save and stop
REQUEUE_STATUS = 75  # EX_TEMPFAIL: the exit status of a run that stopped to be continued (requeued)


class StopRequest:
    """SIGINT, SIGTERM, SIGUSR1 (Slurm's warning before a time limit, ``--signal=USR1@120``) or the appearance of
    the file ``$DRSFORMER_STOP_FILE`` become a request honoured between iterations: the run saves and stops. A
    second SIGINT stops at once."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)

    def __init__(self, stop_file: str | None = None) -> None:
        self.signum: int | None = None
        self.stop_file = Path(stop_file) if stop_file else None
        self._previous: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        if self.signum is None and self.stop_file is not None and self.stop_file.exists():
            self.signum = signal.SIGUSR1  # the stop file stands for the signal a scheduler would send
        return self.signum is not None

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, _frame: Any) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class Trainer:
    """One training run. ``run()`` trains to the end and returns the run folder."""

    def __init__(self, options: dict[str, Any], resume: str | None = None, device: str | None = None) -> None:
        self.options = options
        self.train_opt = options["train"]
        if self.train_opt["deterministic"]:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # before any cuBLAS handle exists
        self.dist = distributed.init(device)
        self.device = self.dist.device
        self.run_dir = run_folder(options)
        self.progress = Progress()
        self.precision = self.train_opt["precision"]
        self._resume = self._find_resume(resume)
        self.skipped_files = SkippedFiles()
        self._backends: dict[str, Any] | None = None

    # -- set-up ---------------------------------------------------------------------------------------------------
    def _find_resume(self, resume: str | None) -> Path | str | None:
        """``auto``, a state file, or None (a new run). A worker that torchrun restarted (``--max-restarts``)
        resumes by itself. The main process decides whether the run folder already holds states."""
        resume = resume or self.options["path"]["resume_state"]
        if not resume and self.dist.restart > 0:
            resume = "auto"  # an elastic restart: continue where the failed round saved
        if resume == "auto":
            return "auto"
        from . import checkpoint as ckpt

        if resume:
            path = Path(resume)
            if not distributed.broadcast_object(path.is_file() if self.dist.is_main else None):
                raise ConfigError(f"--resume {resume}: no such training state")
            return path

        existing = ckpt.newest_state(self.run_dir) if self.dist.is_main else None
        existing = distributed.broadcast_object(existing.name if existing else None)
        if existing is not None:
            raise ConfigError(
                f"{self.run_dir} already holds training states (newest: {existing}); continue it with "
                "--resume auto, or start a new run under another name (--set name=...)"
            )
        return None

    def _resume_state(self, keeper: StateKeeper) -> tuple[Path, dict[str, Any]] | None:
        if self.dist.restart:
            self.logger.info(f"elastic restart {self.dist.restart}: the processes re-formed their group")
        if self._resume == "auto":
            found = keeper.newest()
            if found is None:
                self.logger.info(f"--resume auto: no training state in {self.run_dir}, starting a new run")
            return found
        return keeper.read(self._resume) if self._resume is not None else None

    def build(self, progress_bar: bool = False) -> None:
        options, train = self.options, self.train_opt
        self.logger = RunLogger(self.run_dir, self.dist.is_main, options["logger"]["use_tb_logger"], progress_bar)
        self.keeper = StateKeeper(self.run_dir, options, self.dist, self.logger)
        resumed = self._resume_state(self.keeper)
        self.logger.open(train["total_iter"], resumed[1]["iteration"] if resumed else 0)
        self._backends = _configure_backends(self.device, train)

        torch.manual_seed(options["manual_seed"])
        model: nn.Module = ARCH_REGISTRY.build(dict(options["network_g"]), where="network_g")
        if options["path"]["pretrain_network_g"]:
            load_pretrained(model, options["path"], self.logger)
        if train["activation_checkpointing"]:
            if not hasattr(model, "set_activation_checkpointing"):
                raise ConfigError("train.activation_checkpointing: this network does not support it")
            model.set_activation_checkpointing(True)
        memory_format = torch.channels_last if train["channels_last"] else torch.contiguous_format
        self.model = model.to(self.device, memory_format=memory_format)
        ema = EMA(self.model, train["ema_decay"]) if train["ema_decay"] > 0 else None
        optimizer = OPTIMIZER_REGISTRY.build(
            train["optim_g"], [p for p in self.model.parameters() if p.requires_grad], where="train.optim_g"
        )
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])
        scheduler = (
            SCHEDULER_REGISTRY.build(train["scheduler"], where="train.scheduler", optimizer=optimizer)
            if train["scheduler"]
            else None
        )
        loss_fn = LOSS_REGISTRY.build(train["pixel_opt"], where="train.pixel_opt").to(self.device)
        ddp = None
        if self.dist.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            ddp = DistributedDataParallel(self.model, device_ids=ids)
        net = torch.compile(ddp or self.model) if train["compile"] else ddp or self.model
        clip = train["grad_clip_norm"] or (DEFAULT_CLIP_NORM if train["use_grad_clip"] else None)
        step_options = StepOptions(
            self.precision, clip, memory_format, train["mixing_augs"], options["manual_seed"], self.dist.rank
        )
        stepper = Stepper(self.model, net, optimizer, loss_fn, step_options, self.device, ema, ddp)
        self.guard = Guard(train["max_bad_steps"], train["max_skipped_steps"], fp16=needs_grad_scaler(self.precision))

        self.schedule = build_schedule(options, self.dist.world_size)
        self.train_set = build_dataset(options["datasets"]["train"], "datasets.train")
        check_crops_fit(self.train_set, self.schedule, "datasets.train")
        self.validator = Validator(options, self.dist, self.logger, self.run_dir, self.precision)
        self.parts = Parts(self.model, ema, optimizer, scheduler, stepper, None, self.schedule)
        if resumed is not None:
            self.progress = self.keeper.apply(resumed[1], resumed[0], self.parts)
            self.logger.info(f"resumed from {resumed[0]} at iteration {self.progress.iteration}")

    def _start_data(self) -> None:
        self.parts.sampler, self.batches = train_loader(
            self.train_set,
            self.schedule,
            self.options["datasets"]["train"],
            self.dist,
            self.options["manual_seed"],
            self.progress.iteration,
        )

    # -- running --------------------------------------------------------------------------------------------------
    def run(self, progress_bar: bool = True) -> Path:
        try:
            self.build(progress_bar)
        except BaseException:
            distributed.shutdown()
            _restore_backends(self._backends)
            raise
        if self.dist.is_main:
            from ..config import dump_options

            dump_options(self.options, self.run_dir / "options.yml")
        self._announce()
        finished = False
        try:
            with StopRequest(os.environ.get(STOP_FILE_ENV)) as stop:
                self._loop(stop)
            finished = True
        except RuntimeError as err:
            if isinstance(err, OutOfMemory) or not is_out_of_memory(err):
                raise  # already explained (validation), or not a memory problem
            iteration, saved = self.progress.iteration + 1, self.keeper.last_saved
            data = self.options["datasets"]["train"]
            last = f"the last saved state is iteration {saved}" if saved >= 0 else "no state was saved yet"
            raise OutOfMemory(
                f"out of memory in training iteration {iteration} ({self.schedule.batch_at(iteration - 1)} crops per "
                f"process on {self.device}); {last}. Lower "
                f"datasets.train.{'mini_batch_sizes' if data['mini_batch_sizes'] else 'batch_size_per_gpu'} "
                "(train.effective_batch_size keeps the batch by accumulating), or the crop size, or set "
                "train.activation_checkpointing: true or train.precision: bf16"
            ) from None
        finally:
            self.logger.close()
            if finished:
                self.parts.stepper.release_wrappers()
            distributed.shutdown(wait_for_all=finished)
            _restore_backends(self._backends)
        return self.run_dir

    def _loop(self, stop: StopRequest) -> None:
        total, logger_opt = self.train_opt["total_iter"], self.options["logger"]
        print_freq, save_freq = logger_opt["print_freq"], logger_opt["save_checkpoint_freq"]
        val_freq, budget = self.options["val"]["val_freq"], self.train_opt["time_budget"]
        stepper, guard = self.parts.stepper, self.guard
        self._start_data()
        window, began = LogWindow(self.device), time.monotonic()
        while self.progress.iteration < total:
            progress, iteration = self.progress, self.progress.iteration + 1
            lr = set_learning_rate(
                self.parts.optimizer, self.parts.scheduler, iteration, self.train_opt["warmup_iter"], progress.lr_factor
            )
            acc = stepper.accumulate(
                self.batches, self.schedule.accum_at(iteration - 1), self.schedule.micro_steps_before(iteration - 1)
            )
            late = budget is not None and time.monotonic() - began >= budget
            flags = [acc.loss_bad, acc.grad_bad, acc.scale_low, stop.requested, late]
            loss_bad, grad_bad, scale_low, stopping, out_of_time = distributed.reduce_flags(flags, self.device)
            verdict = guard.observe(iteration, loss_bad, grad_bad, scale_low)
            stepper.finish(verdict.step)
            self._report_skipped_files(acc.batches)
            if not verdict.step and self._bad_step(iteration, verdict, acc):
                continue  # rolled back
            progress.iteration = iteration
            window.add(acc.loss, verdict.step, acc.images, acc.data_wait)
            self.logger.advance(1)
            last = iteration == total or out_of_time
            if iteration % print_freq == 0 or last:
                self._log(iteration, lr, acc, window)
            if (iteration % save_freq == 0 or last or stopping) and self.keeper.last_saved != iteration:
                self._save()
            if self.validator.sets and (iteration % val_freq == 0 or last):
                self._validate(iteration)
            if last and self.dist.enabled:
                self._check_replicas(iteration)
            if out_of_time:
                self.logger.info(f"time budget of {budget:g} s used up at iteration {iteration} of {total}")
                break
            if stopping:
                self._stop(iteration, stop.signum)

    # -- the loop's parts --------------------------------------------------------------------------------------
    def _save(self) -> None:
        """Saves the current state, unless a bad streak is open (no saved state may hold a streak's weights)."""
        if self.guard.streak_open:
            self.logger.warning(
                f"iteration {self.progress.iteration}: not saving while steps are failing (since iteration "
                f"{self.guard.streak_start}); the last state is iteration {self.keeper.last_saved}"
            )
            return
        self.keeper.save(self.parts, self.progress)

    def _bad_step(self, iteration: int, verdict: Verdict, acc: Any) -> bool:
        """Counts and reports a dropped step; rolls back when its streak must. Returns whether it rolled back."""
        progress, guard = self.progress, self.guard
        loss, grad_norm = float(acc.loss), float(acc.grad_norm)  # a host read, only for a failing step
        if verdict.skipped:
            progress.skipped_steps_total += 1
            scale = self.parts.stepper.scale()
            self.logger.info(
                f"iteration {iteration}: the fp16 gradient scaler skipped the step (gradient overflow; scale now "
                f"{scale:g}); {guard.skipped_in_row} in a row, {progress.skipped_steps_total} in all"
            )
            self.logger.record("skip", iteration, {"reason": "fp16 overflow", "loss": loss, "scale": scale})
        if verdict.bad:
            progress.bad_steps_total += 1
            self.logger.warning(
                f"iteration {iteration}: {verdict.cause} (loss {loss}, grad norm {grad_norm}); step skipped "
                f"({guard.bad_in_row} in a row, {progress.bad_steps_total} in all)"
            )
            self.logger.record("skip", iteration, {"reason": verdict.cause, "loss": loss, "grad_norm": grad_norm})
        if not verdict.rollback:
            return False
        self._rollback(iteration, verdict.reason)
        return True

    def _rollback(self, iteration: int, reason: str) -> None:
        """Reloads the newest state from before the open streak, with half the learning rate."""
        guard, progress = self.guard, self.progress
        what = f"{guard.describe(iteration)}: {reason}"
        found = self.keeper.newest(at_most=guard.rollback_target())
        if found is None:
            raise TrainingError(
                f"{what}, before any checkpoint was saved; lower train.optim_g.lr, set train.use_grad_clip: true, "
                "or try train.precision: fp32/bf16"
            )
        if progress.rollbacks >= self.train_opt["max_rollbacks"]:
            raise TrainingError(
                f"{what} again after {progress.rollbacks} rollback(s) with halved learning rates; stopping. The last "
                f"good state is {found[0]}; lower train.optim_g.lr or check the data"
            )
        distributed.barrier()
        kept = progress
        self.progress = self.keeper.apply(found[1], found[0], self.parts)
        self.progress.rollbacks, self.progress.lr_factor = kept.rollbacks + 1, kept.lr_factor * 0.5
        self.progress.bad_steps_total, self.progress.skipped_steps_total = (
            kept.bad_steps_total,
            kept.skipped_steps_total,
        )
        stepper = self.parts.stepper
        if stepper.scaler.is_enabled() and stepper.scale() < LOSS_SCALE_FLOOR:
            stepper.reset_scaler()
        guard.close()
        self._start_data()
        self.logger.warning(
            f"{what}; reloaded {found[0].name} (iteration {self.progress.iteration}) and halved the learning rate "
            f"(factor {self.progress.lr_factor:g}, rollback {self.progress.rollbacks} of at most "
            f"{self.train_opt['max_rollbacks']})"
        )

    def _validate(self, iteration: int) -> None:
        model = self.parts.ema.module if self.parts.ema is not None else self.model
        try:
            results = self.validator.run(model, iteration)
        except BaseException:
            if self.keeper.last_saved != iteration:
                self._save()  # whatever failed, the iterations since the last save are kept
            raise
        label = "psnr" if "psnr" in results else next(iter(results), None)
        if label is None:
            return
        psnr, progress = results[label], self.progress
        if psnr > progress.best_psnr and not self.guard.streak_open:
            progress.best_psnr, progress.best_iter = psnr, iteration
            if self.keeper.last_saved != iteration:
                self._save()
            self.keeper.mark_best(iteration)
            which = "EMA weights" if self.parts.ema is not None else "weights"
            best = f"net_g_best.{self.keeper.weights_format}"
            self.logger.info(f"best {label} so far: {psnr:.4f} at iteration {iteration} ({which}, {best})")
        progress.val_history.append(psnr)
        patience = self.options["val"]["plateau_patience"]
        if plateau_warning(progress.val_history, patience, progress.plateau_warned_at):
            progress.plateau_warned_at = len(progress.val_history)
            self.logger.warning(
                f"validation PSNR has not improved for {patience} evaluations (now {psnr:.2f} dB, best "
                f"{progress.best_psnr:.2f} dB at {progress.best_iter}); a run stuck near the rainy input's PSNR "
                "(users of the published code report 13.08 dB with MEFC) usually needs a lower train.optim_g.lr or "
                "train.use_grad_clip, or its input/target folders are mispaired"
            )

    def _log(self, iteration: int, lr: float, acc: Any, window: LogWindow) -> None:
        values = {"lr": lr, **window.values(self.dist.world_size, distributed.all_reduce_sum)}
        values["grad_norm"] = float(acc.grad_norm)
        scale = self.parts.stepper.scale()
        if scale is not None:
            values["loss_scale"] = scale
            values["skipped_steps"] = self.progress.skipped_steps_total
        if self.device.type == "cuda":
            values["peak_memory_mb"] = torch.cuda.max_memory_allocated(self.device) / 2**20
        self.logger.record("train", iteration, values)
        self.logger.advance(0, {"loss": f"{values['loss']:.4f}", "lr": f"{lr:.2e}"})
        self.logger.info(
            f"iter {iteration}: loss {values['loss']:.5f}, lr {lr:.3e}, grad norm {values['grad_norm']:.4g}, "
            f"{values['images_per_s']:.2f} images/s, waiting for data {values['data_wait_s'] * 1000:.1f} ms/iter"
        )

    def _report_skipped_files(self, batches: list[dict[str, Any]]) -> None:
        for batch in batches:
            for name in self.skipped_files.update(batch):
                self.logger.warning(f"unreadable training pair replaced by another (skip_corrupt): {name}")

    def _stop(self, iteration: int, signum: int | None) -> None:
        name = signal.Signals(signum).name if signum else "a stop request"
        message = (
            f"stopped at iteration {iteration} ({name}); the state of iteration {self.keeper.last_saved} is saved in "
            f"{self.run_dir / 'training_states'}; continue with --resume auto"
        )
        self.logger.warning(message)
        raise RunStopped(message, 130 if signum == signal.SIGINT else REQUEUE_STATUS)

    def _announce(self) -> None:
        d, s = self.dist, self.schedule
        per_step = [b.batch_size * a * d.world_size for b, a in zip(s.stages, s.accum, strict=True)]
        self.logger.info(
            f"run folder {self.run_dir}; {d.world_size} process(es) on {d.device.type}; "
            f"{sum(p.numel() for p in self.model.parameters()):,} parameters; {len(self.train_set)} training pairs; "
            f"batch per step {per_step} (batch x accumulation x processes); precision {self.precision}"
        )

    def _check_replicas(self, iteration: int) -> None:
        value = distributed.max_replica_difference(self.model)
        self.logger.record("replicas", iteration, {"processes": self.dist.world_size, "max_difference": value})
        if value != 0:
            self.logger.warning(f"the {self.dist.world_size} processes hold weights that differ by up to {value:.3g}")


def _configure_backends(device: torch.device, train: dict[str, Any]) -> dict[str, Any]:
    """``train.deterministic``: deterministic algorithms only (an operation without one raises, naming itself),
    cuDNN's deterministic choices and no autotuning. Otherwise on CUDA, cuDNN autotuning (crops have a few
    fixed sizes). ``train.tf32``: TF32 matmuls and convolutions. Returns the settings it replaced."""
    backends = torch.backends
    saved = {
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "cudnn.deterministic": backends.cudnn.deterministic,
        "cudnn.benchmark": backends.cudnn.benchmark,
        "matmul.allow_tf32": backends.cuda.matmul.allow_tf32,
        "cudnn.allow_tf32": backends.cudnn.allow_tf32,
    }
    deterministic = train["deterministic"]
    torch.use_deterministic_algorithms(deterministic)
    backends.cudnn.deterministic = deterministic
    if device.type == "cuda":
        backends.cudnn.benchmark = not deterministic
        backends.cuda.matmul.allow_tf32 = train["tf32"]
        backends.cudnn.allow_tf32 = train["tf32"]
    return saved


def _restore_backends(saved: dict[str, Any] | None) -> None:
    """Puts back what :func:`_configure_backends` changed (they are process-wide)."""
    if not saved:
        return
    torch.use_deterministic_algorithms(saved["deterministic_algorithms"])
    torch.backends.cudnn.deterministic = saved["cudnn.deterministic"]
    torch.backends.cudnn.benchmark = saved["cudnn.benchmark"]
    torch.backends.cuda.matmul.allow_tf32 = saved["matmul.allow_tf32"]
    torch.backends.cudnn.allow_tf32 = saved["cudnn.allow_tf32"]


def train(options: dict[str, Any], resume: str | None = None, device: str | None = None, progress: bool = True) -> Path:
    """Trains to ``train.total_iter`` and returns the run folder."""
    return Trainer(options, resume, device).run(progress_bar=progress)
