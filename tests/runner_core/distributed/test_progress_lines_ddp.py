"""Progress lines of a two-process DDP run: the values every rank agrees on, written at the right steps.

On several ranks a progress line's meter sums travel while training goes on (inside DDP's next
gradient all-reduce, or in an all-reduce of their own when the communication hook stands aside),
and the line is reported a batch or an optimizer step later.  These checks read the TensorBoard
scalars back and compare each one with the loss averaged by hand over both ranks' micro-batches of
that step, weighted by their valid labels, so a line reported with later meters, at a later step,
or from one rank alone fails.
"""

from __future__ import annotations

import os

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import distributed as dist
from torch import nn
from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook
from torch.utils.data import TensorDataset

from danling.metrics import meter_sync
from danling.runners import TorchRunner
from tests.distributed import run_workers

pytestmark = pytest.mark.distributed

# uneven valid labels per micro-batch (-100 is ignored), so the ranks' losses weigh differently
LABELS = [0, -100, 1, 2, -100, 2, 0, -100, 1, 0, 2, -100, 0, 1, 2, 2, 1, -100, 0, 2, 1, 1, -100, 0]


class RecordingRunner(TorchRunner):
    """Records each micro-batch's local loss and valid-label count, and the optimizer step it belongs to."""

    def __init__(self, config, dataset):
        super().__init__(config)
        self.datasets.train = dataset
        torch.manual_seed(123)
        self.model = nn.Linear(3, 3)
        self.criterion = nn.CrossEntropyLoss()
        self.records = []

    def train_step(self, data):
        step = self.train_state.global_step
        output, loss = super().train_step(data)
        self.records.append((step, loss.item(), int((data[1] != -100).sum())))
        return output, loss


def _expected_losses(records):
    """Per optimizer step (1-based): the last micro-batch's loss of every rank, weighted by its valid labels."""
    by_step: dict[int, list] = {}
    for rank_records in records:
        last = {}
        for step, loss, count in rank_records:  # the last micro-batch before optimizer step ``step + 1`` stays
            last[step + 1] = (loss, count)
        for step, pair in last.items():
            by_step.setdefault(step, []).append(pair)
    return {step: sum(loss * n for loss, n in pairs) / sum(n for _, n in pairs) for step, pairs in by_step.items()}


def _run(rank, root, name, *, user_hook=False, **overrides):
    torch.manual_seed(0)
    data = TensorDataset(torch.randn(len(LABELS), 3), torch.tensor(LABELS))
    config = {
        "seed": 0,
        "log": False,
        "log_interval": 1,
        "tensorboard": True,
        "workspace_root": os.path.join(root, name),
        "optim": {"type": "sgd", "lr": 0.1},
        "dataloader": {"batch_size": 2, "shuffle": False},
        "checkpoint": {"load_only": True},
        "adopt_process_group": True,  # run_workers starts the group before the runner
        **overrides,
    }
    runner = RecordingRunner(config, data)
    if user_hook:
        runner.model.register_comm_hook(None, allreduce_hook)
    separate = []
    original = meter_sync.start_all_reduce_sum
    meter_sync.start_all_reduce_sum = lambda buffer: separate.append(buffer.numel()) or original(buffer)
    try:
        runner.train()
    finally:
        meter_sync.start_all_reduce_sum = original
    records = [None, None]
    dist.all_gather_object(records, runner.records)
    carried = runner.window_total_hook.registered
    log_dir = os.path.join(runner.workspace.dir, "tensorboard", runner.timestamp)
    runner.close()
    if rank != 0:
        return None
    events = EventAccumulator(log_dir)
    events.Reload()
    written = [(event.step, event.value) for event in events.Scalars("train/loss")]
    return {
        "written": written,
        "expected": _expected_losses(records),
        "separate": len(separate),
        "carried": carried,
    }


def _scenarios(rank, world_size, root):
    return {
        "epochs, hook": _run(rank, root, "epochs", epochs=2),
        "steps, accumulation": _run(rank, root, "accum", steps=3, accum_steps=2),
        "steps, user hook": _run(rank, root, "user", steps=5, user_hook=True),
    }


@pytest.fixture(scope="module")
def scenarios(tmp_path_factory):
    return run_workers(_scenarios, 2, str(tmp_path_factory.mktemp("lines")), timeout=240)[0]


def _assert_lines_match(result, steps):
    written, expected = result["written"], result["expected"]
    assert [step for step, _ in written] == list(range(1, steps + 1)), "one line per optimizer step, at its step"
    for step, value in written:
        assert value == pytest.approx(expected[step], rel=1e-6), f"step {step}"


@pytest.mark.timeout(300)
def test_lines_ride_the_gradient_all_reduce_with_every_ranks_weighted_loss(scenarios):
    result = scenarios["epochs, hook"]
    assert result["carried"] is True
    _assert_lines_match(result, steps=12)  # 24 samples, 2 ranks, 2 per batch: 6 steps per epoch
    # one all-reduce per epoch average; the lines add none (a loop's last line, with no backward
    # left to ride, is summed by the hook's own fallback)
    assert result["separate"] == 2


@pytest.mark.timeout(300)
def test_lines_wait_for_the_next_synchronising_backward_when_accumulating(scenarios):
    result = scenarios["steps, accumulation"]
    assert result["carried"] is True
    _assert_lines_match(result, steps=3)
    assert result["separate"] == 1  # the round's average


@pytest.mark.timeout(300)
def test_lines_reduce_on_their_own_when_the_hook_stands_aside(scenarios):
    result = scenarios["steps, user hook"]
    assert result["carried"] is False
    _assert_lines_match(result, steps=5)
    assert result["separate"] == 5 + 1, "one asynchronous all-reduce per line, and the round's average"
