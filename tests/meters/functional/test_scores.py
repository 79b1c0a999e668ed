"""Scores from confusion matrices: averaging rules, zero division, empty matrices."""

from __future__ import annotations

import math

import pytest
import torch

from danling.metrics.functional import scores


def test_stat_scores_of_each_layout():
    tp, fp, fn, tn = scores.stat_scores(torch.tensor([[5, 1], [2, 3]]))
    assert (tp.tolist(), fp.tolist(), fn.tolist(), tn.tolist()) == ([5, 3], [2, 1], [1, 2], [3, 5])
    tp, fp, fn, tn = scores.stat_scores(torch.tensor([[[4, 1], [2, 3]], [[0, 0], [0, 10]]]))
    assert (tp.tolist(), fp.tolist(), fn.tolist(), tn.tolist()) == ([3, 10], [1, 0], [2, 0], [4, 0])
    with pytest.raises(ValueError, match=r"\(C, C\) or \(L, 2, 2\), but got \(2, 3\)"):
        scores.stat_scores(torch.zeros(2, 3))


def test_binary_average_reads_the_positive_class():
    confmat = torch.tensor([[4, 2], [2, 2]])
    assert scores.precision(confmat).item() == 0.5
    assert scores.recall(confmat).item() == 0.5
    assert scores.specificity(confmat).item() == pytest.approx(4 / 6)
    assert scores.accuracy(confmat).item() == 0.6
    with pytest.raises(ValueError, match="average='binary' needs a \\(2, 2\\)"):
        scores.precision(torch.eye(3, dtype=torch.int64))


def test_zero_division_counts_zero_but_empty_is_nan():
    no_predicted_positive = torch.tensor([[3, 0], [2, 0]])
    assert scores.precision(no_predicted_positive).item() == 0.0
    assert scores.f1_score(no_predicted_positive).item() == 0.0
    empty = torch.zeros(2, 2, dtype=torch.int64)
    for fn in (scores.precision, scores.recall, scores.f1_score, scores.accuracy, scores.matthews_corrcoef):
        assert math.isnan(fn(empty).item())
    assert math.isnan(scores.precision(torch.zeros(3, 3), average="macro").item())


def test_macro_average_skips_classes_that_never_occur():
    confmat = torch.tensor([[2, 1, 0], [1, 3, 0], [0, 0, 0]])
    per_class = scores.recall(confmat, average=None)
    assert per_class[2].item() == 0.0
    assert scores.recall(confmat, average="macro").item() == pytest.approx((2 / 3 + 3 / 4) / 2)
    assert scores.recall(confmat, average="weighted").item() == pytest.approx(5 / 7)
    assert scores.recall(confmat, average="micro").item() == pytest.approx(5 / 7)


def test_fbeta_weights_recall_by_beta():
    confmat = torch.tensor([[5, 5], [1, 4]])  # precision 4/9, recall 4/5
    precision, recall = 4 / 9, 4 / 5
    for beta in (0.5, 1.0, 2.0):
        expected = (1 + beta**2) * precision * recall / (beta**2 * precision + recall)
        assert scores.fbeta_score(confmat, beta).item() == pytest.approx(expected)
    with pytest.raises(ValueError, match="beta must be positive, but got 0"):
        scores.fbeta_score(confmat, 0)


def test_accuracy_average_options():
    confmat = torch.tensor([[2, 1, 0], [1, 3, 0], [0, 0, 0]])
    assert scores.accuracy(confmat).item() == pytest.approx(5 / 7)
    assert scores.accuracy(confmat, average="macro").item() == pytest.approx(scores.balanced_accuracy(confmat).item())
    per_class = scores.accuracy(confmat, average=None)
    assert math.isnan(per_class[2].item())
    with pytest.raises(ValueError, match="accuracy average must be"):
        scores.accuracy(confmat, average="weighted")
