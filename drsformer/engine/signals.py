"""Stopping a run between iterations: signals (Ctrl-C, ``kill``, Slurm's warning before a time limit) and a stop
file become a request the loop honours after its current iteration, by saving and exiting."""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Any

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

    def exit_status(self) -> int:
        """130 after Ctrl-C; otherwise :data:`REQUEUE_STATUS`, which a batch script takes as "continue me"."""
        return 130 if self.signum == signal.SIGINT else REQUEUE_STATUS

    def describe(self) -> str:
        return signal.Signals(self.signum).name if self.signum else "a stop request"
