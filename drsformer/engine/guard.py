"""The policy for bad steps: what counts as bad, when to roll back, and to which state.

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
