"""danling.optim: `LRScheduler` and the scheduler registry the runners build schedulers from.

Examples:
    >>> import torch
    >>> from danling.optim import LRScheduler, build_scheduler
    >>> optimizer = torch.optim.AdamW([torch.zeros(2, requires_grad=True)], lr=1e-3)
    >>> scheduler = LRScheduler(optimizer, total_steps=1000, warmup_steps=50)
    >>> built = build_scheduler(optimizer, {"type": "one_cycle", "max_lr": 0.01}, total_steps=1000)
    >>> built.scheduler.total_steps, built.interval
    (1000, 'step')
"""

from __future__ import annotations

from .lr_scheduler import (
    SCALINGS,
    SCHEDULERS,
    STRATEGIES,
    BuiltScheduler,
    Interval,
    LRScheduler,
    SchedulerEntry,
    Strategy,
    build_scheduler,
    lookup_scheduler,
    normalize_scheduler_interval,
    scheduler_requires_metric,
)

__all__ = [
    "SCALINGS",
    "SCHEDULERS",
    "STRATEGIES",
    "BuiltScheduler",
    "Interval",
    "LRScheduler",
    "SchedulerEntry",
    "Strategy",
    "build_scheduler",
    "lookup_scheduler",
    "normalize_scheduler_interval",
    "scheduler_requires_metric",
]
