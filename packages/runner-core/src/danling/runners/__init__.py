"""danling.runners: configuration, state, checkpoints and the runners that train models.

Names are imported lazily: ``from danling.runners import TorchRunner`` imports only what
TorchRunner needs, and backend runners shipped by other distributions
(``DeepSpeedRunner`` in ``danling-runner-deepspeed``, ``ParallelRunner`` in
``danling-runner-parallel``) are found here when those are installed.
"""

from __future__ import annotations

from importlib import import_module
from pkgutil import extend_path
from typing import Any

# Backend distributions add modules (``deepspeed_runner``, ``parallel_runner``) to this
# package from their own source trees or wheels; extend ``__path__`` so they are found.
__path__ = extend_path(__path__, __name__)

# public name -> (module, distribution that ships the module)
_EXPORTS: dict[str, tuple[str, str]] = {
    "RUNNER_REGISTRY": ("danling.runners.registry", "danling-runner-core"),
    "normalize_stack_name": ("danling.runners.registry", "danling-runner-core"),
    "resolve_runner_class": ("danling.runners.registry", "danling-runner-core"),
    "StackNotInstalledError": ("danling.runners.registry", "danling-runner-core"),
    "RunnerConfig": ("danling.runners.config", "danling-runner-core"),
    "RunnerState": ("danling.runners.state", "danling-runner-core"),
    "RunnerTrainState": ("danling.runners.state", "danling-runner-core"),
    "RunnerElasticState": ("danling.runners.state", "danling-runner-core"),
    "RunnerRNGState": ("danling.runners.state", "danling-runner-core"),
    "RunnerWorkspace": ("danling.runners.workspace", "danling-runner-core"),
    "RunnerMode": ("danling.runners.utils", "danling-runner-core"),
    "on_main_process": ("danling.runners.utils", "danling-runner-core"),
    "on_local_main_process": ("danling.runners.utils", "danling-runner-core"),
    "CheckpointManager": ("danling.runners.checkpoints", "danling-runner-core"),
    "FileCheckpointManager": ("danling.runners.checkpoints", "danling-runner-core"),
    "DCPCheckpointManager": ("danling.runners.checkpoints.dcp", "danling-runner-core"),
    "RunnerSupervisor": ("danling.runners.supervisor", "danling-runner-core"),
    "TrainingPreempted": ("danling.runners.services", "danling-runner-core"),
    "EmaConfig": ("danling.runners.ema", "danling-runner-core"),
    "apply_activation_checkpointing": ("danling.runners.parallelize", "danling-runner-core"),
    "apply_compile": ("danling.runners.parallelize", "danling-runner-core"),
    "apply_ddp": ("danling.runners.parallelize", "danling-runner-core"),
    "BaseRunner": ("danling.runners.base_runner", "danling-runner-core"),
    "TorchRunner": ("danling.runners.torch_runner", "danling-runner-core"),
    "Runner": ("danling.runners.runner", "danling-runner-core"),
    "OPTIMIZERS": ("danling.runners.optim", "danling-runner-core"),
    "OptimizerContainer": ("danling.runners.step", "danling-runner-core"),
    "LoopState": ("danling.runners.state", "danling-runner-core"),
    "DeepSpeedRunner": ("danling.runners.deepspeed_runner", "danling-runner-deepspeed"),
    "ParallelRunner": ("danling.runners.parallel_runner", "danling-runner-parallel"),
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'danling.runners' has no attribute {name!r}")
    module_name, distribution = _EXPORTS[name]
    try:
        module = import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name != module_name:
            raise
        raise ImportError(
            f"{name} is provided by the distribution {distribution!r}, which is not installed. "
            f"Install it with: pip install {distribution}",
            name=module_name,
        ) from error
    value = getattr(module, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
