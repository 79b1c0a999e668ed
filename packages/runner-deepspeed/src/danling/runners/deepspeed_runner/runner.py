"""``DeepSpeedRunner``: ``TorchRunner`` on a DeepSpeed engine (ZeRO stages 0-3, offload, engine checkpoints).

It overrides the backend hooks of ``danling.runners.TorchRunner`` (see runner-core's
``BACKENDS.md``) and the state accessors an engine-held model needs; the loop, accumulation
bookkeeping, meters, results and restore order are ``TorchRunner``'s:

1. ``init_distributed``: the process group of ``TorchRunner`` (or a one-rank group for a single
   process), and DeepSpeed's communication on top of it;
2. ``materialize_model``: the module on the device, activation checkpointing; no DDP (the
   engine reduces gradients itself);
3. ``build_optimizer_container``: ``build_deepspeed_config`` from the run's settings, the engine
   (``self.model`` becomes it), and a ``DeepSpeedStepContainer``;
4. ``build_checkpoint_manager``: ``DeepSpeedCheckpointManager`` (``checkpoint.backend`` ``"auto"``
   means ``"deepspeed"``);
5. ``unwrap``: the engine's module.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from contextlib import AbstractContextManager, ExitStack
from typing import Any

import torch
from torch import nn

from danling.runners import RunnerConfig, TorchRunner
from danling.runners.checkpointing import RunnerCheckpointing
from danling.runners.checkpoints import CheckpointManager, fresh_entries
from danling.runners.parallelize import apply_activation_checkpointing
from danling.runners.step import NO_CONTEXT

from .checkpoint import ENGINE_STATE, DeepSpeedCheckpointManager
from .config import DeepSpeedConfigError, build_deepspeed_config, precision_section
from .engine import build_engine, init_deepspeed_distributed, is_engine, load_model_state
from .step import DeepSpeedStepContainer

__all__ = ["DeepSpeedRunner"]


class DeepSpeedRunner(TorchRunner):
    r"""
    A ``TorchRunner`` whose model, optimizer step and checkpoints are a DeepSpeed engine's.

    Configure DeepSpeed in ``config.deepspeed`` (any DeepSpeed key: ``zero_optimization``,
    offload ...); batch sizes, accumulation, precision and clipping come from the runner's own
    settings (see ``build_deepspeed_config``).

    Attributes:
        model: The ``DeepSpeedEngine`` once the runner is built (``unwrap(model)`` is your module).
        deepspeed_config: The config the engine was built with.
        optimizer_container: A ``DeepSpeedStepContainer`` (``None`` without an optimizer).

    Examples:
        >>> import tempfile, torch
        >>> class Regression(DeepSpeedRunner):
        ...     def __init__(self, config):
        ...         super().__init__(config)
        ...         inputs = torch.linspace(-1, 1, 32).unsqueeze(1)
        ...         self.datasets.train = torch.utils.data.TensorDataset(inputs, 3 * inputs)
        ...         self.model = torch.nn.Linear(1, 1)
        ...         self.criterion = torch.nn.MSELoss()
        >>> runner = Regression({"epochs": 10, "seed": 0, "log": False, "workspace_root": tempfile.mkdtemp(),
        ...                      "optim": {"type": "adamw", "lr": 0.1}, "dataloader": {"batch_size": 8},
        ...                      "deepspeed": {"zero_optimization": {"stage": 2}}})
        >>> results = runner.train()  # doctest: +ELLIPSIS
        train: ...
        >>> type(runner.model).__name__, runner.train_state.global_step, results[9]["train"]["loss"] < 0.1
        ('DeepSpeedEngine', 40, True)
        >>> runner.close()
        True
    """

    default_checkpoint_backend = "deepspeed"
    deepspeed_config: dict[str, Any] | None = None

    def __init__(self, config: RunnerConfig | Mapping[str, Any]) -> None:
        config = config if isinstance(config, RunnerConfig) else RunnerConfig(config)
        config.stack = "deepspeed"  # saved with checkpoints: Runner.from_checkpoint must come back here
        super().__init__(config)

    # 1. processes

    def init_distributed(self) -> None:
        """``TorchRunner``'s process group (a one-rank group when alone), then DeepSpeed's communication on it."""
        super().init_distributed()
        if init_deepspeed_distributed(self.device, self.config.get("backend")):
            self.owns_process_group = True

    # 2. the model

    def materialize_model(self) -> None:
        """The module on the device, with activation checkpointing; the engine (step 3) wraps it."""
        model = self.model.to(self.device)
        # recompute activations in backward; DeepSpeed compiles the engine itself (``compile.enable``)
        model = apply_activation_checkpointing(model, self.config.get("activation_checkpoint"))
        self.model = model
        if isinstance(self.ema, nn.Module):
            self.ema = self.ema.to(self.device)

    # 3. the engine and its step container

    def get_deepspeed_config(self) -> dict[str, Any]:
        """The DeepSpeed config of this run (``build_deepspeed_config`` of ``config.deepspeed`` and the settings)."""
        if self.max_grad_value is not None:
            raise DeepSpeedConfigError(
                f"max_grad_value={self.max_grad_value!r} is not supported by DeepSpeedRunner: DeepSpeed clips "
                "gradients by norm only; use max_grad_norm"
            )
        if self.skip_nonfinite_grad and precision_section(self.precision) is None:
            raise DeepSpeedConfigError(
                "skip_nonfinite_grad=True is not supported by DeepSpeedRunner in full precision: DeepSpeed checks "
                "gradients for overflow under bf16/fp16 only (bf16.check_grad_overflow, on by default)"
            )
        try:
            micro_batch_size = self.batch_size
        except AttributeError:
            micro_batch_size = None
        user = self.config.get("deepspeed")
        if self.optimizer is None and self.scheduler_config is not None and user and "optimizer" in user:
            raise DeepSpeedConfigError(
                "config.sched needs the runner's optimizer (config.optim); with deepspeed.optimizer, "
                "configure deepspeed.scheduler instead"
            )
        config = build_deepspeed_config(
            user,
            micro_batch_size=micro_batch_size,
            world_size=self.world_size,
            accum_steps=self.accum_steps,
            precision=self.precision,
            max_grad_norm=self.max_grad_norm,
            device_type=self.device.type,
            client_optimizer=self.optimizer is not None,
            client_scheduler=self.scheduler is not None,
        )
        if self.ema is not None and config.get("zero_optimization", {}).get("stage", 0) == 3:
            raise DeepSpeedConfigError(
                "an EMA (config.ema or self.ema) needs whole parameters after each step, and ZeRO stage 3 "
                "partitions them; use ZeRO stage 0-2 with an EMA"
            )
        return config

    def build_optimizer_container(self) -> None:
        """Build the engine around the module and optimizer, and a step container that goes through it."""
        self.scaler = None  # DeepSpeed scales fp16 losses itself
        self.deepspeed_config = self.get_deepspeed_config()
        engine = build_engine(self.model, self.optimizer, self.deepspeed_config)
        self.model = engine
        if self.config.compile.enable:
            options = {key: self.config.compile[key] for key in ("fullgraph", "dynamic", "mode", "options")}
            engine.compile(
                backend=self.config.compile.backend or "inductor",
                compile_kwargs={key: value for key, value in options.items() if value is not None},
            )
        if engine.optimizer is None:
            self.optimizer_container = None
            return
        self.optimizer = engine.optimizer
        if engine.lr_scheduler is not None and self.scheduler is None:  # built from deepspeed.scheduler
            self.scheduler, self.schedule = engine.lr_scheduler, None
        self.optimizer_container = DeepSpeedStepContainer(
            engine,
            self.schedule,
            normalize=self.accum_steps > 1 or self.world_size > 1,
            world_size=engine.dp_world_size,
            meters=self.meters,
        )

    # evaluation and inference under ZeRO-3

    def evaluate_step(self, data: Any) -> tuple[Any, torch.Tensor | None]:
        """``TorchRunner.evaluate_step``; under ZeRO-3 without ``inference_mode`` (see ``_gathering_context``)."""
        with self._gathering_context():
            return super().evaluate_step(data)

    def infer_step(self, data: Any) -> list[Any]:
        """``TorchRunner.infer_step``; under ZeRO-3 without ``inference_mode`` (see ``_gathering_context``)."""
        if not self._partitions_parameters:
            return super().infer_step(data)
        with self._gathering_context():
            return TorchRunner.infer_step.__wrapped__(self, data)  # the undecorated step: no inference_mode

    @property
    def _partitions_parameters(self) -> bool:
        return is_engine(self.model) and self.model.zero_optimization_stage() == 3

    def _gathering_context(self) -> AbstractContextManager:
        """``no_grad`` instead of the loops' ``inference_mode`` under ZeRO-3.

        ZeRO-3 gathers each layer's parameters in its forward; gathered inside ``inference_mode``,
        they are inference tensors, and a layer whose gathered weights outlive the evaluation (an
        all-gather in flight, a prefetch) breaks the next training step ("Inference tensors cannot
        be saved for backward").
        """
        if not self._partitions_parameters:
            return NO_CONTEXT
        stack = ExitStack()
        stack.enter_context(torch.inference_mode(False))
        stack.enter_context(torch.no_grad())
        return stack

    # 4. checkpoints

    def build_checkpoint_manager(self, backend: str) -> CheckpointManager:
        """A ``DeepSpeedCheckpointManager`` over the engine in ``{run dir}/checkpoints``."""
        if backend != "deepspeed":
            raise ValueError(
                f"DeepSpeedRunner saves checkpoints through its engine: checkpoint.backend must be 'deepspeed' "
                f"(or 'auto'), got {backend!r}"
            )
        return DeepSpeedCheckpointManager(
            self.workspace.checkpoint_dir,
            self.config.checkpoint,
            engine=self.model if is_engine(self.model) else None,
            interval=self.checkpoint_interval,
            unit="step" if self.is_step_mode else "epoch",
            tag=self.id,
        )

    # 5. the module under the engine

    def unwrap(self, model: Any) -> Any:
        """The module under the engine (and ``torch.compile``)."""
        if is_engine(model):
            model = model.module
        return super().unwrap(model)

    # state the engine holds

    @fresh_entries("runner", "state", "loop", "results")
    def state_dict(self) -> dict[str, Any]:
        """The runner's state; the module, optimizer and a DeepSpeed-owned scheduler are the engine's to save."""
        state = RunnerCheckpointing.state_dict(self)
        state["ema"] = self.ema.state_dict() if self.ema is not None else None
        if self.scheduler is None:
            state["scheduler"] = None
        elif self.schedule is None:  # built from deepspeed.scheduler: the engine saves it
            state["scheduler"] = ENGINE_STATE
        else:
            state["scheduler"] = self.scheduler.state_dict()
        state["model"] = state["optimizer"] = ENGINE_STATE
        return state

    def load_model(self, state_dict: Any, *args: Any, **kwargs: Any) -> Any:
        """Load whole-module weights into the engine (every rank); nothing for a state the engine restored."""
        if isinstance(state_dict, str) and state_dict == ENGINE_STATE:
            return None
        if not is_engine(self.model):
            return super().load_model(state_dict, *args, **kwargs)
        return load_model_state(self.model, state_dict, *args, **kwargs)

    def load_optimizer(self, state_dict: Any) -> None:
        if not (isinstance(state_dict, str) and state_dict == ENGINE_STATE):
            super().load_optimizer(state_dict)

    def load_scheduler(self, state_dict: Any) -> None:
        if not (isinstance(state_dict, str) and state_dict == ENGINE_STATE):
            super().load_scheduler(state_dict)

    def load_pretrained(self, checkpoint: Any) -> None:
        """Model weights only; from a DeepSpeed checkpoint the engine loads the module alone (no optimizer state)."""
        manager = self.checkpoint_manager
        if (
            isinstance(checkpoint, (str, bytes, os.PathLike))
            and not os.fsdecode(checkpoint).endswith(".safetensors")
            and isinstance(manager, DeepSpeedCheckpointManager)
            and manager.engine is not None
            and manager.exists(checkpoint)
        ):
            manager.load(checkpoint, module_only=True)
            self.config.pretrained = os.fsdecode(checkpoint)
            return
        super().load_pretrained(checkpoint)
