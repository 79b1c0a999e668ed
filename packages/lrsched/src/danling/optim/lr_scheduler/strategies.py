"""Decay strategies: plain functions from training progress to the fraction of decay done.

A strategy takes ``progress`` in ``[0, 1]`` (the share of ``total_steps`` already taken) and returns
how much of the way from the base learning rate to the final one the schedule has travelled, also
in ``[0, 1]``: ``0`` keeps the base rate, ``1`` reaches the final rate. It is *not* a multiplier of
the learning rate; :class:`~danling.optim.LRScheduler` turns it into one with its ``scaling``.

Examples:
    >>> from danling.optim.lr_scheduler.strategies import STRATEGIES, constant, cosine, linear
    >>> linear(0.25), round(cosine(0.5), 12), constant(0.9)
    (0.25, 0.5, 0.0)
    >>> sorted(STRATEGIES)
    ['constant', 'cosine', 'linear']
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from math import cos, pi
from types import MappingProxyType

Strategy = Callable[[float], float]
"""A function from progress in ``[0, 1]`` to the fraction of the decay completed, in ``[0, 1]``."""


def linear(progress: float) -> float:
    """Travel the decay at a constant pace: the fraction done equals the progress.

    Examples:
        >>> [linear(p) for p in (0.0, 0.5, 1.0)]
        [0.0, 0.5, 1.0]
    """
    return progress


def cosine(progress: float) -> float:
    """Travel the decay along half a cosine wave: slow at both ends, fastest in the middle.

    Examples:
        >>> [round(cosine(p), 6) for p in (0.0, 0.25, 0.5, 1.0)]
        [0.0, 0.146447, 0.5, 1.0]
    """
    return (1.0 - cos(pi * progress)) / 2.0


def constant(progress: float) -> float:
    """Never decay: the curve stays at the base rate (warmup and cooldown still apply).

    Examples:
        >>> constant(0.0), constant(1.0)
        (0.0, 0.0)
    """
    return 0.0


STRATEGIES: Mapping[str, Strategy] = MappingProxyType({"linear": linear, "cosine": cosine, "constant": constant})
"""The built-in strategies by name; :class:`~danling.optim.LRScheduler` exposes each as a method."""
