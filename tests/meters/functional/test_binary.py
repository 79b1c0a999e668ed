"""Binary metrics against scikit-learn on random data and edge cases."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from sklearn import metrics as skm

from danling.metrics.functional import (
    binary_accuracy,
    binary_auprc,
    binary_auroc,
    binary_balanced_accuracy,
    binary_f1_score,
    binary_fbeta_score,
    binary_mcc,
    binary_precision,
    binary_recall,
    binary_specificity,
)

THRESHOLD_METRICS = {
    "accuracy": (binary_accuracy, skm.accuracy_score),
    "balanced_accuracy": (binary_balanced_accuracy, skm.balanced_accuracy_score),
    "precision": (binary_precision, lambda y, p: skm.precision_score(y, p, zero_division=0)),
    "recall": (binary_recall, lambda y, p: skm.recall_score(y, p, zero_division=0)),
    "specificity": (binary_specificity, lambda y, p: skm.recall_score(y, p, pos_label=0, zero_division=0)),
    "f1": (binary_f1_score, lambda y, p: skm.f1_score(y, p, zero_division=0)),
    "fbeta": (
        lambda x, y: binary_fbeta_score(x, y, beta=0.5),
        lambda y, p: skm.fbeta_score(y, p, beta=0.5, zero_division=0),
    ),
    "mcc": (binary_mcc, skm.matthews_corrcoef),
}


def sklearn_value(fn, *args) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(fn(*args))


def random_case(seed: int, size: int = 200, positive_rate: float = 0.4):
    generator = torch.Generator().manual_seed(seed)
    scores = torch.rand(size, generator=generator, dtype=torch.float64)
    target = (torch.rand(size, generator=generator) < positive_rate).long()
    return scores, target


@pytest.mark.parametrize("name", list(THRESHOLD_METRICS))
@pytest.mark.parametrize("seed", range(4))
def test_threshold_metrics_match_sklearn(name, seed):
    ours, theirs = THRESHOLD_METRICS[name]
    scores, target = random_case(seed)
    expected = sklearn_value(theirs, target.numpy(), (scores > 0.5).long().numpy())
    assert ours(scores, target).item() == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("name", list(THRESHOLD_METRICS))
@pytest.mark.parametrize(
    "case",
    [
        ("one class present", torch.tensor([0.2, 0.7, 0.9, 0.1]), torch.tensor([1, 1, 1, 1])),
        ("all predictions equal", torch.full((6,), 0.8), torch.tensor([0, 1, 0, 1, 1, 0])),
        ("no predicted positives", torch.full((5,), 0.1), torch.tensor([0, 1, 0, 1, 1])),
        ("perfect", torch.tensor([0.9, 0.1, 0.8]), torch.tensor([1, 0, 1])),
    ],
    ids=lambda case: case[0],
)
def test_threshold_metrics_edge_cases_match_sklearn(name, case):
    ours, theirs = THRESHOLD_METRICS[name]
    _, scores, target = case
    expected = sklearn_value(theirs, target.numpy(), (scores > 0.5).long().numpy())
    assert ours(scores, target).item() == pytest.approx(expected, abs=1e-12)


@given(
    st.lists(st.tuples(st.integers(0, 6), st.integers(0, 1)), min_size=2, max_size=60),
)
def test_ranking_metrics_match_sklearn_with_heavy_ties(pairs):
    scores = torch.tensor([score / 6 for score, _ in pairs], dtype=torch.float64)
    target = torch.tensor([label for _, label in pairs])
    labels = target.numpy()
    if 0 < labels.sum() < len(labels):
        assert binary_auroc(scores, target).item() == pytest.approx(skm.roc_auc_score(labels, scores.numpy()))
    else:
        assert math.isnan(binary_auroc(scores, target).item()), "undefined with one class"
    if labels.sum() > 0:
        expected = skm.average_precision_score(labels, scores.numpy())
        assert binary_auprc(scores, target).item() == pytest.approx(expected)
    else:
        assert math.isnan(binary_auprc(scores, target).item()), "undefined without positives"


@pytest.mark.parametrize("seed", range(3))
def test_ranking_metrics_match_sklearn_on_continuous_scores(seed):
    scores, target = random_case(seed, size=500)
    assert binary_auroc(scores, target).item() == pytest.approx(skm.roc_auc_score(target.numpy(), scores.numpy()))
    assert binary_auprc(scores, target).item() == pytest.approx(
        skm.average_precision_score(target.numpy(), scores.numpy())
    )


def test_all_equal_scores_give_chance_auroc():
    target = torch.tensor([0, 1, 1, 0, 1])
    assert binary_auroc(torch.full((5,), 0.3), target).item() == 0.5
    assert binary_auprc(torch.full((5,), 0.3), target).item() == pytest.approx(3 / 5)


def test_logits_are_mapped_through_a_sigmoid():
    logits = torch.tensor([-2.0, 3.0, 0.5, -0.1])
    target = torch.tensor([0, 1, 0, 0])
    # sigmoid(0.5) > 0.5 is a positive prediction although 0.5 is not above the threshold itself
    assert binary_accuracy(logits, target).item() == 0.75
    assert binary_auroc(logits, target).item() == binary_auroc(logits.sigmoid(), target).item() == 1.0


def test_ignore_index_leaves_entries_out():
    scores = torch.tensor([0.9, 0.2, 0.8, 0.1, 0.7])
    target = torch.tensor([1, -100, 0, 0, -100])
    kept = target != -100
    assert binary_accuracy(scores, target).item() == binary_accuracy(scores[kept], target[kept]).item()
    assert binary_auroc(scores, target).item() == binary_auroc(scores[kept], target[kept]).item()
    assert binary_auroc(scores, torch.tensor([1, 7, 0, 0, 0]), ignore_index=7).item() == 1.0


def test_shapes_are_flattened_and_checked():
    scores = torch.tensor([[0.9, 0.2], [0.8, 0.1]])
    assert binary_accuracy(scores, torch.tensor([1, 0, 1, 0])).item() == 1.0
    with pytest.raises(ValueError, match=r"same number of elements, but got shapes \(2, 2\) and \(3,\)"):
        binary_accuracy(scores, torch.tensor([1, 0, 1]))


def test_bad_targets_raise_with_the_values():
    with pytest.raises(ValueError, match=r"outside \[0, 2\).*\[2, 3\]"):
        binary_accuracy(torch.rand(4), torch.tensor([0, 2, 3, 1]))
    with pytest.raises(ValueError, match="target contains NaN"):
        binary_auroc(torch.rand(3), torch.tensor([0.0, float("nan"), 1.0]))


def test_empty_input_is_nan():
    empty = torch.empty(0)
    for fn in (binary_accuracy, binary_precision, binary_auroc, binary_auprc, binary_mcc):
        assert math.isnan(fn(empty, empty.long()).item())


def test_results_are_float64_scalars():
    scores, target = random_case(0)
    for fn in (binary_accuracy, binary_f1_score, binary_auroc):
        result = fn(scores.float(), target)
        assert result.shape == () and result.dtype == torch.float64


def test_lists_are_accepted():
    assert binary_accuracy([0.1, 0.8, 0.6, 0.2], [0, 1, 0, 0]).item() == 0.75
    assert np.isclose(binary_mcc([0.9, 0.1], [1, 0]).item(), 1.0)
