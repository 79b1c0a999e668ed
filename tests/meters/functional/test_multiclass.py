"""Multiclass metrics against scikit-learn."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from sklearn import metrics as skm

from danling.metrics.functional import (
    multiclass_accuracy,
    multiclass_auprc,
    multiclass_auroc,
    multiclass_balanced_accuracy,
    multiclass_f1_score,
    multiclass_fbeta_score,
    multiclass_mcc,
    multiclass_precision,
    multiclass_recall,
    multiclass_specificity,
)

C = 5


def sklearn_value(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kwargs)


def random_case(seed: int, size: int = 300, classes: int = C):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(size, classes, generator=generator, dtype=torch.float64)
    target = torch.randint(0, classes, (size,), generator=generator)
    return logits, target


@pytest.mark.parametrize("average", ["micro", "macro", "weighted"])
@pytest.mark.parametrize("seed", range(3))
def test_precision_recall_fbeta_match_sklearn(average, seed):
    logits, target = random_case(seed)
    y, p = target.numpy(), logits.argmax(-1).numpy()
    kwargs = {"average": average, "zero_division": 0}
    assert multiclass_precision(logits, target, C, average=average).item() == pytest.approx(
        sklearn_value(skm.precision_score, y, p, **kwargs)
    )
    assert multiclass_recall(logits, target, C, average=average).item() == pytest.approx(
        sklearn_value(skm.recall_score, y, p, **kwargs)
    )
    assert multiclass_f1_score(logits, target, C, average=average).item() == pytest.approx(
        sklearn_value(skm.f1_score, y, p, **kwargs)
    )
    assert multiclass_fbeta_score(logits, target, C, beta=2.0, average=average).item() == pytest.approx(
        sklearn_value(skm.fbeta_score, y, p, beta=2.0, **kwargs)
    )


def test_per_class_scores_match_sklearn():
    logits, target = random_case(7)
    y, p = target.numpy(), logits.argmax(-1).numpy()
    labels = list(range(C))
    np.testing.assert_allclose(
        multiclass_precision(logits, target, C, average=None).numpy(),
        sklearn_value(skm.precision_score, y, p, average=None, labels=labels, zero_division=0),
    )
    confmat = skm.confusion_matrix(y, p, labels=labels)
    negatives = confmat.sum() - confmat.sum(1)
    true_negatives = negatives - (confmat.sum(0) - confmat.diagonal())
    np.testing.assert_allclose(
        multiclass_specificity(logits, target, C, average=None).numpy(), true_negatives / negatives
    )


@pytest.mark.parametrize(
    "case",
    [
        ("random", *random_case(1)),
        ("one class present", torch.randn(20, C, dtype=torch.float64), torch.full((20,), 3)),
        ("all predictions equal", torch.tensor([[0.0, 5.0, 0, 0, 0]] * 12), torch.arange(12) % C),
        ("class never seen", *random_case(2, classes=3)),
    ],
    ids=lambda case: case[0],
)
def test_label_metrics_match_sklearn(case):
    _, logits, target = case
    logits = torch.nn.functional.pad(logits, (0, C - logits.shape[1])) if logits.shape[1] < C else logits
    y, p = target.numpy(), logits.argmax(-1).numpy()
    assert multiclass_accuracy(logits, target, C).item() == pytest.approx(skm.accuracy_score(y, p))
    assert multiclass_balanced_accuracy(logits, target, C).item() == pytest.approx(
        sklearn_value(skm.balanced_accuracy_score, y, p)
    )
    assert multiclass_mcc(logits, target, C).item() == pytest.approx(sklearn_value(skm.matthews_corrcoef, y, p))
    assert multiclass_f1_score(logits, target, C).item() == pytest.approx(
        sklearn_value(skm.f1_score, y, p, average="macro", zero_division=0)
    )


@pytest.mark.parametrize("average", ["macro", "weighted", "micro"])
@pytest.mark.parametrize("seed", range(3))
def test_ranking_metrics_match_sklearn(average, seed):
    logits, target = random_case(seed)
    probabilities = logits.softmax(-1).numpy()
    onehot = np.eye(C)[target.numpy()]
    expected_auroc = skm.roc_auc_score(onehot, probabilities, average=average)
    assert multiclass_auroc(logits, target, C, average=average).item() == pytest.approx(expected_auroc)
    expected_auprc = skm.average_precision_score(onehot, probabilities, average=average)
    assert multiclass_auprc(logits, target, C, average=average).item() == pytest.approx(expected_auprc)
    if average == "macro":
        expected = skm.roc_auc_score(target.numpy(), probabilities, multi_class="ovr")
        assert multiclass_auroc(logits, target, C).item() == pytest.approx(expected)


def test_ranking_with_tied_scores_and_a_missing_class():
    generator = torch.Generator().manual_seed(3)
    probabilities = (torch.randint(0, 4, (80, C), generator=generator).double() + 1).softmax(-1)
    target = torch.randint(0, C - 1, (80,), generator=generator)  # class 4 never occurs
    per_class = multiclass_auroc(probabilities, target, C, average=None)
    assert math.isnan(per_class[4].item())
    onehot = np.eye(C)[target.numpy()]
    for k in range(C - 1):
        assert per_class[k].item() == pytest.approx(skm.roc_auc_score(onehot[:, k], probabilities[:, k].numpy()))
    assert multiclass_auroc(probabilities, target, C).item() == pytest.approx(per_class[:4].mean().item())


def test_probabilities_are_used_as_given():
    probabilities = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6], [0.2, 0.5, 0.3]])
    target = torch.tensor([0, 2, 1])
    assert multiclass_auroc(probabilities, target, 3).item() == 1.0


def test_class_dim_second_and_integer_labels():
    logits, target = random_case(4, size=24)
    channel_second = logits.reshape(2, 12, C).permute(0, 2, 1)  # (N, C, L) as for cross_entropy
    assert multiclass_accuracy(channel_second, target.reshape(2, 12), C).item() == pytest.approx(
        multiclass_accuracy(logits, target, C).item()
    )
    labels = logits.argmax(-1)
    assert multiclass_f1_score(labels, target, C).item() == pytest.approx(multiclass_f1_score(logits, target, C).item())
    with pytest.raises(ValueError, match="class scores"):
        multiclass_auroc(labels, target, C)


def test_ignore_index_and_bad_labels():
    logits, target = random_case(5, size=40)
    masked = target.clone()
    masked[::3] = -100
    kept = masked != -100
    for fn in (multiclass_accuracy, multiclass_f1_score, multiclass_auroc, multiclass_auprc):
        assert fn(logits, masked, C).item() == pytest.approx(fn(logits[kept], target[kept], C).item())
    with pytest.raises(ValueError, match=r"outside \[0, 5\).*\[5, 9\]"):
        multiclass_accuracy(logits[:3], torch.tensor([5, 0, 9]), C)
    with pytest.raises(ValueError, match=r"shape \(\*, 5\).*input \(40, 5\) and target \(39,\)"):
        multiclass_accuracy(logits, target[:-1], C)
    with pytest.raises(ValueError, match="num_classes must be a positive int, but got 0"):
        multiclass_accuracy(logits, target, 0)
    with pytest.raises(ValueError, match="average must be one of"):
        multiclass_precision(logits, target, C, average="samples")
