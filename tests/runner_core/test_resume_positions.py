"""Resuming where a step-mode turn ended, and resuming without the loaders' positions (another topology).

Without the loaders' states the loop skips the batches its state says were trained; that reproduces
the data order when the order needs no loader state (sequential, or ``DistributedSampler``, whose
order follows its seed and the pass).  A shuffled single-process loader keeps its order in its state.
"""

from __future__ import annotations

import os

import pytest
import torch

from tests.runner_core.toy_runners import ClassifierRunner, base_config

# 24 samples in batches of 4: 6 steps a pass; a history checkpoint every 6 steps lands where a turn ends
STEPS, HALF = 12, 6


def config(tmp_path, **overrides):
    values = dict(
        steps=STEPS,
        optim={"type": "adamw", "lr": 0.05},
        dataloader={"batch_size": 4, "shuffle": False},  # an order that needs no loader state
        checkpoint={"async_mode": "disabled", "interval": HALF},
    )
    values.update(overrides)
    return base_config(tmp_path, **values)


def weights(runner) -> dict[str, torch.Tensor]:
    return {name: value.detach().clone() for name, value in runner.unwrap(runner.model).state_dict().items()}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    runner = ClassifierRunner(config(tmp_path_factory.mktemp("full")))
    runner.train()
    halfway = os.path.join(runner.checkpoint_manager.directory, f"ckpt-s{HALF:012d}.pth")
    result = weights(runner), halfway
    runner.close()
    return result


@pytest.mark.parametrize("exclude", [None, ["dataloaders"]], ids=["loader-positions", "fast-forward"])
def test_resume_at_the_end_of_a_turn_trains_the_rest(tmp_path, uninterrupted, exclude):
    final, halfway = uninterrupted
    checkpoint = {"async_mode": "disabled", "interval": HALF, "exclude_from_loading": exclude}
    resumed = ClassifierRunner(config(tmp_path, resume=halfway, checkpoint=checkpoint))
    assert resumed.train_state.global_step == HALF and resumed.loop_state.batches == {"train": HALF}
    resumed.train()
    assert resumed.train_state.global_step == STEPS
    for name, value in final.items():
        assert torch.equal(weights(resumed)[name], value), name
    resumed.close()
