"""Crash safety of ``checkpoint.backend="dcp"`` in a real 2-rank DDP run that saves after every step.

Both ranks are killed with SIGKILL at 20 random moments (mid-step, mid-save, mid-pointer-flip: wherever
the moment falls).  After each kill ``latest`` must load whole, and never go back; the next launch
auto-resumes from it.  A last launch trains to the end, and its weights equal those of a run that was
never interrupted.
"""

from __future__ import annotations

import multiprocessing
import os
import random
import signal
import time

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from danling.runners import TorchRunner
from danling.runners.checkpoints.dcp import load_dcp_checkpoint

pytestmark = pytest.mark.distributed

STEPS, KILLS, WORLD_SIZE = 160, 20, 2


class Killable(TorchRunner):
    """A small regression that reports its step to ``progress`` (and dawdles when told, to be killed mid-run)."""

    def __init__(self, config, pause: float) -> None:
        super().__init__(config)
        generator = torch.Generator().manual_seed(0)
        inputs = torch.randn(64, 4, generator=generator)
        self.datasets.train = TensorDataset(inputs, inputs @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]]))
        torch.manual_seed(3)
        self.model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
        self.criterion = nn.MSELoss()
        self.pause = pause

    def after_optimizer_step(self) -> None:
        super().after_optimizer_step()
        if self.rank == 0:
            progress = os.path.join(self.config.workspace_root, "progress")
            with open(progress + ".tmp", "w") as file:
                file.write(str(self.train_state.global_step))
            os.replace(progress + ".tmp", progress)
        time.sleep(self.pause)


def _launch(rank: int, root: str, store: str, pause: float) -> None:
    # the rendezvous comes from the environment: a config key would change the run's id at every launch
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(WORLD_SIZE),
        LOCAL_WORLD_SIZE="2",
        INIT_METHOD=f"file://{store}",
    )
    torch.set_num_threads(1)
    config = {
        "name": "killed",
        "workspace_root": root,
        "steps": STEPS,
        "seed": 0,
        "log": False,
        "auto_resume": True,
        "backend": "gloo",
        "optim": {"type": "adamw", "lr": 0.01},
        "dataloader": {"batch_size": 4, "shuffle": True},
        "checkpoint": {"backend": "dcp", "interval": 1},  # asynchronous DCP saves, one per step
    }
    runner = Killable(config, pause)
    runner.train()
    if rank == 0:
        weights = runner.unwrap(runner.model).state_dict()
        torch.save(weights, os.path.join(root, "final.pt"))
    runner.close()


@pytest.fixture(scope="module")
def forkserver():
    """Ranks forked from a server that has imported torch and the runner already: each starts in about a second."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["torch", "danling.runners", __name__])
    return context


def _start(context, root: str, launch: int, pause: float) -> list:
    store = os.path.join(root, f"store-{launch}")  # a fresh rendezvous file per launch
    ranks = [context.Process(target=_launch, args=(rank, root, store, pause)) for rank in range(WORLD_SIZE)]
    for process in ranks:
        process.start()
    return ranks


def _finish(ranks: list, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    for process in ranks:
        process.join(max(deadline - time.monotonic(), 0))
    stuck = [process for process in ranks if process.is_alive()]
    for process in stuck:
        process.kill()
    assert not stuck, f"ranks {stuck} did not finish within {timeout} s"
    assert [process.exitcode for process in ranks] == [0] * len(ranks)


def _progress(root: str) -> int:
    try:
        with open(os.path.join(root, "progress")) as file:
            return int(file.read() or 0)
    except (FileNotFoundError, ValueError):
        return 0


def _checkpoint_dir(root: str) -> str | None:
    for current, _, _ in os.walk(root):
        if os.path.basename(current) == "checkpoints":
            return current
    return None


@pytest.mark.timeout(900)
def test_latest_survives_sigkill_at_20_moments_and_the_run_ends_as_if_never_stopped(tmp_path, forkserver, monkeypatch):
    monkeypatch.chdir(tmp_path)  # outside the checkout: edits to it would change the code id between launches
    root = str(tmp_path / "killed")
    os.makedirs(root)
    rng = random.Random(20261207)
    loaded_steps = [0]
    for launch in range(KILLS):
        ranks = _start(forkserver, root, launch, pause=0.02)
        deadline = time.monotonic() + 180
        while _progress(root) <= loaded_steps[-1] and time.monotonic() < deadline:
            assert all(process.exitcode is None for process in ranks), "a rank ended on its own"
            time.sleep(0.01)
        assert _progress(root) > loaded_steps[-1], f"launch {launch} made no progress from step {loaded_steps[-1]}"
        time.sleep(rng.uniform(0.0, 0.25))
        for process in ranks:
            os.kill(process.pid, signal.SIGKILL)
        for process in ranks:
            process.join()
        assert _progress(root) < STEPS, "the run finished before it was killed: raise STEPS or the pause"
        directory = _checkpoint_dir(root)
        assert directory is not None, "no checkpoint directory after the first kill"
        state = load_dcp_checkpoint("latest", directory)  # whole, in this process: no partial checkpoint is named
        step = state["state"]["train"]["global_step"]
        assert step >= loaded_steps[-1], f"latest went back from step {loaded_steps[-1]} to {step}"
        assert set(state["model"]) == {"0.weight", "0.bias", "2.weight", "2.bias"}
        loaded_steps.append(step)
        with open(os.path.join(root, "progress"), "w") as file:  # the next launch must get past the saved step
            file.write(str(step))
    assert loaded_steps[-1] > loaded_steps[1], f"no progress across the kills: {loaded_steps}"

    _finish(_start(forkserver, root, KILLS, pause=0.0), timeout=300)
    reference = str(tmp_path / "reference")
    os.makedirs(reference)
    _finish(_start(forkserver, reference, 0, pause=0.0), timeout=300)
    resumed = torch.load(os.path.join(root, "final.pt"))
    uninterrupted = torch.load(os.path.join(reference, "final.pt"))
    for name, value in uninterrupted.items():
        torch.testing.assert_close(resumed[name], value, rtol=1e-5, atol=1e-6)
