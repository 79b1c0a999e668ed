"""Collective helpers without a process group (their multi-process use is in distributed/)."""

from __future__ import annotations

import torch

from danling.metrics.distributed import (
    all_gather_objects,
    all_reduce_max,
    all_reduce_sum,
    gather_rows,
    is_initialized,
    reduction_device,
    world_size,
)


def test_single_process_answers():
    assert not is_initialized()
    assert world_size() == 1 and world_size(enabled=False) == 1
    assert reduction_device(None) == torch.device("cpu")
    assert reduction_device(torch.device("meta")) == torch.device("meta")
    tensor = torch.tensor([1.0, 2.0])
    assert all_reduce_sum(tensor) is tensor and all_reduce_max(tensor).tolist() == [1.0, 2.0]
    assert all_gather_objects({"a": 1}) == [{"a": 1}]
    assert gather_rows(None) == []
    assert gather_rows(tensor)[0] is tensor
