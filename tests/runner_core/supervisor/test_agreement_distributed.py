"""Two gloo ranks: only one receives SIGTERM, both stop at the same step."""

from __future__ import annotations

import os
import signal
import time

import pytest
import torch
import torch.distributed as dist

from tests.distributed import run_workers


def _train_until_told(workspace: str, rank: int, signal_step: int, signalled_rank: int, overlap: bool) -> dict:
    from danling.runners.supervisor import RunnerSupervisor

    supervisor = RunnerSupervisor(workspace, rank=rank, world_size=2, overlap_agreement=overlap)
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


def _both_modes(rank: int, world_size: int, workspace: str) -> dict:
    return {
        "waiting": _train_until_told(workspace, rank, 3, 1, overlap=False),
        "overlapped": _train_until_told(workspace, rank, 5, 0, overlap=True),
    }


@pytest.mark.distributed
def test_one_rank_signalled_every_rank_stops_at_the_same_step(tmp_path):
    zero, one = run_workers(_both_modes, 2, str(tmp_path))
    # waiting for the agreement: everyone stops right after the signalled step
    waiting = zero["waiting"], one["waiting"]
    assert [result["step"] for result in waiting] == [3, 3]
    assert [result["received"] for result in waiting] == [None, "SIGTERM"]
    # overlapped agreement: the reduction runs during the next step, everyone stops one step later
    overlapped = zero["overlapped"], one["overlapped"]
    assert [result["step"] for result in overlapped] == [6, 6]
    assert [result["received"] for result in overlapped] == ["SIGTERM", None]
    for results in (waiting, overlapped):
        saved = [result["saved"] for result in results]
        assert saved[0] == saved[1] and len(saved[0]) == 1  # one save, same step, same weights on both ranks
        assert saved[0][0][0] == results[0]["step"]
        assert all(result["restored"] for result in results)
