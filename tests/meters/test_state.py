"""Requirements merging, confusion matrix specs and batch sizes."""

from __future__ import annotations

import pytest
import torch

from danling.metrics import ConfmatSpec, MetricFunc, MetricState, Requirements
from danling.metrics.functional import binary_auroc, scores
from danling.metrics.state import collect_requirements


def test_requirements_merge():
    spec = ConfmatSpec("multiclass", num_classes=3)
    funcs = [MetricFunc(scores.accuracy, confmat=spec), MetricFunc(scores.f1_score, confmat=spec)]
    assert collect_requirements(funcs) == Requirements(preds_targets=False, confmat=spec)
    assert collect_requirements([*funcs, MetricFunc(binary_auroc)]).preds_targets
    with pytest.raises(ValueError, match="Conflicting confusion matrix requirements"):
        collect_requirements([*funcs, MetricFunc(scores.accuracy, confmat=ConfmatSpec("multiclass", num_classes=4))])
    with pytest.raises(ValueError, match=r"^At least one metric function is required\.$"):
        collect_requirements([], require_nonempty=True)


def test_confmat_spec_validation_and_shapes():
    assert ConfmatSpec("binary").shape == (2, 2)
    assert ConfmatSpec("multilabel", num_labels=3).empty().shape == (3, 2, 2)
    with pytest.raises(ValueError, match="needs num_classes"):
        ConfmatSpec("multiclass")
    with pytest.raises(ValueError, match="but got 'ranking'"):
        ConfmatSpec("ranking")


def test_sample_count():
    spec = ConfmatSpec("binary")
    requirements = Requirements(confmat=spec)
    state = MetricState.build(torch.tensor([0.1, 0.9, 0.5]), torch.tensor([0, -100, 1]), requirements)
    assert state.sample_count().item() == 2, "ignored targets are not samples"
    assert MetricState([1, 2, 3], [1, 2, 3]).sample_count() == 3
    assert MetricState(torch.tensor(1.0), torch.tensor(1.0)).sample_count() == 1
    multilabel = MetricState.build(
        torch.rand(4, 2), torch.zeros(4, 2), Requirements(confmat=ConfmatSpec("multilabel", num_labels=2))
    )
    assert multilabel.sample_count() == 4
