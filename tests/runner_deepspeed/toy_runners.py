"""Runners and data shared by the DeepSpeed tests: a small classifier whose batches weigh differently."""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn
from torch.utils.data import TensorDataset

from danling.runners import Runner


def skip_inference_shm_op() -> None:
    """Keep DeepSpeed from compiling its shared-memory all-reduce when its communication starts.

    The op serves CPU *inference* all-reduces only (training uses torch.distributed), yet DeepSpeed
    builds it at first use: a minute on a 2-core machine, again whenever another environment
    rebuilt it in the shared extension cache.  Each test process calls this before DeepSpeed starts.
    """
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


def classification_data(samples: int, *, seed: int = 0, ignored: bool = True) -> TensorDataset:
    """Random 4-feature, 3-class data; with ``ignored``, every fifth label is ``-100``.

    Ignored labels make the loss normalisers (counts of valid labels) of micro-batches differ, so
    accumulation and cross-rank weighting are exercised, not just averaging of equal batches.  No
    micro-batch of these tests is ignored entirely: runner-core counts such a batch as "unknown"
    and weighs its window uniformly, which no single-batch reference reproduces.
    """
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(samples, 4, generator=generator)
    labels = torch.randint(0, 3, (samples,), generator=generator)
    if ignored:
        labels[torch.arange(samples) % 5 == 0] = -100
    return TensorDataset(inputs, labels)


def zero(stage: int) -> dict[str, Any]:
    """``config.deepspeed`` for ZeRO ``stage``; under ZeRO-3 every parameter is partitioned.

    (DeepSpeed keeps parameters below ``stage3_param_persistence_threshold`` elements whole on
    every rank once used, which would make this small model's ZeRO-3 look like ZeRO-2.)
    """
    section: dict[str, Any] = {"stage": stage}
    if stage == 3:
        section["stage3_param_persistence_threshold"] = 0
    return {"zero_optimization": section}


def config(root: Any, **overrides: Any) -> dict[str, Any]:
    """A DeepSpeed run of a few epochs writing under ``root``; ``overrides`` replace top-level keys."""
    values: dict[str, Any] = {
        "stack": "deepspeed",
        "epochs": 3,
        "seed": 0,
        "log": False,
        "workspace_root": os.fspath(root),
        "optim": {"type": "adamw", "lr": 0.05},
        "dataloader": {"batch_size": 4, "shuffle": False},
        "checkpoint": {"last_save_model_only": True},
        "deepspeed": {"zero_optimization": {"stage": 2}},
        "adopt_process_group": True,  # under run_workers the group exists before the runner
    }
    values.update(overrides)
    if values["stack"] == "ddp":  # the plain-torch reference: the ddp stack refuses DeepSpeed's settings
        values.pop("deepspeed")
    return values


class Classify(Runner):
    """A two-layer classifier; the stack (DeepSpeed or plain torch) comes from ``config.stack``."""

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self.datasets.train = classification_data(64)
        self.datasets.val = classification_data(32, seed=1, ignored=False)
        self.model = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 3))
        self.criterion = nn.CrossEntropyLoss()


class StopsInThirdEpoch(Classify):
    """Interrupted after two epochs (and their checkpoints): evaluation in the third raises."""

    def evaluate_epoch(self, split: str = "val"):
        if self.train_state.epoch == 2:
            raise KeyboardInterrupt
        return super().evaluate_epoch(split)


def module_state(runner: Any) -> dict[str, torch.Tensor]:
    """The whole module's weights as fp32 CPU tensors; under ZeRO-3 every rank must call it (it gathers)."""
    from danling.runners.deepspeed_runner.engine import is_engine, zero_stage

    module = runner.unwrap(runner.model)
    if is_engine(runner.model) and zero_stage(runner.model) == 3:
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(module.parameters())):
            return {name: tensor.detach().float().clone() for name, tensor in module.state_dict().items()}
    return {name: tensor.detach().float().clone() for name, tensor in module.state_dict().items()}
