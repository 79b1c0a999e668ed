"""Aggregation of task results by exact metric path."""

from __future__ import annotations

import math

import pytest
import torch

from danling.metrics.aggregate import aggregate, is_nan, leaves


def test_nan_detection_and_leaves():
    assert is_nan(math.nan) and is_nan(torch.full((2,), math.nan)) and is_nan(torch.empty(0)) and is_nan({})
    assert not is_nan(torch.tensor([math.nan, 1.0])) and not is_nan(0.0)
    assert leaves({"a": {"b": 1, "c": {"d": 2}}, "e": 3}) == {"a.b": 1, "a.c.d": 2, "e": 3}


def test_paths_match_exactly_and_nan_tasks_are_skipped():
    outputs = {"x": {"acc": 0.5, "head": {"f1": 1.0}}, "y": {"acc": math.nan, "head": {"f1": 0.0}}, "z": {"acc": 1.0}}
    result = aggregate(outputs, {"x": 1.0, "y": 1.0, "z": 1.0})
    assert result.dict() == {"acc": 0.75, "head": {"f1": 0.5}}


def test_tensor_results_and_zero_weights():
    outputs = {
        "x": {"v": torch.tensor([1.0, 3.0])},
        "y": {"v": torch.tensor([3.0, 5.0])},
        "z": {"v": torch.tensor([9.0, 9.0])},
    }
    result = aggregate(outputs, {"x": 1.0, "y": 3.0, "z": 0.0})
    torch.testing.assert_close(result.v, torch.tensor([2.5, 4.5], dtype=torch.float64))
    assert math.isnan(aggregate({"x": {"v": 1.0}}, {"x": 0.0}).v)


def test_mixed_and_misshaped_results_raise():
    with pytest.raises(ValueError, match="metric 'v' mixes scalar and tensor outputs across tasks"):
        aggregate({"x": {"v": 1.0}, "y": {"v": torch.ones(2)}}, {"x": 1.0, "y": 1.0})
    with pytest.raises(ValueError, match=r"metric 'v' has inconsistent tensor shapes across tasks: \[\(2,\), \(3,\)\]"):
        aggregate({"x": {"v": torch.ones(2)}, "y": {"v": torch.ones(3)}}, {"x": 1.0, "y": 1.0})
    with pytest.raises(ValueError, match=r"missing a weight for metric 'x\.v'"):
        aggregate({"x": {"v": 1.0}}, {"x": {"w": 1.0}})
