"""MetricMeter and StreamMetrics: per-batch metrics averaged by batch size."""

from __future__ import annotations

import functools
import math

import pytest
import torch

from danling.metrics import MetricFunc, MetricMeter, StreamMetrics, binary_metric_funcs
from danling.metrics.functional import accuracy, binary_accuracy
from danling.metrics.preprocess import preprocess_binary


def test_meter_averages_batch_values_weighted_by_batch_size():
    meter = MetricMeter(accuracy)
    meter.update(torch.tensor([0.9, 0.1]), torch.tensor([1, 1]))  # 0.5 over 2
    meter.update(torch.tensor([0.9, 0.9, 0.9, 0.1]), torch.tensor([1, 1, 1, 1]))  # 0.75 over 4
    assert meter.val == 0.75 and meter.n == 4 and meter.count == 6
    assert meter.avg == pytest.approx((0.5 * 2 + 0.75 * 4) / 6)


def test_meter_weight_keyword_and_0d_inputs():
    meter = MetricMeter(lambda input, target: (input - target).abs().mean())
    meter.update(torch.tensor(3.0), torch.tensor(1.0))
    assert meter.n == 1 and meter.val == 2.0
    meter.update(torch.tensor([1.0, 2.0]), torch.tensor([1.0, 1.0]), n=0)
    assert meter.count == 1, "n=0 leaves the totals alone"
    with pytest.raises(TypeError):
        meter.update(torch.tensor(1.0), torch.tensor(1.0), 3)


def test_meter_tensor_results_are_averaged_element_wise():
    meter = MetricMeter(lambda input, target: torch.stack([input.mean(), target.mean()]))
    meter.update(torch.tensor([1.0, 3.0]), torch.tensor([0.0, 0.0]))
    meter.update(torch.tensor([4.0]), torch.tensor([2.0]), n=2)
    torch.testing.assert_close(meter.avg, torch.tensor([3.0, 1.0], dtype=torch.float64))


def test_empty_metric_result_is_nan():
    meter = MetricMeter(lambda input, target: input[:0])
    meter.update(torch.tensor([1.0]), torch.tensor([1.0]))
    assert math.isnan(meter.val)
    with pytest.raises(ValueError, match="must return a number or a tensor, but returned None"):
        MetricMeter(lambda input, target: None).update(torch.ones(1), torch.ones(1))


def test_meter_construction_and_repr():
    with pytest.raises(ValueError, match="Expected metric to be callable, but got <class 'int'>"):
        MetricMeter(1)
    assert repr(MetricMeter(accuracy)) == "MetricMeter(accuracy)"
    assert repr(MetricMeter(functools.partial(accuracy, threshold=0.3))) == "MetricMeter(accuracy)"
    assert repr(MetricMeter(lambda input, target: 0.0)) == "MetricMeter(<lambda>)"
    assert repr(MetricMeter(binary_metric_funcs()["auroc"])) == "MetricMeter(auroc)"
    assert MetricMeter(accuracy).reset().__class__ is MetricMeter


def test_meter_preprocess_runs_before_the_metric():
    meter = MetricMeter(binary_accuracy, preprocess=preprocess_binary)
    meter.update([[-3.0, 3.0]], [[0, 1]])
    assert meter.val == 1.0 and meter.n == 2


def test_confusion_matrix_metrics_count_only_kept_targets():
    funcs = binary_metric_funcs()
    meter = MetricMeter(funcs["acc"])
    meter.update(torch.tensor([0.9, 0.9, 0.9, 0.9]), torch.tensor([1, -100, -100, -100]))
    meter.update(torch.tensor([0.9, 0.1]), torch.tensor([0, 0]))
    assert meter.count == 3
    assert meter.avg == pytest.approx(2 / 3), "an all-correct batch of 1 and a half-correct batch of 2"


def test_stream_metrics_share_one_state_per_update():
    calls = []

    def counting(confmat):
        calls.append(confmat)
        return confmat.trace() / confmat.sum()

    funcs = binary_metric_funcs()
    spec = funcs["acc"].confmat
    metrics = StreamMetrics(funcs["acc"], funcs["f1"], mine=MetricFunc(counting, confmat=spec))
    metrics.update(torch.tensor([0.9, 0.1, 0.8]), torch.tensor([1, 0, 0]))
    assert list(metrics.keys()) == ["acc", "f1", "mine"]
    assert metrics.val.dict() == {"acc": pytest.approx(2 / 3), "f1": pytest.approx(2 / 3), "mine": pytest.approx(2 / 3)}
    assert len(calls) == 1


def test_stream_metrics_naming_and_merging():
    def first(input, target):
        return 1.0

    metrics = StreamMetrics([accuracy, first], first=lambda input, target: 2.0)
    assert list(metrics.keys()) == ["accuracy", "first"]
    metrics.update([0.9], [1])
    assert metrics.val.first == 2.0, "keyword entries override positional ones"

    class Scorer:
        def __call__(self, input, target):
            return 0.0

    with pytest.raises(ValueError, match="pass it as a keyword"):
        StreamMetrics(Scorer())
    assert list(StreamMetrics(score=Scorer()).keys()) == ["score"]
    with pytest.raises(ValueError, match="callable or MetricMeter, but got <class 'int'>"):
        StreamMetrics(acc=1)
    with pytest.raises(ValueError, match="Expected metric to be callable"):
        StreamMetrics(3)


def test_stream_metrics_adopt_meters():
    meter = MetricMeter(accuracy, preprocess=lambda input, target: (input * 0, target), distributed=False)
    metrics = StreamMetrics(acc=meter, device="cpu")
    assert metrics["acc"] is meter
    assert meter.preprocess is None and meter.distributed is True and meter.device == torch.device("cpu")
    metrics.extra = binary_accuracy
    assert isinstance(metrics.extra, MetricMeter)
    with pytest.raises(TypeError, match="metric"):
        _ = metrics.missing  # a missing meter cannot be created without a metric
    with pytest.raises(ValueError, match="instance of MetricMeter, but got <class 'float'>"):
        metrics.bad = 1.0


def test_conflicting_confusion_matrices_are_rejected():
    loose = binary_metric_funcs(threshold=0.3)["acc"]
    with pytest.raises(ValueError, match="Conflicting confusion matrix requirements"):
        StreamMetrics(a=binary_metric_funcs()["acc"], b=loose)
    metrics = StreamMetrics(a=binary_metric_funcs()["acc"])
    with pytest.raises(ValueError, match="Conflicting"):
        metrics.b = loose


def test_stream_metrics_update_detaches_and_reads_lists():
    metrics = StreamMetrics(acc=accuracy)
    scores = torch.tensor([0.1, 0.8, 0.6, 0.2], requires_grad=True)
    metrics.update(scores, torch.tensor([0, 1, 0, 0]))
    metrics.update([0.9, 0.1], [1, 0], n=6)
    assert metrics.count.acc == 10 and metrics.avg.acc == pytest.approx((0.75 * 4 + 1.0 * 6) / 10)


def test_stream_metrics_repr_format_reset_state(tmp_path):
    metrics = StreamMetrics(acc=accuracy, auroc=binary_metric_funcs()["auroc"])
    assert repr(metrics) == str(metrics) == "StreamMetrics('acc', 'auroc')"
    assert repr(StreamMetrics(acc=accuracy)) == "StreamMetrics('acc',)"
    metrics.update([0.1, 0.8, 0.6, 0.2], [0, 1, 0, 0])
    assert f"{metrics:.4f}" == "acc: 0.7500 (0.7500)\tauroc: 1.0000 (1.0000)"
    path = tmp_path / "stream.pt"
    torch.save(metrics.state_dict(), path)
    restored = StreamMetrics(acc=accuracy, auroc=binary_metric_funcs()["auroc"])
    restored.load_state_dict(torch.load(path))
    assert restored.avg.dict() == metrics.avg.dict()
    assert metrics.reset() is metrics and math.isnan(metrics.avg.acc)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_batches_stay_on_the_device_until_read():
    metrics = StreamMetrics(acc=binary_metric_funcs()["acc"])
    metrics.update(torch.tensor([0.9, 0.9, 0.2], device="cuda"), torch.tensor([1, -100, 1], device="cuda"))
    meter = metrics["acc"]
    assert isinstance(meter._local_sum, torch.Tensor) and meter._local_sum.device.type == "cuda"
    assert isinstance(meter._local_count, torch.Tensor), "the kept-target count is a device tensor"
    assert metrics.count.acc == 2 and metrics.avg.acc == 0.5
