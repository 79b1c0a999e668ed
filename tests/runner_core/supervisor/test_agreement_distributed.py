"""Two gloo ranks: only one receives SIGTERM, both stop at the same step."""

from __future__ import annotations

import os
import signal
import time

import pytest
import torch
import torch.distributed as dist

from tests.distributed import run_workers


def _train_until_told(
    workspace: str, rank: int, signal_step: int, signalled_rank: int, *, step_seconds: float = 0.0, **agreement
) -> dict:
    from danling.runners.supervisor import RunnerSupervisor

    supervisor = RunnerSupervisor(workspace, rank=rank, world_size=2, **agreement)
    supervisor.init_signal_handlers()
    weight = torch.zeros(4)
    saved, step = [], 0
    for step in range(1, 1000):
        gradient = torch.full((4,), float(rank + 1))
        dist.all_reduce(gradient)  # the training step's own collective
        weight -= 0.1 * gradient
        time.sleep(step_seconds)
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
        "agreements": supervisor.agreement.agreements,
    }


def _every_mode(rank: int, world_size: int, workspace: str) -> dict:
    return {
        "waiting": _train_until_told(workspace, rank, 3, 1, overlap_agreement=False, agreement_interval=1),
        "overlapped": _train_until_told(workspace, rank, 5, 0, agreement_interval=1),
        "every 4 steps": _train_until_told(workspace, rank, 6, 1, agreement_interval=4),
        "adaptive": _train_until_told(workspace, rank, 60, 1, step_seconds=0.004),
    }


@pytest.mark.distributed
def test_one_rank_signalled_every_rank_stops_at_the_same_step(tmp_path):
    zero, one = run_workers(_every_mode, 2, str(tmp_path))
    results = {mode: (zero[mode], one[mode]) for mode in zero}
    # waiting for each agreement: everyone stops right after the signalled step
    assert [result["step"] for result in results["waiting"]] == [3, 3]
    assert [result["received"] for result in results["waiting"]] == [None, "SIGTERM"]
    # overlapped: the reduction runs during the next step, everyone stops one step later
    assert [result["step"] for result in results["overlapped"]] == [6, 6]
    assert [result["received"] for result in results["overlapped"]] == ["SIGTERM", None]
    # agreeing at steps 1, 5, 9, ...: the signal of step 6 is agreed at 9 and read at 10
    assert [result["step"] for result in results["every 4 steps"]] == [10, 10]
    assert [result["agreements"] for result in results["every 4 steps"]] == [3, 3]
    # adaptive: ~4 ms steps, agreements ~0.2 s apart, far fewer collectives than steps
    adaptive = results["adaptive"]
    assert adaptive[0]["step"] == adaptive[1]["step"] > 60
    assert adaptive[0]["agreements"] == adaptive[1]["agreements"] < adaptive[0]["step"] / 4
    for pair in results.values():
        saved = [result["saved"] for result in pair]
        assert saved[0] == saved[1] and len(saved[0]) == 1  # one save, same step, same weights on both ranks
        assert saved[0][0][0] == pair[0]["step"]
        assert all(result["restored"] for result in pair)
