r"""TorchFT replica groups: a run whose data-parallel replicas can die and rejoin without a restart.

Several replica groups (each one process, or a ``torchrun`` job of several) train the same model
on different shards of the data.  A ``torchft_lighthouse`` server decides which groups take part
in each step (the *quorum*); gradients are averaged over the groups in the quorum through
torchft's reconfigurable process group, and a group that restarts after a crash fetches the
weights, optimizer and scheduler state from a live group before its first update.

- ``FaultTolerance(runner)``: the runner's handle (``runner.ft``), disabled unless
  ``config.ft.enabled``; enabled, it owns the torchft ``Manager``, its process group and, for
  one-process groups, the group's own store.  ``torchft`` is imported only then.
- ``FTOptimizerContainer``: the runner's ``OptimizerContainer`` stepping through the manager:
  a quorum is started before each window's first backward; at the step the gradients (averaged
  inside the group by DDP) are averaged over the groups through the manager, and the update is
  applied only when ``manager.should_commit()`` agrees.
- ``FTDataLoaderCheckpointer``: each replica group's loader positions, saved at the checkpoint
  cadence under ``{checkpoint_dir}/{ft_dataloader_checkpoint_prefix}-{replica}`` and restored when
  the group restarts (``checkpoint.enable_ft_dataloader_checkpoints``; on whenever ``ft.enabled``).

What a recovering group receives from its peer is ``ft_state_dict``: model, optimizer, scheduler,
fp16 scaler, EMA and the global step; not loader positions, the loop's place or results, which
belong to each group.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import distributed as dist

from .distributed import all_reduce_sum
from .step import OptimizerContainer

if TYPE_CHECKING:
    from .torch_runner import TorchRunner

__all__ = [
    "FT_SETTINGS",
    "FTDataLoaderCheckpointer",
    "FTOptimizerContainer",
    "FaultTolerance",
    "check_ft_support",
    "ft_container_class",
    "ft_replica_name",
    "ft_state_dict",
    "load_ft_state_dict",
]

#: The settings this module implements (runner-core's ``BaseRunner`` refuses them).
FT_SETTINGS = ("ft.enabled", "checkpoint.enable_ft_dataloader_checkpoints")
#: The stacks whose runner wires TorchFT in (``TorchRunner`` with DDP, ``ParallelRunner`` with FSDP).
FT_STACKS = ("ddp", "parallel")
_UNSUPPORTED = "TorchFT integration is currently supported by TorchRunner/DDP and ParallelRunner FSDP only"
_NOT_INSTALLED = (
    "torchft is not installed. Install `danling-runner-core[ft]` (or `torchft-nightly`) to enable config.ft.enabled."
)
#: The axes that split the model: TorchFT replicates whole (FSDP-sharded) models only.
_MODEL_AXES = ("pipeline", "tensor", "context", "expert", "expert_tensor")
#: The peer-recoverable components of a runner, besides the model and the global step.
_COMPONENTS = ("optimizer", "scheduler", "scaler", "ema")


def _import_torchft() -> Any:
    try:
        import torchft
    except ImportError as error:
        raise ImportError(_NOT_INSTALLED) from error
    return torchft


def check_ft_support(config: Any) -> None:
    r"""
    Refuse TorchFT settings on a stack that does not wire TorchFT in (``config.stack`` other than
    ``ddp`` or ``parallel``, e.g. DeepSpeed).

    Examples:
        >>> from danling.runners.config import RunnerConfig
        >>> check_ft_support(RunnerConfig(stack="ddp", ft={"enabled": True}))
        >>> check_ft_support(RunnerConfig(stack="deepspeed", ft={"enabled": True}))
        Traceback (most recent call last):
        NotImplementedError: TorchFT integration is currently supported by TorchRunner/DDP and ParallelRunner FSDP only (stack='deepspeed')
    """
    wants_ft = config.ft.enabled or config.checkpoint.enable_ft_dataloader_checkpoints
    if wants_ft and config.stack not in FT_STACKS:
        raise NotImplementedError(f"{_UNSUPPORTED} (stack={config.stack!r})")
    if config.ft.enabled and config.stack == "parallel":
        fsdp = config.get("fsdp")
        sharded = bool(fsdp is not None and fsdp.get("enabled"))
        split = [axis for axis in _MODEL_AXES if int(config.parallel.axes.get(axis, 1)) != 1]
        if not sharded or split:
            raise NotImplementedError(
                "ParallelRunner TorchFT integration currently requires FSDP (fsdp.enabled=True) with "
                f"pipeline/tensor/context/expert axes set to 1, got fsdp.enabled={sharded}"
                + "".join(f", parallel.axes.{axis}={config.parallel.axes[axis]}" for axis in split)
            )


def ft_replica_name(config: Any, rank: int, environ: Mapping[str, str] = os.environ) -> str:
    r"""
    The replica name of the per-replica loader checkpoints: ``checkpoint.ft_replica_id``, else the
    ``FT_REPLICA_ID`` environment variable, else ``ft.replica_id`` (when enabled), else the rank.

    Examples:
        >>> from danling.runners.config import RunnerConfig
        >>> ft_replica_name(RunnerConfig(), rank=3, environ={})
        '3'
        >>> ft_replica_name(RunnerConfig(ft={"enabled": True, "group_size": 2, "replica_id": 1}), 0, environ={})
        '1'
        >>> ft_replica_name(RunnerConfig(checkpoint={"ft_replica_id": "a"}), 0, environ={"FT_REPLICA_ID": "b"})
        'a'
    """
    if config.checkpoint.ft_replica_id is not None:
        return str(config.checkpoint.ft_replica_id)
    if environ.get("FT_REPLICA_ID"):
        return environ["FT_REPLICA_ID"]
    if config.ft.enabled:
        return str(config.ft.replica_id)
    return str(rank)


def ft_state_dict(runner: TorchRunner) -> dict[str, Any]:
    r"""
    What a recovering replica group takes from a live one: the trained components and the global step.

    torchft reads it from its quorum thread while the main thread computes the step, so it is only
    the components' own ``state_dict()`` (no runner-level side effects such as the DCP helpers'
    optimizer initialisation, which would step the optimizer under the running backward).  The
    groups have the same layout, so sharded (DTensor) values go as they are.
    """
    payload: dict[str, Any] = {"model": runner.unwrap(runner.model).state_dict()}
    for key in _COMPONENTS:
        component = getattr(runner, key)
        payload[key] = component.state_dict() if component is not None else None
    payload["global_step"] = runner.train_state.global_step
    return payload


def load_ft_state_dict(runner: TorchRunner, state: Mapping[str, Any]) -> None:
    """Load a peer's ``ft_state_dict`` in place (parameters keep their identity: the optimizer still holds them)."""
    runner.load_model(state["model"])
    optimizer = runner.optimizer
    if optimizer is not None:
        # Loading replaces the parameter-group dicts: keep the old ones, the loop's meters read them.
        groups = optimizer.param_groups
        optimizer.load_state_dict(state["optimizer"])
        for group, loaded in zip(groups, optimizer.param_groups):
            group.update(loaded)
        optimizer.param_groups = groups
    for key in ("scheduler", "scaler", "ema"):
        component = getattr(runner, key)
        if component is not None and state.get(key) is not None:
            component.load_state_dict(state[key])
    runner.train_state.global_step = int(state["global_step"])


class FaultTolerance:
    r"""
    The TorchFT side of a runner (``runner.ft``): disabled unless ``config.ft.enabled``.

    Enabled, it builds the replica group's store (one-process groups have no ``torchrun`` store:
    it starts one on loopback, with a one-rank gloo default group on it), torchft's process group
    across replica groups (``ft.process_group``, ``ft.process_group_timeout_ms``) and the
    ``Manager`` (``ft.min_replica_size``, replica ``danling_ft_{ft.replica_id}``), which talks to
    the lighthouse at ``ft.lighthouse`` or ``$TORCHFT_LIGHTHOUSE``.

    Attributes:
        replica_id / group_size: This replica group and the number of groups (``0``/``1`` when disabled).
        manager: The torchft ``Manager`` (``None`` when disabled).
        replicate_process_group: A ``ManagedProcessGroup``, the all-reduce over replica groups
            (``None`` when disabled).
        dataloader_checkpointer: Per-replica loader checkpoints (``None`` unless enabled).

    Examples:
        >>> from types import SimpleNamespace
        >>> from danling.runners.config import RunnerConfig
        >>> ft = FaultTolerance(SimpleNamespace(config=RunnerConfig(), rank=0, world_size=1))
        >>> ft.enabled, ft.replicate_process_group, ft.data_parallel_info(4, 1)
        (False, None, (4, 1))
    """

    manager: Any = None
    process_group: Any = None
    replicate_process_group: Any = None
    dataloader_checkpointer: FTDataLoaderCheckpointer | None = None
    _store: Any = None
    _owns_default_group: bool = False

    def __init__(self, runner: Any) -> None:
        config = runner.config
        self.runner = runner
        self.replica_id, self.group_size = 0, 1
        if not config.ft.enabled:
            return
        torchft = _import_torchft()
        from torchft.process_group import ManagedProcessGroup

        ft = config.ft
        self.replica_id, self.group_size = int(ft.replica_id), int(ft.group_size)
        lighthouse = ft.lighthouse or os.environ.get("TORCHFT_LIGHTHOUSE")
        if not lighthouse:
            raise ValueError(
                "config.ft.enabled needs the lighthouse address: set config.ft.lighthouse or TORCHFT_LIGHTHOUSE "
                "(e.g. 'http://127.0.0.1:29510' for `torchft_lighthouse --min_replicas 1`)"
            )
        timeout = timedelta(milliseconds=int(ft.process_group_timeout_ms))
        store_addr, store_port = self._group_store(runner)
        group_class = {"gloo": torchft.ProcessGroupGloo, "nccl": torchft.ProcessGroupNCCL}[ft.process_group]
        self.process_group = group_class(timeout=timeout)
        self.manager = torchft.Manager(
            pg=self.process_group,
            load_state_dict=lambda state: load_ft_state_dict(runner, state),
            state_dict=lambda: ft_state_dict(runner),
            min_replica_size=int(ft.min_replica_size),
            use_async_quorum=True,
            timeout=max(timeout, timedelta(seconds=30)),
            rank=runner.rank,
            world_size=runner.world_size,
            store_addr=store_addr,
            store_port=store_port,
            lighthouse_addr=lighthouse,
            replica_id=f"danling_ft_{self.replica_id}",
        )
        self.replicate_process_group = ManagedProcessGroup(self.manager)

    def _group_store(self, runner: Any) -> tuple[str, int]:
        """The replica group's store: ``torchrun``'s (``MASTER_ADDR:MASTER_PORT``), else a new one on loopback."""
        if dist.is_initialized() and runner.world_size > 1:
            return os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
        self._store = dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)
        if not dist.is_initialized():  # a one-rank default group, so meshes and sharding work in a one-process group
            dist.init_process_group("gloo", store=self._store, rank=0, world_size=1)
            self._owns_default_group = True
        return "127.0.0.1", self._store.port

    @property
    def enabled(self) -> bool:
        return self.manager is not None

    def data_parallel_info(self, degree: int, rank: int) -> tuple[int, int]:
        """``(replicas, index)`` of this rank's data shard counted over every replica group."""
        if not self.enabled:
            return degree, rank
        return degree * self.group_size, degree * self.replica_id + rank

    def participating_rank(self) -> int | None:
        """This group's rank in the current quorum (``None``: not taking part, or disabled)."""
        return self.manager.participating_rank() if self.enabled else None

    def optimizer_container(self, optimizer: Any, *args: Any, **kwargs: Any) -> OptimizerContainer:
        """An ``FTOptimizerContainer`` averaging over the replica groups at the step (DDP inside a group)."""
        return FTOptimizerContainer(self.manager, optimizer, *args, all_reduce_gradients=True, **kwargs)

    def optimizer_container_class(self, base: type[OptimizerContainer]) -> Any:
        """A factory of ``base`` containers committing through this manager; the model averages (FSDP's hook)."""
        return functools.partial(ft_container_class(base), self.manager)

    def init_dataloader_checkpoints(self) -> None:
        """Restore this replica's loader positions if a previous run of it saved them (call after restoring)."""
        config = self.runner.config
        if not (config.ft.enabled or config.checkpoint.enable_ft_dataloader_checkpoints):
            return
        name = ft_replica_name(config, self.runner.rank)
        directory = (
            Path(self.runner.workspace.checkpoint_dir) / f"{config.checkpoint.ft_dataloader_checkpoint_prefix}-{name}"
        )
        self.dataloader_checkpointer = FTDataLoaderCheckpointer(directory, rank=self.runner.rank)
        self.dataloader_checkpointer.load(self.runner)

    def after_step(self, step: int) -> None:
        """Save the loader positions on the checkpoint cadence (every step when the cadence is off)."""
        if self.dataloader_checkpointer is None:
            return
        interval = self.runner.checkpoint_interval
        if interval <= 0 or step % interval == 0:
            self.dataloader_checkpointer.save(self.runner)

    def close(self) -> None:
        """Shut the manager down and release the group and store it started; idempotent."""
        manager, self.manager = self.manager, None
        if manager is not None:
            manager.shutdown(wait=False)
        group, self.process_group, self.replicate_process_group = self.process_group, None, None
        if group is not None:
            group.shutdown()
        if self._owns_default_group and dist.is_initialized():
            dist.destroy_process_group()
        self._owns_default_group, self._store = False, None


class FTOptimizerContainer(OptimizerContainer):
    r"""
    ``OptimizerContainer`` under a torchft ``Manager``: torchft's ``OptimizerWrapper`` protocol in
    the container the runner already drives.

    The first backward of an accumulation window starts the step's quorum (a recovering group
    receives its peer's state in it); ``step`` averages the window's gradients over the replica
    groups (with ``all_reduce_gradients``), then asks ``manager.should_commit()``, which first loads a
    received state, and applies the update only when every rank of every participating group
    agrees, else drops the gradients.

    The average runs here, at the step, in buckets of ``bucket_bytes`` in parameter order, rather
    than in DDP's backward hooks: every step of every group is then the same sequence of
    collectives, however its window ended (a loader that runs out mid-window flushes a partial
    window, at a different moment in each group once a restarted group reads from its own
    position).  A missing gradient counts as zeros.  When micro-batches are weighed (``normalize``),
    the window's item count is averaged over the groups too, so every group divides the averaged
    gradient sums by the same count.  FSDP averages in its reduce hook instead
    (``all_reduce_gradients=False``).
    """

    def __init__(
        self,
        manager: Any,
        optimizer: torch.optim.Optimizer,
        *args: Any,
        all_reduce_gradients: bool = False,
        bucket_bytes: int = 64 << 20,
        **kwargs: Any,
    ) -> None:
        super().__init__(optimizer, *args, **kwargs)
        self.manager = manager
        self.all_reduce_gradients = all_reduce_gradients
        self.bucket_bytes = bucket_bytes
        self.quorum_started = False

    def backward(self, loss: torch.Tensor) -> None:
        if not self.quorum_started:
            self.manager.start_quorum()
            self.quorum_started = True
        super().backward(loss)

    def step(self) -> bool:
        if not self.quorum_started:  # nothing was computed under a quorum: there is nothing to commit
            self.discard()
            return False
        self.quorum_started = False
        if self.all_reduce_gradients:
            self.average_over_groups()
        if self.normalize:
            self.average_window_total()
        # should_commit applies a received state only once the quorum is in (an all-reduce waits for it)
        self.manager.wait_quorum()
        if not self.manager.should_commit():
            self.discard()
            return False
        return super().step()

    def average_window_total(self) -> None:
        r"""
        Replace the window total by its group's total averaged over the groups, so that every group
        divides the averaged gradient sums by the same count (windows differ in size when one ends a
        pass early, and groups count different numbers of valid items).

        With several ranks in a group, the group's total is the sum over them that ``backward``
        started (``GradientWindow.start_sum``), and the averaged total replaces that sum too: the
        step's factor is then ``world_size`` over the items of every rank of every group divided by
        the number of groups, not over the items of this group alone.
        """
        window = self.window
        if self.world_size == 1:
            total = window.total
        else:
            total = window.summed() if window.summed is not None else None
            if total is None:  # not started, or not carried: sum over the group's ranks now
                total = all_reduce_sum(window.total)
        averaged = torch.tensor([total], dtype=torch.float64)
        self.manager.allreduce(averaged).wait()
        window.total = float(averaged.item())
        window.summed = lambda: window.total

    def average_over_groups(self) -> None:
        """Average every trainable parameter's gradient over the replica groups in the quorum, in place."""
        gradients = []
        for parameter in self.parameters:
            if parameter.requires_grad:
                if parameter.grad is None:
                    parameter.grad = torch.zeros_like(parameter)
                gradients.append(parameter.grad)
        for bucket in _buckets(gradients, self.bucket_bytes):
            flat = torch._utils._flatten_dense_tensors(bucket)
            self.manager.allreduce(flat).wait()
            for gradient, averaged in zip(bucket, torch._utils._unflatten_dense_tensors(flat, bucket)):
                gradient.copy_(averaged)


def _buckets(tensors: list[torch.Tensor], bucket_bytes: int) -> list[list[torch.Tensor]]:
    r"""
    Consecutive runs of ``tensors`` of one dtype and device, each at most ``bucket_bytes`` (or one tensor).

    Examples:
        >>> sizes = [[len(b) for b in _buckets([torch.zeros(4)] * 5, bucket_bytes=40)]]
        >>> sizes, [len(b) for b in _buckets([torch.zeros(2), torch.zeros(2, dtype=torch.int64)], 1 << 20)]
        ([[2, 2, 1]], [1, 1])
    """
    buckets: list[list[torch.Tensor]] = []
    size = 0
    for tensor in tensors:
        nbytes = tensor.numel() * tensor.element_size()
        last = buckets[-1] if buckets else None
        same_kind = last is not None and (last[0].dtype, last[0].device) == (tensor.dtype, tensor.device)
        if not same_kind or size + nbytes > bucket_bytes:
            buckets.append([tensor])
            size = nbytes
        else:
            last.append(tensor)
            size += nbytes
    return buckets


@functools.cache
def ft_container_class(base: type[OptimizerContainer]) -> type[FTOptimizerContainer]:
    r"""
    ``base`` (an ``OptimizerContainer`` subclass, e.g. a backend's) with ``FTOptimizerContainer``'s
    commit protocol in front of it; its constructor takes the manager first.

    Examples:
        >>> class Clipping(OptimizerContainer): ...
        >>> ft_container_class(Clipping).__mro__[1:3] == (FTOptimizerContainer, Clipping)
        True
    """
    if issubclass(base, FTOptimizerContainer):
        return base
    return type(f"FT{base.__name__}", (FTOptimizerContainer, base), {"__module__": __name__})


class FTDataLoaderCheckpointer:
    r"""
    One replica group's loader positions and loop position, one file per rank in ``directory``.

    Written atomically (a temporary file renamed over the last one), so a group killed while saving
    restarts from the previous save.

    Examples:
        >>> import tempfile
        >>> from types import SimpleNamespace
        >>> from danling.runners.state import LoopState
        >>> runner = SimpleNamespace(
        ...     dataloader_state_dict=lambda: {"train": {"seen": 4}}, loop_state=LoopState(), load_dataloaders=print
        ... )
        >>> runner.loop_state.batches["train"] = 4
        >>> checkpointer = FTDataLoaderCheckpointer(tempfile.mkdtemp(), rank=0)
        >>> checkpointer.save(runner)
        >>> runner.loop_state.batches.clear()
        >>> checkpointer.load(runner)
        {'train': {'seen': 4}}
        True
        >>> runner.loop_state.batches
        {'train': 4}
    """

    def __init__(self, directory: str | os.PathLike, rank: int) -> None:
        self.directory = Path(directory)
        self.path = self.directory / f"rank{rank}.pt"

    def save(self, runner: Any) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        payload = {"dataloaders": runner.dataloader_state_dict(), "loop": runner.loop_state.state_dict()}
        partial = self.path.with_suffix(".tmp")
        torch.save(payload, partial)
        os.replace(partial, self.path)

    def load(self, runner: Any) -> bool:
        """Restore the saved positions into ``runner``; ``False`` when there is nothing saved."""
        if not self.path.exists():
            return False
        payload = torch.load(self.path, weights_only=False)
        runner.loop_state.load_state_dict(payload["loop"])
        runner.load_dataloaders(payload["dataloaders"])
        return True
