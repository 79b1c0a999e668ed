"""TorchFT across FSDP replica groups: a lighthouse on loopback and two ``ParallelRunner`` groups.

Each group is one process sharding its model with FSDP2 over a one-rank shard axis (2 x 2 = 4
processes are too slow on two cores); the groups average gradient shards through TorchFT's
all-reduce hook.  One group is killed with SIGKILL mid-training, the other keeps training; the
killed group restarts, rejoins, receives the sharded weights and optimizer state from the live
group, and both groups end with equal weights.
"""

from __future__ import annotations

import pytest

from tests.ft_groups import KILL_AT, STEPS, assert_same_weights, kill_and_rejoin, progress

pytest.importorskip("torchft")

pytestmark = [pytest.mark.distributed, pytest.mark.timeout(240)]


def test_a_killed_fsdp_replica_group_rejoins_and_recovers_from_its_peer(tmp_path):
    report = kill_and_rejoin(tmp_path, "--stack", "parallel")
    assert progress(tmp_path, 0) == progress(tmp_path, 1) == STEPS
    assert report["first_update"]["step"] > report["survivor_alone_from"] + 5 > KILL_AT
    assert report["start_position"]["train"] >= 5
    assert_same_weights(tmp_path)
    print(f"recovery: {report['first_update']}")
