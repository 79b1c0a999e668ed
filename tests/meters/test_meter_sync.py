"""The packing logic of ``synchronise_meters``, run without a process group (a sum over one rank)."""

from __future__ import annotations

import math

import pytest
import torch

from danling.metrics import AverageMeter
from danling.metrics.meter_sync import synchronise_meters


def test_one_rank_reduction_equals_local_reads():
    scalar, vector, empty, zero = AverageMeter(), AverageMeter(), AverageMeter(), AverageMeter()
    scalar.update(1.0, n=3)
    scalar.update(4.0, n=2)
    vector.update(torch.tensor([1.0, 2.0]), n=2)
    vector.update(torch.tensor([4.0, 8.0]))
    zero.update(5.0, n=0)
    meters = [scalar, vector, empty, zero]
    averages = synchronise_meters(meters, "average")
    batches = synchronise_meters(meters, "batch", names=["a", "b", "c", "d"])
    assert averages[0] == pytest.approx(scalar.avg) and batches[0] == 4.0
    torch.testing.assert_close(averages[1], vector.avg)
    torch.testing.assert_close(batches[1], torch.tensor([4.0, 8.0], dtype=torch.float64))
    assert all(math.isnan(value) for value in averages[2:] + batches[2:])
    assert synchronise_meters([], "average") == []
