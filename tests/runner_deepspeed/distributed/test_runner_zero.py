"""DeepSpeedRunner on two real processes (gloo on loopback), ZeRO stages 0-3, fp32 and bf16.

One pair of worker processes runs every scenario (DeepSpeed takes seconds to import in each
process), and the tests below check what they returned:

- fp32 runs of every stage end where a one-process ``TorchRunner`` on the same global batches
  ends (two accumulated micro-batches per rank, labels partly ignored so every micro-batch
  weighs differently, clipping on);
- bf16 runs lower the loss; every run ends with the same weights on both ranks;
- runs interrupted in their third epoch and resumed from ``latest`` end bit for bit where the
  uninterrupted runs end (ZeRO 1, 2 and 3);
- the ZeRO-3 run's gathered ``model.safetensors`` gives a ``TorchRunner`` the same evaluation loss;
- at the engine level: a non-finite bf16 step is skipped and reported, and the reported gradient
  norm is the one computed by hand.
"""

from __future__ import annotations

import os
import time

import pytest
import torch

from tests.distributed import run_workers
from tests.runner_deepspeed.toy_runners import (
    Classify,
    StopsInThirdEpoch,
    config,
    module_state,
    skip_inference_shm_op,
    zero,
)

pytestmark = pytest.mark.distributed

STAGES = (0, 1, 2, 3)
RESUMED = (1, 2, 3)
#: Both ranks' micro-batches of one step together: the batch of the one-process reference.
SETTINGS = {"accum_steps": 2, "max_grad_norm": 0.5}  # norms are about 0.5: some steps clip, some do not


def _listed(state):
    return {name: tensor.tolist() for name, tensor in state.items()}


def _train(root, stage, precision):
    # only the final save (with the export): the resume scenarios below exercise periodic saves
    checkpoint = {"interval": 0, "last_save_model_only": True}
    runner = Classify(config(root, precision=precision, deepspeed=zero(stage), checkpoint=checkpoint, **SETTINGS))
    try:
        results = runner.train()
        evaluation = runner.evaluate()["val"]["loss"]
        return {
            "losses": [results[epoch]["train"]["loss"] for epoch in range(3)],
            "grad_norm": results[2]["train"].get("grad_norm"),
            "steps": runner.train_state.global_step,
            "state": _listed(module_state(runner)),
            "evaluation": evaluation,
            "export": os.path.join(runner.workspace.checkpoint_dir, "model.safetensors"),
        }
    finally:
        runner.close()


def _resume(root, stage):
    settings = {"deepspeed": zero(stage), **SETTINGS}
    stopped = StopsInThirdEpoch(config(root, **settings))
    try:
        stopped.train()
    except KeyboardInterrupt:
        pass
    finally:
        stopped.close()
    resumed = Classify(config(root, auto_resume=True, **settings))
    try:
        start = resumed.train_state.global_step
        resumed.train()
        return {"start": start, "state": _listed(module_state(resumed))}
    finally:
        resumed.close()


def _engine_checks(rank):
    """A NaN loss under bf16 is skipped; the reported norm equals the norm of the averaged gradient."""
    import deepspeed

    from danling.runners.deepspeed_runner import DeepSpeedStepContainer, build_deepspeed_config, build_engine

    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    reference = torch.nn.Linear(4, 2)
    reference.load_state_dict(model.state_dict())
    ds_config = build_deepspeed_config(
        {"zero_optimization": {"stage": 1}}, micro_batch_size=3, world_size=2, precision="bf16"
    )
    engine = build_engine(model, torch.optim.AdamW(model.parameters(), lr=0.1), ds_config)
    container = DeepSpeedStepContainer(engine, normalize=True, world_size=2)
    inputs = torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(1))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = engine(inputs[rank]).float().pow(2).mean()
    container.window.pending = 6
    container.backward(loss * float("nan"))
    skipped = not container.step()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = engine(inputs[rank]).float().pow(2).mean()
    container.window.pending = 6
    container.backward(loss)
    applied = container.step()
    expected = torch.autograd.grad(reference(inputs.reshape(6, 4)).pow(2).mean(), list(reference.parameters()))
    return {
        "skipped": skipped,
        "skipped_steps": container.skipped_steps,
        "applied": applied,
        "norm": float(container.grad_norm),
        "expected_norm": float(torch.linalg.vector_norm(torch.cat([grad.flatten() for grad in expected]))),
        "deepspeed": deepspeed.__version__,
    }


def _scenarios(rank, world_size, root):
    skip_inference_shm_op()
    seconds, start = {}, time.perf_counter()
    outcome = {"engine": _engine_checks(rank)}
    for stage in STAGES:
        for precision in (None, "bf16"):
            name = f"train-{stage}-{precision}"
            outcome[name] = _train(os.path.join(root, name), stage, precision)
            seconds[name], start = time.perf_counter() - start, time.perf_counter()
    for stage in RESUMED:
        outcome[f"resume-{stage}"] = _resume(os.path.join(root, f"resume-{stage}"), stage)
        seconds[f"resume-{stage}"], start = time.perf_counter() - start, time.perf_counter()
    outcome["seconds"] = seconds  # shown by pytest -s (print below) when the suite needs trimming
    return outcome


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    root = tmp_path_factory.mktemp("deepspeed-zero")
    outcomes = run_workers(_scenarios, 2, str(root), timeout=900)
    print("seconds per scenario (rank 0):", {name: round(value, 1) for name, value in outcomes[0]["seconds"].items()})
    return outcomes


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One process, plain TorchRunner, each step's 16 samples in one batch."""
    root = tmp_path_factory.mktemp("torch-reference")
    runner = Classify(config(root, stack="ddp", max_grad_norm=0.5, dataloader={"batch_size": 16, "shuffle": False}))
    try:
        results = runner.train()
        return {"state": module_state(runner), "steps": runner.train_state.global_step, "results": results}
    finally:
        runner.close()


@pytest.mark.parametrize("stage", STAGES)
def test_two_processes_end_where_one_torch_runner_ends(outcomes, reference, stage):
    run = outcomes[0][f"train-{stage}-None"]
    assert run["steps"] == reference["steps"] == 12
    for name, value in run["state"].items():
        torch.testing.assert_close(torch.tensor(value), reference["state"][name], rtol=1e-5, atol=1e-6, msg=name)
    assert run["losses"][-1] < run["losses"][0]
    assert (run["grad_norm"] is not None) == (stage > 0)  # stage 0 in fp32 steps the torch optimizer alone


@pytest.mark.parametrize("stage", STAGES)
@pytest.mark.parametrize("precision", [None, "bf16"])
def test_ranks_agree_and_the_loss_decreases(outcomes, stage, precision):
    first, second = (outcome[f"train-{stage}-{precision}"] for outcome in outcomes)
    assert first["state"] == second["state"]
    assert first["losses"] == second["losses"]
    assert first["losses"][-1] < first["losses"][0]


@pytest.mark.parametrize("stage", RESUMED)
def test_resume_from_latest_is_bit_for_bit(outcomes, stage):
    for outcome in outcomes:
        resumed = outcome[f"resume-{stage}"]
        assert resumed["start"] == 8  # two epochs of four steps were saved before the interruption
        assert resumed["state"] == outcome[f"train-{stage}-None"]["state"]


def test_zero3_export_gives_a_torch_runner_the_same_evaluation(outcomes, tmp_path):
    run = outcomes[0]["train-3-None"]
    plain = Classify(config(tmp_path, stack="ddp", pretrained=run["export"]))
    try:
        for name, value in run["state"].items():
            assert torch.equal(plain.unwrap(plain.model).state_dict()[name], torch.tensor(value)), name
        assert plain.evaluate()["val"]["loss"] == pytest.approx(run["evaluation"], rel=1e-6)
    finally:
        plain.close()


def test_a_non_finite_step_is_skipped_and_the_norm_is_reported(outcomes):
    for outcome in outcomes:
        checks = outcome["engine"]
        assert checks["skipped"] and checks["skipped_steps"] == 1 and checks["applied"]
        assert checks["norm"] == pytest.approx(checks["expected_norm"], rel=2e-2)  # bf16 forward
