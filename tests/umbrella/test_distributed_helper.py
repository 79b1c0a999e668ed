import os
import socket
import sys
import time

import pytest
import torch
import torch.distributed as dist

from tests import distributed
from tests.distributed import run_workers
from tests.umbrella._slow_import_worker import IMPORT_SECONDS, quick_rank


def _sum_of_ranks(rank: int, world_size: int) -> float:
    value = torch.tensor([float(rank)])
    dist.all_reduce(value)
    return value.item()


def _fail_on_rank_one(rank: int, world_size: int) -> None:
    if rank == 1:
        raise RuntimeError("boom on rank one")


@pytest.mark.distributed
def test_run_workers_joins_a_real_gloo_group():
    assert run_workers(_sum_of_ranks, 3) == [3.0, 3.0, 3.0]


@pytest.mark.distributed
def test_run_workers_reports_the_failing_rank():
    with pytest.raises(AssertionError, match=r"(?s)rank 1 failed.*boom on rank one"):
        run_workers(_fail_on_rank_one, 2)


def _exit_without_reporting(rank: int, world_size: int) -> None:
    if rank == 1:
        os._exit(3)  # dies like a crash in C++ would: no exception, no result


@pytest.mark.distributed
def test_run_workers_notices_a_rank_that_died_silently():
    start = time.monotonic()
    with pytest.raises(AssertionError, match="rank 1 exited with code 3"):
        run_workers(_exit_without_reporting, 2, timeout=300)
    assert time.monotonic() - start < 150  # long before the timeout, even on a machine busy with other tests


def _sleeping_rank(rank: int, world_size: int) -> None:
    if rank == 1:
        time.sleep(600)  # a hung rank: idle, like one waiting on a peer that never comes


@pytest.mark.distributed
def test_a_timeout_shows_where_the_hung_rank_waits():
    start = time.monotonic()
    with pytest.raises(AssertionError) as error:
        run_workers(_sleeping_rank, 2, timeout=3)
    message = str(error.value)
    assert "timed out after 3s of work; finished: [0]" in message
    assert "--- rank 1" in message and "_sleeping_rank" in message  # the hung rank's own stack
    assert "--- rank 0" not in message
    assert time.monotonic() - start < 150


class _StoppedFromOutside(BaseException):
    """What pytest-timeout or Ctrl-C raises in the test's process."""


@pytest.mark.distributed
def test_a_run_stopped_from_outside_still_shows_where_the_hung_rank_waits(monkeypatch, capfd):
    poll, first_result = distributed._Run.poll, []

    def poll_then_stop(run):
        poll(run)
        if 0 in run.outcomes:  # rank 1 is past the barrier and into its sleep within moments
            first_result.append(first_result[0] if first_result else time.monotonic())
            if time.monotonic() - first_result[0] > 2:
                raise _StoppedFromOutside

    monkeypatch.setattr(distributed._Run, "poll", poll_then_stop)
    with pytest.raises(_StoppedFromOutside) as error:
        run_workers(_sleeping_rank, 2, timeout=600)
    assert "--- rank 1" in capfd.readouterr().err
    if sys.version_info >= (3, 11):  # exception notes
        assert "_sleeping_rank" in "".join(error.value.__notes__)


@pytest.mark.distributed
def test_a_slow_start_does_not_count_against_the_work_timeout():
    # Each rank spends IMPORT_SECONDS importing the worker's module, longer than the whole work timeout:
    # the work clock starts only once every rank is ready.
    start = time.monotonic()
    assert run_workers(quick_rank, 2, timeout=IMPORT_SECONDS / 2) == [0, 1]
    assert time.monotonic() - start > IMPORT_SECONDS


@pytest.mark.distributed
def test_a_start_that_exceeds_its_own_limit_says_so():
    with pytest.raises(AssertionError, match=r"did not start within 1\.0s \(0 of 2 ranks ready"):
        run_workers(quick_rank, 2, startup_timeout=1.0)


def _rendezvous_port(rank: int, world_size: int) -> int:
    return int(os.environ["MASTER_PORT"])


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@pytest.mark.distributed
def test_the_rendezvous_port_is_released_when_the_run_ends():
    # The parent holds the rendezvous store for the whole run; hundreds of runs in a suite must not leak listeners.
    [port, same] = run_workers(_rendezvous_port, 2)
    assert port == same and _bindable(port)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="world_size must be a positive number of processes, got 0"):
        run_workers(quick_rank, 0)
    with pytest.raises(ValueError, match="timeout=-1"):
        run_workers(quick_rank, 2, timeout=-1)
