"""FileCheckpointManager on two real gloo ranks sharing one checkpoint directory.

Leftovers of a dead writer (a temporary file, a data file no alias names) are named by its process
id, which means something only on the host that wrote them, so only the main process removes them.
"""

from __future__ import annotations

import os

import pytest
import torch.distributed as dist

from danling.runners.checkpoints import FileCheckpointManager
from tests.distributed import run_workers

pytestmark = pytest.mark.distributed

DEAD = 999_999_999  # above any pid_max: no such process
LEFTOVERS = [f"latest-e000001-{DEAD}-0.pth", f"latest.pth.tmp-{DEAD}-1"]  # an orphaned data file, a temporary


def _open_rank_1_then_rank_0(rank, world_size, directory):
    """Rank 1 opens a manager on the shared directory, then rank 0; every rank lists the directory after each."""
    if rank == 0:
        os.makedirs(directory)
        for name in LEFTOVERS:
            with open(os.path.join(directory, name), "wb") as file:
                file.write(b"partial")
    listings = []
    for opener in (1, 0):
        dist.barrier()
        if rank == opener:
            FileCheckpointManager(directory, {"async_mode": "disabled"})
        dist.barrier()
        listings.append(sorted(os.listdir(directory)))
    return listings


@pytest.mark.timeout(180)
def test_only_rank_0_removes_a_dead_writers_leftovers(tmp_path):
    listings = run_workers(_open_rank_1_then_rank_0, 2, str(tmp_path / "checkpoints"), timeout=150)
    after_rank_1, after_rank_0 = sorted(LEFTOVERS), []
    assert listings == [[after_rank_1, after_rank_0]] * 2
