"""``BaseRunner``: the backend-independent half of a runner.

It owns a run's config and state, its workspace (directories, log file, metadata), its
containers (datasets, dataloaders, results, meters), results and scores (best result, early
stopping), progress lines and scalar logs, and checkpoint orchestration (what a checkpoint holds,
saving through a checkpoint manager, restoring with the documented precedence).  Training loops
belong to concrete runners such as ``TorchRunner``.

Construction happens in a fixed order:

1. ``__init__`` (``BaseRunner``): wrap the config, bind state and workspace, create the
   containers, start the process group (``init_distributed``), seed, set determinism, start
   logging, TensorBoard and W&B, route ``print`` to the main process.
2. The subclass's ``__init__`` continues after ``super().__init__(config)`` and binds the model,
   criterion, datasets ...
3. ``MetaRunner`` then calls ``__post_init__`` once: concrete runners build dataloaders, model,
   optimizer and scheduler there, restore a checkpoint, and end with ``super().__post_init__()``,
   which binds the checkpoint manager (if not yet bound) and writes the run's metadata.  If it
   raises, the runner is closed and the error propagates.
"""

from __future__ import annotations

import contextlib
import math
import os
import warnings
from collections.abc import Mapping
from functools import cached_property
from typing import Any

import torch
from chanfig import FlatDict

from danling.data import DataLoaderDict
from danling.metrics import AverageMeters, RoundDict

from .checkpointing import RunnerCheckpointing
from .checkpoints import resolve_checkpoint_interval
from .config import RunnerConfig
from .dataloaders import loader_length
from .distributed import all_reduce as all_reduce_tensor
from .distributed import group_size, is_initialized, reduction_device, set_group_timeout
from .records import RunnerRecords
from .reporting import (
    LoopProgress,
    build_tensorboard_writer,
    build_wandb_run,
)
from .state import LoopState, RunnerState, seed_everything
from .utils import RunnerMode, get_local_rank, get_rank, get_world_size
from .workspace import RunnerWorkspace


class MetaRunner(type):
    """Calls ``__post_init__`` once the most-derived ``__init__`` has returned; closes the runner if it fails."""

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        instance = super().__call__(*args, **kwargs)
        if isinstance(instance, cls):  # ``Runner.__new__`` may return a runner that is already set up
            try:
                instance.__post_init__()
            except BaseException:
                with contextlib.suppress(Exception):  # the original error matters more than a failed cleanup
                    instance.close(timeout=0.0)
                raise
        return instance


class BaseRunner(RunnerRecords, RunnerCheckpointing, metaclass=MetaRunner):
    r"""
    Shared state and orchestration of every runner: config, workspace, results, checkpoints.

    Args:
        config: A ``RunnerConfig`` (used as is, and normalised in place) or a mapping (copied).

    Attributes:
        config: The run's configuration.
        state: Checkpointable progress (``train_state``: ``global_step``, ``micro_step``,
            ``epoch``; ``elastic_state``; ``rng_state``).
        loop_state: Position inside the current epoch or round, for exact resume.
        workspace: Directories, ids, logger and metadata of the run.
        datasets / dataloaders: ``{split: dataset}`` / ``{split: loader}``.
        results: ``{index: {split: {metric: value}}}`` (index: epoch or global step).
        meters: Running averages of ``loss`` and ``lr``.
        checkpoint_manager: Writes and rotates checkpoints.

    Examples:
        >>> import tempfile
        >>> config = {"log": False, "workspace_root": tempfile.mkdtemp(), "epochs": 3, "evaluate_splits": ["val"]}
        >>> runner = BaseRunner(config)
        >>> runner.append_result({"val": {"loss": 0.5}}, index=0)
        >>> runner.append_result({"val": {"loss": 0.4}}, index=1)
        >>> runner.evaluate_splits, runner.best_index, runner.is_best
        (['val'], 1, True)
        >>> runner.close()
        True
    """

    model: Any = None
    ema: Any = None
    criterion: Any = None
    optimizer: Any = None
    scheduler: Any = None
    split: str | None = None
    metrics: Any = None
    train_metrics: Any = None
    evaluate_metrics: Any = None
    logger: Any = None
    writer: Any = None
    wandb: Any = None
    #: Settings this runner class does not implement: set, they raise instead of being ignored.
    #: A backend that implements one drops it from its own tuple.
    unsupported_settings: tuple[str, ...] = (
        "ft.enabled",
        "checkpoint.enable_ft_dataloader_checkpoints",
        "compile.precompile_artifact_dir",
        "compile.memory_policy",
    )
    _loop_progress: tuple[str, LoopProgress] | None = None
    _train_timeout_applied: bool = False

    def __init__(self, config: RunnerConfig | Mapping[str, Any]) -> None:
        config = config if isinstance(config, RunnerConfig) else RunnerConfig(config)
        # "auto" becomes this runner's format, so the saved config says what was written
        config.checkpoint.backend = self.resolve_checkpoint_backend(config)
        self.state = RunnerState(config=config)
        self.config = self.state.config
        self.train_state = self.state.train
        self.elastic_state = self.state.elastic
        self.rng_state = self.state.rng
        self.loop_state = LoopState()
        self.workspace = RunnerWorkspace(self.config)
        self.datasets = FlatDict()
        self.dataloaders = DataLoaderDict()
        self.results = RoundDict()
        self.meters = AverageMeters()
        self._mode = RunnerMode.train
        self.check_settings()
        self.init_distributed()
        if self.config.seed is not None:
            self.set_seed()
        if self.config.deterministic:
            self.set_deterministic()
        if self.config.log:
            self.init_logging()
        if self.config.tensorboard:
            self.init_tensorboard()
        if self.config.wandb.enabled:
            self.init_wandb()
        self.workspace.init_print()

    def __post_init__(self) -> None:
        if self.checkpoint_manager is None:
            self.init_checkpoint_manager()
        self.workspace.save_metadata()

    # identity and processes

    @property
    def id(self) -> str:
        return self.workspace.id

    @property
    def config_id(self) -> str:
        return self.workspace.config_id

    @property
    def code_id(self) -> str | None:
        return self.workspace.code_id

    @property
    def name(self) -> str:
        return self.workspace.name

    @property
    def timestamp(self) -> str:
        return self.workspace.timestamp

    @property
    def rank(self) -> int:
        return get_rank()

    @property
    def local_rank(self) -> int:
        return get_local_rank()

    @property
    def world_size(self) -> int:
        return get_world_size()

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main_process(self) -> bool:
        return self.rank == 0

    @property
    def is_local_main_process(self) -> bool:
        return self.local_rank == 0

    @property
    def mode(self) -> RunnerMode:
        return self._mode

    @mode.setter
    def mode(self, mode: RunnerMode | str) -> None:
        self._mode = RunnerMode(mode)

    # early setup hooks

    def check_settings(self) -> None:
        r"""
        Refuse settings that would be accepted and then ignored.

        Raises:
            NotImplementedError: a setting of ``unsupported_settings`` is set.
            ValueError: ``patience`` in step mode, which evaluates once at the end and never stops early.
        """
        for key in self.unsupported_settings:
            value = self.config.get(key)
            if value:
                raise NotImplementedError(
                    f"{key}={value!r} is not implemented by {type(self).__name__}; remove it from the config "
                    "(it would otherwise be ignored)"
                )
        patience = self.config.get("patience")
        if self.is_step_mode and patience is not None and math.isfinite(patience):
            raise ValueError(
                f"patience={patience!r} stops epoch-mode training early, but this run trains by steps "
                "and evaluates once at the end, where it would be ignored; remove it or set `epochs`"
            )

    def init_distributed(self) -> None:
        """Join the job's process group; the base runner runs in one process."""

    def set_seed(self, seed: int | None = None, bias: int | bool | None = None) -> int:
        r"""
        Seed Python, NumPy and torch with ``seed + bias`` and store the base ``seed`` in ``config.seed``.

        ``bias`` defaults to the rank, so processes draw different numbers; ``bias=False``
        seeds every process alike.  Returns the seed used in this process.
        """
        base = self.config.seed if seed is None else seed
        if base is None:
            raise ValueError("cannot set seed: no seed is configured and no seed argument was provided")
        self.config.seed = int(base)
        bias = self.rank if bias is None else int(bias)
        process_seed = int(base) + bias
        seed_everything(process_seed)
        self.rng_state.capture()
        return process_seed

    def set_deterministic(self) -> None:
        """Ask the backend for deterministic kernels; the base runner has none."""

    def init_logging(self) -> None:
        self.logger = self.workspace.init_logging()

    def init_tensorboard(self) -> None:
        """Write scalars to ``{run dir}/tensorboard/{timestamp}`` (main process only)."""
        if self.is_main_process:
            self.writer = build_tensorboard_writer(os.path.join(self.workspace.dir, "tensorboard", self.timestamp))

    def init_wandb(self, **kwargs: Any) -> None:
        """Start a Weights & Biases run from ``config.wandb`` (main process only); ``kwargs`` go to ``wandb.init``."""
        if self.is_main_process:
            workspace = self.workspace
            self.wandb = build_wandb_run(
                self.config,
                lineage=workspace.lineage,
                experiment=workspace.experiment,
                run_id=self.id,
                directory=workspace.dir,
                **kwargs,
            )

    # budget and settings

    @property
    def epochs(self) -> int | None:
        return self.config.epochs

    @epochs.setter
    def epochs(self, epochs: int | None) -> None:
        self.config.epochs = epochs

    @property
    def steps(self) -> int | None:
        """``config.steps``; in epoch mode, the optimizer steps the epochs take (when loaders are sized)."""
        if self.config.steps is not None:
            return self.config.steps
        if self.epochs is None or not self.dataloaders:
            return None
        total = 0
        for split in self.train_splits:
            length = loader_length(self.dataloaders[split]) if split in self.dataloaders else None
            if length is None:
                return None
            total += math.ceil(length / self.accum_steps)
        return self.epochs * total

    @steps.setter
    def steps(self, steps: int | None) -> None:
        self.config.steps = steps

    @property
    def is_step_mode(self) -> bool:
        return self.epochs is None

    @cached_property
    def accum_steps(self) -> int:
        return int(self.config.get("accum_steps") or 1)

    @cached_property
    def precision(self) -> str | None:
        return self.config.get("precision")

    @cached_property
    def max_grad_value(self) -> float | None:
        return self.config.get("max_grad_value")

    @cached_property
    def max_grad_norm(self) -> float | None:
        return self.config.get("max_grad_norm")

    @cached_property
    def skip_nonfinite_grad(self) -> bool:
        return bool(self.config.get("skip_nonfinite_grad", False))

    @cached_property
    def patience(self) -> float:
        patience = self.config.get("patience")
        return math.inf if patience is None else patience

    @property
    def batch_size(self) -> int:
        """``config.dataloader.batch_size``, else the first dataloader's batch size."""
        batch_size = self.config.get("dataloader.batch_size") if "dataloader" in self.config else None
        if batch_size is not None:
            return batch_size
        for loader in self.dataloaders.values():
            if getattr(loader, "batch_size", None) is not None:
                return loader.batch_size
        raise AttributeError("batch_size could not be inferred and is not in config")

    @property
    def progress(self) -> float:
        """Fraction of the budget done: ``global_step / steps``, else ``epoch / epochs``."""
        steps = self.steps
        if steps:
            return self.train_state.global_step / steps
        if self.epochs:
            return self.train_state.epoch / self.epochs
        raise ValueError("cannot compute progress: neither `steps` nor `epochs` is configured")

    @property
    def checkpoint_interval(self) -> int:
        """Save cadence: ``checkpoint.interval``, else every epoch / about 20 times per run / every 8192 steps."""
        epochs = None if self.is_step_mode else self.epochs
        return resolve_checkpoint_interval(self.config.checkpoint.interval, steps=self.steps, epochs=epochs)

    @property
    def log_interval(self) -> int:
        """Iterations between progress lines: ``config.log_interval``, else about 100 per run, else 1024."""
        if self.config.log_interval is not None:
            return self.config.log_interval
        steps = self.steps
        return max(math.ceil(steps / 100), 1) if steps else 1024

    @property
    def train_splits(self) -> list[str]:
        """``config.train_splits``, else the splits named ``train`` or whose dataset says it is for training."""
        configured = self.config.get("train_splits")
        if configured is not None:
            return sorted({configured} if isinstance(configured, str) else set(configured))
        sources = self.datasets or self.dataloaders
        return sorted(split for split, data in sources.items() if _is_train_split(split, data))

    @property
    def evaluate_splits(self) -> list[str]:
        """``config.evaluate_splits``, else every split that is not a training split."""
        configured = self.config.get("evaluate_splits")
        if configured is not None:
            return sorted({configured} if isinstance(configured, str) else set(configured))
        train = set(self.train_splits)
        return sorted(split for split in (self.datasets or self.dataloaders) if split not in train)

    def unwrap(self, model: Any) -> Any:
        return model

    def prepare_for_shutdown_checkpoint(self) -> None:
        """Bring the run to a state worth saving before an emergency checkpoint."""

    # loops: implemented by concrete runners

    def train(self, train_splits: Any = None, evaluate_splits: Any = None) -> RoundDict:
        raise NotImplementedError(f"{type(self).__name__} does not implement train()")

    def evaluate(self, evaluate_splits: Any = None) -> RoundDict:
        raise NotImplementedError(f"{type(self).__name__} does not implement evaluate()")

    def infer(self, split: str = "infer", *, steps: int | None = None, stream: bool | None = None) -> Any:
        raise NotImplementedError(f"{type(self).__name__} does not implement infer()")

    def train_epochs(self, *args: Any, **kwargs: Any) -> RoundDict:
        raise NotImplementedError(f"{type(self).__name__} does not implement train_epochs()")

    def train_epoch(self, *args: Any, **kwargs: Any) -> RoundDict:
        raise NotImplementedError(f"{type(self).__name__} does not implement train_epoch()")

    def train_steps(self, *args: Any, **kwargs: Any) -> RoundDict:
        raise NotImplementedError(f"{type(self).__name__} does not implement train_steps()")

    def train_step(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(f"{type(self).__name__} does not implement train_step()")

    def backward(self, loss: Any, *args: Any, **kwargs: Any) -> None:
        raise NotImplementedError(f"{type(self).__name__} does not implement backward()")

    def step(self, *args: Any, **kwargs: Any) -> None:
        raise NotImplementedError(f"{type(self).__name__} does not implement step()")

    def evaluate_epoch(self, *args: Any, **kwargs: Any) -> RoundDict:
        raise NotImplementedError(f"{type(self).__name__} does not implement evaluate_epoch()")

    def evaluate_steps(self, *args: Any, **kwargs: Any) -> RoundDict:
        raise NotImplementedError(f"{type(self).__name__} does not implement evaluate_steps()")

    def evaluate_step(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(f"{type(self).__name__} does not implement evaluate_step()")

    def infer_step(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(f"{type(self).__name__} does not implement infer_step()")

    # collectives: over ``all_reduce_group()``; without a process group they return their input

    def all_reduce_group(self) -> Any:
        """The group reductions run over; ``None`` is the default group (backends with replica groups override it)."""
        return None

    def all_reduce_device(self) -> torch.device:
        """Where a reduction's tensors must be: the CUDA device for NCCL, else the CPU."""
        return reduction_device(group=self.all_reduce_group())

    def all_reduce(self, tensor: torch.Tensor, *, op: Any = None) -> torch.Tensor:
        """Reduce ``tensor`` in place over ``all_reduce_group()`` (a sum unless ``op`` says otherwise); return it."""
        return all_reduce_tensor(tensor, op, self.all_reduce_group())

    def reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        """The mean of ``tensor`` over the group, on ``tensor``'s device; ``tensor`` itself is never changed."""
        size = group_size(self.all_reduce_group())
        if size <= 1:
            return tensor
        payload = self.all_reduce(tensor.detach().to(self.all_reduce_device(), copy=True))
        return (payload / size).to(tensor.device)

    def reduce_loss_for_logging(self, loss: torch.Tensor | None, loss_n: int | None) -> torch.Tensor | None:
        r"""
        ``loss`` (its mean, if it has several elements) weighted by ``loss_n`` (at least 1) and
        averaged over the group with the other ranks' weights: a float64 scalar; ``None`` without a loss.

        The progress lines report the loss through it, on the log cadence only.  In a group it is
        collective: a rank without a loss (``None``) still takes part, with weight 0, and gets ``None``.
        """
        size = group_size(self.all_reduce_group())
        if loss is None and size <= 1:
            return None
        device = self.all_reduce_device()
        if loss is None:
            payload = torch.zeros(2, dtype=torch.float64, device=device)
        else:
            weight = torch.tensor(float(max(int(loss_n or 1), 1)), dtype=torch.float64, device=device)
            payload = torch.stack((loss.detach().to(device, torch.float64).mean() * weight, weight))
        if size > 1:
            self.all_reduce(payload)
        return None if loss is None else payload[0] / payload[1]

    # what ``meters.batch()`` computes for the loss meter: progress lines skip the call unless it is overridden
    reduce_loss_for_logging.averages_like_the_meters = True  # type: ignore[attr-defined]

    def apply_train_timeout(self) -> bool:
        r"""
        Shorten the process groups' timeout to ``comm.train_timeout_seconds``, once per process.

        The loop calls it after the first applied optimizer step of this process (a resumed run
        too), when start-up (compilation, the first collectives) is over.  Returns whether a
        timeout changed.
        """
        self._train_timeout_applied = True
        seconds = self.config.comm.train_timeout_seconds
        if seconds is None or not is_initialized():
            return False
        changed = set_group_timeout(seconds)
        group = self.all_reduce_group()
        if group is not None:
            changed = set_group_timeout(seconds, group) and changed
        return changed

    # shutdown

    def close(self, timeout: float | None = None) -> bool:
        r"""
        Finish pending checkpoint writes, then release the logger, TensorBoard, W&B and ``print``.

        ``timeout`` defaults to ``checkpoint.wait_timeout``.  Returns ``False`` (and keeps
        everything open, so ``close`` can be retried) when pending writes did not finish in time.
        Safe to call more than once.
        """
        timeout = self.config.checkpoint.wait_timeout if timeout is None else timeout
        error: BaseException | None = None
        drained = True
        if self.checkpoint_manager is not None:
            try:
                drained = self.checkpoint_manager.close(timeout)
            except Exception as caught:  # release everything else, then report it
                error = caught
        if error is None and not drained:
            warnings.warn("runner close: timed out while draining async checkpoints", RuntimeWarning, stacklevel=2)
            return False
        if self.writer is not None:
            self.writer.flush()
            self.writer.close()
            self.writer = None
        if self.wandb is not None:
            self.wandb.finish()
            self.wandb = None
        self.workspace.close()
        self.logger = None
        if error is not None:
            raise error
        return drained


def _is_train_split(split: str, data: Any) -> bool:
    return split == "train" or bool(getattr(data, "train", False)) or getattr(data, "split", None) == "train"
