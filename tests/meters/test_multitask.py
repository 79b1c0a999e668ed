"""MultiTaskMetrics: task containers, payloads, aggregates, errors."""

from __future__ import annotations

import math

import pytest
import torch

from danling.metrics import (
    AverageMeter,
    GlobalMetrics,
    MetricMeter,
    MultiTaskMetrics,
    StreamMetrics,
    binary_metric_funcs,
    binary_metrics,
)
from danling.metrics.functional import accuracy


def two_tasks(**kwargs) -> MultiTaskMetrics:
    metrics = MultiTaskMetrics(**kwargs)
    metrics.a = StreamMetrics(acc=accuracy)
    metrics.b = StreamMetrics(acc=accuracy)
    return metrics


def test_payloads_as_mappings_or_sequences():
    metrics = two_tasks()
    metrics.update({"a": {"input": [0.9, 0.1], "target": [1, 1]}, "b": ([0.9], [1])})
    metrics.update({"a": {"input": [0.9], "target": [1], "n": 6}})
    assert metrics.val.dict() == {"a": {"acc": 1.0}, "b": {"acc": 1.0}}
    assert metrics.avg.a.acc == pytest.approx((0.5 * 2 + 1.0 * 6) / 8)
    assert metrics.b.count.acc == 1, "tasks missing from a payload are untouched"


def test_payload_errors():
    metrics = two_tasks()
    with pytest.raises(ValueError, match=r"Task c not found in a: acc: nan \(nan\)\nb: acc: nan \(nan\)"):
        metrics.update({"c": ([1.0], [1])})
    with pytest.raises(ValueError, match="Mapping or Sequence, but got <class 'int'>"):
        metrics.update({"a": 3})
    with pytest.raises(ValueError, match="Mapping or Sequence, but got <class 'str'>"):
        metrics.update({"a": "xy"})


def test_task_values_are_checked_and_callables_wrapped():
    metrics = MultiTaskMetrics()
    metrics.score = accuracy
    assert isinstance(metrics.score, MetricMeter) and metrics.score.output_name == "accuracy"
    metrics.anonymous = lambda input, target: 0.5
    assert metrics.anonymous.output_name == "anonymous"
    for bad in (AverageMeter(), MultiTaskMetrics(), 1.0):
        with pytest.raises(ValueError, match="GlobalMetrics, StreamMetrics, MetricMeter, or a callable"):
            metrics.bad = bad
    assert "bad" not in metrics
    with pytest.raises(AttributeError):
        _ = metrics.missing


def test_meter_tasks_report_under_their_metric_name():
    metrics = MultiTaskMetrics(score=accuracy)
    metrics.update({"score": ([0.9, 0.2], [1, 1])})
    assert metrics.val.dict() == {"score": {"accuracy": 0.5}}


def test_tasks_without_results_are_left_out():
    metrics = two_tasks(aggregate="macro")
    metrics.update({"a": ([0.9], [1])})
    assert metrics.avg.dict() == {"a": {"acc": 1.0}, "aggregate": {"acc": 1.0}}


def test_macro_micro_weighted_aggregates():
    data = {"a": ([0.9, 0.9, 0.1, 0.1], [1, 1, 1, 1]), "b": ([0.9], [1])}  # 0.5 over 4, 1.0 over 1
    expected = {"macro": 0.75, "micro": (0.5 * 4 + 1.0) / 5, "weighted": (0.5 * 1 + 1.0 * 3) / 4}
    for mode, value in expected.items():
        weights = {"a": 1, "b": torch.tensor(3.0)} if mode == "weighted" else None
        metrics = two_tasks(aggregate=mode, aggregate_weights=weights)
        metrics.update(data)
        assert metrics.avg.aggregate.acc == pytest.approx(value), mode
        assert metrics.val.aggregate.acc == pytest.approx(value), mode


def test_global_and_stream_tasks_aggregate_together():
    metrics = MultiTaskMetrics(aggregate="macro")
    metrics.exact = binary_metrics(metrics=["acc"])
    metrics.stream = StreamMetrics(acc=binary_metric_funcs()["acc"])
    metrics.update({"exact": ([0.9, 0.1], [1, 1]), "stream": ([0.9], [1])})
    assert isinstance(metrics.exact, GlobalMetrics)
    assert metrics.avg.aggregate.acc == 0.75


def test_aggregate_argument_errors():
    with pytest.raises(
        ValueError, match="aggregate must be one of None, 'macro', 'micro', or 'weighted', but got 'sum'"
    ):
        MultiTaskMetrics(aggregate="sum")
    with pytest.raises(ValueError, match="aggregate_weights is required"):
        MultiTaskMetrics(aggregate="weighted")
    with pytest.raises(ValueError, match="only supported when aggregate='weighted'"):
        MultiTaskMetrics(aggregate="macro", aggregate_weights={"a": 1.0})
    with pytest.raises(ValueError, match="task 'a' must be a non-negative finite scalar, but got -1"):
        MultiTaskMetrics(aggregate="weighted", aggregate_weights={"a": -1})
    metrics = two_tasks(aggregate="weighted", aggregate_weights={"a": 1.0, "c": 1.0})
    metrics.update({"a": ([0.9], [1]), "b": ([0.9], [1])})
    with pytest.raises(ValueError, match=r"unknown tasks: \['c'\]"):
        _ = metrics.avg
    metrics = two_tasks(aggregate="weighted", aggregate_weights={"a": 1.0})
    metrics.update({"a": ([0.9], [1]), "b": ([0.9], [1])})
    with pytest.raises(ValueError, match="missing a weight for task 'b'"):
        _ = metrics.avg


def test_format_repr_reset_and_state(tmp_path):
    metrics = two_tasks(aggregate="macro")
    metrics.update({"a": ([0.9], [1]), "b": ([0.1], [1])})
    assert f"{metrics:.2f}" == "a: acc: 1.00 (1.00)\nb: acc: 0.00 (0.00)"
    assert repr(metrics).startswith("MultiTaskMetrics(\n  ('a'): StreamMetrics('acc',)")
    path = tmp_path / "tasks.pt"
    torch.save(metrics.state_dict(), path)
    restored = two_tasks(aggregate="macro")
    restored.load_state_dict(torch.load(path))
    assert restored.avg.dict() == metrics.avg.dict()
    with pytest.raises(KeyError, match="state has task 'c'"):
        restored.load_state_dict({"c": {}})
    assert metrics.reset() is metrics
    assert math.isnan(metrics.a.avg.acc)
