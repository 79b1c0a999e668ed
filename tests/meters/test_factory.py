"""Factories: the right container, metrics, preprocessing and values."""

from __future__ import annotations

import math

import pytest
import torch
from sklearn import metrics as skm

from danling.metrics import (
    GlobalMetrics,
    StreamMetrics,
    binary_metrics,
    multiclass_metrics,
    multilabel_metrics,
    regression_metrics,
)


def test_default_metric_sets():
    assert list(binary_metrics().metrics) == [
        "acc",
        "balanced_acc",
        "precision",
        "recall",
        "f1",
        "mcc",
        "auroc",
        "auprc",
    ]
    assert list(multiclass_metrics(3).metrics) == list(binary_metrics().metrics)
    assert list(multilabel_metrics(2).metrics) == ["acc", "precision", "recall", "f1", "mcc", "auroc", "auprc"]
    assert list(regression_metrics().metrics) == ["mse", "rmse", "mae", "r2", "pearson", "spearman"]


def test_modes_and_selection():
    stream = multiclass_metrics(3, mode="stream", metrics=["acc", "f1"])
    assert isinstance(stream, StreamMetrics) and list(stream.keys()) == ["acc", "f1"]
    assert isinstance(binary_metrics(), GlobalMetrics)
    with pytest.raises(ValueError, match=r"unknown metrics \['auc'\]; choose from"):
        binary_metrics(metrics=["auc"])
    with pytest.raises(ValueError, match="mode must be 'global' or 'stream', but got 'exact'"):
        binary_metrics(mode="exact")


def test_binary_global_values_match_sklearn():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 40, generator=generator, dtype=torch.float64)
    labels = torch.randint(0, 2, (3, 40), generator=generator)
    metrics = binary_metrics()
    for batch_logits, batch_labels in zip(logits, labels):
        metrics.update(batch_logits.unsqueeze(-1), batch_labels)
    y, scores = labels.reshape(-1).numpy(), logits.reshape(-1).sigmoid().numpy()
    predicted = scores > 0.5
    expected = {
        "acc": skm.accuracy_score(y, predicted),
        "balanced_acc": skm.balanced_accuracy_score(y, predicted),
        "precision": skm.precision_score(y, predicted),
        "recall": skm.recall_score(y, predicted),
        "f1": skm.f1_score(y, predicted),
        "mcc": skm.matthews_corrcoef(y, predicted),
        "auroc": skm.roc_auc_score(y, scores),
        "auprc": skm.average_precision_score(y, scores),
    }
    assert metrics.avg.dict() == pytest.approx(expected)


def test_stream_mode_is_exact_for_accuracy_and_approximate_for_auroc():
    generator = torch.Generator().manual_seed(1)
    batches = [
        (torch.randn(30, 4, generator=generator), torch.randint(0, 4, (30,), generator=generator)) for _ in range(4)
    ]
    stream, exact = multiclass_metrics(4, mode="stream"), multiclass_metrics(4)
    for logits, labels in batches:
        stream.update(logits, labels)
        exact.update(logits, labels)
    assert stream.avg.acc == pytest.approx(exact.avg.acc)
    per_batch = [skm.roc_auc_score(y, x.softmax(-1), multi_class="ovr") for x, y in batches]
    assert stream.avg.auroc == pytest.approx(sum(per_batch) / len(per_batch))


def test_multilabel_and_regression_factories():
    generator = torch.Generator().manual_seed(2)
    logits, labels = torch.randn(50, 3, generator=generator), torch.randint(0, 2, (50, 3), generator=generator)
    metrics = multilabel_metrics(3, average="micro")
    metrics.update(logits, labels)
    predicted = (logits.sigmoid() > 0.5).numpy()
    assert metrics.avg.f1 == pytest.approx(skm.f1_score(labels.numpy(), predicted, average="micro"))
    assert metrics.avg.acc == pytest.approx(1 - skm.hamming_loss(labels.numpy(), predicted))

    input = torch.randn(20, 2, generator=generator, dtype=torch.float64)
    target = input + torch.randn(20, 2, generator=generator, dtype=torch.float64)
    target[0, 0] = math.nan
    metrics = regression_metrics(2, ignore_nan=True)
    metrics.update(input, target)
    assert metrics.avg.mse == pytest.approx(
        (skm.mean_squared_error(target[1:, 0], input[1:, 0]) + skm.mean_squared_error(target[:, 1], input[:, 1])) / 2
    )
    with pytest.raises(ValueError, match="target contains NaN"):
        strict = regression_metrics(2)
        strict.update(input, target)
        strict.average()
