"""Behaviours of the documented API that code written for the reference system relies on (issue 16).

The cross-rank checks run in two real gloo processes; one world runs every case, to keep the
number of spawned worlds small.
"""

from __future__ import annotations

import pytest
import torch

from danling.metrics import AverageMeter, AverageMeters
from tests.distributed import run_workers


def test_metric_func_and_state_import_from_functional():
    from danling.metrics import MetricFunc, MetricState, functional
    from danling.metrics.functional import MetricFunc as FunctionalMetricFunc
    from danling.metrics.functional import MetricState as FunctionalMetricState

    assert FunctionalMetricFunc is MetricFunc
    assert FunctionalMetricState is MetricState
    assert {"MetricFunc", "MetricState"} <= set(functional.__all__)
    with pytest.raises(AttributeError, match="no attribute 'not_a_metric'"):
        functional.not_a_metric  # noqa: B018


def _metadata_worker(rank: int, world_size: int) -> dict:
    results: dict = {}
    single = AverageMeter()
    single.update(torch.ones(2 + rank))
    with pytest.raises(ValueError) as error:
        single.average()
    results["single"] = str(error.value)

    meters = AverageMeters()
    meters.loss.update(1.0)
    meters.x.update(torch.ones(2, 1 + rank))
    with pytest.raises(ValueError) as error:
        meters.batch()
    results["container"] = str(error.value)

    # Ranks that record float32 and float64 values of the same shape disagree on the metadata
    # (the statistics are float64 either way, but the inputs differ): told, never reduced together.
    mixed = AverageMeter()
    mixed.update(torch.tensor([1.0, 3.0], dtype=torch.float32 if rank == 0 else torch.float64), n=rank + 1)
    with pytest.raises(ValueError) as error:
        mixed.average()
    results["mixed"] = str(error.value)
    mixed_meters = AverageMeters()
    mixed_meters.y.update(torch.ones(3, dtype=torch.float64 if rank == 0 else torch.float32))
    with pytest.raises(ValueError) as error:
        mixed_meters.batch()
    results["mixed_container"] = str(error.value)
    # The same dtype on every rank reduces, and the dtype survives a state dict round trip.
    agreed = AverageMeter()
    agreed.update(torch.tensor([1.0, 3.0], dtype=torch.float32), n=rank + 1)
    restored = AverageMeter()
    restored.load_state_dict(agreed.state_dict())
    results["agreed"] = restored.avg.tolist()

    # A rank that never saw a value adopts the shape of the others.
    late = AverageMeter()
    if rank == 0:
        late.update(torch.tensor([2.0, 4.0]))
    results["late"] = late.avg.tolist()
    return results


@pytest.mark.distributed
def test_inconsistent_tensor_metadata_across_ranks_is_worded_as_documented():
    results = run_workers(_metadata_worker, 2)
    # The metadata names the dtype the values came in (torch.ones: float32).
    single = [((2,), "torch.float32"), ((3,), "torch.float32")]
    container = [((2, 1), "torch.float32"), ((2, 2), "torch.float32")]
    mixed = [((2,), "torch.float32"), ((2,), "torch.float64")]
    mixed_container = [((3,), "torch.float64"), ((3,), "torch.float32")]
    for result in results:
        assert result["single"] == f"AverageMeter received inconsistent tensor metadata across ranks: {single!r}"
        assert result["container"] == (
            f"AverageMeters received inconsistent tensor metadata for meter 'x': {container!r}"
        )
        assert result["mixed"] == f"AverageMeter received inconsistent tensor metadata across ranks: {mixed!r}"
        assert result["mixed_container"] == (
            f"AverageMeters received inconsistent tensor metadata for meter 'y': {mixed_container!r}"
        )
        assert result["agreed"] == [1.0, 3.0]
        assert result["late"] == [2.0, 4.0]
