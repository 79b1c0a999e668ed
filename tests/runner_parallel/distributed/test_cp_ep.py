"""Context and expert parallelism on real gloo processes, each against the unsharded computation.

One pair of processes runs, in order (context=2 meshes, then expert=2 meshes):

- ring attention (causal and not) on sequence slices: outputs and the gradients of queries, keys
  and values equal full attention's slices;
- the example transformer with a context-parallel ``parallelize`` hook, through ``parallelize``
  (hook, activation checkpointing, DDP over the context ranks): each rank trains on its half of
  every sequence and ends with the weights of the unsharded model trained on whole sequences;
- a two-expert layer (and four experts, two per rank, top-2) spread over the expert axis by its
  own hook: outputs, input and weight gradients, and three optimizer steps equal the unsharded
  layer's;
- ``ParallelRunner`` with context=2 and with expert=2 against a one-process ``TorchRunner``
  on the same batches; the test process then resumes the expert run's checkpoint on one process.

Four processes then check ring attention where blocks go three steps around the ring, and a
2x2 (shard x expert) mesh: experts spread over the expert axis inside FSDP2, each shard rank on
half of every batch, equal to one process.
"""

from __future__ import annotations

import copy
import os

import pytest
import torch
from torch import nn
from torch.distributed.tensor import DTensor
from torch.nn import functional as F

from danling.runners.config import RunnerConfig
from danling.runners.parallel_runner import ParallelContext, apply_fsdp, build_device_mesh, build_topology, parallelize
from danling.runners.parallel_runner.context_parallel import apply_cp, gather_sequence, ring_attention, split_sequence
from danling.runners.parallel_runner.expert_parallel import MixtureOfExperts
from danling.runners.parallel_runner.transformer import Transformer
from tests.distributed import run_workers
from tests.runner_parallel.runners import (
    VOCAB,
    TransformerRunner,
    TransformerTorchRunner,
    config,
    full_parameters,
)

pytestmark = pytest.mark.distributed


def _context(rank, world_size, **axes):
    topology = build_topology(axes, world_size, rank)
    return ParallelContext(topology, build_device_mesh(topology, "cpu"))


def _full(tensor):
    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def _difference(left, right):
    return max(float((_full(a) - _full(b)).abs().max()) for a, b in zip(left, right))


class ContextParallelTransformer(Transformer):
    """The example transformer, whose hook also makes its attention ring attention over the context axis."""

    def parallelize(self, parallel):
        super().parallelize(parallel)
        if parallel.degree("context") > 1:
            self.context_mesh = parallel.submesh("context")
            apply_cp(self, self.context_mesh, "layers.*.attention")


class MixtureModel(nn.Module):
    """Tokens -> embedding -> a two-expert layer (added to its input) -> vocabulary logits."""

    def __init__(self, dim=8, experts=2):
        super().__init__()
        self.embedding = nn.Embedding(VOCAB, dim)
        self.experts = MixtureOfExperts(dim, 2 * dim, num_experts=experts)
        self.output = nn.Linear(dim, VOCAB)

    def forward(self, tokens):
        x = self.embedding(tokens)
        return self.output(x + self.experts(x))

    def parallelize(self, parallel):
        self.experts.parallelize(parallel)


def _ring_checks(rank, world_size):
    """Ring attention on ``world_size`` context ranks against full attention: output and q, k, v gradients."""
    context = _context(rank, world_size, context=world_size)
    group = context.submesh("context").get_group()
    generator = torch.Generator().manual_seed(3)
    results = {}
    for causal in (True, False):
        q, k, v = (torch.randn(2, 2, 4 * world_size, 8, generator=generator) for _ in range(3))
        weight = torch.randn(2, 2, 4 * world_size, 8, generator=generator)
        full = [t.clone().requires_grad_() for t in (q, k, v)]
        expected = F.scaled_dot_product_attention(*full, is_causal=causal)
        (expected * weight).sum().backward()
        local = [split_sequence(t, rank, world_size, dim=2).clone().requires_grad_() for t in (q, k, v)]
        out = ring_attention(*local, group, is_causal=causal)
        (out * split_sequence(weight, rank, world_size, dim=2)).sum().backward()
        differences = [float((out - split_sequence(expected, rank, world_size, dim=2)).abs().max().detach())]
        differences += [
            float((t.grad - split_sequence(f.grad, rank, world_size, dim=2)).abs().max()) for t, f in zip(local, full)
        ]
        results["causal" if causal else "full"] = max(differences)
    return results


def _train(model, batches, loss_fn, steps=3):
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    outputs = []
    for batch in batches[:steps]:
        out = model(batch)
        outputs.append(out.detach())
        loss_fn(out, batch).backward()
        optimizer.step()
        optimizer.zero_grad()
    return outputs


def _next_token_loss(logits, tokens):
    return F.cross_entropy(logits[:, :-1].reshape(-1, VOCAB), tokens[:, 1:].reshape(-1))


def _context_parallel_checks(rank, world_size):
    """The CP transformer through ``parallelize`` (its hook, activation checkpointing, DDP) against whole sequences."""
    context = _context(rank, world_size, context=2)
    generator = torch.Generator().manual_seed(1)
    tokens = [torch.randint(0, VOCAB, (3, 8), generator=generator) for _ in range(3)]
    torch.manual_seed(0)
    reference = ContextParallelTransformer(VOCAB, dim=8, num_layers=2, num_heads=2)
    model = parallelize(
        copy.deepcopy(reference),
        context,
        RunnerConfig({"stack": "parallel", "activation_checkpoint": True}),
        device="cpu",
    )
    results = {"ddp": type(model).__name__}
    module = getattr(model, "module", model)  # under DDP
    results["recomputed"] = all(hasattr(layer.forward, "__danling_checkpointed__") for layer in module.layers)
    # each rank: its half of every sequence, with the next-token pairs inside that half
    outputs = _train(model, [split_sequence(batch, rank, 2) for batch in tokens], _next_token_loss)
    expected = _train(reference, tokens, _halves_loss)
    results["outputs"] = max(
        float((gather_sequence(out, module.context_mesh) - ref).abs().max()) for out, ref in zip(outputs, expected)
    )
    results["weights"] = _difference(module.parameters(), reference.parameters())
    return results


def _halves_loss(logits, tokens):
    """The mean of the two context ranks' losses, each over the pairs inside its half: what DDP's average optimises."""
    halves = zip(logits.chunk(2, dim=1), tokens.chunk(2, dim=1))
    return sum(_next_token_loss(part, part_tokens) for part, part_tokens in halves) / 2


def _expert_parallel_checks(rank, world_size):
    context = _context(rank, world_size, expert=2)
    generator = torch.Generator().manual_seed(2)
    inputs = [torch.randn(3, 5, 8, generator=generator) for _ in range(3)]  # 15 tokens: shares need padding
    results = {}
    for name, experts, top_k in (("two experts", 2, 1), ("four experts, top 2", 4, 2)):
        torch.manual_seed(0)
        reference = MixtureOfExperts(8, 16, num_experts=experts, top_k=top_k)
        layer = copy.deepcopy(reference)
        layer.parallelize(context)  # the layer's own hook: apply_ep over the expert sub-mesh
        local = layer.w1.to_local()
        results[f"{name} placed"] = (tuple(local.shape), float((local - reference.w1.chunk(2)[rank]).abs().max()))
        x = inputs[0].clone().requires_grad_()
        x_ref = inputs[0].clone().requires_grad_()
        out, expected = layer(x), reference(x_ref)
        (out.pow(2).sum()).backward()
        (expected.pow(2).sum()).backward()
        gradients = [x.grad, layer.router.weight.grad, layer.w1.grad, layer.w2.grad]
        expected_gradients = [x_ref.grad, reference.router.weight.grad, reference.w1.grad, reference.w2.grad]
        results[f"{name} forward"] = float((out - expected).abs().max())
        results[f"{name} gradients"] = _difference(gradients, expected_gradients)
        for module in (layer, reference):
            module.zero_grad()
            _train(module, inputs, lambda out, _: out.pow(2).mean())
        results[f"{name} trained"] = _difference(layer.parameters(), reference.parameters())
    return results


class ContextParallelRunner(TransformerRunner):
    def __init__(self, config):
        super().__init__(config)
        self.model = ContextParallelTransformer(VOCAB, dim=8, num_layers=2, num_heads=2)


class ContextParallelTorchRunner(TransformerTorchRunner):
    def __init__(self, config):
        super().__init__(config)
        self.model = ContextParallelTransformer(VOCAB, dim=8, num_layers=2, num_heads=2)


class MixtureRunner(TransformerRunner):
    def __init__(self, config):
        super().__init__(config)
        self.model = MixtureModel()


class MixtureTorchRunner(TransformerTorchRunner):
    def __init__(self, config):
        super().__init__(config)
        self.model = MixtureModel()


def _runner_checks(root):
    results = {}
    for name, runner_class, axes in (
        ("context runner", ContextParallelRunner, {"context": 2}),
        ("expert runner", MixtureRunner, {"expert": 2}),
    ):
        # allow_degree_change is part of the semantic config: set alike here and on resume
        parallel = {"axes": axes, "allow_degree_change": True}
        runner = runner_class(config(f"{root}/{name}", 4, epochs=1, parallel=parallel))
        runner.train()
        results[name] = {key: value.tolist() for key, value in full_parameters(runner).items()}
        results[f"{name} degrees"] = (runner.context_degree, runner.expert_degree, runner.data_degree)
        results[f"{name} checkpoints"] = runner.checkpoint_manager.directory
        runner.close()
    return results


def _two_process_checks(rank, world_size, root):
    return {
        **_ring_checks(rank, world_size),
        **_context_parallel_checks(rank, world_size),
        **_expert_parallel_checks(rank, world_size),
        **_runner_checks(root),
    }


@pytest.fixture(scope="module")
def two_process(tmp_path_factory):
    root = tmp_path_factory.mktemp("cp-ep")
    expected = {}
    for name, runner_class in (("context runner", ContextParallelTorchRunner), ("expert runner", MixtureTorchRunner)):
        runner = runner_class(config(str(root / f"one process {name}"), 4, epochs=1))
        runner.train()
        expected[name] = full_parameters(runner)
        runner.close()
    return run_workers(_two_process_checks, 2, str(root)), expected


def test_ring_attention_equals_full_attention(two_process):
    results, _ = two_process
    for result in results:
        assert result["causal"] < 1e-5 and result["full"] < 1e-5, result


def test_context_parallel_transformer_equals_whole_sequences(two_process):
    results, _ = two_process
    for result in results:
        assert result["ddp"] == "DistributedDataParallel" and result["recomputed"]
        assert result["outputs"] < 1e-5 and result["weights"] < 1e-5, result


def test_expert_parallel_equals_unsharded_layer(two_process):
    results, _ = two_process
    for rank, result in enumerate(results):
        assert result["two experts placed"] == ((1, 8, 16), 0.0)  # expert i on expert rank i
        assert result["four experts, top 2 placed"] == ((2, 8, 16), 0.0)
        for name in ("two experts", "four experts, top 2"):
            for check in ("forward", "gradients", "trained"):
                assert result[f"{name} {check}"] < 1e-5, (rank, name, check, result)


@pytest.mark.parametrize("name", ["context runner", "expert runner"])
def test_runner_trains_like_one_process(two_process, name):
    results, expected = two_process
    for result in results:
        assert result[f"{name} degrees"] == ((2, 1, 1) if name == "context runner" else (1, 2, 1))
        difference = max(
            float((torch.tensor(result[name][key]) - value).abs().max()) for key, value in expected[name].items()
        )
        assert difference < 1e-5, difference


def _four_process_checks(rank, world_size):
    results = _ring_checks(rank, world_size)  # blocks go three steps around the ring
    context = _context(rank, world_size, shard=2, expert=2)
    generator = torch.Generator().manual_seed(4)
    batches = [torch.randint(0, VOCAB, (4, 6), generator=generator) for _ in range(3)]
    torch.manual_seed(0)
    reference = MixtureModel(experts=4)
    model = copy.deepcopy(reference)
    model.parallelize(context)  # experts over the expert axis,
    apply_fsdp(model, context.submesh("shard"))  # then FSDP over the shard axis
    results["2d"] = [len(p.placements) for p in (model.experts.w1, model.output.weight)]
    local = [tokens.chunk(2)[context.rank("data")] for tokens in batches]
    _train(model, local, _next_token_loss)
    _train(reference, batches, _next_token_loss)
    results["shard x expert"] = _difference(model.parameters(), reference.parameters())
    return results


def test_four_processes_ring_and_shard_by_expert():
    results = run_workers(_four_process_checks, 4)
    for result in results:
        assert result["causal"] < 1e-5 and result["full"] < 1e-5, result
        assert result["2d"] == [2, 1], result  # expert weights: (shard, expert) DTensors; others sharded only
        assert result["shard x expert"] < 1e-5, result


def test_expert_checkpoint_resumes_on_one_process(two_process, tmp_path):
    results, _ = two_process
    directory = results[0]["expert runner checkpoints"]
    checkpoint = next(
        os.path.join(directory, entry) for entry in sorted(os.listdir(directory)) if entry.endswith("e000001")
    )
    # the expert weights are DTensors: DCP gathers each rank's experts into whole tensors
    with pytest.warns(RuntimeWarning, match="resuming with changed parallel degrees expert"):
        runner = MixtureRunner(
            config(str(tmp_path), 4, epochs=1, resume=checkpoint, parallel={"allow_degree_change": True})
        )
    restored = full_parameters(runner)
    runner.close()
    assert runner.world_size == 1 and runner.expert_degree == 1
    difference = max(
        float((torch.tensor(results[0]["expert runner"][key]) - value).abs().max()) for key, value in restored.items()
    )
    assert difference == 0.0
