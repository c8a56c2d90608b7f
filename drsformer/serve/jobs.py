"""The server's work: uploaded photos become jobs, one worker thread runs them in order through the same function
``drsformer derain`` uses (:func:`drsformer.photos.derain_file`: exact tiles, the input's format, bit depth and
alpha kept), and their files live in one temporary folder whose size is bounded.

A job is ``queued``, ``running`` (with its progress: steps done of all), then ``done``, ``failed`` (with a
one-line error), ``cancelled`` or ``expired`` (its files removed to keep the folder under its bound). Job ids are
random; the client never names a path.
"""

from __future__ import annotations

import queue
import secrets
import shutil
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from ..data.io import read_image_with_alpha, to_uint8, write_image
from ..errors import DrsformerError
from ..inference import InferenceSettings
from ..photos import derain_file

PREVIEW = ".png"  # what the page shows: 8-bit PNG of the input and of the result, whatever their formats
FINISHED = ("done", "failed", "cancelled", "expired")


class Cancelled(Exception):
    """Raised between tiles when a running job is cancelled."""


@dataclass
class Model:
    """A loaded model the page offers: ``id`` for the API, the file's name and what it is."""

    id: str
    name: str
    variant: str
    model: nn.Module
    settings: InferenceSettings  # the server's tile and default precision, for this model

    def describe(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "variant": self.variant, "tile": self.settings.tile}


@dataclass
class Job:
    id: str
    name: str  # the photo's name as the client gave it: for display and the download, never for a path
    model: Model
    precision: str
    self_ensemble: bool
    folder: Path
    suffix: str  # the format found in the photo's content
    width: int
    height: int
    created: float = field(default_factory=time.time)
    state: str = "queued"
    done: int = 0
    total: int = 0
    error: str | None = None
    seconds: float | None = None
    cancel: threading.Event = field(default_factory=threading.Event)

    @property
    def input(self) -> Path:
        return self.folder / f"input{self.suffix}"

    @property
    def result(self) -> Path:
        return self.folder / f"result{self.suffix}"

    def preview(self, which: str) -> Path:
        return self.folder / f"{which}_preview{PREVIEW}"

    def describe(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "model": self.model.id,
            "precision": self.precision,
            "self_ensemble": self.self_ensemble,
            "width": self.width,
            "height": self.height,
            "state": self.state,
            "done": self.done,
            "total": self.total,
            "error": self.error,
            "seconds": self.seconds,
        }


def new_job_id() -> str:
    return secrets.token_urlsafe(12)


def write_preview(source: Path, target: Path) -> None:
    """An 8-bit PNG of ``source`` for the browser (16-bit, TIFF and gray inputs too), upright, alpha kept."""
    image = read_image_with_alpha(source)
    rgb = to_uint8(image.rgb)
    if image.alpha is not None:
        rgb = np.dstack([rgb, to_uint8(image.alpha)])
    write_image(target, rgb)


class JobQueue:
    """Jobs since the server started, and the one worker that runs them, in the order they came."""

    def __init__(self, root: Path, max_storage_bytes: int, jpeg_quality: int = 95) -> None:
        self.root = root
        self.max_storage_bytes = max_storage_bytes
        self.jpeg_quality = jpeg_quality
        self.jobs: dict[str, Job] = {}
        self.lock = threading.RLock()
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._worker = threading.Thread(target=self._work, name="drsformer-serve-worker", daemon=True)
        self._stopping = threading.Event()
        self._cancelled_at_stop = 0
        self._worker.start()

    # -- the API's side ----------------------------------------------------------------------------------------
    def submit(self, job: Job) -> None:
        with self.lock:
            self.jobs[job.id] = job
        self._queue.put(job.id)

    def get(self, job_id: str) -> Job | None:
        with self.lock:
            return self.jobs.get(job_id)

    def listing(self) -> list[dict[str, Any]]:
        with self.lock:
            return [job.describe() for job in self.jobs.values()]

    def cancel(self, job: Job) -> None:
        """A queued job is dropped when its turn comes; a running one stops at its next tile."""
        job.cancel.set()
        with self.lock:
            if job.state == "queued":
                self._finish(job, "cancelled")

    def pending(self) -> int:
        with self.lock:
            return sum(job.state in ("queued", "running") for job in self.jobs.values())

    def stop(self, timeout: float = 30.0) -> int:
        """Cancels what runs and what waits, ends the worker, removes every job's files; returns how many jobs
        it cancelled (a second call returns the first one's count)."""
        if self._stopping.is_set():
            self._worker.join(timeout)
            return self._cancelled_at_stop
        self._stopping.set()
        with self.lock:
            unfinished = [job for job in self.jobs.values() if job.state in ("queued", "running")]
        for job in unfinished:
            job.cancel.set()
        self._queue.put(None)
        self._worker.join(timeout)
        for job in unfinished:
            if job.state == "queued":
                self._finish(job, "cancelled")
        shutil.rmtree(self.root, ignore_errors=True)
        self._cancelled_at_stop = len(unfinished)
        return self._cancelled_at_stop

    # -- the worker ------------------------------------------------------------------------------------------
    def _work(self) -> None:
        while True:
            job_id = self._queue.get()
            if job_id is None or self._stopping.is_set():
                return
            with self.lock:  # queued -> running, or cancelled, in one step against cancel()
                job = self.jobs.get(job_id)
                if job is None or job.state != "queued":
                    continue
                if job.cancel.is_set():
                    self._finish(job, "cancelled")
                    continue
                job.state = "running"
            self._run(job)
            self._bound_storage()

    def _progress(self, job: Job) -> Callable[[int, int], None]:
        def report(done: int, total: int) -> None:
            job.done, job.total = done, total
            if job.cancel.is_set():
                raise Cancelled

        return report

    def _run(self, job: Job) -> None:
        started = time.perf_counter()
        settings = InferenceSettings(job.precision, job.model.settings.tile, job.self_ensemble)
        try:
            write_preview(job.input, job.preview("input"))
            derain_file(job.model.model, job.input, job.result, settings, self.jpeg_quality,
                        on_progress=self._progress(job))  # fmt: skip
            write_preview(job.result, job.preview("result"))
        except Cancelled:
            self._finish(job, "cancelled")
            return
        except DrsformerError as err:  # out of memory among them: "photo.jpg: out of memory on cpu restoring ..."
            self._finish(job, "failed", str(err).replace(str(job.input), job.name))
            return
        except Exception as err:  # a bug: the job fails with its one line, the server goes on
            traceback.print_exc(file=sys.stderr)
            self._finish(job, "failed", f"internal error ({type(err).__name__}: {err})")
            return
        job.seconds = time.perf_counter() - started
        job.done = job.total = max(job.total, 1)
        self._finish(job, "done")

    def _finish(self, job: Job, state: str, error: str | None = None) -> None:
        """Ends ``job``; its files are gone before anyone can read the final state."""
        with self.lock:
            if state != "done":
                shutil.rmtree(job.folder, ignore_errors=True)
            job.state, job.error = state, error

    def _bound_storage(self) -> None:
        """Removes the oldest finished jobs' files while the folder holds more than its bound (the newest result
        stays, whatever its size)."""
        with self.lock:
            finished = [job for job in self.jobs.values() if job.state == "done"]
        used = sum(size_of(job.folder) for job in finished)
        for job in sorted(finished, key=lambda j: j.created)[:-1]:
            if used <= self.max_storage_bytes:
                break
            used -= size_of(job.folder)
            self._finish(job, "expired", "removed to keep the server's temporary folder under its size bound")


def size_of(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.glob("*") if p.is_file()) if folder.is_dir() else 0
