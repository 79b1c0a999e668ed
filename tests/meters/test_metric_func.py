"""MetricFunc descriptors and metric naming helpers."""

from __future__ import annotations

import functools
import math

import pytest
import torch

from danling.metrics import ConfmatSpec, MetricFunc, MetricState
from danling.metrics.functional import binary_auroc, scores
from danling.metrics.metric_func import infer_metric_name, iter_metric_funcs, merge_metric_entries


def test_descriptors_read_the_state_they_declare():
    spec = ConfmatSpec("binary")
    acc = MetricFunc(scores.accuracy, name="acc", confmat=spec)
    auroc = MetricFunc(binary_auroc, ignore_index=None)
    state = MetricState.build(torch.tensor([0.9, 0.2, 0.7]), torch.tensor([1, 0, 0]), None)
    assert math.isnan(acc(state).item()), "no matrix in the state reads as an empty one"
    state.confmat = spec.compute(state.preds, state.targets)
    assert acc(state).item() == pytest.approx(2 / 3)
    assert auroc(state).item() == 1.0
    assert (acc.preds_targets, auroc.preds_targets) == (False, True)
    assert repr(auroc) == "MetricFunc(binary_auroc)"
    with pytest.raises(ValueError, match="Expected fn to be callable"):
        MetricFunc(3)


def test_names_flattening_and_merging():
    assert infer_metric_name(binary_auroc) == "binary_auroc"
    assert infer_metric_name(MetricFunc(binary_auroc, name="auc")) == "auc"
    assert infer_metric_name(functools.partial(binary_auroc, ignore_index=1)) == "binary_auroc"
    with pytest.raises(ValueError, match="keyword argument"):
        infer_metric_name(object())
    assert list(iter_metric_funcs([[1, 2], 3, (4,)])) == [1, 2, 3, 4]
    merged = merge_metric_entries([("a", 1), ("b", 2), ("a", 3)], {"b": 4, "c": 5})
    assert merged == {"a": 1, "b": 4, "c": 5}
