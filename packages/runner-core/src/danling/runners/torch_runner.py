"""``TorchRunner``: train, evaluate and run inference with a PyTorch model, alone or under DDP.

Subclass it, call ``super().__init__(config)`` first, then bind ``self.model`` (required),
``self.criterion``, ``self.datasets[split]`` and optionally ``self.optimizer``,
``self.scheduler``, ``self.ema``, ``self.train_metrics`` and ``self.evaluate_metrics``.  Once
your ``__init__`` returns, ``__post_init__`` builds the rest in this order:

1. dataloaders from ``self.datasets`` (``StatefulDataLoader``, resumable mid-epoch);
2. the model on the device (compiled when ``compile.enable``, wrapped in DDP when distributed);
3. the optimizer from ``config.optim`` and the scheduler from ``config.sched``, unless set;
4. the optimizer container (accumulation, AMP loss scaling, clipping, non-finite skipping);
5. the checkpoint manager, then a restore (``resume`` > ``auto_resume`` > ``pretrained``);
6. the run's metadata files.

Batches are ``{"input": x, "target": y}`` mappings, ``(x, y)`` sequences or bare inputs; a
mapping input is passed as keyword arguments (``model(**x)``).  Override ``train_step``,
``evaluate_step`` or ``infer_step`` for anything else.  The loops live in
``danling.runners.loops``; the optimizer step in ``danling.runners.step``.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from functools import cached_property
from typing import Any

import torch
from torch import nn
from torch.utils.data.dataloader import default_collate

from danling.data import to_device
from danling.metrics import RoundDict
from danling.optim import BuiltScheduler, normalize_scheduler_interval

from . import loops
from .base_runner import BaseRunner
from .checkpoints import fresh_entries
from .config import RunnerConfig
from .dataloaders import build_dataloader, build_sampler, loader_kwargs
from .ddp_comm import WindowTotalHook
from .distributed import (
    PROCESS_GROUP_OWNED,
    average_gradients,
    broadcast_object,
    init_process_group_from_env,
    is_initialized,
)
from .distributed import destroy_process_group as destroy_default_group
from .fault_tolerance import FT_SETTINGS, FaultTolerance, check_ft_support
from .optim import build_optimizer, build_scheduler, monitored_metric, wrap_scheduler
from .parallelize import apply_activation_checkpointing, apply_compile, apply_ddp
from .registry import check_stack_sections, normalize_stack_name
from .services import RunnerServices
from .step import (
    NO_CONTEXT,
    OptimizerContainer,
    autocast_dtype,
    build_grad_scaler,
    forward_context,
    no_sync,
    split_batch,
)
from .utils import RunnerMode

__all__ = ["TorchRunner"]


class TorchRunner(RunnerServices, BaseRunner):
    r"""
    PyTorch runner: epoch- or step-mode training, evaluation, inference, checkpoints and exact resume.

    Attributes:
        model: The model (after ``__post_init__``: on the device, maybe compiled and DDP-wrapped).
        ema: Optional averaged model, used instead of ``model`` for evaluation and inference
            (the runner does not update it: do that in ``optimizer_step``).
        criterion: ``loss = criterion(pred, target)``.
        optimizer / scheduler: Built from ``config.optim`` / ``config.sched`` unless set.
        optimizer_container: Runs the optimizer step (see ``danling.runners.step``).
        scaler: The ``GradScaler`` of fp16 training, else ``None``.

    Examples:
        >>> import tempfile
        >>> class Regression(TorchRunner):
        ...     def __init__(self, config):
        ...         super().__init__(config)
        ...         inputs = torch.linspace(-1, 1, 32).unsqueeze(1)
        ...         self.datasets.train = torch.utils.data.TensorDataset(inputs, 3 * inputs)
        ...         self.model = nn.Linear(1, 1)
        ...         self.criterion = nn.MSELoss()
        >>> runner = Regression({"epochs": 20, "seed": 0, "log": False, "workspace_root": tempfile.mkdtemp(),
        ...                      "optim": {"type": "sgd", "lr": 0.5}, "dataloader": {"batch_size": 8}})
        >>> results = runner.train()  # doctest: +ELLIPSIS
        train: ...
        >>> round(runner.model.weight.item(), 2), runner.train_state.global_step
        (3.0, 80)
        >>> runner.close()
        True
    """

    optimizer_container: OptimizerContainer | None = None
    schedule: BuiltScheduler | None = None
    scaler: torch.amp.GradScaler | None = None
    owns_process_group: bool = False
    #: TorchFT replica groups (``config.ft``); always set by ``init_distributed``, disabled unless enabled.
    ft: FaultTolerance | None = None
    #: Sums the loss-normalizer total inside DDP's gradient all-reduce (set with DDP, never under TorchFT).
    window_total_hook: WindowTotalHook | None = None
    unsupported_settings = tuple(key for key in BaseRunner.unsupported_settings if key not in FT_SETTINGS)

    def __init__(self, config: RunnerConfig | Mapping[str, Any]) -> None:
        config = config if isinstance(config, RunnerConfig) else RunnerConfig(config)
        config.stack = normalize_stack_name(config.get("stack"))
        super().__init__(config)

    def __post_init__(self) -> None:
        self.require_model()
        self.init_services()
        self.build_dataloaders()
        self.materialize_model()
        self.init_ema()
        self.build_optimizer()
        self.build_scheduler()
        self.build_optimizer_container()
        self.set_module_modes()  # the model and EMA start in the runner's mode, whatever mode they were built in
        self.init_checkpoint_manager()
        self.auto_restore()
        self.ft.init_dataloader_checkpoints()  # this replica's own loader positions win over a shared checkpoint's
        self.init_profiler()
        super().__post_init__()

    # processes and device

    def init_distributed(self) -> None:
        """Start the process group when launched with ``WORLD_SIZE > 1`` (``torchrun``); share rank 0's run identity."""
        if int(os.getenv("WORLD_SIZE", "1")) > 1 and is_initialized() and not self.adopts_process_group:
            raise RuntimeError(f"{PROCESS_GROUP_OWNED}; set `adopt_process_group: true` to use the existing group")
        self.owns_process_group = init_process_group_from_env(
            backend=self.config.get("backend") or os.getenv("BACKEND"),
            init_method=self.config.get("init_method") or os.getenv("INIT_METHOD"),
            timeout_seconds=self.config.comm.init_timeout_seconds,
        )
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        if self.distributed and is_initialized():  # every rank must agree on the run's id and directory
            self.workspace.timestamp = broadcast_object(self.workspace.timestamp)
            self.workspace.code_id = broadcast_object(self.workspace.code_id if self.is_main_process else None)
        self.elastic_state.restart_count = int(os.getenv("TORCHELASTIC_RESTART_COUNT", "0"))
        self.ft = FaultTolerance(self)

    def check_settings(self) -> None:
        super().check_settings()
        check_ft_support(self.config)
        check_stack_sections(self.config)  # fsdp / parallel / deepspeed settings on the ddp stack

    @cached_property
    def device(self) -> torch.device:
        """``cuda:{local_rank}`` when CUDA is available, else the CPU (read once: it is on every step's path)."""
        if torch.cuda.is_available():
            return torch.device("cuda", self.local_rank)
        return torch.device("cpu")

    @property
    def mode(self) -> RunnerMode:
        return self._mode

    @mode.setter
    def mode(self, mode: RunnerMode | str) -> None:
        # The current mode changes nothing (``__post_init__`` put the modules in it): a module a user
        # switched by hand stays as it is until the mode really changes.
        mode = RunnerMode(mode)
        if mode == self._mode:
            return
        self._mode = mode
        self.set_module_modes()

    def set_module_modes(self) -> None:
        """Put the model and the EMA in training mode in ``train`` mode, in evaluation mode otherwise."""
        for module in (self.model, self.ema):
            if isinstance(module, nn.Module):
                module.train(self._mode == RunnerMode.train)

    @property
    def adopts_process_group(self) -> bool:
        """Whether a default process group someone else started is used (``config.adopt_process_group``; unset: no)."""
        return self.config.get("adopt_process_group") is True

    def set_seed(self, seed: int | None = None, bias: int | bool | None = None) -> int:
        """Like ``BaseRunner.set_seed``; without a seed, draw one on rank 0 and share it."""
        if seed is None and self.config.seed is None:
            seed = broadcast_object(int(torch.randint(0, 2**31 - 1, ()).item()))
        return super().set_seed(seed, bias)

    def set_deterministic(self) -> None:
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
        torch.use_deterministic_algorithms(True)

    # setup, in __post_init__ order

    def require_model(self) -> None:
        if self.model is None:
            raise ValueError(
                "cannot initialize TorchRunner: model is not initialized; set `self.model` in your "
                "runner's __init__ after `super().__init__(config)`"
            )

    def build_dataloaders(self) -> None:
        """A ``StatefulDataLoader`` for each dataset without a loader (see ``danling.runners.dataloaders``)."""
        config = self.config.get("dataloader") if "dataloader" in self.config else None
        train_splits, splits = set(self.train_splits), set(self.datasets)
        custom_sampler = type(self).build_datasampler is not TorchRunner.build_datasampler
        for split, dataset in self.datasets.items():
            if split in self.dataloaders:
                continue
            kwargs = loader_kwargs(config, split, is_train=split in train_splits, splits=splits)
            # an overridden build_datasampler decides; otherwise the loader picks (a faster batch sampler when it can)
            sampler = None
            if custom_sampler:
                sampler = self.build_datasampler(dataset, split=split, shuffle=kwargs["shuffle"])
            self.dataloaders[split] = build_dataloader(
                dataset, kwargs, collate_fn=self.collate_fn, sampler=sampler, **self.data_shard
            )

    def build_datasampler(self, dataset: Any, *, split: str, shuffle: bool) -> Any:
        """The sampler of ``split``'s loader: this rank's shard when distributed, else shuffled or in order."""
        return build_sampler(dataset, shuffle=shuffle, **self.data_shard)

    @property
    def data_shard(self) -> dict[str, int]:
        """``world_size`` and ``rank`` of this rank's data shard (over every TorchFT replica group when enabled)."""
        world_size, rank = self.ft.data_parallel_info(self.world_size, self.rank)
        return {"world_size": world_size, "rank": rank}

    #: How samples become a batch (``default_collate``); override with a static method for custom batching.
    collate_fn = staticmethod(default_collate)

    def materialize_model(self) -> None:
        """Place the model on the device and wrap it, in this order (backends add their own steps)."""
        model = self.model.to(self.device)
        # recompute activations in backward: before compiling, so the graph holds the recomputation
        model = apply_activation_checkpointing(model, self.config.get("activation_checkpoint"))
        if self.config.compile.enable:
            model = apply_compile(model, self.config.compile)
        # DDP outermost: its gradient hooks stay outside the compiled graph.  Under TorchFT it averages
        # inside the replica group; the optimizer container averages over the groups at the step.
        if self.distributed and is_initialized():
            model = apply_ddp(model, self.device)
            # TorchFT averages the window total over the groups at the step: it keeps the separate sum
            self.window_total_hook = None if self.ft.enabled else WindowTotalHook(model)
        self.model = model
        if isinstance(self.ema, nn.Module):
            self.ema = self.ema.to(self.device)

    def _progress_line_carrier(self) -> Any:
        # in training, a progress line's meter sums ride the next gradient all-reduce (no collective of their own)
        hook = self.window_total_hook
        if hook is None or not hook.registered or self.mode != RunnerMode.train or hook.world_size != self.world_size:
            return None
        return hook.carry_values

    def unwrap(self, model: Any) -> Any:
        """The module under DDP and ``torch.compile`` wrappers (its ``state_dict`` has plain names)."""
        while True:
            if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
                model = model.module
            elif hasattr(model, "_orig_mod"):
                model = model._orig_mod
            else:
                return model

    def build_optimizer(self) -> None:
        """``self.optimizer`` from ``config.optim`` (or ``config.optimizer``) unless already set."""
        optim_config = self.config.get("optim") or self.config.get("optimizer")
        if self.optimizer is None and isinstance(optim_config, Mapping) and optim_config:
            self.optimizer = build_optimizer(self.iter_optimizer_named_parameters(), optim_config)

    def iter_optimizer_named_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        """``(name, parameter)`` of the unwrapped model, each parameter once (frozen ones too): what the optimizer gets."""
        if self.model is not None:
            yield from self.unwrap(self.model).named_parameters()  # shared parameters appear once

    def iter_optimizer_parameters(self) -> Iterator[nn.Parameter]:
        """The parameters of ``iter_optimizer_named_parameters()``."""
        for _, parameter in self.iter_optimizer_named_parameters():
            yield parameter

    @property
    def scheduler_config(self) -> Mapping[str, Any] | None:
        sched = self.config.get("sched") or self.config.get("scheduler")
        return sched if isinstance(sched, Mapping) and sched else None

    def build_scheduler(self) -> None:
        """``self.scheduler`` from ``config.sched``; its total length defaults to the run's optimizer steps."""
        if self.scheduler is None and self.optimizer is not None and self.scheduler_config is not None:
            self.schedule = build_scheduler(self.optimizer, self.scheduler_config, total_steps=self.steps)
            self.scheduler = self.schedule.scheduler
        elif self.scheduler is not None:
            self.schedule = wrap_scheduler(self.scheduler, self.scheduler_config)
        else:
            self.schedule = None

    def build_optimizer_container(self) -> None:
        """Bind the optimizer, scheduler, fp16 ``GradScaler`` and gradient settings into one container."""
        self.scaler = build_grad_scaler(self.device, self.autocast_dtype) if self.optimizer is not None else None
        if self.optimizer is None:
            self.optimizer_container = None
            return
        container = self.ft.optimizer_container if self.ft.enabled else OptimizerContainer
        self.optimizer_container = container(
            self.optimizer,
            self.schedule,
            scaler=self.scaler,
            max_grad_value=self.max_grad_value,
            max_grad_norm=self.max_grad_norm,
            skip_nonfinite_grad=self.skip_nonfinite_grad,
            normalize=self.accum_steps > 1 or self.world_size > 1,
            world_size=self.world_size,
            window_total_hook=self.window_total_hook,
        )

    # one training step

    @cached_property
    def autocast_dtype(self) -> torch.dtype | None:
        """The autocast dtype of ``config.precision`` (``None``: full precision)."""
        return autocast_dtype(self.precision)

    def forward_context(self) -> AbstractContextManager:
        """Autocast for the forward pass and the loss, per ``config.precision``."""
        return forward_context(self.device, self.autocast_dtype)

    def train_context(self) -> AbstractContextManager:
        """``no_sync()`` of a DDP model while a micro-batch does not end an accumulation window."""
        if self.accum_steps == 1 or not isinstance(self.model, nn.parallel.DistributedDataParallel):
            return NO_CONTEXT
        return no_sync([self.model], enabled=(self.train_state.micro_step + 1) % self.accum_steps != 0)

    def to_device(self, data: Any) -> Any:
        """``data`` on the runner's device (``danling.data.to_device``); mappings become ``FlatDict``."""
        if self.device.type == "cpu" and not isinstance(data, Mapping):
            return data  # loaders produce CPU tensors: skip a no-op ``.to`` per tensor on every step
        return to_device(data, self.device)

    @property
    def weighs_micro_batches(self) -> bool:
        """Whether micro-batches are weighed by their loss normalizer (accumulation or several ranks)."""
        return self.optimizer_container is not None and self.optimizer_container.normalize

    def _forward(self, model: Any, data: Any) -> tuple[Any, Any, Any]:
        inputs, target = split_batch(data)
        if model is None:
            raise ValueError("cannot run a step: model is not initialized")
        with self.forward_context():
            pred = model(**inputs) if isinstance(inputs, Mapping) else model(inputs)
            loss = self.criterion(pred, target) if self.criterion is not None else None
        return pred, target, loss

    def train_step(self, data: Any) -> tuple[Any, torch.Tensor]:
        """Forward, loss, metrics, backward, and (at the end of an accumulation window) the optimizer step."""
        data = self.to_device(data)
        with self.train_context():
            pred, target, loss = self._forward(self.model, data)
            if loss is None:
                raise ValueError("cannot run train_step: criterion did not produce a loss")
            if self.metrics is not None and target is not None:
                self.metrics.update(pred.detach(), target)
            self.backward(loss)
        self.step()
        return pred, loss

    def set_loss_normalizer(self, normalizer: int | None) -> None:
        """Weight of the next micro-batch in its accumulation window (see ``step.loss_normalizer``)."""
        if self.optimizer_container is not None:
            self.optimizer_container.window.pending = normalizer

    def backward(self, loss: torch.Tensor) -> None:
        if self.optimizer_container is not None:
            self.optimizer_container.backward(loss)
        else:
            loss.backward()

    def step(self) -> None:
        """Count a micro-batch; step the optimizer when it completes an accumulation window."""
        self.train_state.micro_step += 1
        if self.train_state.micro_step % self.accum_steps == 0:
            self.optimizer_step()

    def optimizer_step(self) -> bool:
        """Apply the accumulated gradients; ``global_step`` counts applied (not skipped) updates."""
        if self.optimizer_container is None:
            raise ValueError(
                "cannot perform optimizer step: no optimizer is configured; set `self.optimizer`, implement "
                "`build_optimizer()`, or override `optimizer_step()`"
            )
        if self.checkpoint_manager is not None:
            self.checkpoint_manager.maybe_wait_for_staging()
        applied = self.optimizer_container.step()
        if applied:
            self.train_state.global_step += 1
            if not self._train_timeout_applied:
                self.apply_train_timeout()  # once, after the first applied step of this process
            self.after_optimizer_step()
        return applied

    def flush_gradients(self) -> bool:
        """Step on a partial accumulation window (a loader ran out mid-window); ``False`` if none was pending."""
        remainder = self.train_state.micro_step % self.accum_steps
        if self.accum_steps <= 1 or remainder == 0:
            return False
        if isinstance(self.model, nn.parallel.DistributedDataParallel):
            average_gradients(self.model.parameters())  # accumulated under no_sync()
        self.train_state.micro_step += self.accum_steps - remainder  # the next window starts aligned
        return self.optimizer_step()

    def prepare_for_shutdown_checkpoint(self) -> None:
        self.flush_gradients()

    @property
    def lr(self) -> float:
        """Learning rate of the optimizer's first parameter group."""
        if self.optimizer_container is not None:
            return self.optimizer_container.lr
        return float(self.optimizer.param_groups[0]["lr"])

    def step_epoch_scheduler(self, result: Mapping[str, Any]) -> bool:
        """Step a per-epoch scheduler after a round; metric schedulers get ``scheduler.monitor`` from ``result``."""
        if self.optimizer_container is None:
            return False
        monitor = self.scheduler_monitor
        return self.optimizer_container.step_scheduler(lambda: monitored_metric(result, monitor, self.score_split))

    @property
    def scheduler_interval(self) -> str:
        """When the scheduler steps: ``"step"`` (every applied optimizer step) or ``"epoch"`` (every epoch or round)."""
        return self.schedule.interval if self.schedule is not None else "step"

    @scheduler_interval.setter
    def scheduler_interval(self, interval: str) -> None:
        schedule = self._require_schedule("scheduler_interval")
        interval = normalize_scheduler_interval(interval, requires_metric=schedule.requires_metric)
        self._set_schedule(dataclasses.replace(schedule, interval=interval))

    @property
    def scheduler_monitor(self) -> str | None:
        """The metric a metric scheduler steps on (``sched.monitor``, else ``score_name``); ``None`` for others."""
        if self.schedule is None:
            return None
        if self.schedule.monitor is None and self.schedule.requires_metric:
            return self.config.score_name
        return self.schedule.monitor

    @scheduler_monitor.setter
    def scheduler_monitor(self, monitor: str | None) -> None:
        schedule = self._require_schedule("scheduler_monitor")
        self._set_schedule(dataclasses.replace(schedule, monitor=None if monitor is None else str(monitor)))

    def _require_schedule(self, name: str) -> BuiltScheduler:
        if self.schedule is None:
            raise ValueError(f"cannot set {name}: the runner has no scheduler")
        return self.schedule

    def _set_schedule(self, schedule: BuiltScheduler) -> None:
        self.schedule = schedule
        if self.optimizer_container is not None:
            self.optimizer_container.scheduler = schedule

    # evaluation and inference steps

    def evaluate_step(self, data: Any) -> tuple[Any, torch.Tensor | None]:
        """Forward (with the EMA model if there is one), loss and metrics; no gradients."""
        data = self.to_device(data)
        pred, target, loss = self._forward(self.evaluation_model, data)
        if self.metrics is not None and target is not None:
            self.metrics.update(pred, target)
        return pred, loss

    @torch.inference_mode()
    def infer_step(self, data: Any) -> list[Any]:
        """Predictions of one batch as a list (``pred.squeeze(-1)``: one number per sample for scalar outputs)."""
        data = self.to_device(data)
        model = self.evaluation_model
        inputs, _ = split_batch(data)
        with self.forward_context():
            pred = model(**inputs) if isinstance(inputs, Mapping) else model(inputs)
        values = pred.squeeze(-1).detach().cpu().tolist()
        return values if isinstance(values, list) else [values]

    # loops (see danling.runners.loops)

    def _resolve_splits(self, requested: str | Sequence[str] | None, available: list[str], kind: str) -> list[str]:
        if requested is None:
            return available
        requested = sorted({requested} if isinstance(requested, str) else set(requested))
        unknown = [split for split in requested if split not in available]
        if unknown:
            raise ValueError(f"unknown {kind} split(s): {unknown}; available {kind} split(s): {available}")
        return requested

    def train(
        self, train_splits: str | Sequence[str] | None = None, evaluate_splits: str | Sequence[str] | None = None
    ) -> RoundDict:
        """Train (by epochs when ``config.epochs`` is set, else by steps) and return ``self.results``."""
        train_splits = self._resolve_splits(train_splits, self.train_splits, "training")
        if not train_splits:
            raise ValueError("cannot start training: no valid training split was resolved")
        evaluate_splits = self._resolve_splits(evaluate_splits, self.evaluate_splits, "evaluation")
        with self.profiling():
            return loops.train(self, train_splits, evaluate_splits)

    @loops.loop_entry
    def train_epochs(self, train_splits: Sequence[str], evaluate_splits: Sequence[str]) -> RoundDict:
        return loops.train_epochs(self, train_splits, evaluate_splits)

    @loops.loop_entry
    def train_epoch(self, split: str = "train") -> RoundDict:
        return loops.train_epoch(self, split)

    @loops.loop_entry
    def train_steps(self, train_splits: Sequence[str], evaluate_splits: Sequence[str]) -> RoundDict:
        return loops.train_steps(self, train_splits, evaluate_splits)

    @loops.loop_entry
    def train_split_steps(self, split: str, target: int, iterators: dict | None = None) -> RoundDict:
        return loops.train_split_steps(self, split, target, iterators)

    def evaluate(self, evaluate_splits: str | Sequence[str] | None = None) -> RoundDict:
        """Evaluate each split once and return ``{split: result}`` (not added to ``results``)."""
        splits = self._resolve_splits(evaluate_splits, self.evaluate_splits, "evaluation")
        if not splits:
            raise ValueError("cannot start evaluation: no valid evaluation split was resolved")
        return loops.evaluate(self, splits)

    @loops.loop_entry
    def evaluate_epoch(self, split: str = "val") -> RoundDict:
        return loops.evaluate_epoch(self, split)

    @loops.loop_entry
    def evaluate_steps(self, split: str = "val", steps: int | None = None) -> RoundDict:
        """Evaluate ``split``'s first ``steps`` batches (all of them by default)."""
        return loops.evaluate_epoch(self, split, steps)

    def infer(self, split: str = "infer", *, steps: int | None = None, stream: bool | None = None) -> Any:
        return loops.infer(self, split, steps=steps, stream=stream)

    # checkpoints

    @fresh_entries("runner", "state", "loop", "results")  # BaseRunner's; the entries added here are live
    def state_dict(self) -> dict[str, Any]:
        """``BaseRunner.state_dict`` plus ``ema``, ``optimizer``, ``scheduler``, ``scaler`` and ``model``."""
        if self.model is None:
            raise ValueError("cannot build checkpoint state: model is not initialized")
        state = super().state_dict()
        for key in ("ema", "optimizer", "scheduler", "scaler"):
            component = getattr(self, key)
            state[key] = component.state_dict() if component is not None else None
        state["model"] = self.unwrap(self.model).state_dict()
        return state

    def load_state_dict(self, checkpoint: Mapping[str, Any]) -> None:
        super().load_state_dict(checkpoint)
        if self.scaler is not None and checkpoint.get("scaler") is not None:
            self.scaler.load_state_dict(checkpoint["scaler"])

    # shutdown

    def close(self, timeout: float | None = None) -> bool:
        """``BaseRunner.close``, then destroy the process group this runner started (unless writes are pending)."""
        try:
            drained = super().close(timeout)
        except BaseException:
            self.close_services()
            self._release_process_group()
            raise
        self.close_services()
        if drained:
            self._release_process_group()
        return drained

    def _release_process_group(self) -> None:
        self.destroy_process_group()

    def destroy_process_group(self) -> None:
        """Destroy the default process group if this runner started it (``close`` calls this; a group it adopted stays)."""
        if self.owns_process_group:
            destroy_default_group()
            self.owns_process_group = False
