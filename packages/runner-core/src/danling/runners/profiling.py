"""A bounded ``torch.profiler`` trace of training steps, written in the TensorBoard format.

``build_profiler(config, trace_dir)`` returns an unstarted ``torch.profiler.profile`` (or ``None``
when ``profiling.enabled`` is off).  The runner calls ``start()`` before its first step,
``step()`` after every applied optimizer step (skipped and accumulation micro-steps do not
count), and ``stop()`` when it closes.  The schedule skips ``wait`` steps, profiles ``warmup``
steps without keeping them, then records ``active`` steps and writes one
``*.pt.trace.json`` file per cycle into ``trace_dir``; ``repeat`` bounds the number of cycles
(``None``: torch's default, cycles until the profiler stops).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch.profiler import ProfilerAction, ProfilerActivity, profile, schedule, tensorboard_trace_handler

from .config_sections import ProfilingConfig


def profiler_trace_dir(config: ProfilingConfig, workspace_dir: str | os.PathLike, timestamp: str, rank: int) -> str:
    r"""
    Where rank ``rank`` writes its traces: ``trace_dir`` (under the run directory when relative),
    then ``{timestamp}/rank-{rank:05d}``.

    Examples:
        >>> profiler_trace_dir(ProfilingConfig(), "runs/exp", "20260101", 1)
        'runs/exp/profiles/20260101/rank-00001'
    """
    trace_dir = os.fsdecode(config.trace_dir)
    if not os.path.isabs(trace_dir):
        trace_dir = os.path.join(os.fsdecode(workspace_dir), trace_dir)
    return os.path.join(trace_dir, timestamp, f"rank-{rank:05d}")


def _check_count(value: Any, key: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        kind = "non-negative" if minimum == 0 else "positive"
        raise ValueError(f"profiling.{key} must be a {kind} integer, got {value!r}")
    return value


def _schedule(config: ProfilingConfig, start_step: int) -> Callable[[int], ProfilerAction]:
    wait = _check_count(config.wait, "wait", 0)
    warmup = _check_count(config.warmup, "warmup", 0)
    active = _check_count(config.active, "active", 1)
    repeat = 0 if config.repeat is None else _check_count(config.repeat, "repeat", 1)
    steps = schedule(wait=wait, warmup=warmup, active=active, repeat=repeat)
    if not start_step:
        return steps
    return lambda step: steps(step + start_step)


def build_profiler(
    config: ProfilingConfig | Mapping[str, Any],
    trace_dir: str | os.PathLike,
    *,
    start_step: int = 0,
    device: str | torch.device | None = None,
) -> profile | None:
    r"""
    A ``torch.profiler.profile`` that follows ``config``'s schedule and writes TensorBoard traces to ``trace_dir``.

    Args:
        config: ``config.profiling`` (a ``ProfilingConfig`` or mapping); ``None`` is returned
            unless ``enabled``.
        trace_dir: Folder for the trace files (created); see ``profiler_trace_dir``.
        start_step: Optimizer steps already done (after a resume), so the schedule stays on the
            same global steps as in an uninterrupted run.
        device: The training device; CUDA activity is recorded when it is a CUDA device (or,
            when ``None``, whenever CUDA is available).

    Examples:
        >>> build_profiler({"enabled": False}, "profiles") is None
        True
        >>> build_profiler({"enabled": True, "active": 0}, "profiles")
        Traceback (most recent call last):
        ValueError: profiling.active must be a positive integer, got 0
    """
    if not isinstance(config, ProfilingConfig):
        config = ProfilingConfig(**dict(config))
    if not config.enabled:
        return None
    steps = _schedule(config, start_step)
    activities = [ProfilerActivity.CPU]
    on_cuda = torch.cuda.is_available() if device is None else torch.device(device).type == "cuda"
    if on_cuda:
        activities.append(ProfilerActivity.CUDA)
    trace_dir = os.fsdecode(trace_dir)
    os.makedirs(trace_dir, exist_ok=True)
    return profile(
        activities=activities,
        schedule=steps,
        on_trace_ready=tensorboard_trace_handler(trace_dir),
        record_shapes=bool(config.record_shapes),
        profile_memory=bool(config.profile_memory),
        with_stack=bool(config.with_stack),
        with_flops=bool(config.with_flops),
    )
