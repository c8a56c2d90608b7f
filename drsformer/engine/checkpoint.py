"""Run-folder files: weights in the published format, training states, atomic writes, retention, resume.

``models/net_g_<iter>.pth`` and ``models/net_g_latest.pth`` are ``{'params': ..., 'params_ema': ...}``
(``params_ema`` only with EMA), loadable by :func:`drsformer.archs.from_checkpoint`. With
``logger.weights_format: safetensors`` they are ``net_g_<iter>.safetensors`` and so on, holding only the weights the
run validates (see :mod:`drsformer.archs.weight_files`).
``training_states/<iter>.state`` holds everything a resume needs. Every file is written atomically
(:mod:`drsformer.files`), so a killed run leaves either the old file or the new one.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..archs.weight_files import ARCHITECTURE_KEY, read_checkpoint, read_checkpoint_bytes
from ..errors import CheckpointError
from ..files import link_or_copy_atomic, save_torch_atomic

STATE_SUFFIX = ".state"
_NUMBERED_WEIGHTS = re.compile(r"net_g_(\d+)\.(?:pth|safetensors)$")  # either format, for retention
_NUMBERED_STATE = re.compile(r"(\d+)\.state$")


def cpu_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in state.items()}


def weights_path(models_dir: Path, label: int | str, weights_format: str = "pth") -> Path:
    """``models_dir/net_g_<label>.<weights_format>``; ``label`` is an iteration, ``latest`` or ``best``."""
    return models_dir / f"net_g_{label}.{weights_format}"


def save_weights(
    models_dir: Path,
    iteration: int,
    params: dict[str, torch.Tensor],
    params_ema: dict[str, torch.Tensor] | None,
    weights_format: str = "pth",
    architecture: dict[str, Any] | None = None,
) -> Path:
    """Writes ``net_g_<iteration>.<weights_format>`` and points ``net_g_latest`` (same suffix) at it; returns its path.

    A ``.pth`` file holds ``params`` and, with EMA, ``params_ema`` and ``validated: params_ema`` (the weights the run
    validated and picked ``net_g_best`` by), and ``architecture``: the network's constructor arguments (what its
    keys cannot tell, such as top-k ratios other than the paper's). A ``.safetensors`` file holds one set: the
    validated weights, named in its metadata, with the architecture beside them.
    """
    path = weights_path(models_dir, iteration, weights_format)
    if weights_format == "safetensors":
        from ..archs.weight_files import ARCHITECTURE_ENTRY, save_safetensors

        validated = "params" if params_ema is None else "params_ema"
        metadata = {ARCHITECTURE_ENTRY: json.dumps(architecture)} if architecture else None
        save_safetensors(path, params if params_ema is None else params_ema, validated, metadata)
    else:
        payload: dict[str, Any] = {"params": cpu_state(params)}
        if params_ema is not None:
            payload["params_ema"] = cpu_state(params_ema)
            payload["validated"] = "params_ema"
        if architecture:
            payload[ARCHITECTURE_KEY] = dict(architecture)
        save_torch_atomic(payload, path)
    link_or_copy_atomic(path, weights_path(models_dir, "latest", weights_format))
    return path


def save_best(models_dir: Path, source: Path) -> None:
    """Points ``net_g_best`` (with ``source``'s suffix) at ``source``."""
    link_or_copy_atomic(source, models_dir / f"net_g_best{source.suffix}")


def prune(folder: Path, pattern: re.Pattern[str], keep: int) -> list[Path]:
    """Deletes all but the ``keep`` highest-numbered files matching ``pattern``; returns the deleted ones."""
    numbered = sorted(
        ((int(m.group(1)), p) for p in folder.glob("*") if (m := pattern.fullmatch(p.name))), key=lambda t: t[0]
    )
    doomed = [p for _, p in numbered[: max(0, len(numbered) - keep)]]
    for path in doomed:
        path.unlink(missing_ok=True)
    return doomed


def prune_run(run_dir: Path, keep: int) -> None:
    """Keeps the newest ``keep`` periodic weights and states (``latest`` and ``best`` are separate files)."""
    prune(run_dir / "models", _NUMBERED_WEIGHTS, keep)
    prune(run_dir / "training_states", _NUMBERED_STATE, keep)


def rng_states() -> dict[str, Any]:
    """Python, NumPy, torch and CUDA generator states, in types ``torch.load(weights_only=True)`` accepts."""
    state = np.random.get_state(legacy=True)
    assert isinstance(state, tuple)  # the legacy global generator is an MT19937, whose state is a tuple
    name, keys, pos, has_gauss, cached = state
    states: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos)}
        | {"has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: dict[str, Any]) -> None:
    python = states["python"]
    random.setstate((python[0], tuple(python[1]), python[2]))
    n = states["numpy"]
    keys = n["keys"].numpy().astype(np.uint32)
    np.random.set_state((n["name"], keys, n["pos"], n["has_gauss"], n["cached_gaussian"]))
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available() and len(states["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(states["cuda"])


def save_state(states_dir: Path, iteration: int, state: dict[str, Any]) -> Path:
    path = states_dir / f"{iteration}{STATE_SUFFIX}"
    save_torch_atomic(state, path)
    return path


def numbered_states(run_dir: Path) -> list[tuple[int, Path]]:
    """``(iteration, path)`` of every training state in ``run_dir/training_states``, newest first."""
    folder = run_dir / "training_states"
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NUMBERED_STATE.fullmatch(p.name))]
    return sorted(found, reverse=True)


def newest_state(run_dir: Path) -> Path | None:
    """The highest-numbered training state in ``run_dir/training_states``, or None."""
    states = numbered_states(run_dir)
    return states[0][1] if states else None


# What a training state holds, and the type each entry must have.
_STATE_LAYOUT: dict[str, tuple[type, ...]] = {
    "iteration": (int,),
    "params": (dict,),
    "optimizer": (dict,),
    "scheduler": (dict, type(None)),
    "scaler": (dict,),
    "rng": (dict,),
    "options": (dict,),
    "sampler": (dict,),
    "progress": (dict,),
}


def load_state(path: str | os.PathLike, data: bytes | None = None) -> dict[str, Any]:
    """Reads a training state (``weights_only``), from ``path`` or from ``data`` (that file's bytes, received from
    another process); a file that is not one is a :class:`CheckpointError`."""
    state = read_checkpoint(path) if data is None else read_checkpoint_bytes(data, os.fspath(path))
    if not isinstance(state, dict) or any(k not in state for k in _STATE_LAYOUT):
        have = ", ".join(sorted(map(str, state))) if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(
            f"{path}: not a drsformer training state (it has {have}); to start from weights use "
            "path.pretrain_network_g instead of --resume"
        )
    for key, kinds in _STATE_LAYOUT.items():
        if not isinstance(state[key], kinds) or isinstance(state[key], bool):
            raise CheckpointError(f"{path}: damaged training state, {key!r} is a {type(state[key]).__name__}")
    if any(k not in state["rng"] for k in ("python", "numpy", "torch")):
        raise CheckpointError(f"{path}: damaged training state, the random generator states are incomplete")
    return state


def file_digest(path: Path) -> str:
    """SHA-256 of a file's bytes: whether two machines hold the same state."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def set_aside(path: Path) -> Path | None:
    """Renames an unreadable state to ``<name>.unreadable`` (never deleted, never picked again); None if that fails."""
    for n in range(1, 100):
        target = path.with_name(path.name + (".unreadable" if n == 1 else f".unreadable-{n}"))
        if not target.exists():
            try:
                os.rename(path, target)
            except OSError:
                return None
            return target
    return None


def newest_readable_state(
    run_dir: Path, at_most: int | None = None, warn: Callable[[str], None] = print, move_aside: bool = True
) -> tuple[Path, dict[str, Any]] | None:
    """The newest training state (up to iteration ``at_most``) that reads back, with its contents.

    Each newer state that cannot be read is reported through ``warn`` in one line and, with ``move_aside``
    (the process that owns the folder), renamed by :func:`set_aside` so that a later save cannot overwrite it.
    Returns None when there is no state at all; raises :class:`CheckpointError` when none of them reads.
    """
    states = [(i, p) for i, p in numbered_states(run_dir) if at_most is None or i <= at_most]
    bad = []
    for _, path in states:
        try:
            return path, load_state(path)
        except CheckpointError as err:
            kept = set_aside(path) if move_aside else None
            where = f"kept as {kept.name}" if kept else "left in place"
            warn(f"{err} ({where}); trying the next older state")
            bad.append(path.name)
    if bad:
        raise CheckpointError(
            f"{run_dir / 'training_states'}: no training state can be read ({', '.join(bad)}); start a new run "
            "under another name, or resume from a state you have elsewhere with --resume PATH"
        )
    return None
