"""Benchmark danling.metrics against torchmetrics and a plain Python running sum.

Run: ``.venv/bin/python benchmarks/meters.py [--repeats 7] [--quick]``

Every case is timed ``--repeats`` times, cases interleaved so that machine noise hits them all
alike; the script prints the median per update (or per whole run) and the ratios the issue asks
for.  One CPU thread, CPU tensors.

Cases:
- a float update: ``AverageMeter.update(0.5)``, ``torchmetrics.MeanMetric.update(0.5)``, and a
  plain Python object whose ``update`` adds the float to a running sum and count;
- a 0-d tensor update: ``AverageMeter.update(t)``, ``MeanMetric.update(t)``;
- a batch: ``StreamMetrics(acc).update`` (multiclass accuracy of one batch, averaged) against
  ``MulticlassAccuracy`` ``update`` and ``forward`` (which, like StreamMetrics, also computes the
  batch value);
- an epoch: ``GlobalMetrics`` (accuracy + AUROC) updated with 100 batches of 1000 samples, then
  computed, against ``MulticlassAccuracy`` + ``MulticlassAUROC`` doing the same.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from danling.metrics import AverageMeter, GlobalMetrics, StreamMetrics, multiclass_metric_funcs
from danling.metrics.functional import multiclass_accuracy

try:
    import torchmetrics
    from torchmetrics.classification import MulticlassAccuracy, MulticlassAUROC
except ImportError:  # pragma: no cover - the dev environment has it
    raise SystemExit("benchmarks/meters.py needs torchmetrics (in the dev dependency group)") from None

NUM_CLASSES = 10


class PlainAverage:
    """The baseline: a running sum and count in Python floats."""

    def __init__(self) -> None:
        self.sum = 0.0
        self.count = 0

    def update(self, value: float, n: int = 1) -> None:
        self.sum += value * n
        self.count += n


def per_call(fn: Callable[[], None], calls: int) -> float:
    """Microseconds per call of ``fn`` over ``calls`` calls."""
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls * 1e6


def scalar_cases(calls: int) -> dict[str, Callable[[], float]]:
    value, tensor = 0.5, torch.tensor(0.5)
    plain, meter, mean = PlainAverage(), AverageMeter(), torchmetrics.MeanMetric()
    tensor_meter, tensor_mean = AverageMeter(), torchmetrics.MeanMetric()
    return {
        "plain float": lambda: per_call(lambda: plain.update(value), calls),
        "AverageMeter float": lambda: per_call(lambda: meter.update(value), calls),
        "MeanMetric float": lambda: per_call(lambda: mean.update(value), calls // 20),
        "AverageMeter 0-d tensor": lambda: per_call(lambda: tensor_meter.update(tensor), calls // 5),
        "MeanMetric 0-d tensor": lambda: per_call(lambda: tensor_mean.update(tensor), calls // 20),
    }


def batch_cases(calls: int, batch_size: int) -> dict[str, Callable[[], float]]:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(batch_size, NUM_CLASSES, generator=generator)
    labels = torch.randint(0, NUM_CLASSES, (batch_size,), generator=generator)
    stream = StreamMetrics(acc=lambda input, target: multiclass_accuracy(input, target, NUM_CLASSES))
    stream_funcs = StreamMetrics(acc=multiclass_metric_funcs(NUM_CLASSES)["acc"])
    torchmetric = MulticlassAccuracy(NUM_CLASSES, average="micro")
    return {
        "StreamMetrics acc update": lambda: per_call(lambda: stream.update(logits, labels), calls),
        "StreamMetrics acc (MetricFunc) update": lambda: per_call(lambda: stream_funcs.update(logits, labels), calls),
        "MulticlassAccuracy update": lambda: per_call(lambda: torchmetric.update(logits, labels), calls),
        "MulticlassAccuracy forward": lambda: per_call(lambda: torchmetric(logits, labels), calls),
    }


def epoch_cases(batches: int, batch_size: int) -> dict[str, Callable[[], float]]:
    generator = torch.Generator().manual_seed(1)
    data = [
        (torch.randn(batch_size, NUM_CLASSES, generator=generator), torch.randint(0, NUM_CLASSES, (batch_size,)))
        for _ in range(batches)
    ]
    funcs = multiclass_metric_funcs(NUM_CLASSES)

    def danling() -> float:
        start = time.perf_counter()
        metrics = GlobalMetrics(acc=funcs["acc"], auroc=funcs["auroc"], distributed=False)
        for logits, labels in data:
            metrics.update(logits, labels)
        metrics.average()
        return (time.perf_counter() - start) * 1e3

    def reference() -> float:
        start = time.perf_counter()
        metrics = torchmetrics.MetricCollection(
            {"acc": MulticlassAccuracy(NUM_CLASSES, average="micro"), "auroc": MulticlassAUROC(NUM_CLASSES)}
        )
        for logits, labels in data:
            metrics.update(logits, labels)
        metrics.compute()
        return (time.perf_counter() - start) * 1e3

    return {"GlobalMetrics acc+auroc epoch": danling, "torchmetrics acc+auroc epoch": reference}


def run(cases: dict[str, Callable[[], float]], repeats: int) -> dict[str, float]:
    samples: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(repeats):
        for name, case in cases.items():  # interleaved: every repeat runs every case once
            samples[name].append(case())
    return {name: statistics.median(values) for name, values in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="fewer calls per repeat (smoke run)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    scale = 10 if args.quick else 1
    calls, batches = 200_000 // scale, 100
    batch_size = 1000

    medians = run(scalar_cases(calls), args.repeats)
    medians |= run(batch_cases(2000 // scale, 256), args.repeats)
    medians |= run(epoch_cases(batches, batch_size), args.repeats)

    print(f"torch {torch.__version__}, torchmetrics {torchmetrics.__version__}, 1 thread, median of {args.repeats}")
    for name, value in medians.items():
        unit = "ms per epoch" if "epoch" in name else "us per update"
        print(f"  {name:40s} {value:10.3f} {unit}")
    ratios = {
        "MeanMetric / AverageMeter (float)": medians["MeanMetric float"] / medians["AverageMeter float"],
        "MeanMetric / AverageMeter (0-d tensor)": medians["MeanMetric 0-d tensor"] / medians["AverageMeter 0-d tensor"],
        "AverageMeter / plain Python (float)": medians["AverageMeter float"] / medians["plain float"],
        "MulticlassAccuracy forward / StreamMetrics": medians["MulticlassAccuracy forward"]
        / medians["StreamMetrics acc (MetricFunc) update"],
        "torchmetrics / GlobalMetrics (epoch)": medians["torchmetrics acc+auroc epoch"]
        / medians["GlobalMetrics acc+auroc epoch"],
    }
    print("ratios (targets: MeanMetric/AverageMeter >= 10, AverageMeter/plain <= 4, torchmetrics/GlobalMetrics >= 1)")
    for name, value in ratios.items():
        print(f"  {name:45s} {value:8.2f}x")


if __name__ == "__main__":
    main()
