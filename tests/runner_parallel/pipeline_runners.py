"""A small regression task for the pipeline tests: a 4-layer MLP (an ``nn.Sequential``) on 32 samples."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import TensorDataset

from danling.runners import TorchRunner
from danling.runners.parallel_runner import ParallelRunner

SAMPLES, FEATURES = 32, 4
#: Interleaved 1F1B, 2 stages per rank on 2 ranks: four stages named by module.
FOUR_STAGES = [["0", "1"], ["2", "3"], ["4", "5"], ["6"]]


def dataset(offset: int = 0) -> TensorDataset:
    generator = torch.Generator().manual_seed(3 + offset)
    inputs = torch.randn(SAMPLES, FEATURES, generator=generator)
    target = inputs.sin().sum(-1, keepdim=True) + 0.1 * torch.randn(SAMPLES, 1, generator=generator)
    return TensorDataset(inputs, target)


def build_model() -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(FEATURES, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 1)
    )


def config(root: str, batch_size: int = 8, pipeline: dict | None = None, **overrides) -> dict:
    settings = {
        "epochs": 2,
        "seed": 0,
        "log": False,
        "workspace_root": root,
        "optim": {"type": "sgd", "lr": 0.1},  # plain SGD: a wrongly scaled gradient shows (Adam would hide it)
        "dataloader": {"batch_size": batch_size, "shuffle": False},
        "checkpoint": {"async_mode": "disabled"},
        "adopt_process_group": True,  # under run_workers the group exists before the runner
    }
    if pipeline is not None:
        settings["parallel"] = pipeline
    settings.update(overrides)
    return settings


class _Task:
    #: Whether the task has an evaluation split (evaluated after every epoch).
    evaluates = True

    def __init__(self, config):
        super().__init__(config)
        self.datasets.train = dataset()
        if self.evaluates:
            self.datasets.val = dataset(offset=1)
        self.model = build_model()
        self.criterion = nn.MSELoss()


class MLPRunner(_Task, ParallelRunner):
    """``ParallelRunner`` on the MLP; with an evaluation split, also the same inputs without targets (``infer``)."""

    def __init__(self, config):
        super().__init__(config)
        if self.evaluates:  # evaluated after each epoch (no loss to report) and predicted on
            self.datasets.infer = TensorDataset(dataset(offset=1).tensors[0])


class MLPTorchRunner(_Task, TorchRunner):
    """The same task on one process: the reference."""


class MLPTrainRunner(MLPRunner):
    """``MLPRunner`` without an evaluation split."""

    evaluates = False


class MLPTorchTrainRunner(MLPTorchRunner):
    """``MLPTorchRunner`` without an evaluation split."""

    evaluates = False


def local_parameters(runner) -> dict[str, list]:
    """This rank's parameters (whole tensors, gathered from FSDP shards), by their names in the whole model."""
    model = runner.unwrap(runner.model)
    return {
        name: (p.full_tensor() if hasattr(p, "full_tensor") else p).detach().tolist()
        for name, p in model.named_parameters()
    }


def difference(parameters: dict[str, list], reference: dict[str, torch.Tensor]) -> float:
    """Largest difference between ``parameters`` (some of the model's) and the reference's same names."""
    assert parameters and set(parameters) <= set(reference), sorted(parameters)
    return max(float((torch.tensor(value) - reference[name]).abs().max()) for name, value in parameters.items())
