import os
import time

import pytest
import torch
import torch.distributed as dist

from tests.distributed import run_workers


def _sum_of_ranks(rank: int, world_size: int) -> float:
    value = torch.tensor([float(rank)])
    dist.all_reduce(value)
    return value.item()


def _fail_on_rank_one(rank: int, world_size: int) -> None:
    if rank == 1:
        raise RuntimeError("boom on rank one")


@pytest.mark.distributed
def test_run_workers_joins_a_real_gloo_group():
    assert run_workers(_sum_of_ranks, 3) == [3.0, 3.0, 3.0]


@pytest.mark.distributed
def test_run_workers_reports_the_failing_rank():
    with pytest.raises(AssertionError, match=r"(?s)rank 1 failed.*boom on rank one"):
        run_workers(_fail_on_rank_one, 2)


def _exit_without_reporting(rank: int, world_size: int) -> None:
    if rank == 1:
        os._exit(3)  # dies like a crash in C++ would: no exception, no result


@pytest.mark.distributed
def test_run_workers_notices_a_rank_that_died_silently():
    start = time.monotonic()
    with pytest.raises(AssertionError, match="rank 1 exited with code 3"):
        run_workers(_exit_without_reporting, 2, timeout=60)
    assert time.monotonic() - start < 30
