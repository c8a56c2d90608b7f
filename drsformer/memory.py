"""Memory readings for the benchmark commands: this process's resident set on CPU, the allocator's peak on CUDA.

CPU figures come from Linux's ``/proc/self/status`` (``VmRSS`` now, ``VmHWM`` the high-water mark); elsewhere
they are NaN rather than a guess.
"""

from __future__ import annotations

import torch


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
