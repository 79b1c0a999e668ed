"""GlobalMetrics in one process: exact dataset metrics, caching, artifacts, state."""

from __future__ import annotations

import math

import pytest
import torch
from sklearn import metrics as skm

from danling.metrics import GlobalMetrics, binary_metric_funcs, multiclass_metric_funcs, regression_metric_funcs
from danling.metrics.functional import accuracy
from danling.metrics.preprocess import preprocess_binary

BATCHES = [
    (torch.tensor([0.1, 0.8, 0.6, 0.2]), torch.tensor([0, 1, 0, 0])),
    (torch.tensor([0.1, 0.7, 0.3, 0.2, 0.8, 0.4]), torch.tensor([0, 1, 1, 0, 0, 1])),
]


def binary_global(**kwargs) -> GlobalMetrics:
    funcs = binary_metric_funcs()
    return GlobalMetrics(funcs["acc"], funcs["auroc"], preprocess=preprocess_binary, **kwargs)


def test_values_are_exact_dataset_metrics():
    metrics = binary_global()
    for input, target in BATCHES:
        metrics.update(input, target)
    scores, labels = torch.cat([x for x, _ in BATCHES]), torch.cat([y for _, y in BATCHES])
    assert metrics.avg.dict() == {
        "acc": pytest.approx(skm.accuracy_score(labels, scores > 0.5)),
        "auroc": pytest.approx(skm.roc_auc_score(labels, scores)),
    }
    assert metrics.val.dict() == {
        "acc": pytest.approx(0.5),
        "auroc": pytest.approx(skm.roc_auc_score(BATCHES[1][1], BATCHES[1][0])),
    }
    assert metrics.bat.dict() == metrics.val.dict()
    assert (metrics.n, metrics.count) == (6, 10)
    assert metrics.confmat.tolist() == [[4, 2], [2, 2]]
    torch.testing.assert_close(metrics.preds, scores)
    assert type(metrics.avg.acc) is float


def test_only_declared_artifacts_are_stored():
    confmat_only = GlobalMetrics(binary_metric_funcs()["acc"])
    confmat_only.update(*BATCHES[0])
    assert confmat_only.preds.numel() == 0 and confmat_only.confmat is not None
    preds_only = GlobalMetrics(binary_metric_funcs()["auroc"])
    preds_only.update(*BATCHES[0])
    assert preds_only.confmat is None and preds_only.preds.numel() == 4


def test_average_is_cached_until_the_next_update():
    calls = []
    funcs = regression_metric_funcs()
    mse = funcs["mse"]

    def counted(input, target):
        calls.append(1)
        return mse.fn(input, target)

    metrics = GlobalMetrics(mse=type(mse)(counted, name="mse"))
    metrics.update(torch.tensor([1.0, 2.0]), torch.tensor([1.0, 4.0]))
    first = metrics.average()
    assert metrics.average() == first and len(calls) == 1
    metrics.update(torch.tensor([3.0]), torch.tensor([3.0]))
    assert metrics.avg.mse == pytest.approx(4 / 3) and len(calls) == 2


def test_fresh_and_reset_containers_report_nan():
    metrics = binary_global()
    assert all(math.isnan(value) for value in metrics.val.values())
    assert all(math.isnan(value) for value in metrics.avg.values())
    metrics.update(*BATCHES[0])
    assert metrics.reset() is metrics
    assert metrics.preds.numel() == 0 and metrics.confmat is None and metrics.count == 0
    assert all(math.isnan(value) for value in metrics.avg.values())


def test_construction_errors():
    with pytest.raises(ValueError, match=r"^At least one metric function is required\.$"):
        GlobalMetrics()
    with pytest.raises(
        ValueError, match="Expected metric functions to be MetricFunc instances, got <class 'function'>"
    ):
        GlobalMetrics(accuracy)
    funcs = binary_metric_funcs()
    metrics = GlobalMetrics([funcs["acc"], funcs["auroc"]], funcs["acc"], auroc=funcs["auprc"])
    assert repr(metrics) == "GlobalMetrics('acc', 'auroc')"
    assert metrics.metrics["auroc"] is funcs["auprc"], "keyword entries override positional ones"


def test_format_shows_latest_batch_and_local_average():
    metrics = binary_global()
    for input, target in BATCHES:
        metrics.update(input, target)
    assert f"{metrics:.4f}" == "acc: 0.5000 (0.6000)\tauroc: 0.6667 (0.7708)"


def test_device_argument_moves_stored_rows():
    metrics = GlobalMetrics(binary_metric_funcs()["auroc"], device="meta")
    metrics.update(*BATCHES[0])
    assert metrics.preds.device.type == "meta"


def test_multiclass_sequences_of_different_lengths():
    funcs = multiclass_metric_funcs(3)
    metrics = GlobalMetrics(
        acc=funcs["acc"], auroc=funcs["auroc"], preprocess=lambda x, y: (x.reshape(-1, 3), y.reshape(-1))
    )
    generator = torch.Generator().manual_seed(0)
    chunks = [
        (torch.randn(2, length, 3, generator=generator), torch.randint(0, 3, (2, length), generator=generator))
        for length in (4, 7)
    ]
    for input, target in chunks:
        metrics.update(input, target)
    scores = torch.cat([x.reshape(-1, 3) for x, _ in chunks])
    labels = torch.cat([y.reshape(-1) for _, y in chunks])
    assert metrics.avg.acc == pytest.approx(skm.accuracy_score(labels, scores.argmax(-1)))
    expected = skm.roc_auc_score(labels, scores.softmax(-1), multi_class="ovr")
    assert metrics.avg.auroc == pytest.approx(expected)


def test_state_dict_round_trip_through_a_file(tmp_path):
    metrics = binary_global()
    for input, target in BATCHES:
        metrics.update(input, target)
    path = tmp_path / "global.pt"
    torch.save(metrics.state_dict(), path)
    restored = binary_global()
    restored.load_state_dict(torch.load(path))
    assert restored.avg.dict() == metrics.avg.dict()
    assert restored.count == 10
    restored.update(*BATCHES[0])
    assert restored.count == 14


def test_rows_of_predictions_and_targets_must_pair_up():
    metrics = GlobalMetrics(binary_metric_funcs()["auroc"])
    with pytest.raises(ValueError, match=r"same number of samples, but got shapes \(3,\) and \(2,\)"):
        metrics.update(torch.rand(3), torch.tensor([0, 1]))
    assert metrics.count == 0, "a rejected batch leaves no trace"
