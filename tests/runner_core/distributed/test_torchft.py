"""TorchFT with DDP: a lighthouse on loopback and two replica groups (one process each).

One group is killed with SIGKILL mid-training; the other keeps training alone; the killed group
is started again with the same command, rejoins the quorum, takes the weights, optimizer and
scheduler state from the live group, resumes its own data where its loader checkpoint left it,
and both groups end with equal weights.
"""

from __future__ import annotations

import pytest

from tests.ft_groups import KILL_AT, STEPS, assert_same_weights, kill_and_rejoin, progress

pytest.importorskip("torchft")

pytestmark = [pytest.mark.distributed, pytest.mark.timeout(240)]


def test_a_killed_replica_group_rejoins_and_recovers_from_its_peer(tmp_path):
    report = kill_and_rejoin(tmp_path)
    assert progress(tmp_path, 0) == progress(tmp_path, 1) == STEPS
    # the restarted group's first update came after the steps the survivor made alone: it took the peer's state
    assert report["first_update"]["step"] > report["survivor_alone_from"] + 5 > KILL_AT
    # its own loader checkpoint put it back where its data was (saved every 5 steps before the kill)
    assert report["start_position"]["train"] >= 5
    assert_same_weights(tmp_path)
    print(f"recovery: {report['first_update']}")
