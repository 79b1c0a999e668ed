"""The learning-rate scheduler, its strategies and the registry that builds schedulers from config."""

from __future__ import annotations

from .lr_scheduler import SCALINGS, LRScheduler
from .registry import (
    SCHEDULERS,
    BuiltScheduler,
    Interval,
    SchedulerEntry,
    build_scheduler,
    lookup_scheduler,
    normalize_scheduler_interval,
    scheduler_requires_metric,
)
from .strategies import STRATEGIES, Strategy

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
