"""The training loop, top to bottom. The parts it composes each have a module of their own:

* :mod:`~drsformer.engine.build`: the network, optimizer, scheduler, loss, step, guard, data and validation;
* :mod:`~drsformer.engine.resume`: a new run, ``--resume``, or an elastic restart's state;
* :mod:`~drsformer.engine.step`: one optimizer step (autocast, fp16 scaler, accumulation, clipping, EMA);
* :mod:`~drsformer.engine.guard`: what counts as a bad step, and the rollback to a saved state;
* :mod:`~drsformer.engine.validation`: validation sets and metrics, the best weights, the plateau warning;
* :mod:`~drsformer.engine.state`: training states (save, retention, resume);
* :mod:`~drsformer.engine.signals`: stop requests (signals, a stop file);
* :mod:`~drsformer.engine.logger`: the text log, ``log.jsonl``, TensorBoard and the progress bar.

Each iteration costs one device-to-host read: the step's health flags, the stop request and the time budget,
folded into one reduction over the processes. At iteration ``i`` the run saves (when due) before it validates,
so a failing validation loses nothing.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import torch

from ..data.paired import SkippedFiles
from ..devices import is_out_of_memory
from ..errors import OutOfMemory, RunStopped
from ..optim import set_learning_rate
from . import distributed
from .build import build_run, configure_backends, restore_backends
from .data import train_loader
from .guard import Recovery
from .logger import LogWindow, RunLogger
from .resume import find_resume, read_resume_state, run_folder
from .signals import STOP_FILE_ENV, StopRequest
from .state import Progress, StateKeeper
from .validation import Best


class Trainer:
    """One training run. ``run()`` trains to the end and returns the run folder."""

    def __init__(self, options: dict[str, Any], resume: str | None = None, device: str | None = None) -> None:
        self.options, self.train_opt = options, options["train"]
        if self.train_opt["deterministic"]:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # before any cuBLAS handle exists
        self.dist = distributed.init(device)
        self.device = self.dist.device
        self.run_dir = run_folder(options)
        self.progress = Progress()
        self._resume = find_resume(options, resume, self.dist, self.run_dir)
        self.skipped_files = SkippedFiles()
        self._backends: dict[str, Any] | None = None

    def build(self, progress_bar: bool = False) -> None:
        options, train = self.options, self.train_opt
        self.logger = RunLogger(self.run_dir, self.dist.is_main, options["logger"]["use_tb_logger"], progress_bar)
        self.keeper = StateKeeper(self.run_dir, options, self.dist, self.logger)
        resumed = read_resume_state(self._resume, self.keeper, self.dist, self.logger, self.run_dir)
        self.logger.open(train["total_iter"], resumed[1]["iteration"] if resumed else 0)
        self._backends = configure_backends(self.device, train)
        built = build_run(options, self.dist, self.logger, self.run_dir)
        self.model, self.parts, self.guard = built.model, built.parts, built.guard
        self.schedule, self.train_set, self.validator = built.schedule, built.train_set, built.validator
        self.recovery = Recovery(self.guard, self.keeper, self.logger, train["max_rollbacks"])
        patience = options["val"]["plateau_patience"]
        self.best = Best(self.keeper, self.logger, patience, ema=self.parts.ema is not None)
        if resumed is not None:
            self.progress = self.keeper.apply(resumed[1], resumed[0], self.parts)
            self.logger.info(f"resumed from {resumed[0]} at iteration {self.progress.iteration}")

    def run(self, progress_bar: bool = True) -> Path:
        try:
            self.build(progress_bar)
        except BaseException:
            distributed.shutdown()
            restore_backends(self._backends)
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
            raise OutOfMemory(self._out_of_memory_message()) from None
        finally:
            self.logger.close()
            if finished:
                self.parts.stepper.release_wrappers()
            distributed.shutdown(wait_for_all=finished)
            restore_backends(self._backends)
        return self.run_dir

    def _start_data(self) -> None:
        data = self.options["datasets"]["train"]
        self.parts.sampler, self.batches = train_loader(
            self.train_set, self.schedule, data, self.dist, self.options["manual_seed"], self.progress.iteration
        )

    def _loop(self, stop: StopRequest) -> None:
        total, logger_opt = self.train_opt["total_iter"], self.options["logger"]
        print_freq, save_freq = logger_opt["print_freq"], logger_opt["save_checkpoint_freq"]
        val_freq, budget = self.options["val"]["val_freq"], self.train_opt["time_budget"]
        stepper, schedule = self.parts.stepper, self.schedule
        self._start_data()
        window, began = LogWindow(self.device), time.monotonic()
        while self.progress.iteration < total:
            iteration = self.progress.iteration + 1
            lr = set_learning_rate(self.parts.optimizer, self.parts.scheduler, iteration,
                                   self.train_opt["warmup_iter"], self.progress.lr_factor)  # fmt: skip
            acc = stepper.accumulate(self.batches, schedule.accum_at(iteration - 1),
                                     schedule.micro_steps_before(iteration - 1))  # fmt: skip
            late = budget is not None and time.monotonic() - began >= budget
            flags = [acc.loss_bad, acc.grad_bad, acc.scale_low, stop.requested, late]
            loss_bad, grad_bad, scale_low, stopping, out_of_time = distributed.reduce_flags(flags, self.device)
            verdict = self.guard.observe(iteration, loss_bad, grad_bad, scale_low)
            stepper.finish(verdict.step)
            for name in (name for batch in acc.batches for name in self.skipped_files.update(batch)):
                self.logger.warning(f"unreadable training pair replaced by another (skip_corrupt): {name}")
            if not verdict.step:
                # a host read of the loss and gradient norm, only for a failing step
                self.recovery.report(iteration, verdict, float(acc.loss), float(acc.grad_norm), self.progress,
                                     stepper.scale())  # fmt: skip
                if verdict.rollback:
                    self.progress = self.recovery.roll_back(iteration, verdict.reason, self.progress, self.parts)
                    self._start_data()
                    continue
            self.progress.iteration = iteration
            window.add(acc.loss, verdict.step, acc.images, acc.data_wait)
            self.logger.advance(1)
            last = iteration == total or out_of_time
            if iteration % print_freq == 0 or last:
                self._log(iteration, lr, float(acc.grad_norm), window)
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
                message = (
                    f"stopped at iteration {iteration} ({stop.describe()}); the state of iteration "
                    f"{self.keeper.last_saved} is saved in {self.run_dir / 'training_states'}; continue with "
                    "--resume auto"
                )
                self.logger.warning(message)
                raise RunStopped(message, stop.exit_status())

    def _save(self) -> None:
        """Saves the current state, unless a bad streak is open (no saved state may hold a streak's weights)."""
        if self.guard.streak_open:
            self.logger.warning(
                f"iteration {self.progress.iteration}: not saving while steps are failing (since iteration "
                f"{self.guard.streak_start}); the last state is iteration {self.keeper.last_saved}"
            )
            return
        self.keeper.save(self.parts, self.progress)

    def _validate(self, iteration: int) -> None:
        model = self.parts.ema.module if self.parts.ema is not None else self.model
        try:
            results = self.validator.run(model, iteration)
        except BaseException:
            if self.keeper.last_saved != iteration:
                self._save()  # whatever failed, the iterations since the last save are kept
            raise
        self.best.update(results, iteration, self.progress, self.guard.streak_open, self._save)

    def _log(self, iteration: int, lr: float, grad_norm: float, window: LogWindow) -> None:
        values = {"lr": lr, **window.values(self.dist.world_size, distributed.all_reduce_sum), "grad_norm": grad_norm}
        scale = self.parts.stepper.scale()
        if scale is not None:
            values["loss_scale"], values["skipped_steps"] = scale, self.progress.skipped_steps_total
        if self.device.type == "cuda":
            values["peak_memory_mb"] = torch.cuda.max_memory_allocated(self.device) / 2**20
        self.logger.record("train", iteration, values)
        self.logger.advance(0, {"loss": f"{values['loss']:.4f}", "lr": f"{lr:.2e}"})
        self.logger.info(
            f"iter {iteration}: loss {values['loss']:.5f}, lr {lr:.3e}, grad norm {grad_norm:.4g}, "
            f"{values['images_per_s']:.2f} images/s, waiting for data {values['data_wait_s'] * 1000:.1f} ms/iter"
        )

    def _announce(self) -> None:
        d, s = self.dist, self.schedule
        per_step = [b.batch_size * a * d.world_size for b, a in zip(s.stages, s.accum, strict=True)]
        self.logger.info(
            f"run folder {self.run_dir}; {d.world_size} process(es) on {d.device.type}; "
            f"{sum(p.numel() for p in self.model.parameters()):,} parameters; {len(self.train_set)} training pairs; "
            f"batch per step {per_step} (batch x accumulation x processes); precision {self.train_opt['precision']}"
        )

    def _check_replicas(self, iteration: int) -> None:
        value = distributed.max_replica_difference(self.model)
        self.logger.record("replicas", iteration, {"processes": self.dist.world_size, "max_difference": value})
        if value != 0:
            self.logger.warning(f"the {self.dist.world_size} processes hold weights that differ by up to {value:.3g}")

    def _out_of_memory_message(self) -> str:
        iteration, saved = self.progress.iteration + 1, self.keeper.last_saved
        data = self.options["datasets"]["train"]
        last = f"the last saved state is iteration {saved}" if saved >= 0 else "no state was saved yet"
        batch_key = "mini_batch_sizes" if data["mini_batch_sizes"] else "batch_size_per_gpu"
        return (
            f"out of memory in training iteration {iteration} ({self.schedule.batch_at(iteration - 1)} crops per "
            f"process on {self.device}); {last}. Lower datasets.train.{batch_key} (train.effective_batch_size keeps "
            "the batch by accumulating), or the crop size, or set train.activation_checkpointing: true or "
            "train.precision: bf16"
        )


def train(options: dict[str, Any], resume: str | None = None, device: str | None = None, progress: bool = True) -> Path:
    """Trains to ``train.total_iter`` and returns the run folder."""
    return Trainer(options, resume, device).run(progress_bar=progress)
