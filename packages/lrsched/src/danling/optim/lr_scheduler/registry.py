"""Build a scheduler from a config mapping, and say how the training loop must step it.

`SCHEDULERS` is a plain mapping from a canonical name to a `SchedulerEntry`: our `LRScheduler`
strategies plus torch's own schedulers. `build_scheduler` looks the config's ``type`` up in it
(case, ``_``, ``-`` and spaces ignored; torch class names work too), checks every other key
against the constructor, fills in the run's ``total_steps`` where the scheduler takes it, and
returns a `BuiltScheduler` that carries the ``interval`` the scheduler must be stepped at.

To make a scheduler of your own buildable, add an entry:
``SCHEDULERS["warm_poly"] = SchedulerEntry(MyScheduler, total_steps_argument="total_steps")``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Literal

from torch.optim import Optimizer, lr_scheduler

from .lr_scheduler import LRScheduler

Interval = Literal["step", "epoch"]

_INTERVAL_ALIASES: Mapping[str, Interval] = {
    **dict.fromkeys(("step", "steps", "update", "updates"), "step"),
    **dict.fromkeys(("epoch", "epochs", "eval", "evaluation", "validation"), "epoch"),
}


@dataclass(frozen=True)
class SchedulerEntry:
    """How to construct one kind of scheduler from config.

    Attributes:
        factory: Called as ``factory(optimizer, **config)``.
        requires_metric: The scheduler's ``step`` takes a metric (``ReduceLROnPlateau``); such
            schedulers are stepped per epoch, never per step.
        total_steps_argument: The constructor argument that the run's ``total_steps`` fills when
            the config leaves it out and the scheduler is stepped per step; ``None`` if none.
        aliases: Other names ``type`` may use, such as torch's class name.
    """

    factory: Callable[..., Any]
    requires_metric: bool = False
    total_steps_argument: str | None = None
    aliases: tuple[str, ...] = field(default=())


def _ours(method: str) -> SchedulerEntry:
    return SchedulerEntry(partial(LRScheduler, method=method), total_steps_argument="total_steps")


SCHEDULERS: dict[str, SchedulerEntry] = {
    "linear": _ours("linear"),
    "cosine": _ours("cosine"),
    "constant": _ours("constant"),
    "lr_scheduler": SchedulerEntry(LRScheduler, total_steps_argument="total_steps"),
    "step": SchedulerEntry(lr_scheduler.StepLR, aliases=("StepLR",)),
    "multistep": SchedulerEntry(lr_scheduler.MultiStepLR, aliases=("MultiStepLR",)),
    "exponential": SchedulerEntry(lr_scheduler.ExponentialLR, aliases=("ExponentialLR",)),
    "polynomial": SchedulerEntry(
        lr_scheduler.PolynomialLR, total_steps_argument="total_iters", aliases=("PolynomialLR",)
    ),
    "linear_lr": SchedulerEntry(lr_scheduler.LinearLR),
    "constant_lr": SchedulerEntry(lr_scheduler.ConstantLR),
    "cosine_annealing": SchedulerEntry(
        lr_scheduler.CosineAnnealingLR, total_steps_argument="T_max", aliases=("CosineAnnealingLR",)
    ),
    "cosine_warm_restarts": SchedulerEntry(
        lr_scheduler.CosineAnnealingWarmRestarts, aliases=("CosineAnnealingWarmRestarts",)
    ),
    "cyclic": SchedulerEntry(lr_scheduler.CyclicLR, aliases=("CyclicLR",)),
    "one_cycle": SchedulerEntry(lr_scheduler.OneCycleLR, total_steps_argument="total_steps", aliases=("OneCycleLR",)),
    "reduce_on_plateau": SchedulerEntry(
        lr_scheduler.ReduceLROnPlateau, requires_metric=True, aliases=("ReduceLROnPlateau", "plateau")
    ),
}
"""Every scheduler `build_scheduler` can build, by canonical name."""


@dataclass(frozen=True)
class BuiltScheduler:
    """A scheduler built from config and how the training loop must step it.

    Attributes:
        scheduler: The scheduler; checkpoint it through its ``state_dict``.
        interval: ``"step"``: call :meth:`step` after every applied optimizer step;
            ``"epoch"``: call it once per epoch or evaluation round.
        requires_metric: :meth:`step` needs the monitored metric.
        monitor: The metric the config names for a metric scheduler (``"val.loss"``), if any.
    """

    scheduler: Any
    interval: Interval
    requires_metric: bool
    monitor: str | None = None

    def step(self, metric: Any = None) -> None:
        """Advance the scheduler, handing it `metric` when it requires one.

        Raises:
            ValueError: If the scheduler requires a metric and `metric` is None.
        """
        if not self.requires_metric:
            self.scheduler.step()
        elif metric is None:
            raise ValueError(f"{type(self.scheduler).__name__} steps on a metric, but got metric=None")
        else:
            self.scheduler.step(metric)


def build_scheduler(
    optimizer: Optimizer, config: Mapping[str, Any], *, total_steps: int | None = None
) -> BuiltScheduler:
    """Build the scheduler `config` describes around `optimizer`.

    Args:
        optimizer: The optimizer to schedule.
        config: ``type`` (a name in `SCHEDULERS` or an alias), optionally ``interval`` (see
            `normalize_scheduler_interval`) and ``monitor`` (metric schedulers only), and the
            scheduler's own arguments. Every other key must be a constructor argument.
        total_steps: The run's number of optimizer steps. It fills the scheduler's
            ``total_steps_argument`` when the config leaves it out and the interval is
            ``"step"``; schedulers without such an argument never see it.

    Raises:
        ValueError: For an unknown ``type`` (the message lists the valid names), an argument the
            scheduler does not accept, a missing required argument, or a bad interval.

    Examples:
        >>> import torch
        >>> optimizer = torch.optim.SGD([torch.zeros(1)], lr=0.1)
        >>> built = build_scheduler(optimizer, {"type": "cosine", "warmup_steps": 10}, total_steps=100)
        >>> built.scheduler, built.interval
        (LRScheduler(cosine, scaling=percentile, final_lr_ratio=0.001, total_steps=100, warmup_steps=10, cooldown_steps=20), 'step')
        >>> built = build_scheduler(optimizer, {"type": "StepLR", "step_size": 10}, total_steps=100)
        >>> type(built.scheduler).__name__, built.interval
        ('StepLR', 'step')
        >>> built = build_scheduler(optimizer, {"type": "reduce_on_plateau", "monitor": "val.loss"})
        >>> built.interval, built.requires_metric, built.monitor
        ('epoch', True, 'val.loss')
        >>> build_scheduler(optimizer, {"type": "StepLR", "step_size": 10, "warmup_steps": 5})
        Traceback (most recent call last):
        ...
        ValueError: scheduler 'step' (StepLR) does not accept ['warmup_steps']; it accepts ['gamma', 'last_epoch', 'step_size'...]
    """
    arguments = dict(config)
    name, entry = lookup_scheduler(arguments.pop("type", None))
    interval = normalize_scheduler_interval(arguments.pop("interval", None), requires_metric=entry.requires_metric)
    monitor = arguments.pop("monitor", None)
    if monitor is not None and not entry.requires_metric:
        raise ValueError(f"`monitor` applies only to metric schedulers, but scheduler {name!r} got monitor={monitor!r}")
    target = entry.total_steps_argument
    if target is not None and target not in arguments and total_steps is not None and interval == "step":
        arguments[target] = total_steps
    _check_arguments(name, entry, arguments, interval)
    scheduler = entry.factory(optimizer, **arguments)
    return BuiltScheduler(scheduler, interval, entry.requires_metric, None if monitor is None else str(monitor))


def lookup_scheduler(name: Any) -> tuple[str, SchedulerEntry]:
    """The canonical name and entry of `name`, ignoring case, ``_``, ``-`` and spaces.

    Raises:
        ValueError: If `name` is not a known name or alias; the message lists the valid names.

    Examples:
        >>> lookup_scheduler("CosineAnnealingLR")[0]
        'cosine_annealing'
    """
    if isinstance(name, str):
        wanted = _normalize(name)
        for canonical, entry in SCHEDULERS.items():
            if wanted in {_normalize(canonical), *map(_normalize, entry.aliases)}:
                return canonical, entry
    raise ValueError(f"scheduler `type` must be one of {sorted(SCHEDULERS)} (or a torch class name), but got {name!r}")


def normalize_scheduler_interval(interval: str | None, *, requires_metric: bool) -> Interval:
    """The interval a scheduler is stepped at: ``"step"`` or ``"epoch"``.

    ``None`` picks the default: ``"epoch"`` for metric schedulers, ``"step"`` otherwise. Aliases:
    step, steps, update, updates; epoch, epochs, eval, evaluation, validation (any case).

    Raises:
        ValueError: For an unknown interval, or ``"step"`` with a metric scheduler.

    Examples:
        >>> normalize_scheduler_interval(" Validation ", requires_metric=True)
        'epoch'
        >>> normalize_scheduler_interval(None, requires_metric=False)
        'step'
    """
    if interval is None:
        return "epoch" if requires_metric else "step"
    resolved = _INTERVAL_ALIASES.get(interval.strip().lower()) if isinstance(interval, str) else None
    if resolved is None:
        raise ValueError(f"scheduler `interval` must be one of {sorted(_INTERVAL_ALIASES)}, but got {interval!r}")
    if resolved == "step" and requires_metric:
        raise ValueError(f"metric schedulers step once per epoch or evaluation, but got interval={interval!r}")
    return resolved


def scheduler_requires_metric(scheduler: Any) -> bool:
    """Whether `scheduler.step` takes a metric, as ``ReduceLROnPlateau``'s does.

    For schedulers the user built by hand; built ones carry `BuiltScheduler.requires_metric`.
    """
    return isinstance(scheduler, lr_scheduler.ReduceLROnPlateau)


def _normalize(name: str) -> str:
    return "".join(char for char in name.lower() if char not in "_- ")


def _check_arguments(name: str, entry: SchedulerEntry, arguments: Mapping[str, Any], interval: Interval) -> None:
    parameters = list(inspect.signature(entry.factory).parameters.values())[1:]  # the first takes the optimizer
    fixed = entry.factory.keywords if isinstance(entry.factory, partial) else {}
    accepted = {p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)} - set(fixed)
    label = f"scheduler {name!r} ({_factory_name(entry.factory)})"
    if not any(p.kind is p.VAR_KEYWORD for p in parameters):
        unknown = sorted(set(arguments) - accepted)
        if unknown:
            clash = [f"{key}={fixed[key]!r}" for key in unknown if key in fixed]
            fixed_note = f" ({', '.join(clash)} is fixed by its type)" if clash else ""
            raise ValueError(f"{label} does not accept {unknown}{fixed_note}; it accepts {sorted(accepted)}")
    required = [
        p.name for p in parameters if p.default is p.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    ]
    missing = [argument for argument in required if argument not in arguments]
    if missing:
        hint = ""
        if entry.total_steps_argument in missing:
            hint = (
                f"; `{entry.total_steps_argument}` comes from build_scheduler's total_steps when the interval is 'step'"
                f" (it is {interval!r} here)"
            )
        raise ValueError(f"{label} needs {missing}{hint}")


def _factory_name(factory: Callable[..., Any]) -> str:
    target = factory.func if isinstance(factory, partial) else factory
    return getattr(target, "__name__", repr(target))
