"""Shuffled training loaders under DDP: the ranks' shards are disjoint and cover the data set once per pass."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from danling.runners import TorchRunner
from tests.distributed import run_workers

pytestmark = pytest.mark.distributed


class Indices(TorchRunner):
    def __init__(self, config) -> None:
        super().__init__(config)
        self.datasets.train = TensorDataset(torch.arange(32).float().unsqueeze(1), torch.arange(32))
        self.model = nn.Linear(1, 1)


def seen(rank: int, world_size: int, root: str) -> list[int]:
    # every rank is seeded differently (seed + rank), as training needs; the shuffle must not be
    config = {
        "seed": 5,
        "log": False,
        "workspace_root": root,
        "dataloader": {"batch_size": 4, "shuffle": True},
        "adopt_process_group": True,  # run_workers starts the group before the runner
    }
    runner = Indices(config)
    indices = [int(index) for _, labels in runner.dataloaders["train"] for index in labels]
    runner.close()
    return indices


def test_shuffled_shards_are_disjoint(tmp_path):
    first, second = run_workers(seen, 2, str(tmp_path), timeout=120)
    assert len(first) == len(second) == 16
    assert sorted(first + second) == list(range(32))
