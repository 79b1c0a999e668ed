"""TorchRunner under DDP: two real processes on a gloo group over loopback.

The checks compare the parameters the runner reaches against the update computed by hand from
every rank's batches, so they cover DDP wrapping, the sharding sampler, loss-normalizer weighting
across ranks, accumulation with ``no_sync`` and the partial-window flush.  They also count the
separate all-reduces of the window total: none while it travels in DDP's gradient all-reduce
(``ddp_comm.WindowTotalHook``), one per backward when the hook stands aside (a user's
communication hook, bf16 parameters).
"""

from __future__ import annotations

import contextlib
import os
import sys

import pytest
import torch
from torch import nn
from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook
from torch.nn import functional as F
from torch.utils.data import TensorDataset

from danling.runners import TorchRunner
from danling.runners import step as step_module
from tests.distributed import free_port, run_workers

pytestmark = pytest.mark.distributed


def _config(root, **overrides):
    config = {
        "epochs": 1,
        "seed": 0,
        "log": False,
        "workspace_root": root,
        "optim": {"type": "sgd", "lr": 0.5},
        "dataloader": {"batch_size": 2, "shuffle": False},
        "checkpoint": {"async_mode": "disabled"},
        "adopt_process_group": True,  # run_workers starts the group before the runner
    }
    config.update(overrides)
    return config


class SeededRunner(TorchRunner):
    def __init__(self, config, dataset, model, criterion):
        super().__init__(config)
        self.datasets.train = dataset
        self.model = model
        self.criterion = criterion


def _linear(features, outputs):
    torch.manual_seed(123)  # the same initial weights on every rank and in the reference
    return nn.Linear(features, outputs)


# Files this process changes, as seen by Python's audit hooks: every write goes through one of these calls.
_WRITE_EVENTS = ("open", "os.rename", "os.symlink", "os.link", "os.remove", "shutil.copyfile")
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
_writes: list[str] | None = None


def _record_writes(event, args):
    if _writes is None or event not in _WRITE_EVENTS:
        return
    if event == "open":
        path, mode, flags = args
        writing = any(c in mode for c in "wax+") if isinstance(mode, str) else bool(flags & _WRITE_FLAGS)
        paths = [path] if writing else []
    elif event == "os.remove":
        paths = [args[0]]
    else:  # (source, destination, ...): a rename changes both names, a link or copy its destination
        paths = [args[0], args[1]] if event == "os.rename" else [args[1]]
    _writes.extend(os.path.abspath(os.fsdecode(path)) for path in paths if isinstance(path, (str, bytes, os.PathLike)))


def _start_recording_writes():
    global _writes
    if _writes is None:
        sys.addaudithook(_record_writes)  # hooks cannot be removed: an empty list stops recording
    _writes = []


def _stop_recording_writes(directory):
    """The files under ``directory`` this process wrote, renamed, linked or removed since recording began."""
    global _writes
    directory = os.path.abspath(directory) + os.sep
    written, _writes = sorted({path for path in _writes if path.startswith(directory)}), None
    return [os.path.relpath(path, directory) for path in written]


@contextlib.contextmanager
def _counting_sums():
    """Count the separate all-reduces of the window total (``step`` still runs the real ones)."""
    counts = {"start_all_reduce_sum": 0, "all_reduce_sum": 0}
    originals = {name: getattr(step_module, name) for name in counts}

    def counted(name):
        def call(value):
            counts[name] += 1
            return originals[name](value)

        return call

    for name in counts:
        setattr(step_module, name, counted(name))
    try:
        yield counts
    finally:
        for name, original in originals.items():
            setattr(step_module, name, original)


def _weighted_step(rank, world_size, root):
    torch.manual_seed(0)
    inputs = torch.randn(4, 3)
    labels = torch.tensor([0, -100, 1, 2])  # rank 0 gets samples 0, 2 (2 valid), rank 1 samples 1, 3 (1 valid)
    runner = SeededRunner(_config(root), TensorDataset(inputs, labels), _linear(3, 3), nn.CrossEntropyLoss())
    assert isinstance(runner.model, nn.parallel.DistributedDataParallel)
    with _counting_sums() as counts:
        runner.train()
    assert runner.window_total_hook.registered, "the total should travel with the gradients"
    assert counts == {"start_all_reduce_sum": 0, "all_reduce_sum": 0}, counts
    reference = _linear(3, 3)
    F.cross_entropy(reference(inputs), labels).backward()  # the mean over all three valid labels
    expected = reference.weight.detach() - 0.5 * reference.weight.grad
    weight = runner.unwrap(runner.model).weight.detach().clone()
    loss = runner.results[0]["train"]["loss"]
    runner.close()
    return (
        torch.allclose(weight, expected, atol=1e-6),
        weight.tolist(),
        loss,
    )  # plain data: tensors cannot outlive the worker


def _accumulated_steps(rank, world_size, root):
    torch.manual_seed(0)
    inputs, targets = torch.randn(12, 2), torch.randn(12, 1)
    criterion = lambda pred, target: F.mse_loss(pred, target)  # noqa: E731 - no normalizer: uniform weights
    _start_recording_writes()
    runner = SeededRunner(_config(root, accum_steps=2), TensorDataset(inputs, targets), _linear(2, 1), criterion)
    with _counting_sums() as counts:
        runner.train()
    # the full window's total travels with the gradients; the flushed partial one is summed apart
    assert counts == {"start_all_reduce_sum": 0, "all_reduce_sum": 1}, counts
    state = (runner.train_state.global_step, runner.train_state.micro_step)
    weight = runner.unwrap(runner.model).weight.detach().clone()
    checkpoint_dir = runner.workspace.checkpoint_dir
    runner.close()
    checkpoint_writes = _stop_recording_writes(checkpoint_dir)

    reference = _linear(2, 1)
    optimizer = torch.optim.SGD(reference.parameters(), lr=0.5)
    shards = [list(range(r, 12, 2)) for r in range(2)]  # DistributedSampler without shuffling
    batches = [[shard[i : i + 2] for i in range(0, 6, 2)] for shard in shards]
    for window in ([0, 1], [2]):  # two micro-batches, then the partial window of one
        members = [batches[r][b] for r in range(2) for b in window]
        loss = sum(F.mse_loss(reference(inputs[m]), targets[m]) for m in members) / len(members)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return state, torch.allclose(weight, reference.weight.detach(), atol=1e-6), (checkpoint_dir, checkpoint_writes)


#: 16 samples, batch 2, accumulation 2: each rank runs two windows of two micro-batches.  The
#: ignored labels give the ranks different counts per micro-batch (rank 0: 2, 1, 2, 2; rank 1: 1, 2, 1, 2).
_UNEVEN_LABELS = [0, -100, 1, 2, -100, 2, 0, -100, 1, 0, 2, -100, 0, 1, 2, 2]


def _uneven_accumulation(rank, world_size, root, model_dtype=None, user_hook=False):
    """Weights after accumulating micro-batches of uneven valid counts, and the window-total all-reduces."""
    torch.manual_seed(0)
    inputs, labels = torch.randn(16, 3), torch.tensor(_UNEVEN_LABELS)
    model = _linear(3, 3) if model_dtype is None else _linear(3, 3).to(model_dtype)
    data = TensorDataset(inputs if model_dtype is None else inputs.to(model_dtype), labels)
    runner = SeededRunner(_config(root, accum_steps=2), data, model, nn.CrossEntropyLoss())
    if user_hook:
        runner.model.register_comm_hook(None, allreduce_hook)
    with _counting_sums() as counts:
        runner.train()
    weight = runner.unwrap(runner.model).weight.detach().float().clone()
    registered = runner.window_total_hook.registered
    runner.close()

    reference = _linear(3, 3)  # one process on every rank's micro-batches of each window
    optimizer = torch.optim.SGD(reference.parameters(), lr=0.5)
    shards = [list(range(r, 16, 2)) for r in range(2)]
    for window in range(2):
        members = [i for shard in shards for i in shard[4 * window : 4 * window + 4]]
        F.cross_entropy(reference(inputs[members]), labels[members]).backward()
        optimizer.step()
        optimizer.zero_grad()
    return registered, counts, weight.tolist(), torch.allclose(weight, reference.weight.detach(), atol=1e-6)


def _owned_group(rank, world_size, root):
    """A runner launched like ``torchrun`` (environment only) starts the process group and tears it down."""
    # A fresh rendezvous port, agreed on the old group: reusing the old one lets a fast rank reach the
    # old store before a slow rank has torn it down, and then wait forever on the new one.
    port = [free_port() if rank == 0 else None]
    torch.distributed.broadcast_object_list(port, src=0)
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()
    os.environ["MASTER_PORT"] = str(port[0])
    inputs, targets = torch.randn(8, 2), torch.randn(8, 1)
    config = _config(root, backend="gloo")
    runner = SeededRunner(config, TensorDataset(inputs, targets), _linear(2, 1), nn.MSELoss())
    started = runner.owns_process_group and torch.distributed.is_initialized()
    runner.train()
    timestamps = [None] * world_size
    torch.distributed.all_gather_object(timestamps, runner.timestamp)
    runner.close()
    return started, not torch.distributed.is_initialized(), len(set(timestamps)) == 1


def _both(rank, world_size, root):
    weighted = _weighted_step(rank, world_size, os.path.join(root, "weighted"))
    accumulated = _accumulated_steps(rank, world_size, os.path.join(root, "accumulated"))
    uneven = {
        "hook": _uneven_accumulation(rank, world_size, os.path.join(root, "uneven")),
        "user hook": _uneven_accumulation(rank, world_size, os.path.join(root, "user"), user_hook=True),
        "bf16": _uneven_accumulation(rank, world_size, os.path.join(root, "bf16"), model_dtype=torch.bfloat16),
    }
    return weighted, accumulated, _owned_group(rank, world_size, os.path.join(root, "owned")), uneven


@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory):
    """One pair of processes runs both scenarios (starting processes is the slow part)."""
    return run_workers(_both, 2, str(tmp_path_factory.mktemp("ddp")), timeout=240)


@pytest.mark.timeout(300)
def test_loss_normalizers_weigh_ranks_by_their_valid_items(ddp_results):
    results = [weighted for weighted, _, _, _ in ddp_results]
    assert [matches for matches, _, _ in results] == [True, True]
    assert results[0][1] == results[1][1]
    assert results[0][2] == pytest.approx(results[1][2])  # the loss meter is averaged over ranks


@pytest.mark.timeout(300)
def test_accumulation_with_no_sync_and_a_partial_window_matches_the_global_mean(ddp_results):
    results = [accumulated for _, accumulated, _, _ in ddp_results]
    assert [state for state, _, _ in results] == [(2, 4), (2, 4)]
    assert [matches for _, matches, _ in results] == [True, True]
    (checkpoint_dir, writes), (other_dir, other_writes) = (checkpoint for _, _, checkpoint in results)
    assert other_dir == checkpoint_dir  # both ranks agree on the run directory
    assert "latest.pth" in os.listdir(checkpoint_dir)
    assert "latest.pth" in writes  # written by rank 0 (the recording sees it) ...
    assert other_writes == []  # ... and only by rank 0: rank 1 wrote, renamed and removed nothing there


@pytest.mark.timeout(300)
def test_runner_owns_a_process_group_it_started(ddp_results):
    assert [owned for _, _, owned, _ in ddp_results] == [(True, True, True)] * 2


@pytest.mark.timeout(300)
def test_uneven_counts_with_accumulation_match_one_process_through_the_hook(ddp_results):
    for *_, uneven in ddp_results:
        registered, counts, _, matches = uneven["hook"]
        assert registered is True
        assert counts == {"start_all_reduce_sum": 0, "all_reduce_sum": 0}  # no collective of its own
        assert matches


@pytest.mark.timeout(300)
def test_a_users_comm_hook_or_bf16_parameters_fall_back_to_the_separate_sum(ddp_results):
    for *_, uneven in ddp_results:
        registered, counts, _, matches = uneven["user hook"]
        assert registered is False
        assert counts == {"start_all_reduce_sum": 4, "all_reduce_sum": 0}  # one per backward, as before
        assert matches
        registered, counts, _, _ = uneven["bf16"]
        assert registered is False
        assert counts == {"start_all_reduce_sum": 4, "all_reduce_sum": 0}
    assert ddp_results[0][3]["bf16"][2] == ddp_results[1][3]["bf16"][2]  # the ranks agree
