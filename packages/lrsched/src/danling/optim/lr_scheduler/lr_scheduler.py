"""`LRScheduler`: warmup, a decay strategy and cooldown in one scheduler whose state is plain data."""

from __future__ import annotations

import math
from collections.abc import Mapping
from numbers import Integral, Real
from typing import Any
from warnings import warn

from torch import Tensor
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler as TorchLRScheduler

from . import strategies

SCALINGS = ("percentile", "numerical")
"""How the decay fraction becomes a rate: geometric (``percentile``) or arithmetic (``numerical``)."""

# Public methods of LRScheduler that are not strategies; every other public method a class in the
# hierarchy defines is a strategy `method` may name.
_API_METHODS = frozenset(dir(TorchLRScheduler)) | {"lr_at", "strategy_names"}


class LRScheduler(TorchLRScheduler):
    r"""
    Warmup, a decay curve and cooldown for every parameter group, driven by one strategy function.

    The curve runs from each group's base rate to ``final_lr`` (or ``base_lr * final_lr_ratio``) as
    ``strategy(progress)`` goes from 0 to 1, where ``progress = step / total_steps``. A strategy
    returns the fraction of the decay done, and ``scaling`` turns it into a rate: ``"percentile"``
    interpolates geometrically, ``"numerical"`` linearly. For steps ``1 <= step < warmup_steps``
    the rate ramps from ``min_lr`` up to the curve; over the last ``cooldown_steps`` steps it
    falls from the curve to ``min_lr``. No rate is ever below ``min_lr``.

    To add a strategy, subclass and define a public method ``name(self, progress) -> float``; the
    built-in ``linear``, ``cosine`` and ``constant`` stay available (see :meth:`strategy_names`).

    ``step`` here is the position in the schedule of the rate now applied: construction applies
    step 1, each :meth:`step` call moves one further, and ``total_steps + 1`` calls cover the run
    without a warning. It is ``last_epoch + 1``.

    Args:
        optimizer: Wrapped optimizer.
        total_steps: Number of optimizer steps in the run; must be positive.
        final_lr_ratio: Final rate as a fraction of each group's base rate. Defaults to ``1e-3``
            when ``final_lr`` is not given either.
        final_lr: Final rate, the same for every group. Exclusive with ``final_lr_ratio``;
            ``min_lr`` is lowered to it when larger.
        min_lr: Floor of every rate, and where warmup starts and cooldown ends.
        method: Name of the strategy shaping the decay; one of :meth:`strategy_names`.
        warmup_steps: Steps of warmup. Defaults to ``total_steps // 20``.
        cooldown_steps: Steps of cooldown. Defaults to ``total_steps // 5``.
        last_epoch: Index of the last step taken, as in torch; ``-1`` starts a new schedule.
        scaling: ``"percentile"`` or ``"numerical"``. Defaults to ``"numerical"`` when ``final_lr``
            is given, ``"percentile"`` otherwise.

    Raises:
        ValueError: If a count, rate, ``method`` or ``scaling`` is invalid, or both
            ``final_lr_ratio`` and ``final_lr`` are given.

    Differences from the upstream DanLing scheduler, all deliberate fixes:
        - ``state_dict()`` holds plain data only, so a checkpoint loads with
          ``torch.load(..., weights_only=True)``; upstream stored strategy functions in it.
        - Subclasses keep the built-in strategies; upstream accepted only the methods defined on
          the concrete class, so a subclass lost ``cosine``.
        - ``scaling`` is checked at once, counts must be integers, and rates must be finite.
        - The position follows ``last_epoch``, so ``last_epoch=k`` and the deprecated
          ``step(epoch)`` resume the schedule where torch would; upstream ignored both.
        - A base rate of 0 gives 0 (then ``min_lr``) with ``"percentile"`` scaling instead of
          ``ZeroDivisionError``.

    Examples:
        >>> from danling.optim import LRScheduler
        >>> import torch
        >>> from torch import optim
        >>> optimizer = optim.SGD([{'params': torch.tensor([0])}], lr=1, momentum=0.9)
        >>> scheduler = LRScheduler(optimizer, total_steps=5, final_lr_ratio=1e-5, method='linear')
        >>> lrs = []
        >>> for epoch in range(5):
        ...     lrs.append(scheduler.get_lr()[0])
        ...     scheduler.step()
        >>> [round(lr, 10) for lr in lrs]
        [0.1, 0.01, 0.001, 0.0001, 1e-09]
        >>> scheduler = LRScheduler(optimizer, total_steps=5, final_lr_ratio=1e-5, method='cosine')
        >>> lrs = []
        >>> for epoch in range(5):
        ...     lrs.append(scheduler.get_lr()[0])
        ...     scheduler.step()
        >>> [round(lr, 10) for lr in lrs]
        [0.3330753446, 0.0187302031, 0.000533897, 3.00232e-05, 1e-09]
        >>> scheduler = LRScheduler(optimizer, total_steps=5, final_lr_ratio=1e-5, method='linear', scaling='numerical')
        >>> lrs = []
        >>> for epoch in range(5):
        ...     lrs.append(scheduler.get_lr()[0])
        ...     scheduler.step()
        >>> [round(lr, 2) for lr in lrs]
        [0.8, 0.6, 0.4, 0.2, 0.0]

        The representation names the schedule:

        >>> scheduler
        LRScheduler(linear, scaling=numerical, final_lr_ratio=1e-05, total_steps=5, warmup_steps=0, cooldown_steps=1)
    """

    linear = staticmethod(strategies.linear)
    cosine = staticmethod(strategies.cosine)
    constant = staticmethod(strategies.constant)

    def __init__(
        self,
        optimizer: Optimizer,
        total_steps: int,
        final_lr_ratio: float | None = None,
        final_lr: float | None = None,
        min_lr: float = 1e-9,
        method: str = "cosine",
        warmup_steps: int | None = None,
        cooldown_steps: int | None = None,
        last_epoch: int = -1,
        scaling: str | None = None,
    ) -> None:
        total_steps = _check_count("total_steps", total_steps, minimum=1)
        warmup_steps = total_steps // 20 if warmup_steps is None else _check_count("warmup_steps", warmup_steps)
        cooldown_steps = total_steps // 5 if cooldown_steps is None else _check_count("cooldown_steps", cooldown_steps)
        if warmup_steps + cooldown_steps > total_steps:
            raise ValueError(
                "warmup_steps + cooldown_steps must not exceed total_steps, "
                f"but got {warmup_steps} + {cooldown_steps} > {total_steps}"
            )
        last_epoch = _check_count("last_epoch", last_epoch, minimum=-1)
        if final_lr_ratio is not None and final_lr is not None:
            raise ValueError(
                f"give only one of `final_lr_ratio` and `final_lr`, but got {final_lr_ratio} and {final_lr}"
            )
        if final_lr_ratio is not None:
            final_lr_ratio = _check_rate("final_lr_ratio", final_lr_ratio)
        if final_lr is not None:
            final_lr = _check_rate("final_lr", final_lr)
        min_lr = _check_rate("min_lr", min_lr)
        self._check_method(method)
        if scaling is None:
            scaling = "numerical" if final_lr is not None else "percentile"
        elif scaling not in SCALINGS:
            raise ValueError(f"`scaling` must be one of {list(SCALINGS)}, but got {scaling!r}")
        if final_lr is None and final_lr_ratio is None:
            final_lr_ratio = 1e-3
        if final_lr is not None:
            min_lr = min(min_lr, final_lr)

        self.total_steps = total_steps
        self.final_lr_ratio = final_lr_ratio
        self.final_lr = final_lr
        self.min_lr = min_lr
        self.method = method
        self.scaling = scaling
        self.warmup_steps = warmup_steps
        self.cooldown_steps = cooldown_steps
        self.cooldown_steps_begin = total_steps - cooldown_steps
        if last_epoch == -1:  # torch < 2.7 keeps a tensor lr itself as initial_lr, then fills it in place
            for group in optimizer.param_groups:
                lr = group["lr"]
                group.setdefault("initial_lr", lr.clone() if isinstance(lr, Tensor) else lr)
        super().__init__(optimizer, last_epoch)

    @classmethod
    def strategy_names(cls) -> tuple[str, ...]:
        """Names `method` accepts: the built-in strategies and every public method a subclass adds.

        Examples:
            >>> LRScheduler.strategy_names()
            ('constant', 'cosine', 'linear')
        """
        names: set[str] = set()
        for klass in cls.__mro__:
            if not issubclass(klass, LRScheduler):
                continue
            for name, value in vars(klass).items():
                if not name.startswith("_") and name not in _API_METHODS and callable(value):
                    names.add(name)
        return tuple(sorted(names))

    def get_lr(self) -> list[float | Tensor]:
        """Rates for the current step (``last_epoch + 1``), one per parameter group.

        Warns with a `RuntimeWarning` when the step lies outside ``[1, total_steps + 1]``; the
        value is still computed, progress being clamped to ``[0, 1]``.
        """
        step = self.last_epoch + 1
        if not 1 <= step <= self.total_steps + 1:
            warn(
                f"step {step} is out of the schedule's range [1, {self.total_steps + 1}]",
                category=RuntimeWarning,
                stacklevel=2,
            )
        return self.lr_at(step)

    def lr_at(self, step: int) -> list[float | Tensor]:
        """Rates the schedule gives at `step` (1 is the first), one per group, without stepping.

        Examples:
            >>> import torch
            >>> optimizer = torch.optim.SGD([torch.zeros(1)], lr=1.0)
            >>> scheduler = LRScheduler(optimizer, total_steps=8, warmup_steps=4, cooldown_steps=0, method="constant")
            >>> [round(scheduler.lr_at(step)[0], 6) for step in (1, 2, 4, 8)]
            [0.25, 0.5, 1.0, 1.0]
        """
        done = getattr(self, self.method)(min(max(step / self.total_steps, 0.0), 1.0))
        min_lr = self.min_lr
        if 0 < step < self.warmup_steps:
            envelope: float | None = step / self.warmup_steps
        elif self.cooldown_steps > 0 and step > self.cooldown_steps_begin:
            envelope = max(1.0 - (step - self.cooldown_steps_begin) / self.cooldown_steps, 0.0)  # min_lr past the end
        else:
            envelope = None
        percentile = self.scaling == "percentile"
        final_lr, final_lr_ratio = self.final_lr, self.final_lr_ratio
        rates = []
        for base_lr in self.base_lrs:  # inlined: this runs every step for every group
            final = final_lr if final_lr is not None else base_lr * final_lr_ratio
            if percentile:  # geometric interpolation, written without dividing by base_lr
                lr = base_lr ** (1.0 - done) * final**done
            else:
                lr = (1.0 - done) * (base_lr - final) + final
            if envelope is not None:
                lr = envelope * (lr - min_lr) + min_lr
            rates.append(lr.clamp(min=min_lr) if isinstance(lr, Tensor) else max(min_lr, lr))
        return rates

    def state_dict(self) -> dict[str, Any]:
        """The scheduler's state: counters, settings and rates, all plain data.

        A checkpoint holding it loads with ``torch.load(..., weights_only=True)``.
        """
        return {key: _copy(value) for key, value in self.__dict__.items() if key != "optimizer"}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore a state from :meth:`state_dict` and apply its current rates to the optimizer.

        Writing the rates back means a fresh optimizer continues at the restored step even when
        its own state is not loaded. A ``strategies`` entry, which upstream checkpoints carry, is
        ignored.

        Raises:
            ValueError: If the state names an unknown method or another number of groups.
        """
        state = {key: _copy(value) for key, value in state_dict.items() if key != "strategies"}
        self._check_method(state.get("method", self.method))
        groups = len(self.optimizer.param_groups)
        for key in ("base_lrs", "_last_lr"):
            if key in state and len(state[key]) != groups:
                raise ValueError(
                    f"state_dict has {len(state[key])} entries in {key!r} but the optimizer has {groups} param groups"
                )
        self.__dict__.update(state)
        for group, lr in zip(self.optimizer.param_groups, self._last_lr):
            if isinstance(group["lr"], Tensor):
                group["lr"].fill_(lr)
            else:
                group["lr"] = lr

    def _check_method(self, method: Any) -> None:
        names = self.strategy_names()
        if method not in names:
            raise ValueError(f"`method` must be one of {list(names)}, but got {method!r}")

    def __repr__(self) -> str:
        return (
            f"{self.__class__.__name__}({self.method}, scaling={self.scaling}, "
            f"final_lr_ratio={self.final_lr_ratio}, total_steps={self.total_steps}, "
            f"warmup_steps={self.warmup_steps}, cooldown_steps={self.cooldown_steps})"
        )


def _check_count(name: str, value: Any, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise ValueError(f"`{name}` must be an integer, but got {value!r}")
    if value < minimum:
        raise ValueError(f"`{name}` must be at least {minimum}, but got {value}")
    return int(value)


def _check_rate(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value) or value < 0:
        raise ValueError(f"`{name}` must be a finite number >= 0, but got {value!r}")
    return float(value)


def _copy(value: Any) -> Any:
    if isinstance(value, list):
        return [item.clone() if isinstance(item, Tensor) else item for item in value]
    return value
