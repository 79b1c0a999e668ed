r"""Typed sections of ``RunnerConfig``: one small ``chanfig.Config`` class per component.

Each section declares its keys with types and defaults, documents them, and checks its own
values in ``validate()`` (chanfig calls it when the section is built; ``RunnerConfig.validate``
calls it again for sections edited later).  A mapping assigned to a section key of
``RunnerConfig`` becomes the section class with the missing defaults filled in::

    RunnerConfig({"checkpoint": {"backend": "dcp"}}).checkpoint.keep_latest_k == 0

Sections are closed (``danling.runners.config_fields.Section``): a key a section does not
declare raises ``UnknownKeyError`` naming the closest valid key.  ``OptimConfig``,
``SchedConfig`` and ``DeepSpeedConfig`` are open: their free-form keys go to the optimizer, the
scheduler and DeepSpeed.  ``DataloaderConfig``, ``OptimConfig`` and ``SchedConfig`` declare
``Field``\ s: unset, they read as ``None`` and stay out of the config, so the runner's own
defaults apply.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from .config_fields import Field, OpenSection, Section

#: ``checkpoint.backend`` values.  ``auto`` is the runner class's own choice: ``file`` for
#: ``TorchRunner`` (one process and DDP), ``dcp`` for ``ParallelRunner``.
CHECKPOINT_BACKENDS = ("auto", "file", "dcp")
#: ``checkpoint.async_mode`` values.
ASYNC_MODES = ("async", "async_with_pinned_mem", "disabled")
_ASYNC_MODE_ALIASES = {
    "true": "async",
    "on": "async",
    "enable": "async",
    "enabled": "async",
    "false": "disabled",
    "off": "disabled",
    "disable": "disabled",
}
#: ``checkpoint.async_writer`` values: what writes an asynchronous file checkpoint.
ASYNC_WRITERS = ("auto", "process", "thread")
#: ``checkpoint.export_dtype`` spellings -> ``torch`` dtype attribute name.
EXPORT_DTYPES = {
    "float32": "float32",
    "fp32": "float32",
    "float": "float32",
    "float16": "float16",
    "fp16": "float16",
    "half": "float16",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "float64": "float64",
    "fp64": "float64",
    "double": "float64",
}
#: ``ft.process_group`` values.
FT_PROCESS_GROUPS = ("gloo", "nccl")
#: ``compile.optimize_ddp`` values: the modes of ``torch._dynamo.config.optimize_ddp``.
OPTIMIZE_DDP_MODES = ("ddp_optimizer", "python_reducer", "python_reducer_without_compiled_forward", "no_optimization")


def _check_backend_name(value: Any) -> str:
    """``checkpoint.backend`` lower-cased: ``auto`` or a registered storage format (backends register theirs)."""
    from .checkpoints.registry import registered_checkpoint_backends  # no torch import: names only

    return _choice(value, ("auto", *registered_checkpoint_backends()), "checkpoint.backend")


def _choice(value: Any, valid: tuple[str, ...] | Mapping[str, str], key: str) -> str:
    """Lower-case ``value`` and check it is one of ``valid``; the error lists the valid options."""
    name = str(value).strip().lower().replace("-", "_")
    if name not in valid:
        options = ", ".join(sorted(valid))
        raise ValueError(f"Unknown {key}: {value!r}. Valid options are: {options}")
    return valid[name] if isinstance(valid, Mapping) else name


def _check_int(value: Any, key: str, *, minimum: int | None = None, optional: bool = True) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{key} must be an integer{' or None' if optional else ''}, got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{key} must be >= {minimum}, got {value}")


def _check_positive(value: Any, key: str, *, optional: bool = True) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"{key} must be a positive number, got {value!r}")


def resolve_async_mode(async_mode: Any, async_enabled: Any = True) -> str:
    r"""
    The effective ``checkpoint.async_mode``: one of ``async``, ``async_with_pinned_mem``, ``disabled``.

    ``None`` defers to ``async_enabled``; booleans and ``on``/``off``/``true``/``false`` spellings
    are accepted.

    Examples:
        >>> resolve_async_mode(None, False), resolve_async_mode("On"), resolve_async_mode(True)
        ('disabled', 'async', 'async')
    """
    mode = async_enabled if async_mode is None else async_mode
    if isinstance(mode, bool):
        return "async" if mode else "disabled"
    name = str(mode).strip().lower().replace("-", "_")
    return _choice(_ASYNC_MODE_ALIASES.get(name, name), ASYNC_MODES, "checkpoint.async_mode")


class CheckpointConfig(Section):
    r"""
    Where, when and how checkpoints are written (``config.checkpoint``).

    Only ``backend`` is part of the run's semantic identity; the rest is operational.

    Attributes:
        dir_name: Folder under the run directory that holds checkpoints.
        backend: ``"auto"``, ``"file"`` (one ``.pth`` file per save) or ``"dcp"``
            (``torch.distributed.checkpoint`` directories); ``auto`` picks ``dcp`` when the run
            is distributed.
        wait_timeout: Seconds to wait for pending asynchronous writes when the runner closes;
            ``None`` waits as long as it takes.
        interval: Save every ``interval`` epochs (epoch mode) or optimizer steps (step mode);
            history files follow the same cadence.  ``None`` lets the runner choose; ``<= 0``
            turns periodic saves off (forced and final saves still happen).
        keep_latest_k: Keep only the newest ``k`` history checkpoints; ``0`` keeps all.
        load_only: Never write checkpoints, even forced or final ones; loading still works.
        async_enabled: Write checkpoints on a background thread (used when ``async_mode`` is unset).
        async_mode: ``"async"``, ``"async_with_pinned_mem"`` or ``"disabled"``; overrides
            ``async_enabled`` when set.
        async_writer: What writes asynchronous ``file`` checkpoints: ``"process"`` (tensors
            staged in shared memory, ``torch.save`` in a child process, so pickling never holds
            the training process's GIL), ``"thread"`` (a thread of the training process) or
            ``"auto"`` (``process`` where the platform has ``/dev/shm``, else ``thread``).
        dedicated_async_process_group: Give asynchronous DCP saves their own process group so
            checkpoint traffic does not queue behind training collectives.
        async_process_group_backend: Backend of that process group.
        enable_ft_dataloader_checkpoints: Save each fault-tolerance replica's dataloader state
            under ``{ft_dataloader_checkpoint_prefix}-{ft_replica_id}``.
        ft_replica_id: Replica name for those folders; defaults to ``FT_REPLICA_ID``, then the rank.
        ft_dataloader_checkpoint_prefix: Prefix of the per-replica folders.
        exclude_from_loading: Payload keys to skip when loading (``"optimizer"``, ``"scheduler"``,
            ``"dataloaders"``, dotted keys such as ``"state.train"``); ``"data_loader"``,
            ``"dataloader"`` and ``"lr_scheduler"`` are accepted as aliases.
        last_save_model_only: The final save of a run also exports the model weights alone
            (``model.safetensors``).
        export_dtype: Cast floating-point weights of the model export to this dtype
            (``fp32``/``fp16``/``bf16``/``fp64`` and their long names).
        fail_on_error: Raise checkpoint write failures instead of warning and carrying on.
        fsync: Flush each checkpoint file to disk before its rename and the directory after the
            aliases move, so a power cut cannot leave ``latest`` naming an empty or truncated file.
            Off by default: a crashed, killed (``SIGKILL``) or ``SIGTERM``-ed process never
            corrupts ``latest`` either way (each save writes a new file and flips the alias to it
            atomically), and saves cost what ``torch.save`` costs.  Turn it on for power-loss
            durability; each save then waits for the disk (1.6x to 2x the time on ext4 here).
    """

    _path_ = "checkpoint"

    dir_name: str = "checkpoints"
    backend: str = "auto"
    wait_timeout: float | None = None
    interval: int | None = None
    keep_latest_k: int = 0
    load_only: bool = False
    async_enabled: bool = True
    async_mode: str | None = None
    async_writer: str = "auto"
    dedicated_async_process_group: bool = True
    async_process_group_backend: str = "gloo"
    enable_ft_dataloader_checkpoints: bool = False
    ft_replica_id: str | None = None
    ft_dataloader_checkpoint_prefix: str = "ft-replica"
    exclude_from_loading: list[str] | str | None = None
    last_save_model_only: bool = False
    export_dtype: str | None = None
    fail_on_error: bool = False
    fsync: bool = False

    def validate(self) -> None:
        super().validate()
        _check_backend_name(self.get("backend", "auto"))
        resolve_async_mode(self.get("async_mode"), self.get("async_enabled", True))
        _choice(self.get("async_writer", "auto"), ASYNC_WRITERS, "checkpoint.async_writer")
        _check_int(self.get("keep_latest_k", 0), "checkpoint.keep_latest_k", minimum=0, optional=False)
        _check_int(self.get("interval"), "checkpoint.interval")
        _check_positive(self.get("wait_timeout"), "checkpoint.wait_timeout")
        if self.get("export_dtype") is not None:
            _choice(self.get("export_dtype"), EXPORT_DTYPES, "checkpoint.export_dtype")

    def resolved_backend(self) -> str:
        """``backend`` lower-cased (``auto``, ``file``, ``dcp`` or a backend's own format, e.g. ``deepspeed``)."""
        return _check_backend_name(self.backend)

    def resolved_async_mode(self) -> str:
        """The effective async mode: ``async``, ``async_with_pinned_mem`` or ``disabled``."""
        return resolve_async_mode(self.async_mode, self.async_enabled)

    def resolved_export_dtype(self) -> str | None:
        """``export_dtype`` as a ``torch`` dtype name (``"bfloat16"``), or ``None``."""
        if self.export_dtype is None:
            return None
        return _choice(self.export_dtype, EXPORT_DTYPES, "checkpoint.export_dtype")


class DataloaderConfig(Section):
    r"""
    Keyword arguments for the runner's ``StatefulDataLoader``\ s (``config.dataloader``).

    Nothing is stored by default: a key you leave out stays out (reading it gives ``None``), and
    the runner applies its own per-split default (training splits shuffle and drop the last
    partial batch, others do neither).  A mapping under any other key overrides keys for the
    split of that name only, e.g. ``config.dataloader.train = {"shuffle": False}``; its keys are
    checked like these.  A misspelt key with a plain value is an error.

    Attributes:
        batch_size: Samples per batch on each process; ``None`` set explicitly turns batching off.
        shuffle: Shuffle every epoch (default: training splits only).
        drop_last: Drop the last partial batch (default: training splits only).
        num_workers: Worker processes loading data.
        persistent_workers: Keep workers alive between epochs.
        prefetch_factor: Batches each worker loads ahead.
        pin_memory: Copy batches into page-locked memory for faster transfers to the GPU.
        pin_memory_device: Device the pinned memory is for.
        in_order: Yield batches in sampler order even when workers finish out of order.
        snapshot_every_n_steps: How often ``StatefulDataLoader`` snapshots worker state.
        timeout: Seconds to wait for a batch from a worker.
        worker_init_fn: Called in each worker at start.
        multiprocessing_context: Start method of the workers.
        generator: Random generator of the sampler.

    Examples:
        >>> config = DataloaderConfig(batch_size=8, val={"batch_size": 32})
        >>> config.batch_size, config.shuffle, config.dict()
        (8, None, {'batch_size': 8, 'val': {'batch_size': 32}})
        >>> DataloaderConfig(batchsize=8)
        Traceback (most recent call last):
        danling.runners.config_fields.UnknownKeyError: unknown key 'batchsize' in dataloader; did you mean 'batch_size'?
    """

    _path_ = "dataloader"
    _split_overrides_ = True

    batch_size = Field(None, int, doc="Samples per batch on each process.")
    shuffle = Field(None, bool, doc="Shuffle every epoch.")
    drop_last = Field(None, bool, doc="Drop the last partial batch.")
    num_workers = Field(None, int, doc="Worker processes loading data.")
    persistent_workers = Field(None, bool, doc="Keep workers alive between epochs.")
    prefetch_factor = Field(None, int, doc="Batches each worker loads ahead.")
    pin_memory = Field(None, bool, doc="Copy batches into page-locked memory.")
    pin_memory_device = Field(None, str, doc="Device the pinned memory is for.")
    in_order = Field(None, bool, doc="Yield batches in sampler order.")
    snapshot_every_n_steps = Field(None, int, doc="How often worker state is snapshotted.")
    timeout = Field(None, float, doc="Seconds to wait for a batch from a worker.")
    worker_init_fn = Field(None, Callable, doc="Called in each worker at start.")
    multiprocessing_context = Field(None, doc="Start method of the workers.")
    generator = Field(None, doc="Random generator of the sampler.")


class OptimConfig(OpenSection):
    r"""
    The optimizer the runner builds (``config.optim``, or ``config.optimizer``).

    An open section: every key but ``type`` and ``param_groups`` is passed to the optimizer's
    constructor (``momentum``, ``eps``, ...), which rejects the ones it does not take.  Set
    ``optim`` or ``optimizer``, not both.

    Attributes:
        type: Optimizer name (``"sgd"``, ``"adamw"``, ...; see ``danling.runners.optim.OPTIMIZERS``).
        lr: Learning rate.
        weight_decay: Weight decay.
        betas: Adam-style ``(beta1, beta2)``.
        param_groups: Parameter groups, each a mapping with a ``pattern`` (``re.search`` against
            parameter names) and its own options (``lr``, ``weight_decay``, ...) or multipliers
            of the optimizer-level values (``lr_multiplier``, ``weight_decay_multiplier``,
            ``beta1``, ``beta2``).

    Examples:
        >>> config = OptimConfig(type="sgd", lr=0.1, momentum=0.9)
        >>> config.type, config.lr, config.weight_decay, config.momentum
        ('sgd', 0.1, None, 0.9)
    """

    _path_ = "optim"

    type = Field(None, str, doc="Optimizer name.")
    lr = Field(None, float, doc="Learning rate.")
    weight_decay = Field(None, float, doc="Weight decay.")
    betas = Field(None, (list, tuple), doc="Adam-style (beta1, beta2).")
    param_groups = Field(None, (list, tuple), doc="Pattern-matched parameter groups.")


class SchedConfig(OpenSection):
    r"""
    The learning-rate scheduler the runner builds (``config.sched``, or ``config.scheduler``).

    An open section: every key but ``type``, ``interval`` and ``monitor`` is passed to the
    scheduler's constructor.  Set ``sched`` or ``scheduler``, not both.

    Attributes:
        type: Scheduler name (see ``danling.optim.SCHEDULERS``).
        interval: When it steps: ``"step"`` (after each optimizer step; the default for
            schedulers without a metric), ``"epoch"`` or ``"validation"`` (after each evaluated
            round; the default for metric schedulers such as ``ReduceLROnPlateau``).
        monitor: Metric a metric scheduler steps on, a dotted path such as ``"val.loss"``;
            unset, the runner uses ``score_split``/``score_name``.
        total_steps: Length of the schedule in optimizer steps; unset, the run's ``steps``.

    Examples:
        >>> config = SchedConfig(type="cosine", warmup_steps=10)
        >>> config.type, config.interval, config.warmup_steps
        ('cosine', None, 10)
    """

    _path_ = "sched"

    type = Field(None, str, doc="Scheduler name.")
    interval = Field(None, str, doc="When the scheduler steps.")
    monitor = Field(None, str, doc="Metric a metric scheduler steps on.")
    total_steps = Field(None, int, doc="Length of the schedule in optimizer steps.")


class DeepSpeedConfig(OpenSection):
    r"""
    A DeepSpeed config (``config.deepspeed``), passed to ``deepspeed.initialize`` by the DeepSpeed runner.

    Free-form: it holds DeepSpeed's own keys (``zero_optimization``, ``gradient_clipping``,
    ...), which DeepSpeed validates.  The runner fills what it derives (batch sizes from the
    dataloader and ``accum_steps``, ``fp16``/``bf16`` from ``precision``); keys set here win.

    Examples:
        >>> DeepSpeedConfig({"zero_optimization": {"stage": 2}}).zero_optimization.stage
        2
    """

    _path_ = "deepspeed"


class CompileConfig(Section):
    r"""
    ``torch.compile`` settings (``config.compile``); part of the run's semantic identity.

    Attributes:
        enable: Compile the model at the points the runner chooses.
        backend: ``torch.compile`` backend (``None``: torch's default).
        fullgraph: ``torch.compile(fullgraph=...)``; ``None`` leaves torch's default.
        dynamic: ``torch.compile(dynamic=...)``; ``None`` leaves torch's default.
        mode: ``torch.compile(mode=...)``, e.g. ``"max-autotune"``.
        options: ``torch.compile(options=...)``.
        optimize_ddp: Value for ``torch._dynamo.config.optimize_ddp`` (one of ``OPTIMIZE_DDP_MODES``),
            set process-wide when the model is compiled; ``None`` leaves torch's setting.
        precompile_artifact_dir: Cache folder for compiled artifacts of graph runners; eager
            runners ignore it.
        memory_policy: Memory policy label for experimental graph runners (``None`` or ``"default"``).
    """

    _path_ = "compile"

    enable: bool = False
    backend: str | None = None
    fullgraph: bool | None = None
    dynamic: bool | None = None
    mode: str | None = None
    options: dict | None = None
    optimize_ddp: str | None = "ddp_optimizer"
    precompile_artifact_dir: str | None = None
    memory_policy: str | None = None

    def validate(self) -> None:
        super().validate()
        if self.get("optimize_ddp") is not None:
            _choice(self.get("optimize_ddp"), OPTIMIZE_DDP_MODES, "compile.optimize_ddp")


class CommConfig(Section):
    r"""
    Process-group timeouts (``config.comm``).

    Attributes:
        init_timeout_seconds: Timeout of the process group while it starts up; ``None`` keeps
            torch's default.
        train_timeout_seconds: Shorter timeout applied once the first optimizer step succeeded,
            so a hung rank is noticed sooner during training.
    """

    _path_ = "comm"

    init_timeout_seconds: int | None = None
    train_timeout_seconds: int | None = None

    def validate(self) -> None:
        super().validate()
        _check_int(self.get("init_timeout_seconds"), "comm.init_timeout_seconds", minimum=1)
        _check_int(self.get("train_timeout_seconds"), "comm.train_timeout_seconds", minimum=1)


class GcConfig(Section):
    r"""
    Paced Python garbage collection (``config.gc``).

    Attributes:
        interval: Collect every ``interval`` optimizer steps; ``None`` leaves collection to Python.
        generation: Generation passed to ``gc.collect`` (0, 1 or 2).
        disable_automatic: Turn Python's automatic collection off while pacing is on, so
            collections happen only between steps.
    """

    _path_ = "gc"

    interval: int | None = None
    generation: int = 1
    disable_automatic: bool = True

    def validate(self) -> None:
        super().validate()
        _check_int(self.get("interval"), "gc.interval", minimum=1)
        generation = self.get("generation", 1)
        if generation not in (0, 1, 2) or isinstance(generation, bool):
            raise ValueError(f"gc.generation must be one of 0, 1, or 2, got {generation!r}")


class ProfilingConfig(Section):
    r"""
    A bounded ``torch.profiler`` trace (``config.profiling``).

    Attributes:
        enabled: Record a trace.
        wait: Steps skipped before warming up.
        warmup: Steps profiled but discarded.
        active: Steps recorded.
        repeat: Number of wait/warmup/active cycles (``None``: torch's default).
        record_shapes: Record operator input shapes.
        profile_memory: Record tensor allocations.
        with_stack: Record Python call stacks.
        with_flops: Estimate FLOPs of matrix operations.
        trace_dir: Output folder, relative to the run directory unless absolute.
    """

    _path_ = "profiling"

    enabled: bool = False
    wait: int = 1
    warmup: int = 1
    active: int = 3
    repeat: int | None = None
    record_shapes: bool = False
    profile_memory: bool = False
    with_stack: bool = False
    with_flops: bool = False
    trace_dir: str = "profiles"


class HeartbeatConfig(Section):
    r"""
    A per-rank JSON progress file that watchdogs can poll (``config.heartbeat``).

    Attributes:
        enabled: Write the heartbeat file.
        interval_seconds: Seconds between writes.
        dir_name: Folder under the run directory for the files.
    """

    _path_ = "heartbeat"

    enabled: bool = False
    interval_seconds: float = 60.0
    dir_name: str = "heartbeats"

    def validate(self) -> None:
        super().validate()
        _check_positive(self.get("interval_seconds", 60.0), "heartbeat.interval_seconds", optional=False)


class WandbConfig(Section):
    r"""
    Weights & Biases scalar logging (``config.wandb``).  Every field but ``enabled`` is optional.

    Attributes:
        enabled: Log scalars to W&B (needs the ``wandb`` package).
        project: Project name (default: the lineage).
        entity: Team or user that owns the run.
        group: Group name (default: the experiment).
        name: Display name (default: the run id).
        job_type: Job type label.
        tags: Tags, a list or one string.
        dir: Local folder for W&B files (default: the run directory).
        mode: ``"online"``, ``"offline"`` or ``"disabled"``.
    """

    _path_ = "wandb"

    enabled: bool = False
    project: str | None = None
    entity: str | None = None
    group: str | None = None
    name: str | None = None
    job_type: str | None = None
    tags: list[str] | str | None = None
    dir: str | None = None
    mode: str | None = None


class FaultToleranceConfig(Section):
    r"""
    TorchFT replica groups (``config.ft``).

    Attributes:
        enabled: Let TorchFT manage replica groups that can fail and rejoin.
        process_group: Backend TorchFT coordinates over: ``"gloo"`` or ``"nccl"``.
        process_group_timeout_ms: Timeout of that process group in milliseconds.
        replica_id: This run's replica group, in ``[0, group_size)``.
        group_size: Number of replica groups.
        min_replica_size: Fewest healthy replica groups a step needs.
        lighthouse: Address of the ``torchft_lighthouse`` (``http://host:port``); unset: ``$TORCHFT_LIGHTHOUSE``.
    """

    _path_ = "ft"

    enabled: bool = False
    process_group: str = "gloo"
    process_group_timeout_ms: int = 10000
    replica_id: int = 0
    group_size: int = 1
    min_replica_size: int = 1
    lighthouse: str | None = None

    def validate(self) -> None:
        super().validate()
        _choice(self.get("process_group", "gloo"), FT_PROCESS_GROUPS, "ft.process_group")
        _check_int(self.get("process_group_timeout_ms", 1), "ft.process_group_timeout_ms", minimum=1)
        _check_int(self.get("group_size", 1), "ft.group_size", minimum=1)
        _check_int(self.get("min_replica_size", 1), "ft.min_replica_size", minimum=1)
        replica_id, group_size = self.get("replica_id", 0), self.get("group_size", 1)
        if isinstance(replica_id, bool) or not isinstance(replica_id, int) or not 0 <= replica_id < group_size:
            raise ValueError(f"ft.replica_id must be in [0, {group_size - 1}], got {replica_id!r}")


class FsdpConfig(Section):
    r"""
    FSDP2 wrapping for the parallel runner (``config.fsdp``); absent unless you set it.

    Attributes:
        enabled: Shard the model with FSDP2; the mesh comes from ``parallel.axes``.
        reshard_after_forward: FSDP2's ``reshard_after_forward`` (``None``: its default).
        mp_policy: Mixed-precision policy, an ``MixedPrecisionPolicy`` or its keyword mapping.
        offload_policy: CPU offload policy, an ``OffloadPolicy`` or its keyword mapping.
        mesh: An explicit device mesh.
        shard_placement_fn: Chooses the shard dimension of each parameter.
        ignored_params: Parameters FSDP leaves alone.
    """

    _path_ = "fsdp"

    enabled: bool = False
    reshard_after_forward: bool | int | None = None
    mp_policy: Any = None
    offload_policy: Any = None
    mesh: Any = None
    shard_placement_fn: Any = None
    ignored_params: Any = None


class ParallelAxesConfig(Section):
    r"""
    Degrees of each parallel dimension (``config.parallel.axes``); their product is the world size.

    Set one axis (usually ``shard``) to ``-1`` to fill it from ``WORLD_SIZE`` and the others.

    Attributes:
        replicate: Data replication (DDP / HSDP replicas).
        shard: Data sharding (FSDP).
        context: Context (sequence) parallelism.
        pipeline: Pipeline stages.
        tensor: Tensor parallelism.
        expert: Expert parallelism for mixture-of-experts layers.
        expert_tensor: Tensor parallelism inside experts.
    """

    _path_ = "parallel.axes"

    replicate: int = 1
    shard: int = 1
    context: int = 1
    pipeline: int = 1
    tensor: int = 1
    expert: int = 1
    expert_tensor: int = 1


class ParallelConfig(Section):
    r"""
    Multi-dimensional parallelism for the parallel runner (``config.parallel``).

    Attributes:
        pipeline_schedule: Name of a ``torch.distributed.pipelining`` schedule class.
        pipeline_microbatch_size: Samples per pipeline micro-batch; the schedule runs
            ``dataloader.batch_size // pipeline_microbatch_size`` of them.
        pipeline_n_microbatches: Number of micro-batches, overriding the size-based count.
        module_fqns_per_model_part: Module names of each pipeline stage, for simple splits;
            its length must be a multiple of ``axes.pipeline``.
        use_device_mesh: Build a ``DeviceMesh`` for the axes.
        mesh_device_type: Device type of that mesh (``None``: from the accelerator).
        allow_degree_change: Allow resuming with different non-FSDP degrees.
        axes: Degree of each parallel dimension.
    """

    _path_ = "parallel"

    pipeline_schedule: str = "1F1B"
    pipeline_microbatch_size: int = 1
    pipeline_n_microbatches: int | None = None
    module_fqns_per_model_part: list[list[str]] | None = None
    use_device_mesh: bool = True
    mesh_device_type: str | None = None
    allow_degree_change: bool = False
    axes: ParallelAxesConfig

    def __post_init__(self, *args: Any, **kwargs: Any) -> None:
        super().__post_init__(*args, **kwargs)
        if "axes" not in self:
            self.axes = ParallelAxesConfig()
