"""Collective helpers shared by the meters: world size, reduction device, sums and ragged gathers.

Every function here is a no-op (or a local answer) when no process group is initialised, so
the meters work unchanged in single-process scripts.  Functions that talk to other ranks are
collective: every rank must call them in the same order with compatible arguments.

    >>> world_size()
    1
    >>> reduction_device(None)
    device(type='cpu')
    >>> [t.tolist() for t in gather_rows(torch.tensor([[1, 2], [3, 4]]))]
    [[[1, 2], [3, 4]]]
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

# dtypes that can travel through ``gather_rows``; the index is the code sent in the header.
_DTYPES: tuple[torch.dtype, ...] = (
    torch.float16,
    torch.bfloat16,
    torch.float32,
    torch.float64,
    torch.uint8,
    torch.int8,
    torch.int16,
    torch.int32,
    torch.int64,
    torch.bool,
)
_MAX_TRAILING_DIMS = 6
# header layout: [has_rows, rows, dtype code, trailing ndim, trailing dims (padded with 0)]
_HEADER_SIZE = 4 + _MAX_TRAILING_DIMS


def is_initialized() -> bool:
    """Whether a default process group exists."""
    return dist.is_available() and dist.is_initialized()


def world_size(enabled: bool = True) -> int:
    """Number of ranks that reductions span: 1 when ``enabled`` is False or no process group exists."""
    if not enabled or not is_initialized():
        return 1
    return dist.get_world_size()


def reduction_device(preferred: torch.device | None) -> torch.device:
    """Device for collective buffers.

    Without a process group this is ``preferred`` (or CPU).  With one, the backend decides:
    NCCL needs the current CUDA device, gloo and MPI work on CPU.  A mixed backend such as
    ``"cpu:gloo,cuda:nccl"`` keeps the preferred device when it names one the backend serves.
    """
    if not is_initialized():
        return preferred if preferred is not None else torch.device("cpu")
    backend = str(dist.get_backend()).lower()
    serves_cuda = "nccl" in backend and torch.cuda.is_available()
    serves_cpu = "gloo" in backend or "mpi" in backend
    if preferred is not None and (
        (preferred.type == "cuda" and serves_cuda) or (preferred.type == "cpu" and serves_cpu)
    ):
        return preferred
    if serves_cuda and not serves_cpu:
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sum(tensor: Tensor) -> Tensor:
    """Sum ``tensor`` over all ranks in place (no-op without a process group); returns it."""
    if is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def start_all_reduce_sum(tensor: Tensor) -> Any:
    """Begin summing ``tensor`` over all ranks in place; returns the work to ``wait()`` on, or None when nothing is reduced."""
    if is_initialized() and dist.get_world_size() > 1:
        return dist.all_reduce(tensor, op=dist.ReduceOp.SUM, async_op=True)
    return None


def all_reduce_max(tensor: Tensor) -> Tensor:
    """Element-wise maximum of ``tensor`` over all ranks, in place; returns it."""
    if is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tensor


def all_gather_objects(obj: object) -> list[object]:
    """``obj`` from every rank, in rank order (``[obj]`` without a process group)."""
    if not is_initialized() or dist.get_world_size() == 1:
        return [obj]
    gathered: list[object] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def _header(rows: Tensor | None, device: torch.device) -> Tensor:
    header = torch.zeros(_HEADER_SIZE, dtype=torch.int64)
    if rows is not None:
        trailing = tuple(rows.shape[1:])
        if len(trailing) > _MAX_TRAILING_DIMS:
            raise ValueError(
                f"gather_rows supports at most {_MAX_TRAILING_DIMS} trailing dimensions, but got shape {tuple(rows.shape)}"
            )
        if rows.dtype not in _DTYPES:
            raise ValueError(f"gather_rows cannot send dtype {rows.dtype}; supported: {_DTYPES}")
        header[:4] = torch.tensor([1, rows.shape[0], _DTYPES.index(rows.dtype), len(trailing)])
        header[4 : 4 + len(trailing)] = torch.tensor(trailing, dtype=torch.int64)
    return header.to(device)


def _layout(headers: list[list[int]]) -> tuple[torch.dtype, tuple[int, ...]] | None:
    """The dtype and trailing shape every rank with rows agrees on; None when no rank has rows."""
    layouts = {
        rank: (_DTYPES[header[2]], tuple(header[4 : 4 + header[3]])) for rank, header in enumerate(headers) if header[0]
    }
    if not layouts:
        return None
    if len(set(layouts.values())) > 1:
        described = ", ".join(f"rank {rank}: {dtype} rows of shape {shape}" for rank, (dtype, shape) in layouts.items())
        raise ValueError(f"cannot gather tensors whose dtype or trailing shape differ across ranks ({described})")
    return next(iter(layouts.values()))


def gather_rows(rows: Tensor | None) -> list[Tensor]:
    """Gather tensors with different numbers of rows (dim 0) from every rank, in rank order.

    A rank without data passes None and still takes part; it receives the others' rows and
    contributes an empty tensor.  Ranks agree on dtype and trailing shape through a small
    fixed-size header, so no pickling is involved.  Results live on the reduction device.
    Without a process group the local tensor comes back alone (an empty list for None).
    """
    if not is_initialized() or dist.get_world_size() == 1:
        return [] if rows is None else [rows]
    device = reduction_device(rows.device if rows is not None else None)
    size = dist.get_world_size()
    header = _header(rows, device)
    headers = [torch.empty_like(header) for _ in range(size)]
    dist.all_gather(headers, header)
    header_lists = [h.tolist() for h in headers]
    layout = _layout(header_lists)
    if layout is None:
        return [torch.empty(0, device=device) for _ in range(size)]
    dtype, trailing = layout
    counts = [h[1] if h[0] else 0 for h in header_lists]
    longest = max(counts)
    if longest == 0:
        return [torch.empty((0, *trailing), dtype=dtype, device=device) for _ in range(size)]
    transport = torch.uint8 if dtype == torch.bool else dtype
    padded = torch.zeros((longest, *trailing), dtype=transport, device=device)
    if rows is not None and rows.shape[0]:
        padded[: rows.shape[0]] = rows.to(device=device, dtype=transport)
    buffers = [torch.empty_like(padded) for _ in range(size)]
    dist.all_gather(buffers, padded)
    return [buffer[:count].to(dtype) for buffer, count in zip(buffers, counts)]
