r"""Running averages: ``AverageMeter`` for one quantity, ``AverageMeters`` for a named set.

A meter keeps the latest value and its weight ``n`` (``val``, ``n``), the running weighted sum
and total weight (``sum``, ``count``) and their ratio (``avg``).  ``bat`` is the latest step
averaged over all ranks, ``avg`` the running average over all ranks.

Values never force a host-device synchronisation on update.  Python numbers and CPU tensors
are read right away (that is free on the host); a one-element tensor on an accelerator is
accumulated on its own device and becomes a Python float only when ``val``, ``avg`` or a
formatted string asks for it.  Multi-element tensors make a *tensor meter* whose statistics
are float64 tensors of that shape.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import torch
from chanfig import DefaultDict
from torch import Tensor

from .distributed import world_size
from .meter_sync import MeterReduction, Mode, synchronise_meters
from .round_dict import RoundDict, format_number

if TYPE_CHECKING:
    from typing_extensions import Self  # only for annotations: no runtime dependency

Number = float | int
Count = int | Tensor  # an int, or a 0-d int64 tensor on an accelerator (accumulated lazily)


def _as_count(n: Any) -> Count:
    """``n`` as an int, or as a 0-d int64 tensor when it lives on an accelerator."""
    if isinstance(n, int):
        return n
    if isinstance(n, Tensor):
        if n.numel() != 1 or n.is_floating_point():
            raise ValueError(f"n must be an integer count, but got a tensor of shape {tuple(n.shape)} and {n.dtype}")
        if n.device.type == "cpu":
            return int(n.item())
        return n.detach().reshape(()).to(torch.int64)
    if isinstance(n, float) and n.is_integer():
        return int(n)
    raise ValueError(f"n must be an integer count, but got {n!r}")


def _parse_dtype(name: str | None) -> torch.dtype | None:
    """The dtype a state dict names (``"torch.float32"``), or None (a state saved before dtypes were kept)."""
    if name is None:
        return None
    dtype = getattr(torch, str(name).removeprefix("torch."), None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"AverageMeter state names an unknown tensor dtype {name!r}; expected e.g. 'torch.float32'")
    return dtype


class AverageMeter:
    r"""
    Track the latest value, running sum, count and weighted average of one quantity.

    Args:
        device: Device for distributed reductions; detected from the first tensor when omitted.
        distributed: Reduce ``bat`` and ``avg`` across ranks when a process group exists.

    Examples:
        >>> meter = AverageMeter()
        >>> meter.update(0.7)
        >>> meter.val
        0.7
        >>> meter.bat  # Same as val in non-distributed mode
        0.7
        >>> meter.avg
        0.7
        >>> meter.update(0.9)
        >>> meter.val
        0.9
        >>> meter.avg
        0.8
        >>> meter.sum
        1.6
        >>> meter.count
        2
        >>> # Weighted update
        >>> meter.update(value=0.5, n=3)
        >>> meter.avg
        0.62
        >>> meter.reset()
        AverageMeter(val=nan, avg=nan)

        Multi-element tensors are averaged element-wise:

        >>> meter = AverageMeter()
        >>> meter.update(torch.tensor([1.0, 2.0]))
        >>> meter.update(torch.tensor([3.0, 6.0]), n=3)
        >>> meter.avg
        tensor([2.5000, 5.0000], dtype=torch.float64)
        >>> meter.update(1.0)
        Traceback (most recent call last):
        ValueError: AverageMeter cannot mix tensor and scalar values.
    """

    __slots__ = (
        "_local_count",
        "_local_n",
        "_local_sum",
        "_local_value",
        "_tensor_dtype",
        "_tensor_template",
        "device",
        "distributed",
    )

    def __init__(self, *, device: torch.device | str | None = None, distributed: bool = True) -> None:
        self.device = torch.device(device) if device is not None else None
        self.distributed = distributed
        self.reset()

    def reset(self, *, device: torch.device | str | None = None) -> Self:
        """Forget every value (optionally moving to ``device``) and return the meter."""
        if device is not None:
            self.device = torch.device(device)
        self._local_value: Number | Tensor = 0.0
        self._local_n: Count = 0
        self._local_sum: float | Tensor = 0.0
        self._local_count: Count = 0
        self._tensor_template: Tensor | None = None
        self._tensor_dtype: torch.dtype | None = None  # of the first tensor value; ranks compare it
        return self

    def update(self, value: float | int | Tensor, n: int | Tensor = 1) -> None:
        """Record ``value`` with weight ``n``; ``n <= 0`` replaces ``val`` but leaves ``sum`` and ``count``."""
        if type(value) is float and type(n) is int and self._tensor_template is None:
            # The common case (a Python float loss or learning rate) stays on this short path.
            self._local_value = value
            self._local_n = n
            if n > 0:
                self._local_sum += value * n
                self._local_count += n
            return
        self._update(value, _as_count(n))

    def _update(self, value: Any, n: Count) -> None:
        if isinstance(value, Tensor):
            if value.numel() != 1:
                self._update_tensor(value, n)
                return
            if self.device is None:
                self.device = value.device
            if value.device.type == "cpu" and isinstance(n, int):
                value = value.item()
            else:
                self._update_scalar(value.detach().reshape(()).to(torch.float64, copy=True), n)
                return
        elif isinstance(value, bool) or not isinstance(value, (int, float)):
            try:
                value = float(value)
            except (TypeError, ValueError):
                raise ValueError(f"AverageMeter expects a number or a tensor, but got {value!r}") from None
        self._update_scalar(float(value), n)

    def _update_scalar(self, value: float | Tensor, n: Count) -> None:
        if self._tensor_template is not None:
            if isinstance(n, int) and n == 0:
                template = self._tensor_template
                if isinstance(value, Tensor):
                    self._local_value = value.to(template.device).expand_as(template).clone()
                else:
                    self._local_value = torch.full_like(template, value)
                self._local_n = 0
                return
            raise ValueError("AverageMeter cannot mix tensor and scalar values.")
        self._local_value = value
        self._local_n = n
        if isinstance(n, int):
            if n > 0:
                if isinstance(self._local_sum, Tensor):
                    self._local_sum.add_(value * n)
                else:
                    self._local_sum = value * n + self._local_sum
                self._local_count += n
            return
        self._local_sum = torch.where(n > 0, value * n, 0.0) + self._local_sum
        self._local_count = n.clamp(min=0) + self._local_count

    def _update_tensor(self, value: Tensor, n: Count) -> None:
        template = self._tensor_template
        if template is None and self._count_value() > 0:
            raise ValueError("AverageMeter cannot mix scalar and tensor values.")
        dtype = value.dtype
        value = value.detach().to(torch.float64, copy=True)
        if self.device is None:
            self.device = value.device
        if template is None:
            self._local_sum = torch.zeros_like(value)
            self._local_count = 0
            self._tensor_template = torch.empty_like(value)
            self._tensor_dtype = dtype
        else:
            if value.shape != template.shape:
                raise ValueError(
                    f"AverageMeter requires consistent tensor shapes, but got {tuple(value.shape)} after {tuple(template.shape)}."
                )
            if template.device != value.device:  # the newest device wins
                self._local_sum = self._local_sum.to(value.device)
                self._tensor_template = template.to(value.device)
        self._local_value = value
        self._local_n = n
        if isinstance(n, int):
            if n > 0:
                self._local_sum.add_(value, alpha=n)
                self._local_count += n
            return
        self._local_sum.add_(torch.where(n > 0, value * n, 0.0))
        self._local_count = n.clamp(min=0) + self._local_count

    # Local reads
    def _count_value(self) -> int:
        count = self._local_count
        return int(count.item()) if isinstance(count, Tensor) else count

    def _nan(self) -> float | Tensor:
        if self._tensor_template is None:
            return math.nan
        return torch.full_like(self._tensor_template, math.nan)

    def _tensor_shape(self) -> tuple[int, ...] | None:
        return None if self._tensor_template is None else tuple(self._tensor_template.shape)

    def _tensor_spec(self) -> tuple[tuple[int, ...], str] | None:
        """``(shape, dtype name)`` of a tensor meter's values, which ranks compare; None for scalars.

        The dtype is the one the values came in (the statistics are float64 whatever it is), so a
        rank that records float32 while another records float64 is told instead of reduced with.
        """
        template = self._tensor_template
        if template is None:
            return None
        return tuple(template.shape), str(self._tensor_dtype or torch.float64)

    def value(self) -> float | Tensor:
        """The latest local value (NaN while ``count`` is zero); never synchronised."""
        if self._count_value() == 0:
            return self._nan()
        value = self._local_value
        if self._tensor_template is None and isinstance(value, Tensor):
            return value.item()
        return value

    def _local_average(self) -> float | Tensor:
        count = self._count_value()
        if count == 0:
            return self._nan()
        if self._tensor_template is not None:
            return self._local_sum / count
        total = self._local_sum
        return (total.item() if isinstance(total, Tensor) else total) / count

    # Reads across ranks
    def _contribution(self, mode: Mode) -> tuple[float | Tensor, Count]:
        """This rank's (numerator, count) for ``bat`` or ``avg``; see ``synchronise_meters``."""
        if mode == "average":
            return self._local_sum, self._local_count
        n = self._local_n
        if isinstance(n, Tensor):
            return torch.where(n > 0, self._local_value * n, 0.0), n.clamp(min=0)
        if n <= 0:
            return 0.0, 0
        return self._local_value * n, n

    def batch(self) -> float | Tensor:
        """The latest step averaged over ranks, weighted by each rank's ``n``."""
        if world_size(self.distributed) == 1:
            return self.value()
        return synchronise_meters([self], "batch")[0]

    def average(self) -> float | Tensor:
        """The running average over all ranks."""
        if world_size(self.distributed) == 1:
            return self._local_average()
        return synchronise_meters([self], "average")[0]

    val = property(lambda self: self.value(), doc="Shorthand for ``value()``: the latest local result.")
    bat = property(lambda self: self.batch(), doc="Shorthand for ``batch()``: the latest step over all ranks.")
    avg = property(lambda self: self.average(), doc="Shorthand for ``average()``: everything so far, all ranks.")

    @property
    def n(self) -> int:
        n = self._local_n
        return int(n.item()) if isinstance(n, Tensor) else n

    @property
    def sum(self) -> float | Tensor:
        total = self._local_sum
        if self._tensor_template is None and isinstance(total, Tensor):
            return total.item()
        return total

    @property
    def count(self) -> int:
        return self._count_value()

    # Checkpointing
    def state_dict(self) -> dict[str, Any]:
        """Local statistics (floats, ints or tensors) that ``load_state_dict`` restores."""
        return {
            "value": self._local_value,
            "n": self.n,
            "sum": self._local_sum,
            "count": self._count_value(),
            "tensor_shape": self._tensor_shape(),
            "tensor_dtype": None if self._tensor_dtype is None else str(self._tensor_dtype),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore statistics saved by ``state_dict``."""
        self._local_value = state["value"]
        self._local_n = int(state["n"])
        self._local_sum = state["sum"]
        self._local_count = int(state["count"])
        shape = state["tensor_shape"]
        self._tensor_dtype = _parse_dtype(state.get("tensor_dtype"))
        if shape is None:
            self._tensor_template = None
            return
        sum_tensor = torch.as_tensor(self._local_sum, dtype=torch.float64)
        if tuple(sum_tensor.shape) != tuple(shape):
            raise ValueError(
                f"AverageMeter state has a sum of shape {tuple(sum_tensor.shape)} for tensor shape {tuple(shape)}"
            )
        self._local_sum = sum_tensor.clone()
        self._tensor_template = torch.empty_like(sum_tensor)

    # Presentation
    def __format__(self, spec: str) -> str:
        return f"{format_number(self.value(), spec)} ({format_number(self._local_average(), spec)})"

    def __repr__(self) -> str:
        return f"{type(self).__name__}(val={self.value()}, avg={self._local_average()})"


class PendingRound:
    """The values of an ``AverageMeters`` reduction begun without waiting (see ``AverageMeters.start_batch``)."""

    def __init__(self, reduction: MeterReduction, synced: list[str], local: dict[str, Any]) -> None:
        self.reduction, self.synced, self.local = reduction, synced, local

    def ready(self) -> bool:
        """Whether ``wait()`` only reads the result; the same on every rank."""
        return self.reduction.ready()

    def wait(self) -> RoundDict:
        """Every meter's value: reduced over the ranks, or local for meters that are not distributed."""
        return RoundDict(self.values())

    def values(self) -> dict[str, Any]:
        """``wait()`` as a plain ``dict`` (cheaper where it is read once, as by a progress line)."""
        return {**self.local, **dict(zip(self.synced, self.reduction.wait()))}


class AverageMeters(DefaultDict):
    r"""
    A named set of ``AverageMeter``; reading a missing name creates its meter.

    ``bat`` and ``avg`` synchronise every meter in a single collective, so all ranks must hold
    the same names in the same order.

    Examples:
        >>> meters = AverageMeters()
        >>> meters.update({"loss": 0.5, "acc": 0.75, "f1": 0.25})  # one update feeds a meter per key
        >>> f"{meters:.2f}"
        'loss: 0.50 (0.50)\tacc: 0.75 (0.75)\tf1: 0.25 (0.25)'
        >>> meters.loss.update(1.5, n=3)  # latest value, and in brackets the average over every item so far
        >>> f"{meters:.2f}"
        'loss: 1.50 (1.25)\tacc: 0.75 (0.75)\tf1: 0.25 (0.25)'
        >>> meters.sum.dict(), meters.count.dict()
        ({'loss': 5.0, 'acc': 0.75, 'f1': 0.25}, {'loss': 4, 'acc': 1, 'f1': 1})
        >>> meters.reset()
        AverageMeters(...)
        >>> f"{meters:.2f}"
        'loss: nan (nan)\tacc: nan (nan)\tf1: nan (nan)'

        Attribute access creates meters on demand:

        >>> meters = AverageMeters()
        >>> meters.lr.update(1e-3)
        >>> meters.val.dict()
        {'lr': 0.001}
    """

    meter_cls = AverageMeter  # unannotated: chanfig would turn an annotated class attribute into a key

    def __init__(self, *args: Mapping[str, Any] | None, default_factory: Any = None, **meters: Any) -> None:
        super().__init__(default_factory=default_factory or type(self).meter_cls)
        if len(args) > 1:
            raise TypeError(f"{type(self).__name__} accepts at most one positional mapping, but got {len(args)}")
        for mapping in args:
            if mapping is not None:
                for name, meter in dict(mapping).items():
                    self.set(name, meter)
        for name, meter in meters.items():
            self.set(name, meter)

    def set(self, name: Any, value: Any) -> None:
        super().set(name, self._coerce_meter(value))

    def _coerce_meter(self, value: Any) -> Any:
        meter_cls = type(self).meter_cls
        if not isinstance(value, meter_cls):
            raise ValueError(f"Expected value to be an instance of {meter_cls.__name__}, but got {type(value)}")
        return value

    def update(self, *args: Mapping[str, float | int | Tensor], **values: float | int | Tensor) -> None:
        """Update meters by name with weight 1; use ``meters[name].update(v, n=...)`` for other weights."""
        if len(args) > 1:
            raise ValueError("Expected only one positional argument, but got multiple.")
        merged = {**dict(args[0]), **values} if args else values
        for name, value in merged.items():
            self[name].update(value)

    def reset(self) -> Self:
        """Reset every meter and return the container."""
        for meter in self.values():
            meter.reset()
        return self

    # Reductions
    def value(self) -> RoundDict:
        return RoundDict({name: meter.value() for name, meter in self.items()})

    def _start(self, mode: Mode, start: Callable[[Tensor], Any] | None = None) -> PendingRound:
        synced = [name for name, meter in self.items() if world_size(meter.distributed) > 1]
        reduction = MeterReduction([self[name] for name in synced], mode, synced, start=start)
        read = (lambda meter: meter.value()) if mode == "batch" else (lambda meter: meter._local_average())
        local = {name: None if name in synced else read(meter) for name, meter in self.items()}
        return PendingRound(reduction, synced, local)

    def _reduce(self, mode: Mode) -> RoundDict:
        return self._start(mode).wait()

    def batch(self) -> RoundDict:
        return self._reduce("batch")

    def start_batch(self, start: Callable[[Tensor], Any] | None = None) -> PendingRound:
        r"""
        ``batch()`` begun without waiting: ``wait()`` on the result gives the ``RoundDict``.

        Collective like ``batch()``.  The meters are read now; updates made before the wait are
        not part of the result, so a loop can keep training while the reduction travels (the
        runner's progress lines do).  ``start`` is ``MeterReduction``'s: what carries the sums.

        Examples:
            >>> meters = AverageMeters(loss=AverageMeter())
            >>> meters.loss.update(0.5)
            >>> pending = meters.start_batch()
            >>> meters.loss.update(0.25)
            >>> pending.wait().dict(), meters.batch().dict()
            ({'loss': 0.5}, {'loss': 0.25})
        """
        return self._start("batch", start)

    def average(self) -> RoundDict:
        return self._reduce("average")

    val = property(lambda self: self.value(), doc="Shorthand for ``value()``: the latest local result.")
    bat = property(lambda self: self.batch(), doc="Shorthand for ``batch()``: the latest step over all ranks.")
    avg = property(lambda self: self.average(), doc="Shorthand for ``average()``: everything so far, all ranks.")

    @property
    def n(self) -> RoundDict:
        return RoundDict({name: meter.n for name, meter in self.items()})

    @property
    def sum(self) -> RoundDict:
        return RoundDict({name: meter.sum for name, meter in self.items()})

    @property
    def count(self) -> RoundDict:
        return RoundDict({name: meter.count for name, meter in self.items()})

    # Checkpointing
    def state_dict(self) -> dict[str, dict[str, Any]]:
        return {name: meter.state_dict() for name, meter in self.items()}

    def load_state_dict(self, state: Mapping[str, Mapping[str, Any]]) -> None:
        for name, meter_state in state.items():
            self[name].load_state_dict(meter_state)

    def __format__(self, spec: str) -> str:
        return "\t".join(f"{name}: {meter.__format__(spec)}" for name, meter in self.items())
