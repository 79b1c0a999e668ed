"""Meters across real gloo processes: ``bat`` reduces the latest step, ``avg`` the running totals.

Each world runs one worker that exercises several behaviours, to keep the number of spawned
worlds small.  Rank 2 of the 3-process world never sees a tensor, so it must adopt the tensor
shape of the other ranks.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.distributed as dist

from danling.metrics import AverageMeter, AverageMeters, MultiTaskMetrics, StreamMetrics, binary_metric_funcs
from danling.metrics.functional import accuracy
from danling.metrics.meter_sync import MeterReduction
from tests.distributed import run_workers

pytestmark = pytest.mark.distributed

SCALAR_UPDATES = [[(2.0, 2), (4.0, 1)], [(1.0, 1), (5.0, 5)], [(3.0, 3), (0.5, 2)]]
TENSOR_UPDATES = [[([1.0, 2.0], 2), ([3.0, 5.0], 1)], [([0.0, 1.0], 1), ([6.0, 7.0], 2)], []]
LOGITS = [[10.0, 10.0], [-10.0, -10.0, -10.0, -10.0], [10.0, -10.0, 10.0]]
LABELS = [[1, 1], [1, 1, 1, 1], [1, 1, 0]]


def expected_scalar(world_size: int) -> tuple[float, float]:
    updates = SCALAR_UPDATES[:world_size]
    last = [rank_updates[-1] for rank_updates in updates]
    batch = sum(v * n for v, n in last) / sum(n for _, n in last)
    everything = [update for rank_updates in updates for update in rank_updates]
    return batch, sum(v * n for v, n in everything) / sum(n for _, n in everything)


def expected_tensor(world_size: int) -> tuple[list[float], list[float]]:
    updates = [u for u in TENSOR_UPDATES[:world_size] if u]
    last = [rank_updates[-1] for rank_updates in updates]
    everything = [update for rank_updates in updates for update in rank_updates]

    def mean(pairs):
        total = sum(n for _, n in pairs)
        return [sum(v[i] * n for v, n in pairs) / total for i in range(2)]

    return mean(last), mean(everything)


def expected_first_updates(world_size: int) -> tuple[float, list[float]]:
    """The ranks' first scalar updates averaged, and the vector meter ``[1, 2] * (rank + 1)`` weighted by ``rank + 1``."""
    firsts = [SCALAR_UPDATES[rank][0] for rank in range(world_size)]
    loss = sum(v * n for v, n in firsts) / sum(n for _, n in firsts)
    weights = list(range(1, world_size + 1))
    return loss, [sum(w * w * base for w in weights) / sum(weights) for base in (1.0, 2.0)]


def _meters_worker(rank: int, world_size: int) -> dict:
    results: dict = {}
    scalar = AverageMeter()
    for value, n in SCALAR_UPDATES[rank]:
        scalar.update(value, n=n)
    results["scalar"] = (scalar.bat, scalar.avg, scalar.val)

    vector = AverageMeter()
    for value, n in TENSOR_UPDATES[rank]:
        vector.update(torch.tensor(value), n=n)
    results["tensor"] = (vector.bat.tolist(), vector.avg.tolist())

    empty = AverageMeter()
    empty.update(1.0, n=0)
    results["empty"] = (empty.bat, empty.avg)

    mismatched = AverageMeter()
    mismatched.update(torch.ones(2 + rank))
    with pytest.raises(ValueError, match=r"^AverageMeter received inconsistent tensor metadata across ranks") as error:
        mismatched.average()
    results["mismatch_error"] = str(error.value)

    meters = AverageMeters()
    meters.loss.update(*SCALAR_UPDATES[rank][0])
    meters.local = AverageMeter(distributed=False)
    meters.local.update(float(rank))
    meters.vector.update(torch.tensor([1.0, 2.0]) * (rank + 1), n=rank + 1)
    results["meters"] = (meters.bat.loss, meters.avg.loss, meters.avg.local, meters.avg.vector.tolist())

    # a progress line of a distributed run: scalar meters only, read with one collective
    lines = AverageMeters()
    lines.loss.update(float(rank + 1), n=2)
    lines.lr.update(0.1)
    calls, real_all_reduce, real_gather = [], dist.all_reduce, dist.all_gather_object
    dist.all_reduce = lambda *args, **kwargs: calls.append("all_reduce") or real_all_reduce(*args, **kwargs)
    dist.all_gather_object = lambda *args, **kwargs: calls.append("all_gather_object") or real_gather(*args, **kwargs)
    try:
        line = lines.bat
    finally:
        dist.all_reduce, dist.all_gather_object = real_all_reduce, real_gather
    results["line"] = (calls, line.loss, line.lr)

    # begun without waiting: the statistics of the moment it began, whatever happens before the wait
    started = AverageMeters()
    started.loss.update(*SCALAR_UPDATES[rank][0])
    started.vector.update(torch.tensor([1.0, 2.0]) * (rank + 1), n=rank + 1)
    pending = started.start_batch()
    started.loss.update(100.0, n=7)
    started.vector.update(torch.tensor([100.0, 100.0]), n=7)
    early = pending.wait()
    results["started"] = (early.loss, early.vector.tolist(), pending.wait().loss == early.loss, started.bat.loss)
    running = AverageMeter()
    running.update(torch.tensor([1.0, 2.0]) * (rank + 1), n=rank + 1)
    reduction = MeterReduction([running], "average")
    running.update(torch.tensor([100.0, 100.0]), n=7)  # adds to the running sum in place
    results["started_average"] = reduction.wait()[0].tolist()

    stream = StreamMetrics(acc=binary_metric_funcs()["acc"])
    stream.update(torch.tensor(LOGITS[rank]), torch.tensor(LABELS[rank]))
    results["stream"] = (stream.val.acc, stream.bat.acc, stream.avg.acc)

    tasks = MultiTaskMetrics(aggregate="micro")
    tasks.a = StreamMetrics(acc=accuracy)
    tasks.b = StreamMetrics(acc=accuracy)
    tasks.update({"a": ([0.9] * (rank + 1), [1] * (rank + 1)), "b": ([0.9] * 3, [0] * 3)})
    results["tasks"] = tasks.avg.dict()
    return results


@pytest.fixture(scope="module", params=[2, 3], ids=["world2", "world3"])
def meter_results(request):
    world_size = request.param
    return world_size, run_workers(_meters_worker, world_size)


def test_scalar_meter(meter_results):
    world_size, results = meter_results
    batch, average = expected_scalar(world_size)
    if world_size == 2:
        assert (batch, average) == (29 / 6, 34 / 9), "the reference values"
    for rank, result in enumerate(results):
        assert result["scalar"][0] == pytest.approx(batch)
        assert result["scalar"][1] == pytest.approx(average)
        assert result["scalar"][2] == SCALAR_UPDATES[rank][-1][0], "val stays local"


def test_tensor_meter_including_a_rank_without_tensors(meter_results):
    world_size, results = meter_results
    batch, average = expected_tensor(world_size)
    if world_size == 2:
        assert batch == pytest.approx([5.0, 19 / 3]) and average == pytest.approx([17 / 6, 4.0])
    for result in results:
        assert result["tensor"][0] == pytest.approx(batch)
        assert result["tensor"][1] == pytest.approx(average)


def test_zero_counts_are_nan_and_shape_mismatch_fails_on_every_rank(meter_results):
    world_size, results = meter_results
    for result in results:
        assert all(math.isnan(value) for value in result["empty"])
        specs = [((2 + rank,), "torch.float32") for rank in range(world_size)]  # the dtype of the values
        assert result["mismatch_error"].endswith(repr(specs))


def test_meter_container_reduces_in_one_pass(meter_results):
    world_size, results = meter_results
    loss, vector = expected_first_updates(world_size)
    for rank, result in enumerate(results):
        assert result["meters"][0] == pytest.approx(loss) and result["meters"][1] == pytest.approx(loss)
        assert result["meters"][2] == float(rank), "a meter with distributed=False stays local"
        assert result["meters"][3] == pytest.approx(vector)


def test_scalar_meters_are_read_with_one_collective(meter_results):
    world_size, results = meter_results
    loss = sum(2 * (rank + 1) for rank in range(world_size)) / (2 * world_size)
    for result in results:
        calls, line_loss, line_lr = result["line"]
        assert calls == ["all_reduce"]
        assert line_loss == pytest.approx(loss) and line_lr == pytest.approx(0.1)


def test_a_started_reduction_reads_the_meters_when_it_begins(meter_results):
    world_size, results = meter_results
    loss, vector = expected_first_updates(world_size)
    for result in results:
        early_loss, early_vector, remembered, later = result["started"]
        assert early_loss == pytest.approx(loss) and early_vector == pytest.approx(vector)
        assert remembered, "waiting again gives the same result"
        assert later == pytest.approx(100.0), "a later batch() sees the later updates"
        assert result["started_average"] == pytest.approx(vector), "the running sum as it was"


def test_stream_metrics_weight_ranks_by_batch_size(meter_results):
    world_size, results = meter_results
    correct = [sum((logit > 0) == bool(label) for logit, label in zip(LOGITS[r], LABELS[r])) for r in range(world_size)]
    expected = sum(correct) / sum(len(LABELS[r]) for r in range(world_size))
    for rank, result in enumerate(results):
        assert result["stream"][0] == correct[rank] / len(LABELS[rank])
        assert result["stream"][1] == pytest.approx(expected) and result["stream"][2] == pytest.approx(expected)
    if world_size == 2:
        assert expected == pytest.approx(2 / 6)


def test_multitask_micro_aggregate_counts_samples_of_all_ranks(meter_results):
    world_size, results = meter_results
    a_samples = sum(rank + 1 for rank in range(world_size))
    b_samples = 3 * world_size
    expected = (1.0 * a_samples + 0.0 * b_samples) / (a_samples + b_samples)
    for result in results:
        assert result["tasks"] == {"a": {"acc": 1.0}, "b": {"acc": 0.0}, "aggregate": {"acc": pytest.approx(expected)}}
