"""``checkpoint.backend="dcp"`` under DDP: a checkpoint written by 2 ranks restores into 1 and one written by 1
rank into 2 (DCP reshards), and training continues equal to a run that never stopped."""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from danling.runners import TorchRunner
from tests.distributed import run_workers

pytestmark = pytest.mark.distributed

STEPS, HALF = 12, 6


class Regression(TorchRunner):
    def __init__(self, config) -> None:
        super().__init__(config)
        generator = torch.Generator().manual_seed(0)
        inputs = torch.randn(48, 4, generator=generator)
        self.datasets.train = TensorDataset(inputs, inputs @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]]))
        torch.manual_seed(11)
        self.model = nn.Linear(4, 1)
        self.criterion = nn.MSELoss()


def config(root: str, **overrides) -> dict:
    # global batch 8: 8 per step on one rank, 4 per rank on two (the sampler shards by rank)
    values = {
        "steps": STEPS,
        "seed": 0,
        "log": False,
        "workspace_root": root,
        "optim": {"type": "adamw", "lr": 0.05},
        "checkpoint": {"backend": "dcp", "async_mode": "disabled", "interval": HALF},
        "dataloader": {"shuffle": False},
        "adopt_process_group": True,  # run_workers starts the group before the runner
    }
    values.update(overrides)
    return values


def batch_size(world_size: int) -> dict:
    return {"dataloader": {"shuffle": False, "batch_size": 8 // world_size}}


def train(rank: int, world_size: int, root: str, resume: str | None) -> dict:
    """Train to the end (from ``resume`` when given); return the weights and where the halfway checkpoint is.

    A resume on another number of ranks keeps the global batch (so the per-rank batch size, which the
    saved config pins, differs) and starts the next pass afresh: loader positions are per rank.  The
    halfway checkpoint sits at the end of a pass, so the batches are the uninterrupted run's.
    """
    overrides = batch_size(world_size)
    if resume is not None:
        overrides["checkpoint"] = {**config(root)["checkpoint"], "exclude_from_loading": ["runner", "dataloaders"]}
    runner = Regression(config(root, resume=resume, **overrides))
    start = runner.train_state.global_step
    runner.train()
    # plain lists: tensors cannot leave a spawned worker that exits
    weights = {name: value.tolist() for name, value in runner.unwrap(runner.model).state_dict().items()}
    halfway = os.path.join(runner.workspace.checkpoint_dir, f"ckpt-s{HALF:012d}")
    runner.close()
    return {"weights": weights, "start": start, "halfway": halfway}


def check_equal(resumed: dict, reference: dict) -> None:
    assert resumed["start"] == HALF
    for name, value in reference["weights"].items():
        torch.testing.assert_close(torch.tensor(resumed["weights"][name]), torch.tensor(value), rtol=1e-5, atol=1e-6)


def test_dcp_checkpoint_of_two_ranks_resumes_on_one_and_the_reverse(tmp_path):
    two = run_workers(train, 2, str(tmp_path / "two"), None, timeout=240)
    assert os.path.isfile(os.path.join(two[0]["halfway"], ".metadata"))
    assert two[0]["weights"] == two[1]["weights"]  # DDP keeps the ranks equal

    one = train(0, 1, str(tmp_path / "one"), None)
    check_equal({"weights": one["weights"], "start": HALF}, two[0])  # the same global batches either way

    # 2 ranks -> 1 process, and 1 process -> 2 ranks, both from the halfway checkpoint
    check_equal(train(0, 1, str(tmp_path / "two-to-one"), two[0]["halfway"]), one)
    for result in run_workers(train, 2, str(tmp_path / "one-to-two"), one["halfway"], timeout=240):
        check_equal(result, two[0])
