"""ParallelRunner on two real gloo processes against a one-process TorchRunner on the same global batches.

The test process first trains the one-process references: ``TorchRunner`` on 8 samples a step,
and a one-process ``ParallelRunner`` (4 samples a step) whose epoch-1 checkpoint two processes
resume below.  One pair of processes then runs, in order:

- FSDP2 (shard=-1 -> 2) with activation checkpointing, 4 samples per rank: two epochs, a
  checkpoint after each, and the final ``model.safetensors`` export;
- an FSDP2 run that loads that export as ``pretrained``;
- a fresh FSDP2 run that resumes the first run's epoch-1 checkpoint and trains epoch 2;
- an FSDP2 run that resumes the one-process checkpoint (1 -> 2 shards) and trains epoch 2;
- FSDP2 with fp16 autocast and a ``ShardedGradScaler``;
- data parallel without FSDP (DDP over shard=2);
- tensor parallel (tensor=2) on the example transformer: both ranks read the same 8 samples;
- a resume of that tensor-parallel checkpoint on a shard=2 mesh, which must be refused.

The test process then resumes the epoch-1 FSDP checkpoint in one process, and loads the export
as ``pretrained`` into a plain TorchRunner.
"""

from __future__ import annotations

import os

import pytest
import torch
from torch.utils.data import DataLoader

from danling.runners.checkpoints.dcp import DCPCheckpointManager
from tests.distributed import run_workers
from tests.runner_parallel.runners import (
    SequenceCrossEntropy,
    TransformerRunner,
    TransformerTorchRunner,
    build_model,
    config,
    dataset,
    full_parameters,
)

pytestmark = pytest.mark.distributed

# FSDP2 over every rank, each transformer block recomputing its activations in backward
FSDP = {"fsdp": {"enabled": True}, "parallel": {"axes": {"shard": -1}}, "activation_checkpoint": True}


def _plain(parameters):
    return {name: tensor.tolist() for name, tensor in parameters.items()}


def _epoch_one(directory):
    return next(os.path.join(directory, entry) for entry in sorted(os.listdir(directory)) if entry.endswith("e000001"))


def _continue(model, optimizer_state, batch_size):
    """Epoch 2 as one process computes it from a model and its AdamW state: the expected continuation."""
    # a new module, not a deep copy: a copy of a checkpointed block would still run the original's forward
    weights, model = model.state_dict(), build_model()
    model.load_state_dict(weights)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.01)
    optimizer.load_state_dict(optimizer_state)
    for inputs, target in DataLoader(dataset(), batch_size=batch_size):
        SequenceCrossEntropy()(model(inputs), target).backward()
        optimizer.step()
        optimizer.zero_grad()
    return {name: p.detach() for name, p in model.named_parameters()}


def _workers(rank, world_size, root, single_checkpoint):
    results = {}
    first = TransformerRunner(
        config(f"{root}/fsdp", 4, checkpoint={"async_mode": "disabled", "last_save_model_only": True}, **FSDP)
    )
    layer = first.model.layers[0]
    results["wrapped"] = (type(layer).__name__, hasattr(layer.forward, "__danling_checkpointed__"))
    first.train()
    results["fsdp"] = _plain(full_parameters(first))
    results["checkpoints"] = first.checkpoint_manager.directory
    results["degrees"] = (first.shard_degree, first.data_degree, first.data_rank, first.tensor_degree, first.fsdp_mode)
    first.close()

    export = os.path.join(results["checkpoints"], "model.safetensors")
    pretrained = TransformerRunner(config(f"{root}/pretrained", 4, pretrained=export, **FSDP))
    results["pretrained"] = _plain(full_parameters(pretrained))
    pretrained.close()

    resumed = TransformerRunner(config(f"{root}/resumed", 4, resume=_epoch_one(results["checkpoints"]), **FSDP))
    results["resumed epoch"] = resumed.train_state.epoch
    resumed.train()
    results["resumed"] = _plain(full_parameters(resumed))
    resumed.close()

    widened = TransformerRunner(config(f"{root}/widened", 4, resume=single_checkpoint, **FSDP))
    results["widened restored"] = _plain(full_parameters(widened))
    widened.train()
    results["widened"] = _plain(full_parameters(widened))
    widened.close()

    half = TransformerRunner(config(f"{root}/fp16", 4, precision="fp16", **FSDP))
    before = full_parameters(half)
    half.train()  # fp16 overflows at the initial loss scale: some steps are skipped, on both ranks alike
    changed = any(not torch.equal(before[name], value) for name, value in full_parameters(half).items())
    results["fp16"] = (
        type(half.scaler).__name__,
        half.train_state.global_step,
        float(half.scaler.get_scale()),
        changed,
    )
    half.close()

    replicated = TransformerRunner(config(f"{root}/ddp", 4, parallel={"axes": {"shard": 2}}))
    results["ddp wrapped"] = type(replicated.model).__name__
    replicated.train()
    results["ddp"] = _plain(full_parameters(replicated))
    replicated.close()

    tensor = TransformerRunner(config(f"{root}/tensor", 8, parallel={"axes": {"tensor": 2}}))
    results["tensor sharded"] = type(tensor.model.layers[0].attention.wq.weight).__name__
    tensor.train()
    results["tensor"] = _plain(full_parameters(tensor))
    tensor_checkpoint = tensor.checkpoint_manager.resolve("latest")
    tensor.close()
    try:
        TransformerRunner(config(f"{root}/refused", 4, resume=tensor_checkpoint, **FSDP))
    except ValueError as error:
        results["refused"] = str(error)
    return results


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("parallel"))
    references = {}
    for epochs in (1, 2):  # one process, all 8 samples of each step in one batch
        reference = TransformerTorchRunner(config(f"{root}/reference{epochs}", 8, epochs=epochs))
        reference.train()
        references[epochs] = full_parameters(reference)
        if epochs == 1:  # what one process continues with, from the state two processes reach after epoch 1
            references["continued"] = _continue(reference.model, reference.optimizer.state_dict(), batch_size=4)
        reference.close()
    single = TransformerRunner(config(f"{root}/single", 4, **FSDP))  # one process, 4 samples a step
    single.train()
    single_checkpoint = _epoch_one(single.checkpoint_manager.directory)
    single.close()
    single = TransformerRunner(config(f"{root}/single-restored", 4, resume=single_checkpoint, **FSDP))
    references["single epoch 1"] = full_parameters(single)
    # what two processes continue with from that state: epoch 2 in global batches of 8
    references["widened"] = _continue(single.model, single.optimizer.state_dict(), batch_size=8)
    single.close()
    workers = run_workers(_workers, 2, root, single_checkpoint, timeout=300)
    return root, references, workers


def _difference(parameters, reference):
    return max(float((torch.tensor(parameters[name]) - value).abs().max()) for name, value in reference.items())


def test_fsdp_training_equals_one_process(runs):
    _, references, workers = runs
    assert workers[0]["degrees"] == (2, 2, 0, 1, "full_shard") and workers[1]["degrees"][2] == 1
    assert workers[0]["wrapped"] == ("FSDPTransformerBlock", True)
    assert max(_difference(worker["fsdp"], references[2]) for worker in workers) < 1e-5


def test_data_parallel_without_fsdp_is_ddp_and_equals_one_process(runs):
    _, references, workers = runs
    assert workers[0]["ddp wrapped"] == "DistributedDataParallel"
    assert max(_difference(worker["ddp"], references[2]) for worker in workers) < 1e-5


def test_fp16_scaling_agrees_across_ranks(runs):
    _, _, workers = runs
    scaler, steps, scale, changed = workers[0]["fp16"]
    assert scaler == "ShardedGradScaler" and 0 < steps < 4 and scale < 2.0**16 and changed
    assert workers[1]["fp16"] == workers[0]["fp16"]


def test_checkpoint_records_topology(runs):
    _, _, workers = runs
    saved = DCPCheckpointManager(workers[0]["checkpoints"]).load("latest")
    assert saved["parallel"] == {
        "axes": {"replicate": 1, "shard": 2, "context": 1, "pipeline": 1, "tensor": 1, "expert": 1, "expert_tensor": 1},
        "fsdp": True,
    }
    assert saved["runner"]["stack"] == "parallel" and saved["runner"]["parallel"]["axes"]["shard"] == -1


def test_fresh_two_process_run_resumes_and_continues_identically(runs):
    _, _, workers = runs
    assert all(worker["resumed epoch"] == 1 for worker in workers)
    assert (
        max(
            _difference(worker["resumed"], {k: torch.tensor(v) for k, v in worker["fsdp"].items()})
            for worker in workers
        )
        == 0.0
    )


def test_one_process_run_resumes_and_continues_identically(runs):
    root, references, workers = runs
    runner = TransformerRunner(config(f"{root}/narrowed", 4, resume=_epoch_one(workers[0]["checkpoints"]), **FSDP))
    restored = full_parameters(runner)
    assert runner.world_size == 1 and runner.train_state.epoch == 1
    assert max(float((restored[name] - value).abs().max()) for name, value in references[1].items()) < 1e-5
    runner.train()
    continued = full_parameters(runner)
    runner.close()
    assert max(float((continued[name] - value).abs().max()) for name, value in references["continued"].items()) < 1e-5


def test_one_process_checkpoint_resumes_on_two_and_continues_identically(runs):
    _, references, workers = runs
    for worker in workers:
        assert _difference(worker["widened restored"], references["single epoch 1"]) == 0.0
        assert _difference(worker["widened"], references["widened"]) < 1e-5


def test_export_loads_as_pretrained_in_a_torch_runner(runs):
    root, _, workers = runs
    export = os.path.join(workers[0]["checkpoints"], "model.safetensors")
    runner = TransformerTorchRunner(config(f"{root}/pretrained", 8, pretrained=export))
    loaded = full_parameters(runner)
    runner.close()
    assert _difference(workers[0]["fsdp"], loaded) == 0.0


def test_export_loads_as_pretrained_into_sharded_runs(runs):
    _, _, workers = runs
    assert all(
        _difference(worker["pretrained"], {k: torch.tensor(v) for k, v in worker["fsdp"].items()}) == 0.0
        for worker in workers
    )


def test_tensor_parallel_training_equals_unsharded(runs):
    _, references, workers = runs
    assert workers[0]["tensor sharded"] == "DTensor"
    assert max(_difference(worker["tensor"], references[2]) for worker in workers) < 1e-5


def test_resume_on_an_incompatible_mesh_names_the_axis(runs):
    _, _, workers = runs
    message = workers[0]["refused"]
    assert message.startswith(
        "cannot resume this checkpoint: parallel.axes.tensor was 2 when it was saved and is 1 now"
    )
    assert "Resume with parallel.axes.tensor=2" in message
