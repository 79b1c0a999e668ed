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
from collections.abc import Callable, Iterable
from datetime import timedelta
from typing import Any

import torch
from torch import distributed as dist

from .utils import get_rank, get_world_size

__all__ = [
    "PROCESS_GROUP_OWNED",
    "all_reduce",
    "all_reduce_sum",
    "any_rank",
    "average_gradients",
    "broadcast_object",
    "destroy_process_group",
    "get_rank",
    "get_world_size",
    "group_size",
    "init_process_group_from_env",
    "is_initialized",
    "reduction_device",
    "set_group_timeout",
    "start_all_reduce_sum",
]

#: The documented refusal of a default process group that someone else started.
PROCESS_GROUP_OWNED = "default process group is already initialized; Runner requires owning process-group lifecycle"


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


def reduction_device(default: torch.device | None = None, group: Any = None) -> torch.device:
    r"""
    Device the collectives of ``group`` (default: the default group) need: CUDA for NCCL, else the CPU.

    For NCCL it is ``default`` when that is a CUDA device, else the current CUDA device.

    Examples:
        >>> reduction_device()  # no process group
        device(type='cpu')
    """
    if not is_initialized():
        return torch.device("cpu")
    try:
        backend = str(dist.get_backend(group)).lower()
    except (RuntimeError, ValueError):  # a group this rank is not part of
        return torch.device("cpu")
    if "nccl" in backend and torch.cuda.is_available():
        if default is not None and default.type == "cuda":
            return default
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def group_size(group: Any = None) -> int:
    r"""
    Processes in ``group`` (default: the default group); 1 without a process group.

    Examples:
        >>> group_size()
        1
    """
    if not is_initialized():
        return 1
    return max(dist.get_world_size(group), 1)


def all_reduce(tensor: torch.Tensor, op: Any = None, group: Any = None) -> torch.Tensor:
    r"""
    Reduce ``tensor`` over ``group`` in place (``op`` defaults to a sum) and return it; a no-op without a group.

    Examples:
        >>> all_reduce(torch.tensor([1.0, 2.0]))
        tensor([1., 2.])
    """
    if is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM if op is None else op, group=group)
    return tensor


def set_group_timeout(seconds: float, group: Any = None) -> bool:
    r"""
    Set the timeout of every later collective of ``group`` (default: the default group).

    All ranks of the group meet at a barrier first, so no rank starts using the new timeout
    while a peer is still inside an operation that the old one was sized for.  Returns whether
    the timeout changed; without a process group there is nothing to change.  A torch that
    cannot change a group's timeout gets a ``RuntimeWarning`` and ``False``.

    Examples:
        >>> set_group_timeout(60)  # no process group
        False
    """
    if not is_initialized():
        return False
    if seconds <= 0:
        raise ValueError(f"comm.train_timeout_seconds must be a positive number of seconds, got {seconds}")
    setter = getattr(dist, "set_timeout", None) or getattr(dist.distributed_c10d, "_set_pg_timeout", None)
    if setter is None:
        warnings.warn(
            "torch.distributed cannot change a process group's timeout in this torch version; "
            "comm.train_timeout_seconds is not applied",
            RuntimeWarning,
            stacklevel=2,
        )
        return False
    if reduction_device(group=group).type == "cuda":  # NCCL: name the device the barrier runs on
        dist.barrier(group=group, device_ids=[torch.cuda.current_device()])
    else:
        dist.barrier(group=group)
    try:
        setter(timedelta(seconds=seconds), group)
    except Exception as error:  # a backend without mutable timeouts (MPI, UCC) must not stop training
        warnings.warn(f"failed to change the process-group timeout: {error}", RuntimeWarning, stacklevel=2)
        return False
    return True


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


def start_all_reduce_sum(value: float) -> Callable[[], float]:
    r"""
    Start summing ``value`` over all ranks in the background; the returned function waits for the sum.

    Every rank must start the same sums in the same order, as with any collective.  Started before a
    backward pass, the collective runs while the gradients are computed instead of after them.

    Examples:
        >>> pending = start_all_reduce_sum(3.5)  # no process group: the sum is ready
        >>> pending()
        3.5
    """
    if not is_initialized() or get_world_size() == 1:
        return lambda: value
    tensor = torch.tensor([value], dtype=torch.float64, device=reduction_device())
    work = dist.all_reduce(tensor, async_op=True)

    def wait() -> float:
        work.wait()
        return float(tensor.item())

    return wait


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
