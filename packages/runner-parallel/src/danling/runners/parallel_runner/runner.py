"""``ParallelRunner``: ``TorchRunner`` on a device mesh, with FSDP2, tensor parallelism and DCP checkpoints.

It overrides the backend hooks of runner-core (see its ``BACKENDS.md``) and the state accessors
a sharded model needs; the loop, the step bookkeeping, meters, results and the restore order
are ``TorchRunner``'s.  The work is in functions on modules: ``topology`` (axes, domains, mesh),
``parallelize`` (tensor parallel, activation checkpointing, compile, FSDP2 in that order),
``gradients`` (clipping over the mesh), ``resume`` (topology checks on restore), and
``pipeline`` / ``pipeline_schedule`` (stages cut from the model, each parallelized on its own,
and the schedule a pipelined step runs).

Beyond the hooks it overrides three ``TorchRunner`` methods, because runner-core offers no seam
for them yet: ``__init__`` (the config's ``stack`` is ``"parallel"``), ``set_seed`` (every rank
seeds alike, so every rank builds the same initial model, as ``fully_shard`` and
``parallelize_module`` expect) and ``build_dataloaders`` (batches are split over the data
domain, not over every rank: tensor-parallel peers read the same batch; middle pipeline stages
get a ``StepProxyLoader``).  With ``parallel.axes.pipeline > 1`` the steps (``train_step``,
``evaluate_step``, ``infer_step``) run through the pipeline schedule instead of the model.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import torch
from torch import distributed as dist
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.tensor import DTensor

from danling.data import StepProxyLoader
from danling.runners.checkpoints import fresh_entries
from danling.runners.config import RunnerConfig
from danling.runners.dataloaders import build_dataloader, loader_kwargs
from danling.runners.distributed import is_initialized
from danling.runners.torch_runner import TorchRunner

from .context_parallel import split_sequence
from .fault_tolerance import apply_ft_fsdp
from .gradients import ParallelOptimizerContainer, build_sharded_grad_scaler
from .parallelize import parallelize
from .pipeline_schedule import PipelineGradientWindow, PipelineRuntime, build_pipeline, middle_stage
from .resume import check_resumable, topology_metadata
from .topology import AXES, MODEL_PARALLEL_AXES, ParallelContext, ParallelTopology, build_device_mesh, build_topology

__all__ = ["ParallelRunner"]

#: Optimizer state keyed by parameter name: it survives resharding and a changed number of ranks.
_OPTIMIZER_OPTIONS = StateDictOptions(flatten_optimizer_state_dict=True)


def _axis_property(axis: str, kind: str) -> property:
    if kind == "degree":
        return property(lambda self: self.topology.axes[axis], doc=f"Degree of the {axis} axis.")
    if kind == "rank":
        return property(lambda self: self.topology.coordinates[axis], doc=f"This rank's index on the {axis} axis.")
    return property(lambda self: self.parallel.group(axis), doc=f"Process group of the {axis} axis (None: no mesh).")


class ParallelRunner(TorchRunner):
    r"""
    Training over the axes of ``config.parallel.axes``: FSDP2 (``config.fsdp``), tensor parallelism
    (the model's ``parallelize(parallel)`` hook), activation checkpointing and DCP checkpoints.

    Launch it like any runner, with ``torchrun --nproc-per-node N``; the degrees of the axes
    multiply to ``N`` (one may be ``-1``).  On one process it runs unsharded, which is how a
    sharded checkpoint is resumed on a single device.

    Attributes:
        topology: Degrees of the axes and this rank's coordinates (``ParallelTopology``).
        parallel: The topology with its device mesh (``ParallelContext``), handed to ``model.parallelize``.
        device_mesh: The 7-D ``DeviceMesh`` (``None`` on one process).
        pipeline: The pipeline schedule and this rank's stages (``PipelineRuntime``), when
            ``parallel.axes.pipeline > 1``; ``model`` is then a ``PipelineModel`` of those stages.
    """

    default_checkpoint_backend = "dcp"
    topology: ParallelTopology
    parallel: ParallelContext
    device_mesh: Any = None
    #: Whether the checkpoint being restored split the data over another number of ranks.
    data_layout_changed: bool = False
    pipeline: PipelineRuntime | None = None
    #: The sequence dimension of batch tensors, which context parallelism splits across the context ranks.
    context_sequence_dim: int = 1

    def __init__(self, config: RunnerConfig | Mapping[str, Any]) -> None:
        config = config if isinstance(config, RunnerConfig) else RunnerConfig(config)
        config.stack = "parallel"
        super().__init__(config)

    @classmethod
    def resolve_checkpoint_backend(cls, config: RunnerConfig) -> str:
        """Always ``"dcp"``: every rank holds shards, which only DCP stores (another choice warns)."""
        backend = super().resolve_checkpoint_backend(config)
        if backend != "dcp":
            warnings.warn(
                f"{cls.__name__} stores sharded state with DCP: checkpoint.backend={backend!r} becomes 'dcp'",
                RuntimeWarning,
                stacklevel=2,
            )
        return "dcp"

    # hook 1: processes, topology and mesh

    def init_distributed(self) -> None:
        """Join the process group, resolve the axes, and build the device mesh with a group per axis."""
        super().init_distributed()
        self.topology = build_topology(self.config.parallel.axes, self.world_size, self.rank)
        if self.world_size > 1 and is_initialized() and self.config.parallel.use_device_mesh:
            self.device_mesh = build_device_mesh(self.topology, self.config.parallel.mesh_device_type)
        elif self.world_size > 1:
            raise RuntimeError(
                "ParallelRunner needs a device mesh on several processes: set parallel.use_device_mesh=True"
            )
        self.parallel = ParallelContext(self.topology, self.device_mesh)

    def set_seed(self, seed: int | None = None, bias: int | bool | None = None) -> int:
        """Seed every rank alike (``bias`` 0): sharding assumes each rank built the same initial model."""
        return super().set_seed(seed, False if bias is None else bias)

    def build_dataloaders(self) -> None:
        """Loaders that split each split over the data domain (replicate x shard), not over every rank."""
        config = self.config.get("dataloader") if "dataloader" in self.config else None
        train_splits, splits = set(self.train_splits), set(self.datasets)
        for split, dataset in self.datasets.items():
            if split in self.dataloaders:
                continue
            kwargs = loader_kwargs(config, split, is_train=split in train_splits, splits=splits)
            world_size, rank = self.ft.data_parallel_info(self.data_degree, self.data_rank)  # over every FT group
            loader = build_dataloader(dataset, kwargs, collate_fn=self.collate_fn, world_size=world_size, rank=rank)
            # middle pipeline stages get their inputs from the previous stage: they only count the steps
            self.dataloaders[split] = StepProxyLoader(loader) if middle_stage(self.parallel, self.config) else loader

    def to_device(self, data: Any) -> Any:
        """``data`` on the device; with context parallelism, only this rank's slice of every sequence."""
        data = super().to_device(data)
        if self.context_degree > 1:
            data = split_sequence(data, self.context_rank, self.context_degree, dim=self.context_sequence_dim)
        return data

    # hook 2: the model

    def materialize_model(self) -> None:
        """The model on the device, then every parallelism in ``parallelize``'s fixed order."""
        model = self.model.to(self.device)
        tensor_plan = self.config.parallel.get("tensor_plan")
        if self.pipeline_degree > 1:
            # cut into stages first: each stage is then parallelized as a model of its own
            self.model, self.pipeline = build_pipeline(
                model,
                self.parallel,
                self.config,
                device=self.device,
                criterion=self.criterion,
                batch_size=self.config.get("dataloader.batch_size") if "dataloader" in self.config else None,
                parallelize_part=lambda part: parallelize(
                    part, self.parallel, self.config, tensor_plan=tensor_plan, device=self.device
                ),
            )
        else:
            self.model = parallelize(model, self.parallel, self.config, tensor_plan=tensor_plan, device=self.device)
        if self.ft.enabled:  # FSDP2 inside the replica group, TorchFT's all-reduce across groups
            self.model = apply_ft_fsdp(self.model, self.ft.manager, self.parallel, self.config.fsdp, self.device)
        if isinstance(self.ema, torch.nn.Module):
            self.ema = self.ema.to(self.device)

    # hook 3: the optimizer step

    def build_optimizer_container(self) -> None:
        """``ParallelOptimizerContainer``: clipping by the norm over the mesh, agreed skips, sharded fp16 scaling."""
        self.scaler = (
            build_sharded_grad_scaler(self.device, self.autocast_dtype) if self.optimizer is not None else None
        )
        if self.optimizer is None:
            self.optimizer_container = None
            return
        if self.pipeline is not None and self.scaler is not None:
            raise ValueError(
                "precision='fp16' with pipeline parallelism is not supported: the schedule runs backward itself, "
                "without the loss scaler; use precision='bf16' or fsdp.mp_policy"
            )
        container = ParallelOptimizerContainer
        if self.ft.enabled:  # the same container, stepping through the TorchFT manager's commit
            container = self.ft.optimizer_container_class(ParallelOptimizerContainer)
        self.optimizer_container = container(
            self.optimizer,
            self.schedule,
            scaler=self.scaler,
            max_grad_value=self.max_grad_value,
            max_grad_norm=self.max_grad_norm,
            skip_nonfinite_grad=self.skip_nonfinite_grad,
            normalize=self.accum_steps > 1 or self.world_size > 1,
            world_size=self.world_size,
            stage_groups=(self.pipeline_group,) if self.pipeline is not None else (),
        )
        if self.pipeline is not None:  # every stage counts each batch's weight: sums run over the data only
            self.optimizer_container.window = PipelineGradientWindow(parallel=self.parallel)

    # steps through the pipeline schedule, when parallel.axes.pipeline > 1 (else TorchRunner's)

    @property
    def model_parts(self) -> list[torch.nn.Module]:
        """This rank's pipeline stage modules; ``[model]`` without pipeline parallelism."""
        return list(self.pipeline.parts) if self.pipeline is not None else [self.model]

    @property
    def pipeline_schedule(self) -> Any:
        """The ``torch.distributed.pipelining`` schedule (``None`` without pipeline parallelism)."""
        return None if self.pipeline is None else self.pipeline.schedule

    @property
    def pipeline_has_first_stage(self) -> bool:
        """Whether this rank feeds the batch's inputs into the pipeline."""
        return self.pipeline is None or self.pipeline.has_first_stage

    @property
    def pipeline_has_last_stage(self) -> bool:
        """Whether this rank computes the loss from the batch's targets."""
        return self.pipeline is None or self.pipeline.has_last_stage

    def _pipeline_batch(self, data: Any) -> Any:
        return None if data is None else self.to_device(data)  # middle stages get None (StepProxyLoader)

    def train_step(self, data: Any) -> tuple[Any, torch.Tensor | None]:
        """Through the pipeline: every micro-batch's forward and backward, then ``step()``; ``(None, loss)``.

        The batch's accumulation weight (its loss normalizer) scales the last stage's micro-batch
        losses; the first stage, which reads the same batch, counts the same weight, and middle
        stages get it with the loss.  The returned loss is the batch's, on every stage.
        """
        if self.pipeline is None:
            return super().train_step(data)
        container, scale = self.optimizer_container, 1.0
        weighs = container is not None and container.normalize
        if weighs and data is not None:
            scale = container.window.loss_scale()
        with self.forward_context():
            loss, shared_scale = self.pipeline.train(self._pipeline_batch(data), scale)
        if weighs and data is None:
            container.window.record(float(shared_scale))
        self.step()
        return None, loss

    def evaluate_step(self, data: Any) -> tuple[Any, torch.Tensor | None]:
        """Through the pipeline, forward only: ``(None, loss)`` (``loss`` ``None`` without targets)."""
        if self.pipeline is None:
            return super().evaluate_step(data)
        with self.forward_context():
            return None, self.pipeline.evaluate(self._pipeline_batch(data))

    @torch.inference_mode()
    def infer_step(self, data: Any) -> list[Any]:
        """Through the pipeline: the last stage's predictions (as ``TorchRunner.infer_step``), on every stage."""
        if self.pipeline is None:
            return super().infer_step(data)
        with self.forward_context():
            pred = self.pipeline.predict(self._pipeline_batch(data))
        values: Any = []
        if self.pipeline.has_last_stage:
            values = pred.squeeze(-1).detach().cpu().tolist()
            values = values if isinstance(values, list) else [values]
        return self.pipeline.share_predictions(values)

    # hooks 4 and 5 are TorchRunner's: runner-core builds the DCP manager for "dcp", and FSDP2 and
    # tensor parallelism change modules in place, so ``unwrap`` has no wrapper of theirs to remove.

    # state: sharded model and optimizer through the DCP state-dict API

    @fresh_entries("runner", "state", "loop", "results", "parallel")
    def state_dict(self) -> dict[str, Any]:
        """``TorchRunner.state_dict`` with sharded model and name-keyed optimizer state, plus the topology."""
        state = super().state_dict()
        if self.optimizer is not None:
            state["model"], state["optimizer"] = self._model_optimizer_state()
        state["parallel"] = topology_metadata(self.topology.axes, fsdp=bool(self.config.fsdp.enabled))
        return state

    def _model_optimizer_state(self) -> tuple[dict[str, Any], dict[str, Any]]:
        model, optimizer = self.unwrap(self.model), self.optimizer
        fresh = not optimizer.state  # get_state_dict steps once (lr 0) to create the state: undo that after
        model_state, optimizer_state = get_state_dict(model, optimizer, options=_OPTIMIZER_OPTIONS)
        if fresh:
            optimizer.state.clear()
        return model_state, optimizer_state

    def load_state_dict(self, checkpoint: Mapping[str, Any]) -> None:
        """Check the saved topology may resume here (see ``resume.check_resumable``), then restore progress."""
        changed = check_resumable(
            checkpoint.get("parallel"),
            self.topology.axes,
            allow_degree_change=self.config.parallel.allow_degree_change,
        )
        # loader positions belong to the old split of the data; the loop finds its place by batch count instead
        self.data_layout_changed = any(axis in self.topology.domain_axes("data") for axis in changed)
        runner = checkpoint.get("runner")
        if changed and isinstance(runner, Mapping) and isinstance(runner.get("parallel"), Mapping):
            # the degrees were checked above; the rest of the config must still match
            parallel = {**runner["parallel"], "axes": dict(self.config.parallel.axes)}
            checkpoint = {**checkpoint, "runner": {**runner, "parallel": parallel}}
        super().load_state_dict(checkpoint)

    def load_dataloaders(self, state_dict: Any) -> None:
        """Restore loader positions, unless the data was split over another number of ranks when saved."""
        if not self.data_layout_changed:
            super().load_dataloaders(state_dict)

    def load_model(self, state_dict: Mapping[str, Any], *args: Any, **kwargs: Any) -> Any:
        """Load model weights, sharded (from a DCP checkpoint) or full (an export), into the sharded model."""
        if self.model is None:
            raise ValueError("cannot restore model: model is not initialized")
        model = self.unwrap(self.model)
        if self.pipeline is not None:  # a whole model's weights: this rank's stages take theirs
            local = model.state_dict().keys()
            state_dict = {key: value for key, value in state_dict.items() if key in local}
        full = any(isinstance(p, DTensor) for p in model.parameters()) and not any(
            isinstance(value, DTensor) for value in state_dict.values()
        )
        options = StateDictOptions(full_state_dict=full, strict=kwargs.get("strict", True))
        return set_model_state_dict(model, dict(state_dict), options=options)

    def load_optimizer(self, state_dict: Any) -> None:
        """Load name-keyed optimizer state (``get_state_dict``'s flattened form) into the sharded optimizer."""
        if self.optimizer is None or state_dict is None:
            super().load_optimizer(state_dict)
            return
        set_optimizer_state_dict(self.unwrap(self.model), self.optimizer, dict(state_dict), options=_OPTIMIZER_OPTIONS)

    # the spec's topology properties

    replicate_degree = _axis_property("replicate", "degree")
    shard_degree = _axis_property("shard", "degree")
    context_degree = _axis_property("context", "degree")
    pipeline_degree = _axis_property("pipeline", "degree")
    tensor_degree = _axis_property("tensor", "degree")
    expert_degree = _axis_property("expert", "degree")
    expert_tensor_degree = _axis_property("expert_tensor", "degree")
    replicate_rank = _axis_property("replicate", "rank")
    shard_rank = _axis_property("shard", "rank")
    context_rank = _axis_property("context", "rank")
    pipeline_rank = _axis_property("pipeline", "rank")
    tensor_rank = _axis_property("tensor", "rank")
    expert_rank = _axis_property("expert", "rank")
    expert_tensor_rank = _axis_property("expert_tensor", "rank")
    replicate_group = _axis_property("replicate", "group")
    shard_group = _axis_property("shard", "group")
    context_group = _axis_property("context", "group")
    pipeline_group = _axis_property("pipeline", "group")
    tensor_group = _axis_property("tensor", "group")
    expert_group = _axis_property("expert", "group")
    expert_tensor_group = _axis_property("expert_tensor", "group")

    @property
    def data_degree(self) -> int:
        """Ranks that read different batches (replicate x shard)."""
        return self.topology.domain_degree("data")

    @property
    def data_rank(self) -> int:
        return self.topology.domain_rank("data")

    @property
    def model_parallel_axes(self) -> tuple[str, ...]:
        """The axes that split the model itself (tensor, context, expert, expert_tensor) with degree > 1."""
        return tuple(axis for axis in MODEL_PARALLEL_AXES if self.topology.axes[axis] > 1)

    @property
    def model_parallel_degree(self) -> int:
        degree = 1
        for axis in self.model_parallel_axes:
            degree *= self.topology.axes[axis]
        return degree

    @property
    def fsdp_enabled(self) -> bool:
        return bool(self.config.fsdp.enabled)

    @property
    def fsdp_mode(self) -> str:
        """``"hybrid_shard"`` when replicas hold shards (HSDP), else ``"full_shard"``."""
        return "hybrid_shard" if self.replicate_degree > 1 else "full_shard"

    def parallel_axes_state(self, cls: type = dict) -> Any:
        """The resolved degree of every axis (``config.parallel.axes`` keeps its ``-1``)."""
        return cls({axis: self.topology.axes[axis] for axis in AXES})

    # reductions over named domains

    def all_reduce(self, tensor: torch.Tensor, *, domain: str = "data", op: Any = None) -> torch.Tensor:
        """Reduce ``tensor`` in place over a named domain (``data``, ``loss``, ``model``, an axis ...)."""
        return self.parallel.all_reduce(tensor, domain=domain, op=op)

    def reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        """The mean of ``tensor`` over the data domain (model-parallel peers hold the same value)."""
        degree = self.data_degree
        if degree == 1 or not is_initialized():
            return tensor
        return self.all_reduce(tensor.clone(), domain="data", op=dist.ReduceOp.SUM) / degree
