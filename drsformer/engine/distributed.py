"""Processes and devices from the torchrun environment, and the few collective operations training needs.

One process needs no launcher. Under ``torchrun`` the rank, world size and local rank come from the
environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``); the backend is NCCL when each process has a GPU and
gloo otherwise.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import TypeVar

import torch
import torch.distributed as dist

from ..devices import resolve_device
from ..errors import ConfigError


@dataclass(frozen=True)
class Distributed:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    restart: int = 0  # torchrun's elastic restart round (TORCHELASTIC_RESTART_COUNT)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"environment variable {name}={value!r} is not an integer") from None


def init(device: str | None = None) -> Distributed:
    """Joins the process group torchrun describes (if any) and picks this process's device.

    ``device`` is ``cpu``, ``cuda``, ``cuda:N`` or None (CUDA when available). With ``cuda``, process
    ``LOCAL_RANK`` uses GPU ``LOCAL_RANK``; when the process sees a single GPU (one GPU per task, as Slurm gives),
    it uses that one. ``cuda:N`` names the GPU of a single process; several processes choose theirs by rank.
    """
    world_size = _env_int("WORLD_SIZE", 1)
    rank, local_rank = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    asked = resolve_device(device)
    use_cuda = asked.type == "cuda"
    if use_cuda and asked.index is not None and world_size > 1:
        raise ConfigError(
            f"--device {asked}: with {world_size} processes each one uses GPU LOCAL_RANK; give --device cuda, and "
            "choose the GPUs with CUDA_VISIBLE_DEVICES"
        )
    chosen = (asked if asked.index is not None else cuda_device(local_rank)) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(chosen)
    if world_size > 1 and not dist.is_initialized():
        timeout = timedelta(minutes=30)
        store = rendezvous_store(rank, world_size, timeout)
        dist.init_process_group("nccl" if use_cuda else "gloo", store=store, rank=rank, world_size=world_size,
                                timeout=timeout)  # fmt: skip
    return Distributed(rank, world_size, local_rank, chosen, _env_int("TORCHELASTIC_RESTART_COUNT", 0))


def cuda_device(local_rank: int) -> torch.device:
    """GPU ``local_rank``, or the only visible GPU when there is one (``CUDA_VISIBLE_DEVICES`` per task)."""
    count = torch.cuda.device_count()
    if local_rank < count:
        return torch.device("cuda", local_rank)
    if count == 1:
        return torch.device("cuda", 0)
    raise ConfigError(
        f"LOCAL_RANK {local_rank} but only {count} GPU(s) are visible; use --nproc_per_node at most the number of "
        "GPUs (or give each process one GPU with CUDA_VISIBLE_DEVICES)"
    )


def rendezvous_store(rank: int, world_size: int, timeout: timedelta) -> dist.Store:
    """The store the process group forms through: torchrun's (its agent hosts it) or, without torchrun's agent,
    one that rank 0 hosts at ``MASTER_ADDR:MASTER_PORT``; under a prefix per elastic restart round.

    With ``torchrun --max-restarts``, the restarted workers find the keys the failed round left in the agent's
    store, and the default ``env://`` initialisation then fails to connect ("Gloo connectFullMesh failed");
    NCCL exchanges its unique id through the same store. A prefix per round keeps the rounds apart.
    """
    host, port = os.environ.get("MASTER_ADDR"), _env_int("MASTER_PORT", 0)
    if not host or not port:
        raise ConfigError(
            f"WORLD_SIZE is {world_size} but MASTER_ADDR/MASTER_PORT are not set; start several processes with torchrun"
        )
    agent = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    store = dist.TCPStore(host, port, world_size, is_master=rank == 0 and not agent, timeout=timeout)
    return dist.PrefixStore(f"drsformer/round{_env_int('TORCHELASTIC_RESTART_COUNT', 0)}", store)


def shutdown(wait_for_all: bool = False) -> None:
    """Leaves the process group. ``wait_for_all`` (a run that finished; never after an error, where a peer may be
    gone) first waits until every process is here, so none tears down its connections while another still
    communicates; then collects what still holds the group (DDP's reducer), so that Gloo's threads end while the
    interpreter is alive. Without both, a finished run's worker could abort at exit ("terminate called without
    an active exception") and torchrun would report the run as failed."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    if wait_for_all:
        dist.barrier()
    dist.destroy_process_group()
    gc.collect()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum over processes, in place (a no-op for one process)."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def reduce_flags(flags: Sequence[torch.Tensor | bool], device: torch.device) -> list[bool]:
    """Each flag, true when it is true in at least one process: one collective and one device-to-host read for
    all of them (a training step's health flags, the stop request and the time budget)."""
    values = torch.stack(
        [
            f.to(device=device, dtype=torch.float32).reshape(())
            if isinstance(f, torch.Tensor)
            else torch.tensor(float(f), device=device)
            for f in flags
        ]
    )
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(values, op=dist.ReduceOp.MAX)
    return [v > 0 for v in values.tolist()]


def any_process(flag: bool, device: torch.device) -> bool:
    """True when ``flag`` is true in at least one process."""
    if not (dist.is_available() and dist.is_initialized()):
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def broadcast_bytes(data: bytes | None, device: torch.device, src: int = 0) -> bytes:
    """``data`` from process ``src`` on every process (a file's content: sent as one uint8 tensor)."""
    if not (dist.is_available() and dist.is_initialized()):
        assert data is not None
        return data
    size = torch.tensor([len(data) if data is not None else 0], dtype=torch.int64, device=device)
    dist.broadcast(size, src=src)
    if dist.get_rank() == src:
        assert data is not None  # the source process has the data
        buffer = torch.frombuffer(bytearray(data), dtype=torch.uint8).to(device)
    else:
        buffer = torch.empty(int(size.item()), dtype=torch.uint8, device=device)
    dist.broadcast(buffer, src=src)
    return buffer.cpu().numpy().tobytes()


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


T = TypeVar("T")


def broadcast_object(obj: T, src: int = 0) -> T:
    """``obj`` from process ``src`` on every process (every process passes a value of the same type)."""
    if not (dist.is_available() and dist.is_initialized()):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


@torch.no_grad()
def max_replica_difference(model: torch.nn.Module) -> float:
    """The largest difference between any process's weights and the main process's (0 for one process)."""
    if not (dist.is_available() and dist.is_initialized()):
        return 0.0
    param = next(model.parameters())
    difference = torch.zeros((), dtype=torch.float64, device=param.device)
    for tensor in model.state_dict().values():
        reference = tensor.detach().clone()
        dist.broadcast(reference, src=0)
        difference = torch.maximum(difference, (tensor.double() - reference.double()).abs().max())
    dist.all_reduce(difference, op=dist.ReduceOp.MAX)
    return float(difference)
