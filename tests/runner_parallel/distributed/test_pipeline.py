"""Pipeline-parallel ParallelRunner on two real gloo processes against one-process TorchRunner references.

The test process trains the reference (all 8 samples of a step through the whole model).  One pair
of processes then runs, each a 2-stage pipeline over 4 micro-batches of 2 samples:

- GPipe and 1F1B on the even split (stage 0: the first two layers, stage 1: the last two), two
  epochs with an evaluation split and a split of the same inputs without targets (evaluated: no
  loss; then inference on it);
- interleaved 1F1B on four stages named in ``module_fqns_per_model_part`` (2 stages per rank);
- a fresh 1F1B run resuming the 1F1B run's epoch-1 checkpoint and training epoch 2.
"""

from __future__ import annotations

import os

import pytest
import torch

from danling.runners.checkpoints.dcp import DCPCheckpointManager
from tests.distributed import run_workers
from tests.runner_parallel.pipeline_runners import (
    FOUR_STAGES,
    MLPRunner,
    MLPTorchRunner,
    build_model,
    config,
    difference,
    local_parameters,
)

pytestmark = pytest.mark.distributed


def _pipeline(schedule: str, **settings) -> dict:
    return {"axes": {"pipeline": 2}, "pipeline_schedule": schedule, "pipeline_microbatch_size": 2, **settings}


def _epoch_one(directory: str) -> str:
    return next(os.path.join(directory, entry) for entry in sorted(os.listdir(directory)) if entry.endswith("e000001"))


def _train(root: str, name: str, pipeline: dict, **overrides) -> dict:
    runner = MLPRunner(config(f"{root}/{name}", pipeline=pipeline, **overrides))
    outcome = {
        "stages": runner.pipeline.local_stages,
        "first/last": (runner.pipeline_has_first_stage, runner.pipeline_has_last_stage),
        "model": type(runner.model).__name__,
        "epoch": runner.train_state.epoch,
    }
    results = runner.train()
    outcome["parameters"] = local_parameters(runner)
    outcome["losses"] = {split: results[1][split]["loss"] for split in ("train", "val")}
    outcome["without targets"] = dict(results[1]["infer"]) if "infer" in results[1] else None
    outcome["predictions"] = runner.infer("infer")  # the val inputs, without targets
    outcome["checkpoints"] = runner.checkpoint_manager.directory
    runner.close()
    return outcome


def _workers(rank, world_size, root):
    runs = {
        "GPipe": _train(root, "gpipe", _pipeline("GPipe")),
        "1F1B": _train(root, "1f1b", _pipeline("1F1B")),
        "Interleaved1F1B": _train(
            root, "interleaved", _pipeline("Interleaved1F1B", module_fqns_per_model_part=FOUR_STAGES)
        ),
    }
    resume = _epoch_one(runs["1F1B"]["checkpoints"])
    runs["resumed"] = _train(root, "resumed", _pipeline("1F1B"), resume=resume)
    return runs


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("pipeline"))
    reference = MLPTorchRunner(config(f"{root}/reference"))
    results = reference.train()
    expected = {
        "parameters": {name: p.detach().clone() for name, p in reference.model.named_parameters()},
        "losses": {split: results[1][split]["loss"] for split in ("train", "val")},
        "predictions": reference.infer("val"),
    }
    reference.close()
    return expected, run_workers(_workers, 2, root, timeout=240)


@pytest.mark.parametrize("schedule", ["GPipe", "1F1B", "Interleaved1F1B"])
def test_pipelined_training_equals_the_unpipelined_model(runs, schedule):
    expected, workers = runs
    names = set()
    for worker in workers:
        run = worker[schedule]
        assert run["model"] == "PipelineModel"
        assert difference(run["parameters"], expected["parameters"]) < 1e-5
        names |= set(run["parameters"])
    assert names == set(expected["parameters"])  # the stages hold the whole model between them, once
    assert not set(workers[0][schedule]["parameters"]) & set(workers[1][schedule]["parameters"])


def test_stage_assignment(runs):
    _, workers = runs
    assert [worker["1F1B"]["stages"] for worker in workers] == [(0,), (1,)]
    assert [worker["1F1B"]["first/last"] for worker in workers] == [(True, False), (False, True)]
    assert sorted(workers[0]["1F1B"]["parameters"]) == ["0.bias", "0.weight", "2.bias", "2.weight"]
    assert [worker["Interleaved1F1B"]["stages"] for worker in workers] == [(0, 2), (1, 3)]
    assert [worker["Interleaved1F1B"]["first/last"] for worker in workers] == [(True, False), (False, True)]


@pytest.mark.parametrize("schedule", ["GPipe", "1F1B", "Interleaved1F1B"])
def test_every_stage_reports_the_batch_loss_and_predictions(runs, schedule):
    expected, workers = runs
    for worker in workers:  # the first stage, which computes no loss, reports the last stage's
        run = worker[schedule]
        for split in ("train", "val"):
            assert run["losses"][split] == pytest.approx(expected["losses"][split], rel=1e-5)
        assert run["predictions"] == pytest.approx(expected["predictions"], abs=1e-5)
        assert run["without targets"] is not None and "loss" not in run["without targets"]  # no targets, no loss


def test_checkpoints_hold_each_stage_under_its_model_names(runs):
    _, workers = runs
    saved = DCPCheckpointManager(workers[0]["1F1B"]["checkpoints"]).load("latest")
    assert set(saved["model"]) == {name for name, _ in build_model().named_parameters()}
    assert saved["parallel"]["axes"]["pipeline"] == 2


def test_pipelined_checkpoint_resumes_and_continues_identically(runs):
    _, workers = runs
    for worker in workers:
        assert worker["resumed"]["epoch"] == 1
        final = {name: torch.tensor(value) for name, value in worker["1F1B"]["parameters"].items()}
        assert difference(worker["resumed"]["parameters"], final) == 0.0
        assert worker["resumed"]["losses"]["val"] == worker["1F1B"]["losses"]["val"]
