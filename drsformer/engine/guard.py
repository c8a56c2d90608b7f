"""The policy for bad steps: what counts as bad, when to roll back, and to which state (:class:`Guard`); and
carrying it out: reporting dropped steps, reloading the state (:class:`Recovery`).

* A step whose loss is not finite is **bad**, in every precision; so is one with a non-finite gradient in fp32
  or bf16. Its update is dropped.
* In fp16 a non-finite gradient is the gradient scaler's business: the scaler **skips** the step and halves its
  scale, which is how it finds a scale that fits (a few skips at the start of a run are normal). Skips are
  counted and logged.
* A **streak** is a run of consecutive bad or skipped steps; it opens at its first step and closes at the next
  good one. No state is saved while a streak is open, so no saved state holds a streak's weights.
* A streak **rolls back** when it reaches ``max_bad_steps`` bad steps, ``max_skipped_steps`` skips in a row, or
  when the fp16 loss scale falls below a floor (a scaler halving towards 0 makes every step a silent skip). The
  run then reloads the newest state at or before the iteration before the streak began (see
  :meth:`Guard.rollback_target`), with half the learning rate, at most ``max_rollbacks`` times.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import TrainingError
from . import distributed
from .logger import RunLogger
from .state import Parts, Progress, StateKeeper
from .step import LOSS_SCALE_FLOOR


@dataclass(frozen=True)
class Verdict:
    """What to do with one step."""

    step: bool  # apply the optimizer step
    bad: bool  # a bad step (dropped)
    skipped: bool  # fp16: the scaler skipped it
    rollback: bool  # the streak it belongs to must roll back now
    cause: str = ""  # what went wrong with this step (empty for a good step)
    reason: str = ""  # why the streak rolls back (empty unless ``rollback``)


class Guard:
    """Watches the steps; the counters of the open streak live here, the run's totals in ``Progress``."""

    def __init__(self, max_bad_steps: int, max_skipped_steps: int, fp16: bool) -> None:
        self.max_bad_steps = max_bad_steps
        self.max_skipped_steps = max_skipped_steps
        self.fp16 = fp16
        self.streak_start: int | None = None  # first iteration of the open streak
        self.bad_in_row = 0
        self.skipped_in_row = 0

    @property
    def streak_open(self) -> bool:
        return self.streak_start is not None

    def observe(self, iteration: int, loss_bad: bool, grad_bad: bool, scale_low: bool = False) -> Verdict:
        """The verdict on ``iteration``, from the flags of every process."""
        bad = loss_bad or (grad_bad and not self.fp16)
        skipped = grad_bad and self.fp16 and not loss_bad
        if not (bad or skipped or scale_low):
            self.close()
            return Verdict(step=True, bad=False, skipped=False, rollback=False)
        if self.streak_start is None:
            self.streak_start = iteration
        self.bad_in_row += bad
        self.skipped_in_row += skipped
        if self.bad_in_row >= self.max_bad_steps:
            reason = f"{self.bad_in_row} bad steps"
        elif self.skipped_in_row >= self.max_skipped_steps:
            reason = f"{self.skipped_in_row} steps skipped by the fp16 gradient scaler"
        elif scale_low:
            reason = "the fp16 loss scale fell below its floor"
        else:
            reason = ""
        cause = "non-finite loss" if loss_bad else "non-finite gradient" if grad_bad else "fp16 loss scale too low"
        return Verdict(step=False, bad=bad, skipped=skipped, rollback=bool(reason), cause=cause, reason=reason)

    def close(self) -> None:
        """Ends the open streak (a good step, or a rollback)."""
        self.streak_start, self.bad_in_row, self.skipped_in_row = None, 0, 0

    def rollback_target(self) -> int:
        """The newest iteration a rollback may return to: the one before the open streak began."""
        if self.streak_start is None:
            raise RuntimeError("no streak is open")
        return self.streak_start - 1

    def describe(self, iteration: int) -> str:
        """``iterations 5..8`` of the open streak, for messages."""
        return f"iterations {self.streak_start}..{iteration}"


class Recovery:
    """Carries out the policy: reports each dropped step, and rolls a streak back to the newest state saved before
    it, with half the learning rate, at most ``max_rollbacks`` times."""

    def __init__(self, guard: Guard, keeper: StateKeeper, logger: RunLogger, max_rollbacks: int) -> None:
        self.guard, self.keeper, self.logger, self.max_rollbacks = guard, keeper, logger, max_rollbacks

    def report(self, iteration: int, verdict: Verdict, loss: float, grad_norm: float, progress: Progress,
               scale: float | None) -> None:  # fmt: skip
        """Counts a skipped or bad step in ``progress`` and says so in the log."""
        if verdict.skipped:
            progress.skipped_steps_total += 1
            self.logger.info(
                f"iteration {iteration}: the fp16 gradient scaler skipped the step (gradient overflow; scale now "
                f"{scale:g}); {self.guard.skipped_in_row} in a row, {progress.skipped_steps_total} in all"
            )
            self.logger.record("skip", iteration, {"reason": "fp16 overflow", "loss": loss, "scale": scale})
        if verdict.bad:
            progress.bad_steps_total += 1
            self.logger.warning(
                f"iteration {iteration}: {verdict.cause} (loss {loss}, grad norm {grad_norm}); step skipped "
                f"({self.guard.bad_in_row} in a row, {progress.bad_steps_total} in all)"
            )
            self.logger.record("skip", iteration, {"reason": verdict.cause, "loss": loss, "grad_norm": grad_norm})

    def roll_back(self, iteration: int, reason: str, progress: Progress, parts: Parts) -> Progress:
        """Reloads the newest state from before the open streak into ``parts``; returns the progress to go on
        with (the state's, with the run's counters and the learning rate halved). A streak before any save, or
        one more than ``max_rollbacks`` allow, is a :class:`TrainingError` that says what to change."""
        guard = self.guard
        what = f"{guard.describe(iteration)}: {reason}"
        found = self.keeper.newest(at_most=guard.rollback_target())
        if found is None:
            raise TrainingError(
                f"{what}, before any checkpoint was saved; lower train.optim_g.lr, set train.use_grad_clip: true, "
                "or try train.precision: fp32/bf16"
            )
        if progress.rollbacks >= self.max_rollbacks:
            raise TrainingError(
                f"{what} again after {progress.rollbacks} rollback(s) with halved learning rates; stopping. The last "
                f"good state is {found[0]}; lower train.optim_g.lr or check the data"
            )
        distributed.barrier()
        restored = self.keeper.apply(found[1], found[0], parts)
        restored.rollbacks, restored.lr_factor = progress.rollbacks + 1, progress.lr_factor * 0.5
        restored.bad_steps_total, restored.skipped_steps_total = progress.bad_steps_total, progress.skipped_steps_total
        stepper = parts.stepper
        scale = stepper.scale()  # None without a scaler
        if scale is not None and scale < LOSS_SCALE_FLOOR:
            stepper.reset_scaler()
        guard.close()
        self.logger.warning(
            f"{what}; reloaded {found[0].name} (iteration {restored.iteration}) and halved the learning rate "
            f"(factor {restored.lr_factor:g}, rollback {restored.rollbacks} of at most {self.max_rollbacks})"
        )
        return restored
