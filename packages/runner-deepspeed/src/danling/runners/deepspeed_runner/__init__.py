"""danling.runners.deepspeed_runner: danling's runner on a DeepSpeed engine.

- ``DeepSpeedRunner`` (``runner``): the ``deepspeed`` stack of ``danling.runners.Runner``.
- ``build_deepspeed_config`` (``config``): the engine's config from the run's settings.
- ``init_deepspeed_distributed``, ``build_engine``, ``gather_model_state``, ``load_model_state``
  (``engine``): engine setup and whole-model state, usable without a runner.
- ``DeepSpeedStepContainer`` (``step``): backward and optimizer step through the engine.
- ``DeepSpeedCheckpointManager`` (``checkpoint``): engine checkpoints with pointer aliases.
"""

from .checkpoint import ENGINE_STATE, DeepSpeedCheckpointManager, resolve_tag_directory
from .config import DeepSpeedConfigError, build_deepspeed_config
from .engine import build_engine, gather_model_state, init_deepspeed_distributed, load_model_state
from .runner import DeepSpeedRunner
from .step import DeepSpeedStepContainer, rescaled_gradients

__all__ = [
    "ENGINE_STATE",
    "DeepSpeedCheckpointManager",
    "DeepSpeedConfigError",
    "DeepSpeedRunner",
    "DeepSpeedStepContainer",
    "build_deepspeed_config",
    "build_engine",
    "gather_model_state",
    "init_deepspeed_distributed",
    "load_model_state",
    "rescaled_gradients",
    "resolve_tag_directory",
]
