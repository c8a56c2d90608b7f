"""What a run tells its user: a text log, ``log.jsonl`` (one JSON object per record), TensorBoard, a tqdm bar.

Only the main process writes; the others get a logger whose methods do nothing.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import torch
from tqdm import tqdm

if TYPE_CHECKING:
    from torch.utils.tensorboard import SummaryWriter  # imported where used: TensorBoard is slow to import


def _finite_or_none(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else (1e308 if value > 0 else -1e308)
    return value


def trim_jsonl(path: Path, after_iter: int) -> int:
    """Drops records with ``iter > after_iter`` (written by a run that is being resumed from ``after_iter``)."""
    if not path.is_file():
        return 0
    kept, dropped = [], 0
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # a line cut short by a kill
            dropped += 1
            continue
        if isinstance(record, dict) and record.get("iter", 0) > after_iter:
            dropped += 1
        else:
            kept.append(line)
    path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
    return dropped


class RunLogger:
    """Text log (``train.log`` and the console), ``log.jsonl``, TensorBoard (``tb/``) and the progress bar.

    The text log works from the start; records, TensorBoard and the bar once :meth:`open` knows the iteration
    the run starts from (a resumed run drops what a killed one logged after its state).
    """

    def __init__(self, run_dir: Path, enabled: bool, use_tensorboard: bool, progress: bool = True) -> None:
        self.enabled = enabled
        self.run_dir = run_dir
        self.use_tensorboard, self.progress = use_tensorboard, progress
        self._bar: tqdm | None = None
        self._tb: SummaryWriter | None = None
        self._jsonl: TextIO | None = None
        self._log = logging.getLogger(f"drsformer.train.{id(self)}")
        self._log.propagate = False
        self._log.setLevel(logging.INFO)
        if not enabled:
            return
        run_dir.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(run_dir / "train.log", encoding="utf-8")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        self._log.addHandler(handler)

    def open(self, total_iter: int, start_iter: int) -> None:
        """Starts ``log.jsonl`` (records after ``start_iter`` dropped), TensorBoard and the progress bar."""
        if not self.enabled:
            return
        trim_jsonl(self.run_dir / "log.jsonl", start_iter)
        self._jsonl = open(self.run_dir / "log.jsonl", "a", encoding="utf-8")  # noqa: SIM115 (closed in close())
        if self.use_tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step drops events a killed run wrote after the state being resumed.
            self._tb = SummaryWriter(str(self.run_dir / "tb"), purge_step=start_iter + 1 if start_iter else None)
        if self.progress:
            self._bar = tqdm(
                total=total_iter, initial=start_iter, desc="train", unit="it", dynamic_ncols=True, file=sys.stderr
            )

    # -- text
    def info(self, message: str) -> None:
        self._emit(logging.INFO, message)

    def warning(self, message: str) -> None:
        self._emit(logging.WARNING, message)

    def _emit(self, level: int, message: str) -> None:
        if not self.enabled:
            return
        self._log.log(level, message)
        text = message if level == logging.INFO else f"warning: {message}"
        if self._bar is not None:
            self._bar.write(text, file=sys.stderr)
        else:
            print(text, file=sys.stderr, flush=True)

    # -- records
    def record(self, kind: str, iteration: int, values: dict[str, Any]) -> None:
        """One ``log.jsonl`` line ``{"kind", "iter", ...values, "time"}`` and scalars in TensorBoard."""
        if not self.enabled:
            return
        entry = {"kind": kind, "iter": iteration, **{k: _finite_or_none(v) for k, v in values.items()}}
        entry["time"] = round(time.time(), 3)
        assert self._jsonl is not None
        self._jsonl.write(json.dumps(entry) + "\n")
        self._jsonl.flush()
        if self._tb is not None:
            for key, value in values.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                    self._tb.add_scalar(f"{kind}/{key}", value, iteration)

    def images(self, tag: str, grid: torch.Tensor, iteration: int) -> None:
        if self._tb is not None:
            self._tb.add_image(tag, grid, iteration)

    def advance(self, steps: int, postfix: dict[str, Any] | None = None) -> None:
        if self._bar is not None:
            if steps:
                self._bar.update(steps)
            if postfix:
                self._bar.set_postfix(postfix, refresh=False)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        if self._tb is not None:
            self._tb.close()
        if self._jsonl is not None:
            self._jsonl.close()
        for handler in list(self._log.handlers):
            handler.close()
            self._log.removeHandler(handler)


class LogWindow:
    """What happened since the last log line: the loss stays a device tensor until :meth:`values` reads it,
    so logging costs host reads only every ``print_freq`` iterations."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.reset()

    def reset(self) -> None:
        self.loss = torch.zeros((), dtype=torch.float64, device=self.device)
        self.good = self.steps = self.images = 0
        self.wait = 0.0
        self.start = time.perf_counter()

    def add(self, loss: torch.Tensor, good: bool, images: int, wait: float) -> None:
        """One iteration of this process; the loss counts only when the step was applied."""
        if good:
            self.loss += loss.detach().double()
            self.good += 1
        self.steps += 1
        self.images += images
        self.wait += wait

    def values(self, world_size: int, all_reduce_sum: Any) -> dict[str, float]:
        """The window's means over all processes (one collective), then a fresh window."""
        stats = torch.stack([self.loss, torch.tensor(float(self.good), dtype=torch.float64, device=self.device)])
        all_reduce_sum(stats)
        loss_sum, good = stats.tolist()
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        values = {
            "loss": loss_sum / good if good else float("nan"),
            "images_per_s": self.images * world_size / elapsed,
            "data_wait_s": self.wait / max(self.steps, 1),
            "seconds_per_iter": elapsed / max(self.steps, 1),
        }
        self.reset()
        return values
