"""A complete toy backend: the five hooks of packages/runner-core/BACKENDS.md and nothing else.

It wraps the model in ``Counted`` (which counts forward calls), steps through a container that
counts updates, and keeps checkpoints in its own format (``{name}.toy`` files in ``toy-store/``).
"""

from __future__ import annotations

import os

import torch
from torch import nn

from danling.runners import RunnerConfig, TorchRunner
from danling.runners.checkpoints import (
    CheckpointManager,
    CheckpointNotFoundError,
    register_checkpoint_manager,
    save_model_state,
)
from danling.runners.step import OptimizerContainer
from danling.utils.atomic import atomic_write


class Counted(nn.Module):
    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module, self.calls = module, 0

    def forward(self, *args, **kwargs):
        self.calls += 1
        return self.module(*args, **kwargs)


class CountingContainer(OptimizerContainer):
    updates = 0

    def step(self) -> bool:
        applied = super().step()
        self.updates += applied
        return applied


class ToyCheckpointManager(CheckpointManager):
    @classmethod
    def recognizes(cls, path: str) -> bool:
        return path.endswith(".toy") or os.path.isfile(os.path.join(path, "latest.toy"))

    @classmethod
    def read_config(cls, path: str) -> RunnerConfig:
        path = os.path.join(path, "latest.toy") if os.path.isdir(path) else path
        return RunnerConfig(torch.load(path, weights_only=True)["runner"])

    def _persist(self, request) -> None:
        os.makedirs(self.directory, exist_ok=True)
        with atomic_write(os.path.join(self.directory, request.name + ".toy"), fsync=False) as file:
            torch.save(request.payload, file)
        if request.export_model:
            save_model_state(request.payload["model"], os.path.join(self.directory, "model.safetensors"))
        self.record_success(request.name, (request.name + ".toy",))

    def resolve(self, source="latest") -> str:
        for path in (os.fspath(source), os.path.join(self.directory, f"{source}.toy")):
            if os.path.isfile(path):
                return path
        raise CheckpointNotFoundError(f"no toy checkpoint {source!r} in {self.directory}")

    def load(self, source="latest", *, template=None, map_location="cpu") -> dict:
        return torch.load(self.resolve(source), map_location=map_location, weights_only=True)


register_checkpoint_manager("toy", ToyCheckpointManager)  # so read_config(path) finds the format


class ToyRunner(TorchRunner):
    default_checkpoint_backend = "toy"
    initialized = False

    def init_distributed(self) -> None:
        super().init_distributed()
        self.initialized = True

    def materialize_model(self) -> None:
        self.model = Counted(self.model.to(self.device))

    def build_optimizer_container(self) -> None:
        self.optimizer_container = CountingContainer(self.optimizer, self.schedule, normalize=False)

    def build_checkpoint_manager(self, backend: str) -> CheckpointManager:
        directory = os.path.join(self.workspace.dir, "toy-store")
        unit = "step" if self.is_step_mode else "epoch"
        return ToyCheckpointManager(directory, self.config.checkpoint, interval=self.checkpoint_interval, unit=unit)

    def unwrap(self, model):
        return model.module if isinstance(model, Counted) else model
