"""Pipeline parallelism on four real gloo processes, against a one-process TorchRunner reference.

- A 2 x 2 mesh of pipeline x FSDP shards: two data shards of 4 samples a step (8 in all, as the
  reference reads), each cut into a 2-stage 1F1B pipeline whose stages FSDP shards.
- A 4-stage GPipe pipeline in step mode (4 steps, an epoch), saving every 2 optimizer steps: ranks
  1 and 2 run middle stages and read no data (``StepProxyLoader``); a fresh run resumes the
  mid-epoch checkpoint of step 2 and continues identically.
"""

from __future__ import annotations

import os

import pytest
import torch

from danling.data import StepProxyLoader
from tests.distributed import run_workers
from tests.runner_parallel.pipeline_runners import (
    MLPTorchTrainRunner,
    MLPTrainRunner,
    config,
    difference,
    local_parameters,
)

pytestmark = pytest.mark.distributed

MESH = {
    "parallel": {"axes": {"shard": 2, "pipeline": 2}, "pipeline_schedule": "1F1B", "pipeline_microbatch_size": 2},
    "fsdp": {"enabled": True},
}
FOUR_STAGES = {"axes": {"pipeline": 4}, "pipeline_schedule": "GPipe", "pipeline_microbatch_size": 2}
STEPS = {"epochs": None, "steps": 4, "checkpoint": {"async_mode": "disabled", "interval": 2}}


def _workers(rank, world_size, root):
    outcome = {}
    mesh = MLPTrainRunner(config(f"{root}/mesh", batch_size=4, epochs=1, **MESH))
    outcome["mesh coordinates"] = (mesh.shard_rank, mesh.pipeline_rank, mesh.pipeline.local_stages)
    outcome["mesh sharded"] = type(next(mesh.model.parameters())).__name__
    mesh.train()
    outcome["mesh"] = local_parameters(mesh)
    mesh.close()

    deep = MLPTrainRunner(config(f"{root}/deep", pipeline=FOUR_STAGES, **STEPS))
    outcome["loader"] = type(deep.dataloaders["train"]).__name__
    deep.train()
    outcome["deep"] = local_parameters(deep)
    step_two = os.path.join(deep.checkpoint_manager.directory, deep.checkpoint_manager.history[0])
    deep.close()

    resumed = MLPTrainRunner(config(f"{root}/resumed", pipeline=FOUR_STAGES, resume=step_two, **STEPS))
    outcome["resumed step"] = resumed.train_state.global_step
    loader = resumed.dataloaders["train"]
    outcome["resumed position"] = loader.position if isinstance(loader, StepProxyLoader) else None
    resumed.train()
    outcome["resumed"] = local_parameters(resumed)
    resumed.close()
    return outcome


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("pipeline-mesh"))
    expected = {}
    for name, overrides in (("epochs", {"epochs": 1}), ("steps", STEPS)):
        reference = MLPTorchTrainRunner(config(f"{root}/reference-{name}", **overrides))
        reference.train()
        expected[name] = {key: p.detach().clone() for key, p in reference.model.named_parameters()}
        reference.close()
    return expected, run_workers(_workers, 4, root, timeout=240)


def test_pipeline_by_shard_mesh_equals_one_process(runs):
    expected, workers = runs
    # shard is the outer axis: ranks 0, 1 are data shard 0's two stages, ranks 2, 3 data shard 1's
    assert [worker["mesh coordinates"] for worker in workers] == [
        (0, 0, (0,)),
        (0, 1, (1,)),
        (1, 0, (0,)),
        (1, 1, (1,)),
    ]
    assert workers[0]["mesh sharded"] == "DTensor"
    for worker in workers:
        assert difference(worker["mesh"], expected["epochs"]) < 1e-5
    assert workers[0]["mesh"] == workers[2]["mesh"] and set(workers[0]["mesh"]) != set(workers[1]["mesh"])


def test_four_stage_pipeline_with_middle_stages_equals_one_process(runs):
    expected, workers = runs
    assert [worker["loader"] for worker in workers] == [
        "StatefulDataLoader",
        "StepProxyLoader",
        "StepProxyLoader",
        "StatefulDataLoader",
    ]
    for worker in workers:
        assert difference(worker["deep"], expected["steps"]) < 1e-5


def test_mid_epoch_checkpoint_resumes_middle_stages_in_step(runs):
    _, workers = runs
    assert [worker["resumed position"] for worker in workers] == [None, 2, 2, None]
    for worker in workers:
        assert worker["resumed step"] == 2
        final = {name: torch.tensor(value) for name, value in worker["deep"].items()}
        assert difference(worker["resumed"], final) == 0.0
