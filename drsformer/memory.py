"""Host memory: huge pages for large CPU tensors, freed memory kept for reuse, and the readings behind every
benchmark's "peak MB".

Readings: this process's resident set on CPU, from Linux's ``/proc/self/status`` (``VmRSS`` now, ``VmHWM`` the
high-water mark; NaN elsewhere rather than a guess), and the allocator's peak on CUDA.
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys

import torch

# PyTorch's CPU allocator asks the kernel for 2 MB pages for tensors of 2 MB and more when this is set; it reads
# the variable once, at the first such allocation.
THP_VARIABLE = "THP_MEM_ALLOC_ENABLE"


def prefer_huge_pages() -> bool:
    """Ask for transparent huge pages for large CPU tensors, unless the user set ``THP_MEM_ALLOC_ENABLE`` already.

    Without them every large activation is faulted in 4 KB at a time: the full model's whole 512^2 image spent as
    much time in the kernel as in its own code, and ran 1.66x faster with them (docs/benchmarks.md). ``derain``,
    ``test`` and ``bench --mode infer`` call this; training, where no gain was measured, does not. It takes
    effect only if no tensor of 2 MB or more was allocated in this process before. Returns whether it is asked for.
    """
    os.environ.setdefault(THP_VARIABLE, "1")
    return os.environ[THP_VARIABLE] == "1"  # PyTorch takes "1" and "0" only


# glibc's mallopt parameters, and the environment variables with which a user sets them at start-up.
M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
GLIBC_DEFAULTS = {M_TRIM_THRESHOLD: 128 * 1024, M_MMAP_MAX: 65536}
MALLOC_VARIABLES = ("MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_")


def _mallopt(settings: dict[int, int]) -> bool:
    if sys.platform != "linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # this process's own C library
    except (OSError, AttributeError):
        return False
    return all(mallopt(parameter, value) == 1 for parameter, value in settings.items())


def keep_freed_memory(keep: bool = True) -> bool:
    """Keep the memory freed tensors leave in this process for the next ones, instead of handing it back.

    glibc maps every block above 32 MB afresh and unmaps it when freed, so each large activation of a forward pass
    page-faults its memory in again, and the kernel zeroes it first. With mmap off for the heap and trimming
    raised, freed blocks are reused. For the full model on CPU (docs/benchmarks.md): inference about 1.3x
    faster at 256^2 and 1.8x at 512^2, a training step at 128^2 1.12x; the resident set's peak grows by up to
    12 % at 256^2 and by 62-79 % at 512^2, and stays at its peak until the process ends. ``derain``, ``test``,
    ``bench``, ``train`` and ``demo`` call this; ``serve``, a long-running process, does not. A user's own
    ``MALLOC_MMAP_MAX_``, ``MALLOC_TRIM_THRESHOLD_`` or ``glibc.malloc`` tunables win (``MALLOC_MMAP_MAX_=65536``
    keeps glibc's behaviour). ``keep=False`` restores glibc's defaults (for benchmarks). Returns whether the
    setting was applied (glibc on Linux only).
    """
    if keep and (
        any(v in os.environ for v in MALLOC_VARIABLES) or "glibc.malloc" in os.environ.get("GLIBC_TUNABLES", "")
    ):
        return False
    return _mallopt({M_MMAP_MAX: 0, M_TRIM_THRESHOLD: 2**31 - 1} if keep else GLIBC_DEFAULTS)


def prepare_host_memory(inference: bool) -> None:
    """What a command asks of host memory before its first large tensor: huge pages for inference (no gain was
    measured for training) and freed memory kept for reuse for both."""
    if inference:
        prefer_huge_pages()
    keep_freed_memory()


def _status_mb(field: str) -> float:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def resident_mb() -> float:
    """This process's resident set now, in MiB."""
    return _status_mb("VmRSS")


def reset_peak(device: torch.device | str = "cpu") -> None:
    """Start a new peak: the CUDA allocator's, or on CPU the process's resident high-water mark."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:  # writing 5 resets VmHWM; without it the peak also covers what ran before
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def peak_mb(device: torch.device | str = "cpu") -> float:
    """The peak since :func:`reset_peak`, in MiB: tensors allocated on CUDA, the resident set on CPU."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) / 2**20
    return _status_mb("VmHWM")
