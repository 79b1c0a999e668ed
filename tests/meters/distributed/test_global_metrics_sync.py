"""GlobalMetrics across real gloo processes: results equal one process fed all ranks' data.

Ranks hold different numbers of batches of different sizes; in the 3-process world rank 2 holds
none at all.  ``average()`` is read half-way, so the second read gathers only the new rows.
"""

from __future__ import annotations

import math

import pytest
import torch

from danling.metrics import binary_metrics, multiclass_metrics, multilabel_metrics, regression_metrics
from tests.distributed import run_workers

pytestmark = pytest.mark.distributed

BATCHES_PER_RANK = [3, 1, 0]
FACTORIES = {
    "binary": lambda distributed: binary_metrics(distributed=distributed),
    "multiclass": lambda distributed: multiclass_metrics(4, distributed=distributed),
    "multilabel": lambda distributed: multilabel_metrics(3, distributed=distributed),
    "regression": lambda distributed: regression_metrics(2, distributed=distributed),
}


def make_batch(task: str, rank: int, index: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1000 * rank + 10 * index + len(task))
    size = 6 + 3 * index + rank
    if task == "binary":
        return torch.randn(size, generator=generator), torch.randint(0, 2, (size,), generator=generator)
    if task == "multiclass":
        target = torch.randint(0, 4, (size,), generator=generator)
        target[0] = -100  # ignored entries must stay ignored after gathering
        return torch.randn(size, 4, generator=generator), target
    if task == "multilabel":
        return torch.randn(size, 3, generator=generator), torch.randint(0, 2, (size, 3), generator=generator)
    input = torch.randn(size, 2, generator=generator, dtype=torch.float64)
    return input, input + torch.randn(size, 2, generator=generator, dtype=torch.float64)


def batches(task: str, rank: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [make_batch(task, rank, index) for index in range(BATCHES_PER_RANK[rank])]


def _global_worker(rank: int, world_size: int) -> dict:
    results = {}
    for task, factory in FACTORIES.items():
        metrics = factory(True)
        data = batches(task, rank)
        half = (len(data) + 1) // 2
        for input, target in data[:half]:
            metrics.update(input, target)
        middle = metrics.average().dict()
        for input, target in data[half:]:
            metrics.update(input, target)
        results[task] = {
            "middle": middle,
            "final": metrics.average().dict(),
            "cached": metrics.average().dict(),
            "batch": metrics.batch().dict(),
            "value": metrics.value().dict(),
            "rows": metrics.targets.shape[0],
        }
    return results


def reference(task: str, data: list[tuple[torch.Tensor, torch.Tensor]]) -> dict:
    metrics = FACTORIES[task](False)
    if data:
        metrics.update(torch.cat([x for x, _ in data]), torch.cat([y for _, y in data]))
    return metrics.average().dict()


def assert_same(actual: dict, expected: dict) -> None:
    assert actual.keys() == expected.keys()
    for name, value in expected.items():
        if math.isnan(value):
            assert math.isnan(actual[name]), name
        else:
            assert actual[name] == pytest.approx(value, rel=1e-9, abs=1e-12), name


@pytest.fixture(scope="module", params=[2, 3], ids=["world2", "world3"])
def global_results(request):
    world_size = request.param
    return world_size, run_workers(_global_worker, world_size)


@pytest.mark.parametrize("task", list(FACTORIES))
def test_average_equals_single_process_on_concatenated_data(global_results, task):
    world_size, results = global_results
    everything = [batch for rank in range(world_size) for batch in batches(task, rank)]
    first_halves = [
        batch for rank in range(world_size) for batch in batches(task, rank)[: (BATCHES_PER_RANK[rank] + 1) // 2]
    ]
    expected, expected_middle = reference(task, everything), reference(task, first_halves)
    for result in results:
        assert_same(result[task]["final"], expected)
        assert_same(result[task]["cached"], expected)
        assert_same(result[task]["middle"], expected_middle)
        assert result[task]["rows"] == sum(len(y) for _, y in everything), "targets are the gathered rows"


@pytest.mark.parametrize("task", list(FACTORIES))
def test_batch_gathers_the_latest_batch_of_every_rank(global_results, task):
    world_size, results = global_results
    latest = [batches(task, rank)[-1] for rank in range(world_size) if BATCHES_PER_RANK[rank]]
    expected = reference(task, latest)
    for rank, result in enumerate(results):
        assert_same(result[task]["batch"], expected)
        local = reference(task, batches(task, rank)[-1:])
        assert_same(result[task]["value"], local)
