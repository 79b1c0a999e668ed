"""Multilabel metrics against scikit-learn (label by label)."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from sklearn import metrics as skm

from danling.metrics.functional import (
    multilabel_accuracy,
    multilabel_auprc,
    multilabel_auroc,
    multilabel_balanced_accuracy,
    multilabel_f1_score,
    multilabel_fbeta_score,
    multilabel_mcc,
    multilabel_precision,
    multilabel_recall,
    multilabel_specificity,
)

L = 4


def sklearn_value(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kwargs)


def random_case(seed: int, size: int = 200):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(size, L, generator=generator, dtype=torch.float64)
    target = (torch.rand(size, L, generator=generator) < 0.35).long()
    return logits, target


@pytest.mark.parametrize("average", ["micro", "macro", "weighted"])
@pytest.mark.parametrize("seed", range(3))
def test_threshold_metrics_match_sklearn(average, seed):
    logits, target = random_case(seed)
    y, p = target.numpy(), (logits.sigmoid() > 0.5).long().numpy()
    kwargs = {"average": average, "zero_division": 0}
    assert multilabel_precision(logits, target, L, average=average).item() == pytest.approx(
        sklearn_value(skm.precision_score, y, p, **kwargs)
    )
    assert multilabel_recall(logits, target, L, average=average).item() == pytest.approx(
        sklearn_value(skm.recall_score, y, p, **kwargs)
    )
    assert multilabel_f1_score(logits, target, L, average=average).item() == pytest.approx(
        sklearn_value(skm.f1_score, y, p, **kwargs)
    )
    assert multilabel_fbeta_score(logits, target, L, beta=0.5, average=average).item() == pytest.approx(
        sklearn_value(skm.fbeta_score, y, p, beta=0.5, **kwargs)
    )


@pytest.mark.parametrize("seed", range(3))
def test_label_wise_scores_match_sklearn(seed):
    logits, target = random_case(seed)
    y, p = target.numpy(), (logits.sigmoid() > 0.5).long().numpy()
    per_label_accuracy = [skm.accuracy_score(y[:, k], p[:, k]) for k in range(L)]
    np.testing.assert_allclose(multilabel_accuracy(logits, target, L, average=None).numpy(), per_label_accuracy)
    assert multilabel_accuracy(logits, target, L).item() == pytest.approx(np.mean(per_label_accuracy))
    assert multilabel_accuracy(logits, target, L, average="micro").item() == pytest.approx(1 - skm.hamming_loss(y, p))
    balanced = [sklearn_value(skm.balanced_accuracy_score, y[:, k], p[:, k]) for k in range(L)]
    assert multilabel_balanced_accuracy(logits, target, L).item() == pytest.approx(np.mean(balanced))
    specificity = [sklearn_value(skm.recall_score, y[:, k], p[:, k], pos_label=0) for k in range(L)]
    np.testing.assert_allclose(multilabel_specificity(logits, target, L, average=None).numpy(), specificity)
    assert multilabel_mcc(logits, target, L).item() == pytest.approx(skm.matthews_corrcoef(y.ravel(), p.ravel()))


@pytest.mark.parametrize("average", ["macro", "weighted", "micro"])
def test_ranking_metrics_match_sklearn(average):
    logits, target = random_case(11)
    probabilities = logits.sigmoid().numpy()
    assert multilabel_auroc(logits, target, L, average=average).item() == pytest.approx(
        skm.roc_auc_score(target.numpy(), probabilities, average=average)
    )
    assert multilabel_auprc(logits, target, L, average=average).item() == pytest.approx(
        skm.average_precision_score(target.numpy(), probabilities, average=average)
    )


def test_label_with_one_class_is_left_out_of_ranking_averages():
    logits, target = random_case(12)
    target[:, 2] = 0
    per_label = multilabel_auroc(logits, target, L, average=None)
    assert math.isnan(per_label[2].item())
    kept = [0, 1, 3]
    expected = skm.roc_auc_score(target[:, kept].numpy(), logits[:, kept].sigmoid().numpy())
    assert multilabel_auroc(logits, target, L).item() == pytest.approx(expected)


def test_ignore_index_and_shapes():
    logits, target = random_case(13, size=30)
    masked = target.clone()
    masked[0, 1] = -100
    full = multilabel_auroc(logits, masked, L, average=None)
    assert full[1].item() == pytest.approx(multilabel_auroc(logits[1:], target[1:], L, average=None)[1].item())
    with pytest.raises(ValueError, match=r"shape \(\*, 4\), but got \(30, 4\) and \(30, 3\)"):
        multilabel_f1_score(logits, target[:, :3], L)
    sequence = logits.reshape(3, 10, L)
    assert multilabel_f1_score(sequence, target.reshape(3, 10, L), L).item() == pytest.approx(
        multilabel_f1_score(logits, target, L).item()
    )
