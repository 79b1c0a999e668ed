"""TorchFT with DDP inside each replica group: two groups of two processes each, a lighthouse on loopback.

Each group is a gloo group of two ranks (``run_workers``); DDP averages the gradients inside a
group, torchft over the groups.  The ranks count different numbers of valid targets
(``ignore_index``), unevenly between the groups, so a group's own count differs from the count
over every group: the factor each step multiplies the averaged gradients by must come from the
count over every group, the same in both groups, so that the update follows the mean loss over
every valid target of every rank.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from danling.runners import TorchRunner
from tests.distributed import run_workers

pytest.importorskip("torchft")

pytestmark = [pytest.mark.distributed, pytest.mark.timeout(300)]

GROUPS, GROUP_RANKS, BATCH = 2, 2, 2
RANKS = GROUPS * GROUP_RANKS
SAMPLES = 32
STEPS = SAMPLES // (RANKS * BATCH)  # 4 steps of BATCH samples on each of the RANKS ranks


def _data() -> TensorDataset:
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(SAMPLES, 4, generator=generator)
    targets = torch.randint(0, 3, (SAMPLES,), generator=generator)
    # The sharding sampler gives data rank k the samples k, k + RANKS, ...; group 0 holds data ranks 0 and 1.
    # Every second sample of group 0's ranks is ignored: group 0 counts 2 valid targets a step, group 1 counts 4.
    index = torch.arange(SAMPLES)
    targets[(index % RANKS < GROUP_RANKS) & ((index // RANKS) % 2 == 1)] = -100
    return TensorDataset(inputs, targets)


class GroupRunner(TorchRunner):
    def __init__(self, config) -> None:
        super().__init__(config)
        self.datasets.train = _data()
        torch.manual_seed(123)  # the same initial weights on every rank
        self.model = nn.Linear(4, 3)
        self.criterion = nn.CrossEntropyLoss(ignore_index=-100)


def _train_group(rank: int, world_size: int, replica: int, lighthouse: str, root: str) -> list[float | None]:
    config = {
        "epochs": 1,
        "seed": 0,
        "log": False,
        "workspace_root": root,
        "optim": {"type": "sgd", "lr": 0.5},
        "dataloader": {"batch_size": BATCH, "shuffle": False},
        "checkpoint": {"async_mode": "disabled"},
        "adopt_process_group": True,  # run_workers starts the group's process group
        # every quorum holds both groups: neither trains a step alone while the other starts
        "ft": {
            "enabled": True,
            "replica_id": replica,
            "group_size": GROUPS,
            "min_replica_size": GROUPS,
            "lighthouse": lighthouse,
        },
    }
    runner = GroupRunner(config)
    # the factor each step multiplies the averaged gradients by (the collectives stay real)
    window, scales = runner.optimizer_container.window, []
    gradient_scale = window.gradient_scale

    def recorded(world_size: int) -> float | None:
        scales.append(gradient_scale(world_size))
        return scales[-1]

    window.gradient_scale = recorded
    try:
        runner.train()
        assert runner.train_state.global_step == STEPS
        return scales
    finally:
        runner.close()


def test_groups_of_two_ranks_scale_by_the_valid_targets_of_every_group(tmp_path):
    from torchft.coordination import LighthouseServer

    lighthouse = LighthouseServer(bind="[::]:0", min_replicas=GROUPS, join_timeout_ms=200, heartbeat_timeout_ms=1000)
    try:
        with ThreadPoolExecutor(GROUPS) as pool:
            futures = [
                pool.submit(
                    run_workers,
                    _train_group,
                    GROUP_RANKS,
                    replica,
                    lighthouse.address(),
                    str(tmp_path / f"group{replica}"),
                    timeout=180,
                )
                for replica in range(GROUPS)
            ]
            groups = [future.result() for future in futures]
    finally:
        lighthouse.shutdown()
    # Each step, group 0 counts 2 valid targets and group 1 counts 4.  The gradients are averaged over
    # the 2 ranks of a group, then over the 2 groups: the mean loss over all 6 targets needs 2 * 2 / 6.
    # (The group's own count gives 2 / 2 in group 0 and 2 / 4 in group 1.)  The first step is left
    # out: it is torchft's initial sync, in which the two ranks of a group heal from different
    # groups, and each counts only what the group it does not heal contributes.
    expected = GROUP_RANKS * GROUPS / 6
    for replica, ranks in enumerate(groups):
        for rank, scales in enumerate(ranks):
            assert len(scales) == STEPS, (replica, rank, scales)
            assert scales[1:] == pytest.approx([expected] * (STEPS - 1)), (replica, rank, scales)
