"""Two gloo ranks: only one receives SIGTERM, both stop at the same step."""

from __future__ import annotations

import os
import signal
import time

import pytest
import torch
import torch.distributed as dist

from tests.distributed import run_workers


def _train_until_told(rank: int, world_size: int, workspace: str, signal_step: int, signalled_rank: int) -> dict:
    from danling.runners.supervisor import RunnerSupervisor

    supervisor = RunnerSupervisor(workspace, rank=rank, world_size=world_size)
    supervisor.init_signal_handlers()
    weight = torch.zeros(4)
    saved, step = [], 0
    for step in range(1, 100):
        gradient = torch.full((4,), float(rank + 1))
        dist.all_reduce(gradient)  # the training step's own collective
        weight -= 0.1 * gradient
        if rank == signalled_rank and step == signal_step:
            os.kill(os.getpid(), signal.SIGTERM)  # a real signal, to this rank only
            time.sleep(0.01)
        snapshot = (step, weight.tolist())
        if supervisor.maybe_handle_termination_signal(lambda snapshot=snapshot: saved.append(snapshot)):
            break
    supervisor.close()
    return {
        "step": step,
        "saved": saved,
        "received": None if supervisor.received_signal is None else supervisor.received_signal.name,
        "restored": signal.getsignal(signal.SIGTERM) is signal.SIG_DFL,
    }


@pytest.mark.distributed
def test_one_rank_signalled_every_rank_stops_at_the_same_step(tmp_path):
    zero, one = run_workers(_train_until_told, 2, str(tmp_path), 3, 1)
    assert zero["step"] == one["step"] == 3
    assert [step for step, _ in zero["saved"]] == [step for step, _ in one["saved"]] == [3]
    assert zero["saved"][0][1] == one["saved"][0][1]  # the same weights: the same step on both ranks
    assert (zero["received"], one["received"]) == (None, "SIGTERM")
    assert zero["restored"] and one["restored"]
