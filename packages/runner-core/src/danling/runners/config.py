"""``RunnerConfig``: every setting of a run, its validation, and its semantic identity.

A run's *identity* (``config_id``) is a hash of the settings that change what is computed
(model, optimisation, data, seed, budget ...), not of where or how results are written (logging,
resume paths, checkpoint cadence ...).  ``canonical()`` is that semantic part; two configs with
the same ``canonical()`` share a run directory, which is how ``auto_resume`` finds a run's
latest checkpoint again.
"""

from __future__ import annotations

import hashlib
import math
import re
import warnings
from collections.abc import Mapping
from functools import cache
from typing import Any

import chanfig

from .config_fields import Field, OpenSection, Section, UnknownKeyError, check_known_keys, is_declared_path
from .config_sections import (
    ASYNC_MODES,
    CHECKPOINT_BACKENDS,
    EXPORT_DTYPES,
    FT_PROCESS_GROUPS,
    CheckpointConfig,
    CommConfig,
    CompileConfig,
    DataloaderConfig,
    DeepSpeedConfig,
    FaultToleranceConfig,
    FsdpConfig,
    GcConfig,
    HeartbeatConfig,
    OptimConfig,
    ParallelAxesConfig,
    ParallelConfig,
    ProfilingConfig,
    SchedConfig,
    WandbConfig,
    _check_int,
    _check_positive,
    _choice,
    resolve_async_mode,
)
from .registry import STACK_ALIASES, normalize_stack_name, valid_stack_names

#: Top-level keys that do not change what a run computes; ``canonical()`` drops them.
NON_SEMANTIC_CONFIG_KEYS = frozenset(
    {
        "score_split",
        "score_name",
        "score",
        "log",
        "log_interval",
        "tensorboard",
        "wandb",
        "ft",
        "workspace_root",
        "comm",
        "gc",
        "profiling",
        "heartbeat",
        "lineage",
        "experiment",
        "resume",
        "pretrained",
        "auto_resume",
        "dir",
        "log_file",
        "checkpoint_dir",
    }
)
#: ``checkpoint.*`` keys that do not change what a run computes (all but ``backend``).
#: Keys of ``parallel`` that say how a run may be resumed, not what it computes: turning
#: ``allow_degree_change`` on to resume with another degree must not make the run a different one.
NON_SEMANTIC_PARALLEL_KEYS = frozenset({"allow_degree_change"})

NON_SEMANTIC_CHECKPOINT_KEYS = frozenset(
    {
        "dir_name",
        "wait_timeout",
        "interval",
        "keep_latest_k",
        "load_only",
        "async_enabled",
        "async_mode",
        "async_writer",
        "dedicated_async_process_group",
        "async_process_group_backend",
        "enable_ft_dataloader_checkpoints",
        "ft_replica_id",
        "ft_dataloader_checkpoint_prefix",
        "exclude_from_loading",
        "last_save_model_only",
        "export_dtype",
        "fail_on_error",
        "fsync",
    }
)
#: ``precision`` spellings -> autocast dtype name.
PRECISIONS = {"fp16": "float16", "float16": "float16", "half": "float16", "bf16": "bfloat16", "bfloat16": "bfloat16"}
#: ``sched.interval`` / ``scheduler.interval`` values.
SCHEDULER_INTERVALS = ("step", "epoch", "validation")

_SECTIONS = (
    ("compile", CompileConfig),
    ("comm", CommConfig),
    ("gc", GcConfig),
    ("profiling", ProfilingConfig),
    ("heartbeat", HeartbeatConfig),
    ("wandb", WandbConfig),
    ("ft", FaultToleranceConfig),
    ("checkpoint", CheckpointConfig),
    ("parallel", ParallelConfig),
)
#: Sections present only once set or first touched (``config.optim.lr = 0.1`` creates ``optim``).
#: ``None`` or left at their defaults they count as absent for the run's identity, so reading
#: one never changes ``config_id``.
_ON_DEMAND_SECTIONS = (
    ("dataloader", DataloaderConfig),
    ("fsdp", FsdpConfig),
    ("optim", OptimConfig),
    ("optimizer", OptimConfig),
    ("sched", SchedConfig),
    ("scheduler", SchedConfig),
    ("deepspeed", DeepSpeedConfig),
)
_UNRECOGNIZED = re.compile(r"Unrecognized argument '--([\w.]+)'")
#: Keys that name the same setting; a config sets at most one of each pair.
_ALIASES = (("optim", "optimizer"), ("sched", "scheduler"))


def _as_ema(value: Any) -> Any:
    """``config.ema`` as stored: ``None`` (no EMA) or the EMA section (``danling.runners.ema.EmaConfig``)."""
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise TypeError(f"ema must be a mapping of EMA settings (decay, warmup_steps, ...) or None, got {value!r}")
    try:
        from .ema import EmaConfig
    except ImportError:  # runner-core without its EMA module: keep the settings as they are
        return value
    return value if isinstance(value, EmaConfig) else EmaConfig(value)


@cache
def _pristine(section: type) -> dict[str, Any]:
    return section().dict()


class RunnerConfig(OpenSection):
    r"""
    All settings of a run: a ``chanfig.Config`` with typed sections, validated when built and parsed.

    Values are reached as attributes or items, nested or dotted (``config.optim.lr``,
    ``config["optim"]["lr"]``, ``config["optim.lr"]``, ``config.get("optim.lr")``); assigning
    below a missing key creates it.  ``parse()`` applies command-line overrides
    (``--epochs 5 --optim.lr 0.01``); ``yaml(path)`` / ``json(path)`` write the config and
    ``RunnerConfig.from_yaml(path)`` / ``from_json(path)`` (or ``RunnerConfig(path)``) read it back
    with the same section types.  Keep everything needed to reproduce a run here: checkpoints
    store the config, and resuming checks that its semantic part still matches.

    Sections (see ``danling.runners.config_sections``): ``checkpoint``, ``compile``, ``comm``,
    ``gc``, ``profiling``, ``heartbeat``, ``wandb``, ``ft``, ``parallel`` (always present) and
    ``dataloader``, ``fsdp``, ``optim``/``optimizer``, ``sched``/``scheduler``, ``deepspeed``
    (present once set or first touched).  Sections are closed: a key one does not declare raises
    ``UnknownKeyError`` naming the closest valid key (``checkpoint.intervall`` ->
    ``did you mean 'interval'?``); ``optim``, ``sched`` and ``deepspeed`` also take free-form
    keys for the optimizer, the scheduler and DeepSpeed.  The top level takes your own keys
    (``network``, ``learning_rate``, ...) as plain values or ``Config`` objects.

    Keys below marked *(unset)* are declared but stored only once set: unset, they read as the
    default given and stay out of ``dict()`` and the run's identity.

    Attributes:
        stack: Runner backend for ``danling.runners.Runner``: ``"auto"`` (= ``"ddp"``),
            ``"ddp"``/``"torch"``, ``"deepspeed"``/``"ds"``, ``"parallel"``, or a name registered
            by an installed package.
        seed: Base random seed; each process adds its rank.  ``None`` lets the runner draw one.
        deterministic: Ask PyTorch for deterministic kernels (slower, reproducible).
        steps: Train until this many optimizer steps are done (step mode).
        epochs: Train this many epochs (epoch mode).  Set ``steps`` or ``epochs``, not both;
            with neither the runner works in step mode and derives no budget.
        accum_steps: Micro-batches accumulated per optimizer step.
        score_split: Split whose metric selects the best checkpoint; ``None`` picks the first
            split starting with ``val``, else the first evaluation split.
        score_name: Metric that selects the best checkpoint; lower is better for ``"loss"``
            only, higher for everything else.
        workspace_root: Folder that holds all experiments.
        auto_resume: Resume from this run's ``latest`` checkpoint.  Precedence when several
            are set: ``resume`` > ``auto_resume`` > ``pretrained``.
        resume: Checkpoint to restore fully (model, optimizer, scheduler, data position, RNG).
        pretrained: Checkpoint whose model weights initialise the model (fine-tuning).
        log: Write a log file (on the main process).
        tensorboard: Write TensorBoard scalars.
        log_interval: Iterations between progress lines; ``0`` turns them off; ``None`` derives it from the budget.
        lineage: *(unset: "lin")* Top folder of the run under ``workspace_root``; the code
            version (git hash) is appended when known.
        experiment: *(unset: "exp")* Experiment name.
        name: *(unset: None)* Display name; ``None`` means ``"{lineage}-{experiment}"``.
        dir: *(unset: None)* Run directory, replacing ``{workspace_root}/{lineage}/{id}``.
        log_file: *(unset: None)* Log file, replacing ``{dir}/logs/{timestamp}.log``.
        checkpoint_dir: *(unset: None)* Checkpoint folder, replacing ``{dir}/{checkpoint.dir_name}``.
        train_splits: *(unset: None)* Splits to train on (a name or a list); ``None`` picks the
            splits named ``train`` or whose dataset says it is for training.
        evaluate_splits: *(unset: None)* Splits to evaluate (a name or a list); ``None`` picks
            every split that is not a training split.
        patience: *(unset: inf)* Evaluations without a better score before an epoch-mode run
            stops early.
        precision: *(unset: None)* Autocast dtype: ``"fp16"``/``"float16"``/``"half"`` or
            ``"bf16"``/``"bfloat16"``; ``None`` runs in full precision.
        max_grad_norm: *(unset: None)* Clip the total gradient norm to this before each step.
        max_grad_value: *(unset: None)* Clip every gradient element to ``[-value, value]``.
        skip_nonfinite_grad: *(unset: False)* Skip an optimizer step whose gradients hold
            ``inf``/``nan`` (all ranks skip together) instead of applying it.
        backend: *(unset: None)* ``torch.distributed`` backend (``"gloo"``, ``"nccl"``);
            ``None`` reads ``$BACKEND``, then picks the device's default.
        init_method: *(unset: None)* ``torch.distributed`` init method; ``None`` reads
            ``$INIT_METHOD``, then uses the environment (``env://``).
        adopt_process_group: *(unset: False)* Use a default process group that something else
            started (a launcher, DeepSpeed) instead of refusing to run; the runner then leaves
            it open on close. Unset, a runner launched with ``WORLD_SIZE > 1`` refuses such a group,
            as the spec's runner does.
        activation_checkpoint: *(unset: None)* Recompute activations in backward: ``True`` or a
            mode (``"full"``, ``"selective"``, ``"op"``), an integer ``n`` (every ``n``-th
            block), or ``{"mode": ..., "every": ...}``; ``None``/``False`` turns it off.
        graceful_sigint: *(unset: False)* Handle ``SIGINT`` (Ctrl-C) like ``SIGTERM``: every
            rank stops at the same step boundary, writes a checkpoint and exits with status 0.
        ema: *(unset: None)* Exponential moving average of the weights
            (``danling.runners.ema.EmaConfig``: ``decay``, ``warmup_steps``, ``interval``,
            ``device``, ``evaluate``); ``None`` runs without one.
        checkpoint: Where, when and how checkpoints are written (``CheckpointConfig``).
        compile: ``torch.compile`` settings (``CompileConfig``).
        comm: Process-group timeouts (``CommConfig``).
        gc: Paced garbage collection (``GcConfig``).
        profiling: A bounded ``torch.profiler`` trace (``ProfilingConfig``).
        heartbeat: Per-rank progress files for watchdogs (``HeartbeatConfig``).
        wandb: Weights & Biases logging (``WandbConfig``).
        ft: TorchFT replica groups (``FaultToleranceConfig``).
        parallel: Parallel dimensions of the parallel runner (``ParallelConfig``).
        optim: The optimizer (``OptimConfig``: ``type``, ``lr``, ...).
        optimizer: Alias of ``optim``.
        sched: The LR scheduler (``SchedConfig``: ``type``, ``interval``, ``monitor``, ...).
        scheduler: Alias of ``sched``.
        dataloader: Keyword arguments of the data loaders (``DataloaderConfig``).
        fsdp: FSDP2 settings of the parallel runner (``FsdpConfig``).
        deepspeed: DeepSpeed's own config for the DeepSpeed runner (``DeepSpeedConfig``).

    Examples:
        Attribute and item access reach the same values; missing levels are created:

        >>> config = RunnerConfig()
        >>> config.optim.lr = 1e-3
        >>> config.network.type = "resnet50"
        >>> config["optim"]["lr"], config["network.type"]
        (0.001, 'resnet50')
        >>> config.epochs = 10
        >>> config.optim.weight_decay = 1e-4
        >>> config.optim.dict()
        {'lr': 0.001, 'weight_decay': 0.0001}

        Sections are typed, and a partial mapping gets the section's defaults:

        >>> config = RunnerConfig({"checkpoint": {"backend": "DCP"}})
        >>> type(config.checkpoint).__name__, config.checkpoint.keep_latest_k
        ('CheckpointConfig', 0)

        Class annotations declare keys with defaults:

        >>> class MyConfig(RunnerConfig):
        ...     epochs: int = 10
        ...     learning_rate: float = 0.001
        >>> MyConfig().epochs, MyConfig().dict()["learning_rate"]
        (10, 0.001)

        Command-line overrides, validated after parsing:

        >>> config = MyConfig().parse(["--epochs", "20", "--optim.lr", "0.01"])
        >>> config.epochs, config.optim.lr
        (20, 0.01)
        >>> RunnerConfig(steps=100, epochs=2)
        Traceback (most recent call last):
        ValueError: `steps` and `epochs` are mutually exclusive; set only one training boundary

        A subclass can set nested defaults in ``__init__`` and derive values in ``post``:

        >>> class TrainingConfig(RunnerConfig):
        ...     epochs: int = 100
        ...     def __init__(self, *args, **kwargs):
        ...         super().__init__(*args, **kwargs)
        ...         self.network.type = "mlp"
        ...         self.optim.lr = 1e-3
        ...     def post(self):
        ...         super().post()
        ...         self.experiment = f"{self.network.type}_{self.optim.lr}"
        >>> TrainingConfig().parse(["--optim.lr", "0.1"]).experiment
        'mlp_0.1'

        Settings that do not change the computation do not change the identity:

        >>> config_id(RunnerConfig(log=False, resume="x.pth")) == config_id(RunnerConfig())
        True
        >>> config_id(RunnerConfig(stack="torch")) == config_id(RunnerConfig(stack="ddp"))
        True
        >>> config_id(RunnerConfig(epochs=1)) == config_id(RunnerConfig())
        False
    """

    stack: str = "auto"

    seed: int | None = None
    deterministic: bool = False

    steps: int | None = None
    epochs: int | None = None
    accum_steps: int = 1

    score_split: str | None = None
    score_name: str = "loss"

    workspace_root: str = "experiments"
    auto_resume: bool = False
    resume: str | None = None
    pretrained: str | None = None
    log: bool = True
    tensorboard: bool = False
    log_interval: int | None = None

    lineage = Field("lin", str, doc="Top folder of the run under workspace_root.")
    experiment = Field("exp", str, doc="Experiment name.")
    name = Field(None, str, doc="Display name; None means '{lineage}-{experiment}'.")
    dir = Field(None, str, doc="Run directory override.")
    log_file = Field(None, str, doc="Log file override.")
    checkpoint_dir = Field(None, str, doc="Checkpoint folder override.")
    train_splits = Field(None, (list, tuple, str), doc="Splits to train on.")
    evaluate_splits = Field(None, (list, tuple, str), doc="Splits to evaluate.")
    patience = Field(math.inf, float, optional=True, doc="Evaluations without improvement before stopping.")
    precision = Field(None, str, doc="Autocast dtype; None is full precision.")
    max_grad_norm = Field(None, float, doc="Clip the total gradient norm to this.")
    max_grad_value = Field(None, float, doc="Clip every gradient element to [-value, value].")
    skip_nonfinite_grad = Field(False, bool, doc="Skip optimizer steps with non-finite gradients.")
    backend = Field(None, str, doc="torch.distributed backend; None reads $BACKEND.")
    init_method = Field(None, str, doc="torch.distributed init method; None reads $INIT_METHOD.")
    adopt_process_group = Field(False, bool, doc="Use a default process group started elsewhere.")
    activation_checkpoint = Field(None, (bool, int, str, Mapping), doc="Activation checkpointing policy.")
    graceful_sigint = Field(False, bool, doc="Handle SIGINT like SIGTERM: checkpoint, then exit.")
    ema = Field(None, coerce=_as_ema, doc="EMA of the weights; None runs without one.")

    compile: CompileConfig
    comm: CommConfig
    gc: GcConfig
    profiling: ProfilingConfig
    heartbeat: HeartbeatConfig
    wandb: WandbConfig
    ft: FaultToleranceConfig
    checkpoint: CheckpointConfig
    parallel: ParallelConfig
    # On-demand sections; ``None`` (``optim: null``) reads as "not configured" too.
    dataloader: DataloaderConfig | None
    fsdp: FsdpConfig | None
    optim: OptimConfig | None
    optimizer: OptimConfig | None
    sched: SchedConfig | None
    scheduler: SchedConfig | None
    deepspeed: DeepSpeedConfig | None

    def __post_init__(self, *args: Any, **kwargs: Any) -> None:
        super().__post_init__(*args, **kwargs)
        for key, section in _SECTIONS:
            if key not in self:
                self.set(key, section())
            elif not isinstance(self.get(key), section):
                self.set(key, section(self.get(key)))
        # chanfig calls ``validate()`` right after this hook.

    @classmethod
    def from_dict(cls, obj: Any) -> Any:
        """
        Build from a mapping (``from_yaml``/``from_json`` land here): defaults first, then ``obj`` on top.

        Starting from ``cls()`` keeps defaults a subclass sets in ``__init__`` from overriding the
        loaded values, and gives nested sections their declared types.
        """
        if not isinstance(obj, Mapping):
            return super().from_dict(obj)
        config = cls()
        config.merge(obj)
        config.validate()
        return config

    def parse(self, *args: Any, **kwargs: Any) -> Any:
        """
        Apply command-line overrides (see ``chanfig.Config.parse``), then ``post()`` and ``validate()``.

        chanfig warns about an option that is not in the config yet and resembles one that is;
        a declared key that is simply unset (``--sched.interval``) is not such a typo, so its
        warning is dropped.  Misspelt keys of sections fail in ``validate()``.
        """
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                return super().parse(*args, **kwargs)
        finally:
            for warning in caught:
                option = _UNRECOGNIZED.match(str(warning.message))
                if option is None or not is_declared_path(type(self), option.group(1)):
                    warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)

    def post(self) -> None:
        """Hook run after ``parse()``; subclasses derive values here and call ``super().post()``."""
        super().post()
        self.validate()

    def validate(self) -> None:
        """
        Check every value; raise ``ValueError``/``TypeError`` naming the key, the value and what is valid.

        A key a section does not declare raises ``UnknownKeyError`` (a ``ValueError`` and a
        ``KeyError``) naming the section and the closest valid key.  Runs when the config is
        built and after ``parse()``; call it again after editing a config in code.
        """
        super().validate()  # declared fields' and chanfig's annotation types, unknown keys in sections
        if self.get("steps") is not None and self.get("epochs") is not None:
            raise ValueError("`steps` and `epochs` are mutually exclusive; set only one training boundary")
        _check_int(self.get("steps"), "steps", minimum=0)
        _check_int(self.get("epochs"), "epochs", minimum=0)
        _check_int(self.get("accum_steps", 1), "accum_steps", minimum=1, optional=False)
        _check_int(self.get("log_interval"), "log_interval", minimum=0)
        _check_stack(self.get("stack", "auto"))
        if isinstance(self.ema, chanfig.Config) and not isinstance(self.ema, Section):
            check_known_keys(self.ema, "ema")  # the ``Section``s checked themselves above
        for key, alias in _ALIASES:
            if self.get(key) and self.get(alias):
                raise ValueError(f"`{key}` and `{alias}` name the same settings; set only one of them")
        if self.precision is not None:
            _choice(self.precision, PRECISIONS, "precision")
        _check_positive(self.max_grad_norm, "max_grad_norm")
        _check_positive(self.max_grad_value, "max_grad_value")
        if self.patience is not None and self.patience < 0:
            raise ValueError(f"patience must be >= 0, got {self.patience!r}")
        for key in ("sched.interval", "scheduler.interval"):
            if key in self and self[key] is not None:  # ``in`` first: a dotted ``get`` would create ``sched``
                _choice(self[key], SCHEDULER_INTERVALS, key)

    def canonical(self) -> chanfig.NestedDict:
        r"""
        The semantic part of the config: what decides the numbers a run produces.

        ``stack`` is normalised (``"torch"`` and ``"auto"`` become ``"ddp"``),
        ``checkpoint`` keeps only its lower-cased ``backend``, operational keys
        (``NON_SEMANTIC_CONFIG_KEYS``) are dropped, ``fsdp``/``parallel`` are dropped
        unless ``stack`` is ``"parallel"``, and on-demand sections (``optim``, ``dataloader``,
        ``fsdp``, ...) that are ``None`` or at their defaults are dropped: reading
        ``config.optim`` creates an empty section, which must not change the run's identity.

        Examples:
            >>> RunnerConfig(stack="Torch", log=False, checkpoint={"backend": "DCP"}).canonical().dict()
            ... # doctest: +NORMALIZE_WHITESPACE
            {'stack': 'ddp', 'seed': None, 'deterministic': False, 'steps': None, 'epochs': None,
             'accum_steps': 1, 'compile': {...}, 'checkpoint': {'backend': 'dcp'}}
        """
        canonical = chanfig.NestedDict(self.dict())
        stack = normalize_stack_name(canonical.get("stack", "auto"))
        canonical["stack"] = stack
        for key in NON_SEMANTIC_CONFIG_KEYS:
            canonical.pop(key, None)
        checkpoint = canonical.pop("checkpoint", None)
        if isinstance(checkpoint, Mapping):
            semantic = {key: value for key, value in checkpoint.items() if key not in NON_SEMANTIC_CHECKPOINT_KEYS}
            if semantic.get("backend") is not None:
                semantic["backend"] = str(semantic["backend"]).strip().lower()
            if semantic:
                canonical["checkpoint"] = semantic
        if stack != "parallel":
            canonical.pop("fsdp", None)
            canonical.pop("parallel", None)
        elif isinstance(canonical.get("parallel"), Mapping):
            for key in NON_SEMANTIC_PARALLEL_KEYS:
                canonical["parallel"].pop(key, None)
        for key, section in _ON_DEMAND_SECTIONS:
            if key in canonical and (canonical[key] is None or canonical[key] == _pristine(section)):
                del canonical[key]
        return canonical

    def __hash__(self) -> int:
        """Stable across processes and sessions: the first 8 bytes of the SHA-1 of ``canonical()`` as YAML."""
        digest = hashlib.sha1(self.canonical().yamls().encode("utf-8")).digest()
        return int.from_bytes(digest[:8], byteorder="big", signed=False)


def _check_stack(stack: Any) -> None:
    name = normalize_stack_name(stack)
    if name in STACK_ALIASES.values():
        return
    valid = valid_stack_names()
    if name not in valid:
        raise ValueError(f"Unknown stack: {stack!r}. Valid options are: {', '.join(valid)}")


def config_id(config: RunnerConfig) -> str:
    r"""
    The 12-hex-digit semantic id of ``config`` (the low 48 bits of ``hash(config)``).

    Examples:
        >>> len(config_id(RunnerConfig())), config_id(RunnerConfig()) == config_id(RunnerConfig(log=False))
        (12, True)
    """
    if not isinstance(config, RunnerConfig):
        config = RunnerConfig(config)
    return format(hash(config) & ((1 << 48) - 1), "012x")


def semantic_difference(saved: Mapping[str, Any], current: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    r"""
    Semantic settings that differ between two configs: ``{dotted key: (saved value, current value)}``.

    Both sides are compared (a key present on one side only shows up with ``None`` on the
    other), after ``canonical()``, so operational settings never count.

    Examples:
        >>> semantic_difference({"epochs": 2, "log": True}, {"epochs": 3, "log": False})
        {'epochs': (2, 3)}
    """
    saved_flat = _flatten(RunnerConfig(saved).canonical().dict())
    current_flat = _flatten(RunnerConfig(current).canonical().dict())
    return {
        key: (saved_flat.get(key), current_flat.get(key))
        for key in sorted(saved_flat.keys() | current_flat.keys())
        if saved_flat.get(key) != current_flat.get(key)
    }


def check_semantic_match(saved: Mapping[str, Any], current: Mapping[str, Any]) -> None:
    r"""
    Raise ``ValueError`` when a checkpoint's config (``saved``) differs semantically from ``current``.

    Use before restoring a full checkpoint: resuming under different model, data or
    optimisation settings would silently mix two experiments.
    """
    difference = semantic_difference(saved, current)
    if difference:
        raise ValueError(
            "cannot load checkpoint: runner config is semantically different from current config; "
            f"start a new experiment or align config. diff={difference}"
        )


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(_flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


__all__ = [
    "ASYNC_MODES",
    "CHECKPOINT_BACKENDS",
    "EXPORT_DTYPES",
    "FT_PROCESS_GROUPS",
    "NON_SEMANTIC_CHECKPOINT_KEYS",
    "NON_SEMANTIC_CONFIG_KEYS",
    "NON_SEMANTIC_PARALLEL_KEYS",
    "PRECISIONS",
    "SCHEDULER_INTERVALS",
    "CheckpointConfig",
    "CommConfig",
    "CompileConfig",
    "DataloaderConfig",
    "DeepSpeedConfig",
    "FaultToleranceConfig",
    "Field",
    "FsdpConfig",
    "GcConfig",
    "HeartbeatConfig",
    "OptimConfig",
    "ParallelAxesConfig",
    "ParallelConfig",
    "ProfilingConfig",
    "RunnerConfig",
    "SchedConfig",
    "UnknownKeyError",
    "WandbConfig",
    "check_semantic_match",
    "config_id",
    "resolve_async_mode",
    "semantic_difference",
]
