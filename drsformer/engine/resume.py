"""Where a run starts: a new run, ``--resume auto`` (the newest readable state in the run folder), a given state
file, or, for a worker torchrun restarted (``--max-restarts``), the state its failed round saved."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import ConfigError
from . import checkpoint as ckpt
from . import distributed
from .distributed import Distributed
from .logger import RunLogger
from .state import StateKeeper

AUTO = "auto"


def run_folder(options: dict[str, Any]) -> Path:
    root = options["path"]["experiments_root"]
    return Path(root) if root else Path("experiments") / options["name"]


def find_resume(options: dict[str, Any], resume: str | None, dist: Distributed, run_dir: Path) -> Path | str | None:
    """``auto``, a state file, or None (a new run). The main process decides whether the run folder already holds
    states; a new run into a folder that does is refused, so that no run is overwritten by mistake."""
    resume = resume or options["path"]["resume_state"]
    if not resume and dist.restart > 0:
        resume = AUTO  # an elastic restart: continue where the failed round saved
    if resume == AUTO:
        return AUTO
    if resume:
        path = Path(resume)
        if not distributed.broadcast_object(path.is_file() if dist.is_main else None):
            raise ConfigError(f"--resume {resume}: no such training state")
        return path
    existing = ckpt.newest_state(run_dir) if dist.is_main else None
    existing_name = distributed.broadcast_object(existing.name if existing else None)
    if existing_name is not None:
        raise ConfigError(
            f"{run_dir} already holds training states (newest: {existing_name}); continue it with "
            "--resume auto, or start a new run under another name (--set name=...)"
        )
    return None


def read_resume_state(
    resume: Path | str | None, keeper: StateKeeper, dist: Distributed, logger: RunLogger, run_dir: Path
) -> tuple[Path, dict[str, Any]] | None:
    """The state to resume from (path and contents), or None for a new run."""
    if dist.restart:
        logger.info(f"elastic restart {dist.restart}: the processes re-formed their group")
    if resume == AUTO:
        found = keeper.newest()
        if found is None:
            logger.info(f"--resume auto: no training state in {run_dir}, starting a new run")
        return found
    return keeper.read(Path(resume)) if resume is not None else None
