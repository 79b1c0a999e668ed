"""Process-group helpers for the runners: start and stop the default group, and small reductions.

Every helper works alone as well: without an initialised process group the reductions return
their input and ``broadcast_object`` returns its argument, so single-process code needs no
``if distributed`` branches.  Collectives run on the device the group's backend needs (CUDA for
NCCL, CPU for gloo), so callers pass tensors from wherever they live.

Multi-process training (elastic restarts, timeouts, fault tolerance) builds on these; this module
only holds what the single-process and plain DDP runner need.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable
from datetime import timedelta
from typing import Any

import torch
from torch import distributed as dist

from .utils import get_rank, get_world_size

__all__ = [
    "all_reduce_sum",
    "any_rank",
    "average_gradients",
    "broadcast_object",
    "destroy_process_group",
    "get_rank",
    "get_world_size",
    "init_process_group_from_env",
    "is_initialized",
    "reduction_device",
]


def is_initialized() -> bool:
    """Whether a default process group exists in this process."""
    return dist.is_available() and dist.is_initialized()


def init_process_group_from_env(
    *, backend: str | None = None, init_method: str | None = None, timeout_seconds: int | None = None
) -> bool:
    r"""
    Start the default process group when ``WORLD_SIZE > 1`` and none exists yet.

    Rank, world size and rendezvous come from the environment ``torchrun`` sets
    (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``).  ``backend=None`` lets torch
    pick (NCCL for CUDA tensors, gloo for CPU tensors).  Returns ``True`` when this call created
    the group, so the caller knows it owns it and must destroy it.

    Examples:
        >>> init_process_group_from_env()  # WORLD_SIZE unset: nothing to start
        False
    """
    world_size = int(os.getenv("WORLD_SIZE", "1"))
    if world_size <= 1 or is_initialized():
        return False
    if timeout_seconds is not None and timeout_seconds <= 0:
        raise ValueError(f"process-group timeout must be a positive number of seconds, got {timeout_seconds}")
    kwargs: dict[str, Any] = {"backend": backend, "init_method": init_method}
    if timeout_seconds is not None:
        kwargs["timeout"] = timedelta(seconds=timeout_seconds)
    dist.init_process_group(world_size=world_size, rank=int(os.getenv("RANK", "0")), **kwargs)
    return True


def destroy_process_group() -> None:
    """Destroy the default process group if one exists; a failure is reported as a warning."""
    if not is_initialized():
        return
    try:
        dist.destroy_process_group()
    except Exception as error:  # tearing down must not hide the error that ended the run
        warnings.warn(f"failed to destroy default process group: {error}", RuntimeWarning, stacklevel=2)


def reduction_device(default: torch.device | None = None) -> torch.device:
    """Device collectives of the default group need: ``default`` (or CUDA) for NCCL, else the CPU."""
    if is_initialized() and "nccl" in str(dist.get_backend()).lower() and torch.cuda.is_available():
        return default if default is not None and default.type == "cuda" else torch.device("cuda")
    return torch.device("cpu")


def broadcast_object(obj: Any, src: int = 0) -> Any:
    r"""
    ``obj`` as rank ``src`` holds it, on every rank (pickled); ``obj`` itself without a group.

    Examples:
        >>> broadcast_object("20240101")
        '20240101'
    """
    if not is_initialized() or get_world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_reduce_sum(value: float) -> float:
    r"""
    The sum of ``value`` over all ranks (``value`` itself without a group).

    Examples:
        >>> all_reduce_sum(3.5)
        3.5
    """
    if not is_initialized() or get_world_size() == 1:
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=reduction_device())
    dist.all_reduce(tensor)
    return float(tensor.item())


def any_rank(flag: bool) -> bool:
    r"""
    Whether ``flag`` is true on at least one rank; all ranks get the same answer.

    Examples:
        >>> any_rank(False), any_rank(True)
        (False, True)
    """
    if not is_initialized() or get_world_size() == 1:
        return bool(flag)
    tensor = torch.tensor([1.0 if flag else 0.0], device=reduction_device())
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return bool(tensor.item() > 0)


def average_gradients(parameters: Iterable[torch.nn.Parameter]) -> None:
    r"""
    Average ``.grad`` of each parameter over all ranks, in place.

    DDP does this during ``backward``; the runner calls it only for gradients that were
    accumulated under ``no_sync()`` when a loader ran out in the middle of an accumulation window.
    """
    if not is_initialized() or get_world_size() == 1:
        return
    world_size = get_world_size()
    device = reduction_device()
    for parameter in parameters:
        if parameter.grad is None:
            continue
        grad = parameter.grad if parameter.grad.device.type == device.type else parameter.grad.to(device)
        dist.all_reduce(grad)
        grad.div_(world_size)
        if grad is not parameter.grad:
            parameter.grad.copy_(grad)
