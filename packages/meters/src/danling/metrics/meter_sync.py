"""Reduce many meters across ranks at once.

Each meter contributes a numerator (``value * n`` for ``bat``, the running ``sum`` for ``avg``)
and a count.  All of them travel in one float64 buffer and one ``all_reduce``; the result of a
meter is its summed numerator divided by its summed count, or NaN when that count is zero.

Tensor meters need every rank to agree on the shape, including ranks that never saw a value.
The first ``all_reduce`` carries, per meter, a flag (does this rank hold tensor values?) next to
its scalar numerator and count; when no rank raised a flag those sums are the result, so
scalar-only meters (losses, learning rates: every progress line of a distributed run) cost one
small collective per read and no pickling.  Otherwise the ranks exchange ``(shape, dtype)`` with
``all_gather_object`` and reduce again at the agreed shapes.  The statistics
are float64 whatever dtype the values came in, but the dtype compared is the one the values came
in: float32 values on one rank and float64 values on another raise the inconsistent-metadata
error instead of reducing together (the reference compares its float64 statistics and reduces).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import Tensor

from .distributed import all_gather_objects, all_reduce_sum, reduction_device, start_all_reduce_sum

if TYPE_CHECKING:
    from .average_meter import AverageMeter

Mode = Literal["batch", "average"]
TensorSpec = tuple[tuple[int, ...], str]  # (shape, dtype name) of a tensor meter's statistics


def _inconsistent(specs: list[TensorSpec], name: str | None) -> ValueError:
    if name is None:
        return ValueError(f"AverageMeter received inconsistent tensor metadata across ranks: {specs!r}")
    return ValueError(f"AverageMeters received inconsistent tensor metadata for meter {name!r}: {specs!r}")


def _agreed_shapes(
    names: Sequence[str] | None, local: list[TensorSpec | None], history: list[bool]
) -> list[tuple[int, ...] | None]:
    """Per meter, the tensor shape all ranks agree on, or None for scalar meters everywhere.

    Ranks compare ``(shape, dtype)`` of their tensor meters (``local``) and whether they ever
    recorded a scalar (``history``); ranks without a tensor value adopt the agreed shape.
    ``names`` is None for a lone meter, which words its error accordingly.
    """
    gathered = all_gather_objects((local, history))
    agreed: list[tuple[int, ...] | None] = []
    for index in range(len(local)):
        name = None if names is None else names[index]
        specs = [rank_specs[index] for rank_specs, _ in gathered if rank_specs[index] is not None]
        if not specs:
            agreed.append(None)
            continue
        if any(spec != specs[0] for spec in specs[1:]):
            raise _inconsistent(specs, name)
        if any(rank_history[index] for _, rank_history in gathered):
            meter = "AverageMeter" if name is None else f"AverageMeters meter {name!r}"
            raise ValueError(f"{meter} cannot mix scalar and tensor values across ranks: tensor metadata {specs!r}")
        agreed.append(specs[0][0])
    return agreed


def _flat(value: float | int | Tensor, numel: int, device: torch.device) -> Tensor:
    if isinstance(value, Tensor):
        return value.detach().to(device=device, dtype=torch.float64).reshape(-1)
    return torch.full((numel,), float(value), dtype=torch.float64, device=device)


def _snapshot(value: float | int | Tensor) -> float | int | Tensor:
    # a meter's running sum is updated in place: keep the value it had when the reduction began
    return value.detach().clone() if isinstance(value, Tensor) else value


class MeterReduction:
    r"""
    The ``bat`` (``mode="batch"``) or ``avg`` (``mode="average"``) of meters over all ranks, begun without waiting.

    Creating it is collective (every rank must create one for the same meters, in the same
    order) and returns as soon as the reduction is on its way; ``wait()`` returns the results.
    The meters' statistics are read when it is created, so updates made meanwhile do not leak
    in: a training loop can start the reduction of a progress line and keep training while
    it travels.  ``names`` (one per meter) are the keys of an ``AverageMeters``; leave them
    out for a lone meter.  Scalar results are Python floats; tensor results are float64
    tensors on the reduction device.

    Tensor meters need a second exchange (shapes, then values); it runs inside ``wait()``.

    ``start`` begins summing the first exchange's float64 buffer in place and returns what to
    ``wait()`` on (``None``: nothing to wait for); by default an asynchronous ``all_reduce``
    over the default group.  A caller with a collective already on its way can let the buffer
    ride along instead (the runner's DDP gradient hook carries progress lines this way); its
    waitable may offer ``ready()``, which ``ready()`` here passes on.

    Examples:
        >>> from danling.metrics import AverageMeter
        >>> meter = AverageMeter()
        >>> meter.update(2.0, n=3)
        >>> reduction = MeterReduction([meter], "batch")
        >>> meter.update(8.0)  # after the reduction began: not part of it
        >>> reduction.wait(), meter.batch()
        ([2.0], 8.0)
    """

    def __init__(
        self,
        meters: Sequence[AverageMeter],
        mode: Mode,
        names: Sequence[str] | None = None,
        *,
        start: Callable[[Tensor], Any] | None = None,
    ) -> None:
        self.names = names
        self.device = reduction_device(meters[0].device) if meters else torch.device("cpu")
        self.local = [meter._tensor_spec() for meter in meters]
        self.contributions = [tuple(map(_snapshot, meter._contribution(mode))) for meter in meters]
        self.history = [spec is None and meter._count_value() > 0 for meter, spec in zip(meters, self.local)]
        self.scalars, self._work = self._start_scalar_pass(start or start_all_reduce_sum) if meters else (None, None)
        self._results: list[float | Tensor] | None = None if meters else []

    def ready(self) -> bool:
        """Whether ``wait()`` only reads the result (as opposed to completing the reduction); the same on every rank."""
        ready = getattr(self._work, "ready", None)
        return self._results is not None or ready is None or ready()

    def _start_scalar_pass(self, start: Callable[[Tensor], Any]) -> tuple[Tensor, Any]:
        """Begin summing ``[has tensor values, numerator, count]`` of every meter (zeros for tensor meters)."""
        pieces: list[float | int | Tensor] = []
        for (numerator, count), spec in zip(self.contributions, self.local):
            pieces.extend((0.0, numerator, count) if spec is None else (1.0, 0.0, 0.0))
        if any(isinstance(piece, Tensor) for piece in pieces):
            buffer = torch.cat([_flat(piece, 1, self.device) for piece in pieces])
        else:
            buffer = torch.tensor(pieces, dtype=torch.float64, device=self.device)
        return buffer, start(buffer)

    def wait(self) -> list[float | Tensor]:
        """Each meter's result over all ranks (NaN where no rank counted anything); waits once, then remembers."""
        if self._results is None:
            if self._work is not None:
                self._work.wait()
            self._results = self._finish(self.scalars.tolist())
        return self._results

    def _finish(self, scalars: list[float]) -> list[float | Tensor]:
        if not any(scalars[0::3]):  # no rank holds tensor values: the sums are the answer
            results: list[float | Tensor] = []
            for numerator, count in zip(scalars[1::3], scalars[2::3]):
                count = round(count)
                results.append(math.nan if count == 0 else numerator / count)
            return results
        shapes = _agreed_shapes(self.names, self.local, self.history)
        pieces: list[Tensor] = []
        for (numerator, count), shape in zip(self.contributions, shapes):
            numel = math.prod(shape) if shape is not None else 1
            pieces.append(_flat(numerator, numel, self.device))
            pieces.append(_flat(count, 1, self.device))
        packed = all_reduce_sum(torch.cat(pieces))
        host = packed.tolist()  # one device-to-host copy for every scalar result and count
        results = []
        offset = 0
        for shape in shapes:
            numel = math.prod(shape) if shape is not None else 1
            count = round(host[offset + numel])
            if shape is None:
                results.append(math.nan if count == 0 else host[offset] / count)
            elif count == 0:
                results.append(torch.full(shape, math.nan, dtype=torch.float64, device=self.device))
            else:
                results.append((packed[offset : offset + numel] / count).reshape(shape))
            offset += numel + 1
        return results


def synchronise_meters(
    meters: Sequence[AverageMeter], mode: Mode, names: Sequence[str] | None = None
) -> list[float | Tensor]:
    """The ``bat`` (``mode="batch"``) or ``avg`` (``mode="average"``) of each meter over all ranks.

    Collective: every rank must pass meters in the same order.  ``MeterReduction`` is the same
    reduction begun without waiting.
    """
    return MeterReduction(meters, mode, names).wait()
