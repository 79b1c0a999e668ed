"""Reduce many meters across ranks at once.

Each meter contributes a numerator (``value * n`` for ``bat``, the running ``sum`` for ``avg``)
and a count.  All of them travel in one float64 buffer and one ``all_reduce``; the result of a
meter is its summed numerator divided by its summed count, or NaN when that count is zero.

Tensor meters need every rank to agree on the shape, including ranks that never saw a value.
One small ``all_reduce(MAX)`` of per-meter flags tells whether any rank holds a tensor meter; only
then do the ranks exchange shapes with ``all_gather_object``.  Scalar-only meters (losses, learning
rates) therefore cost two small collectives per read and no pickling.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

import torch
from torch import Tensor

from .distributed import all_gather_objects, all_reduce_max, all_reduce_sum, reduction_device

if TYPE_CHECKING:
    from .average_meter import AverageMeter

Mode = Literal["batch", "average"]


def _agreed_shapes(
    meters: Sequence[AverageMeter], names: Sequence[str], device: torch.device
) -> list[tuple[int, ...] | None]:
    """Per meter, the tensor shape all ranks agree on, or None for scalar meters everywhere."""
    local = [meter._tensor_shape() for meter in meters]
    flags = torch.tensor([shape is not None for shape in local], dtype=torch.int64, device=device)
    if not all_reduce_max(flags).any():
        return [None] * len(meters)
    history = [meter._tensor_shape() is None and meter._count_value() > 0 for meter in meters]
    gathered = all_gather_objects((local, history))
    agreed: list[tuple[int, ...] | None] = []
    for index, name in enumerate(names):
        shapes = [rank_shapes[index] for rank_shapes, _ in gathered]
        known = {shape for shape in shapes if shape is not None}
        if not known:
            agreed.append(None)
            continue
        if len(known) > 1:
            raise ValueError(f"AverageMeter {name!r} received inconsistent tensor shapes across ranks: {shapes!r}")
        if any(rank_history[index] for _, rank_history in gathered):
            raise ValueError(
                f"AverageMeter {name!r} cannot mix scalar and tensor values across ranks: tensor shapes {shapes!r}"
            )
        agreed.append(known.pop())
    return agreed


def _flat(value: float | int | Tensor, numel: int, device: torch.device) -> Tensor:
    if isinstance(value, Tensor):
        return value.detach().to(device=device, dtype=torch.float64).reshape(-1)
    return torch.full((numel,), float(value), dtype=torch.float64, device=device)


def synchronise_meters(
    meters: Sequence[AverageMeter], mode: Mode, names: Sequence[str] | None = None
) -> list[float | Tensor]:
    """The ``bat`` (``mode="batch"``) or ``avg`` (``mode="average"``) of each meter over all ranks.

    Collective: every rank must pass meters in the same order.  Scalar results are Python
    floats; tensor results are float64 tensors on the reduction device.
    """
    if not meters:
        return []
    names = list(names) if names is not None else [type(meter).__name__ for meter in meters]
    device = reduction_device(meters[0].device)
    shapes = _agreed_shapes(meters, names, device)
    pieces: list[Tensor] = []
    for meter, shape in zip(meters, shapes):
        numel = math.prod(shape) if shape is not None else 1
        numerator, count = meter._contribution(mode)
        pieces.append(_flat(numerator, numel, device))
        pieces.append(_flat(count, 1, device))
    packed = all_reduce_sum(torch.cat(pieces))
    host = packed.tolist()  # one device-to-host copy for every scalar result and count
    results: list[float | Tensor] = []
    offset = 0
    for shape in shapes:
        numel = math.prod(shape) if shape is not None else 1
        count = round(host[offset + numel])
        if shape is None:
            results.append(math.nan if count == 0 else host[offset] / count)
        elif count == 0:
            results.append(torch.full(shape, math.nan, dtype=torch.float64, device=device))
        else:
            results.append((packed[offset : offset + numel] / count).reshape(shape))
        offset += numel + 1
    return results
