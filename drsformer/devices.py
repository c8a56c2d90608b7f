"""The one device check: ``cpu``, ``cuda`` or ``cuda:N``, and whether this PyTorch can use it."""

from __future__ import annotations

import torch

from .errors import ConfigError


def default_device() -> str:
    """``cuda`` when a GPU is usable, else ``cpu``."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_device(name: str | None, key: str = "--device") -> torch.device:
    """The device ``name`` names (None: :func:`default_device`); a name this machine cannot use is a
    :class:`ConfigError` naming ``key``."""
    text = (name or default_device()).strip().lower()
    if text != "cpu" and text != "cuda" and not (text.startswith("cuda:") and text[5:].isdigit()):
        raise ConfigError(f"{key}: unknown device {name!r}; use cpu, cuda or cuda:N")
    device = torch.device(text)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"{key}: {text} asked for, but PyTorch sees no CUDA GPU; use cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"{key}: {text} asked for, but only {torch.cuda.device_count()} GPU(s) are visible")
    return device


# How allocation failures read: PyTorch's allocators (CPU and CUDA), and cuBLAS's and cuDNN's own workspaces,
# which fail with a status of their own rather than an OutOfMemoryError.
OUT_OF_MEMORY_MESSAGES = (
    "out of memory",
    "ran out of memory",
    "can't allocate memory",
    "CUBLAS_STATUS_ALLOC_FAILED",
    "CUDNN_STATUS_ALLOC_FAILED",
)


def is_out_of_memory(err: BaseException) -> bool:
    """Whether ``err`` is an allocation failure: CUDA's ``OutOfMemoryError``, the CPU allocator's, or cuBLAS's or
    cuDNN's failure to allocate a workspace."""
    if isinstance(err, torch.cuda.OutOfMemoryError):
        return True
    text = str(err)
    return isinstance(err, RuntimeError) and any(m in text for m in OUT_OF_MEMORY_MESSAGES)
