r"""The loss-normalizer total of an accumulation window, summed over the ranks inside DDP's gradient all-reduce.

On several ranks the runner weighs each micro-batch by its loss normalizer (see ``step.GradientWindow``)
and divides the window's gradients by the total over every rank.  Summing that total is a collective
of its own, one per optimizer step, and on a small model it costs as much as a sizeable part of the
step.  ``WindowTotalHook`` is a DDP communication hook that removes it: in each synchronising
backward it appends the window total to the gradient bucket DDP reduces last and reads the sum back
when that bucket's all-reduce completes, so the total travels with the gradients.

- Gradients: every bucket is multiplied by ``1 / world_size`` (what DDP's built-in reduction does
  while it copies gradients into the bucket) and summed over DDP's own process group, so the
  gradients are bit for bit those of a DDP without a hook.  The last bucket is written, already
  divided, into a tensor three elements longer; the future hands DDP a view of its gradient part.
- Exactness: float32 holds integers exactly only below ``2**24``, so the total (an integer count)
  travels as two parts, ``high = total // 4096`` and ``low = total % 4096``, whose sums stay exact
  for ``world_size <= 4096`` and a per-rank ``high`` below ``2**24 / world_size`` (float64 buckets
  use the same encoding).  The third element flags a rank whose total cannot be encoded that way
  (not a whole number, negative, too large): the flag is summed too, so every rank sees it and
  falls back together.
- Fallback: ``carry`` returns a reader whose value is ``None`` whenever this window's total did not
  travel (its last backward ran under ``no_sync``, no gradient reached DDP, a flag was set); the
  caller then sums the total with a separate all-reduce, as it did before.  No hook is registered,
  and ``carry`` returns ``None`` so the caller starts that all-reduce at once, when DDP already has a
  communication hook (the user's, or DDP's mixed-precision one), reduces in Python (compiled DDP,
  ``optimize_ddp="python_reducer"``), or has parameters that are not float32 or float64 (a bf16 or
  fp16 bucket cannot carry a count exactly).  Every one of these conditions is the same on every
  rank, so the ranks never disagree on the length of a bucket.

The hook is registered at the first ``carry`` (the first training backward), not when the model is
wrapped: a communication hook the user registers on ``runner.model`` before training takes
precedence, since DDP accepts only one.

Progress lines ride along the same way: ``carry_values(buffer)`` offers a small float64 buffer (a
line's meter sums, see ``RunnerRecords.begin_step_log``) to the next synchronising backward, which
appends it after the total and writes the sums back into ``buffer``.  In a float32 bucket those
sums are rounded to float32 (about seven significant digits; a line shows four).  If no
synchronising backward carried it by the time the line is wanted, ``wait()`` sums it on its own.
"""

# No ``from __future__ import annotations``: DDP checks the hook's annotations as objects.
from collections.abc import Callable
from typing import Any

import torch
from torch import distributed as dist
from torch import nn

__all__ = ["CARRIED_DTYPES", "WindowTotalHook", "decode_total", "encode_total"]

#: Bucket dtypes that carry the total exactly.
CARRIED_DTYPES = (torch.float32, torch.float64)
#: The total travels as ``high * SPLIT + low``.
SPLIT = 1 << 12
#: Integers up to this sum exactly in float32 (and, a fortiori, in float64).
EXACT = 1 << 24


def encode_total(total: float, world_size: int) -> tuple[float, float, float]:
    r"""
    ``(high, low, invalid)``: ``total`` as two parts whose sums over ``world_size`` ranks stay exact in float32.

    ``invalid`` is ``1.0`` (and the parts zero) when ``total`` is not a whole number in range.

    Examples:
        >>> encode_total(70_000.0, 2), encode_total(2.5, 2), encode_total(float(1 << 36), 2)
        ((17.0, 368.0, 0.0), (0.0, 0.0, 1.0), (0.0, 0.0, 1.0))
    """
    if not (total >= 0 and float(total).is_integer()):  # also refuses nan and inf
        return 0.0, 0.0, 1.0
    high, low = divmod(int(total), SPLIT)
    if high * world_size >= EXACT:
        return 0.0, 0.0, 1.0
    return float(high), float(low), 0.0


def decode_total(high: float, low: float, invalid: float) -> float | None:
    r"""
    The total that the summed parts of ``encode_total`` stand for; ``None`` when a rank flagged its own.

    Examples:
        >>> decode_total(*[a + b for a, b in zip(encode_total(70_000.0, 2), encode_total(5.0, 2))])
        70005.0
        >>> decode_total(17.0, 368.0, 1.0) is None
        True
    """
    if invalid:
        return None
    return float(int(high) * SPLIT + int(low))


class _Passenger:
    """Values offered to the next synchronising backward; ``wait()`` leaves their sum over the ranks in ``values``."""

    __slots__ = ("group", "hook", "summed", "values")

    def __init__(self, hook: "WindowTotalHook", values: torch.Tensor) -> None:
        self.hook, self.group, self.values = hook, hook.process_group, values
        self.summed: torch.Tensor | None = None

    def ready(self) -> bool:
        """Whether a backward carried the values (the same on every rank: they synchronise together)."""
        return self.summed is not None

    def wait(self) -> None:
        if self.hook.passenger is self:  # no synchronising backward came: sum them on their own
            self.hook.passenger = None
            dist.all_reduce(self.values, group=self.group)
        elif self.summed is not None:
            self.values.copy_(self.summed)
            self.summed = None


class _Ticket:
    """One backward's offer of the window total, and the summed parts once the hook carried it."""

    __slots__ = ("parts", "total")

    def __init__(self, total: float) -> None:
        self.total = total
        self.parts: torch.Tensor | None = None

    def read(self) -> float | None:
        """The total summed over the ranks, or ``None`` when it did not travel with the gradients."""
        if self.parts is None:
            return None
        return decode_total(*self.parts.tolist())


def _carries(model: nn.parallel.DistributedDataParallel) -> bool:
    """Whether the hook may be registered on ``model`` (the same answer on every rank)."""
    if model._comm_hooks or model.mixed_precision is not None or model._use_python_reducer:
        return False
    if dist.get_world_size(model.process_group) > SPLIT:
        return False
    dtypes = {parameter.dtype for parameter in model.module.parameters() if parameter.requires_grad}
    return bool(dtypes) and dtypes <= set(CARRIED_DTYPES)


class WindowTotalHook:
    r"""
    A DDP communication hook that sums the window total over DDP's process group with the gradients.

    ``carry(total)`` (before each micro-batch's backward) offers this rank's window total to the next
    synchronising backward and returns the reader of the summed total; ``None`` when the hook cannot
    be used on this model (see the module's docstring), so the caller sums the total itself.

    Args:
        model: The ``DistributedDataParallel`` module whose reduction carries the total.
    """

    def __init__(self, model: nn.parallel.DistributedDataParallel) -> None:
        self.model = model
        self.process_group = model.process_group
        self.world_size = dist.get_world_size(self.process_group)
        self.registered: bool | None = None  # decided at the first carry
        self.offer: _Ticket | None = None
        self.passenger: _Passenger | None = None
        self._carriers: dict[tuple[int, torch.dtype, torch.device], torch.Tensor] = {}

    def register(self) -> bool:
        """Register the hook on the model unless it cannot carry the total there; whether it did."""
        if self.registered is None:
            self.registered = _carries(self.model)
            if self.registered:
                self.model.register_comm_hook(self, _reduce_bucket)
        return self.registered

    def carry(self, total: float) -> Callable[[], float | None] | None:
        """Offer ``total`` to the next synchronising backward; the reader of its sum, or ``None`` (no hook)."""
        if not self.register():
            return None
        self.offer = _Ticket(total)
        return self.offer.read

    def carrier(self, bucket: torch.Tensor, length: int) -> torch.Tensor:
        """A buffer of ``length`` elements like ``bucket``, kept for the next backward (allocating one per step costs page faults).

        Kept only when DDP copies the hook's result into the gradients; with ``gradient_as_bucket_view`` a
        fresh one is made each time, in case gradients end up viewing it.
        """
        key = (length, bucket.dtype, bucket.device)
        carrier = self._carriers.get(key)
        if carrier is None:
            carrier = bucket.new_empty(length)
            if not self.model.gradient_as_bucket_view:
                self._carriers[key] = carrier
        return carrier

    def carry_values(self, values: torch.Tensor) -> _Passenger:
        r"""
        Offer ``values`` (1-D float64) to the next synchronising backward; ``wait()`` on the result sums them.

        Only once the hook is registered (``registered``), and only for values meant to be summed over
        DDP's process group.  A later offer replaces one that has not travelled yet; its ``wait()``
        then sums it on its own.
        """
        if not self.registered:
            raise RuntimeError("WindowTotalHook.carry_values needs the hook registered by a training backward first")
        self.passenger = _Passenger(self, values)
        return self.passenger


def _reduce_bucket(state: WindowTotalHook, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    """Average ``bucket`` over the ranks; the last bucket of a backward also carries the offered window total."""
    buffer, group, scale = bucket.buffer(), state.process_group, 1.0 / state.world_size
    if not bucket.is_last() or buffer.dtype not in CARRIED_DTYPES:
        buffer.mul_(scale)
        return dist.all_reduce(buffer, group=group, async_op=True).get_future().then(_first_value)
    ticket, state.offer = state.offer, None  # one offer travels once
    passenger, state.passenger = state.passenger, None
    parts = encode_total(ticket.total, state.world_size) if ticket is not None else (0.0, 0.0, 1.0)
    size = buffer.numel()
    extra = 0 if passenger is None else passenger.values.numel()
    carrier = state.carrier(buffer, size + 3 + extra)
    torch.mul(buffer, scale, out=carrier[:size])
    carrier[size : size + 3] = torch.tensor(parts, dtype=buffer.dtype)
    if passenger is not None:
        carrier[size + 3 :] = passenger.values

    def split(future: torch.futures.Future[Any]) -> torch.Tensor:
        summed = future.value()[0]
        # copies: the carrier is reused by the next backward
        if ticket is not None:
            ticket.parts = summed[size : size + 3].clone()
        if passenger is not None:
            passenger.summed = summed[size + 3 :].clone()
        return summed[:size]

    return dist.all_reduce(carrier, group=group, async_op=True).get_future().then(split)


def _first_value(future: torch.futures.Future[Any]) -> torch.Tensor:
    return future.value()[0]
