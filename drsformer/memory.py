"""Host memory: huge pages for large CPU tensors, and the readings behind every benchmark's "peak MB".

Readings: this process's resident set on CPU, from Linux's ``/proc/self/status`` (``VmRSS`` now, ``VmHWM`` the
high-water mark; NaN elsewhere rather than a guess), and the allocator's peak on CUDA.
"""

from __future__ import annotations

import os

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
