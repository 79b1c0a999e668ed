"""``build_profiler``: real ``torch.profiler`` traces written by the schedule and read back from disk."""

from __future__ import annotations

import glob
import json
import os

import pytest
import torch
from torch import nn

from danling.runners.config_sections import ProfilingConfig
from danling.runners.profiling import build_profiler, profiler_trace_dir


def _run_steps(profiler, steps: int) -> None:
    model = nn.Linear(16, 16)
    profiler.start()
    try:
        for _ in range(steps):
            with torch.no_grad():
                model(torch.randn(4, 16))
            profiler.step()
    finally:
        profiler.stop()


def _traces(trace_dir) -> list[dict]:
    paths = sorted(glob.glob(os.path.join(trace_dir, "*.pt.trace.json*")))
    traces = []
    for path in paths:
        with open(path) as file:
            traces.append(json.load(file))
    return traces


def _names(trace: dict) -> set[str]:
    return {event.get("name", "") for event in trace["traceEvents"]}


def test_the_schedule_records_only_the_active_steps(tmp_path):
    config = ProfilingConfig(enabled=True, wait=1, warmup=1, active=2, repeat=1, record_shapes=True)
    trace_dir = profiler_trace_dir(config, tmp_path, "T", 0)
    _run_steps(build_profiler(config, trace_dir), 6)
    (trace,) = _traces(trace_dir)
    steps = {name for name in _names(trace) if name.startswith("ProfilerStep#")}
    assert steps == {"ProfilerStep#2", "ProfilerStep#3"}
    assert "aten::addmm" in _names(trace)
    assert any("Input Dims" in event.get("args", {}) for event in trace["traceEvents"])  # record_shapes reached torch
    assert trace_dir == os.path.join(tmp_path, "profiles", "T", "rank-00000")


def test_a_resumed_run_keeps_the_schedule_on_the_global_steps(tmp_path):
    config = {"enabled": True, "wait": 1, "warmup": 1, "active": 2, "repeat": 1}
    _run_steps(build_profiler(config, tmp_path / "resumed", start_step=2), 3)  # global steps 2, 3 are active
    (trace,) = _traces(tmp_path / "resumed")
    assert {name for name in _names(trace) if name.startswith("ProfilerStep#")} == {"ProfilerStep#0", "ProfilerStep#1"}
    _run_steps(build_profiler(config, tmp_path / "late", start_step=10), 4)  # the bounded cycle is long over
    assert _traces(tmp_path / "late") == []


def test_disabled_profiling_builds_nothing(tmp_path):
    assert build_profiler(ProfilingConfig(), tmp_path / "profiles") is None
    assert not (tmp_path / "profiles").exists()


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"wait": -1}, r"profiling\.wait must be a non-negative integer, got -1"),
        ({"warmup": -2}, r"profiling\.warmup must be a non-negative integer, got -2"),
        ({"active": 0}, r"profiling\.active must be a positive integer, got 0"),
        ({"repeat": 0}, r"profiling\.repeat must be a positive integer, got 0"),
    ],
)
def test_bad_schedule_names_the_key(tmp_path, settings, message):
    with pytest.raises(ValueError, match=message):
        build_profiler({"enabled": True, **settings}, tmp_path)
