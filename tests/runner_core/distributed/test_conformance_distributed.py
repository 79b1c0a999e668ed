"""The documented process-group behaviour of the runner on two real gloo ranks (issue 16).

One pair of processes runs every scenario (starting them is the slow part):

- ``reduce``, ``reduce_loss_for_logging`` and ``all_reduce`` (17060-17130);
- a default group someone else started: refused unless ``adopt_process_group: true`` (16190-16193),
  used and left alone by ``close()`` when adopted (18529-18541);
- ``comm.train_timeout_seconds``: the group's timeout changes once the first optimizer step is
  done (12483-12485, 16291-16341), in a resumed run too;
- ``compile.optimize_ddp`` (12467-12469): dynamo splits a compiled DDP model by bucket with
  ``ddp_optimizer`` and keeps it whole with ``no_optimization``.
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
from torch.utils.data import TensorDataset

from danling.runners import TorchRunner
from danling.runners.distributed import set_group_timeout
from danling.runners.parallelize import apply_compile, apply_ddp
from tests.distributed import run_workers

pytestmark = pytest.mark.distributed

#: The process group's timeout run_workers starts with (also its clock for the work).
STARTING_TIMEOUT = 240


def _group_timeout() -> float:
    """Seconds of the default group's current timeout, as its gloo backend holds it."""
    return dist.group.WORLD._get_backend(torch.device("cpu")).options._timeout.total_seconds()


class Regression(TorchRunner):
    """``y = 2x`` on 8 samples: 2 batches of 2 per rank."""

    def __init__(self, config):
        super().__init__(config)
        inputs = torch.linspace(-1, 1, 8).unsqueeze(1)
        self.datasets.train = TensorDataset(inputs, 2 * inputs)
        self.model = torch.nn.Linear(1, 1)
        self.criterion = torch.nn.MSELoss()


class TimeoutProbe(Regression):
    """Records the group's timeout around every optimizer step."""

    def __init__(self, config):
        super().__init__(config)
        self.timeouts: list[tuple[float, float]] = []

    def optimizer_step(self):
        before = _group_timeout()
        applied = super().optimizer_step()
        self.timeouts.append((before, _group_timeout()))
        return applied


def _config(root, **overrides):
    config = {
        "epochs": 1,
        "seed": 0,
        "log": False,
        "workspace_root": root,
        "optim": {"type": "sgd", "lr": 0.1},
        "dataloader": {"batch_size": 2, "shuffle": False},
        "checkpoint": {"async_mode": "disabled", "load_only": True},
        "adopt_process_group": True,  # run_workers starts the group before the runner
    }
    config.update(overrides)
    return config


def _reductions(rank, root):
    runner = Regression(_config(root))
    value = torch.tensor([rank + 1.0])
    mean = runner.reduce(value)
    logged = runner.reduce_loss_for_logging(torch.tensor([rank + 1.0, rank + 1.0]), rank + 1)
    summed = torch.tensor([1.0])
    returned = runner.all_reduce(summed)
    maximum = runner.all_reduce(torch.tensor([float(rank)]), op=dist.ReduceOp.MAX)
    runner.close()
    return {
        "mean": mean.item(),
        "input_kept": value.item() == rank + 1.0,
        "logged": (logged.item(), logged.dtype == torch.float64),
        "sum": (summed.item(), returned is summed),
        "max": maximum.item(),
        "device": str(runner.all_reduce_device()),
    }


def _refusal(root):
    """The error of a runner given the group run_workers started: opted out, and with the setting unset."""
    unset = _config(os.path.join(root, "unset"))
    del unset["adopt_process_group"]
    outcomes = []
    for config in (_config(os.path.join(root, "false"), adopt_process_group=False), unset):
        try:
            Regression(config)
        except RuntimeError as error:
            outcomes.append((str(error), dist.is_initialized()))
        else:
            outcomes.append((None, dist.is_initialized()))
    return outcomes


def _adoption(root):
    runner = Regression(_config(root, adopt_process_group=True))
    runner.train()
    closed = runner.close()
    return closed, runner.owns_process_group, dist.is_initialized()  # a group it did not start stays


def _train_timeout(root):
    fresh = TimeoutProbe(_config(os.path.join(root, "fresh"), comm={"train_timeout_seconds": 90}))
    fresh.train()
    fresh.close()
    set_group_timeout(STARTING_TIMEOUT)  # as if the run started anew
    resumed = TimeoutProbe(_config(os.path.join(root, "resumed"), comm={"train_timeout_seconds": 45}))
    resumed.train_state.global_step = 5  # as restored from a checkpoint
    resumed.train()
    resumed.close()
    set_group_timeout(STARTING_TIMEOUT)
    return fresh.timeouts, resumed.timeouts


def _graphs_under_ddp(mode: str) -> list[int]:
    """Node counts of the graphs dynamo hands the backend for one DDP step of a model compiled with ``mode``."""
    torch._dynamo.reset()
    graphs: list[int] = []

    def backend(graph, example_inputs):
        graphs.append(len(graph.graph.nodes))
        return graph.forward

    torch.manual_seed(0)
    layers = [torch.nn.Linear(512, 512), torch.nn.Tanh(), torch.nn.Linear(512, 512), torch.nn.Tanh()]
    model = apply_compile(
        torch.nn.Sequential(*layers, torch.nn.Linear(512, 1)), {"optimize_ddp": mode, "backend": backend}
    )
    # 1 MiB buckets (the smallest DDP allows): each 512 x 512 weight fills one
    apply_ddp(model, "cpu", bucket_cap_mb=1)(torch.ones(2, 512)).sum().backward()
    return graphs


def _scenarios(rank, world_size, root):
    return {
        "optimize_ddp": {mode: _graphs_under_ddp(mode) for mode in ("ddp_optimizer", "no_optimization")},
        "reductions": _reductions(rank, os.path.join(root, "reductions")),
        "refusal": _refusal(os.path.join(root, "refusal")),
        "adoption": _adoption(os.path.join(root, "adoption")),
        "train_timeout": _train_timeout(os.path.join(root, "timeout")),
    }


@pytest.fixture(scope="module")
def scenarios(tmp_path_factory):
    return run_workers(_scenarios, 2, str(tmp_path_factory.mktemp("conformance")), timeout=STARTING_TIMEOUT)


@pytest.mark.timeout(600)
def test_reductions_average_over_ranks_without_changing_their_input(scenarios):
    for rank, result in enumerate(s["reductions"] for s in scenarios):
        assert result["mean"] == pytest.approx(1.5)  # (1 + 2) / 2
        assert result["input_kept"]
        assert result["logged"] == (pytest.approx((1 * 1 + 2 * 2) / 3), True)  # weighted by each rank's loss_n
        assert result["sum"] == (2.0, True)  # in place, the same tensor back
        assert result["max"] == 1.0
        assert result["device"] == "cpu", rank


@pytest.mark.timeout(600)
def test_a_group_started_by_someone_else_is_refused_unless_the_config_adopts_it(scenarios):
    for message, still_initialized in (outcome for s in scenarios for outcome in s["refusal"]):
        assert message is not None  # refused, by default too
        assert message.startswith(
            "default process group is already initialized; Runner requires owning process-group lifecycle"
        )
        assert "adopt_process_group" in message
        assert still_initialized


@pytest.mark.timeout(600)
def test_an_adopted_group_outlives_close(scenarios):
    assert [s["adoption"] for s in scenarios] == [(True, False, True)] * 2


@pytest.mark.timeout(600)
def test_train_timeout_applies_once_after_the_first_optimizer_step(scenarios):
    for fresh, resumed in (s["train_timeout"] for s in scenarios):
        assert fresh[0] == (STARTING_TIMEOUT, 90.0)  # changed right after the first step
        assert all(timeouts == (90.0, 90.0) for timeouts in fresh[1:])
        assert len(fresh) == 2
        assert resumed[0] == (STARTING_TIMEOUT, 45.0)  # a resumed run (global_step 5) too


@pytest.mark.timeout(600)
def test_compile_optimize_ddp_decides_how_dynamo_splits_a_ddp_model(scenarios):
    for graphs in (s["optimize_ddp"] for s in scenarios):
        assert len(graphs["ddp_optimizer"]) > 1  # one graph per DDP bucket
        assert len(graphs["no_optimization"]) == 1  # the whole model in one graph
        assert sum(graphs["ddp_optimizer"]) > graphs["no_optimization"][0]  # the pieces of that graph
