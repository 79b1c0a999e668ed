"""``RunnerConfig``: every setting of a run, its validation, and its semantic identity.

A run's *identity* (``config_id``) is a hash of the settings that change what is computed
(model, optimisation, data, seed, budget ...), not of where or how results are written (logging,
resume paths, checkpoint cadence ...).  ``canonical()`` is that semantic part; two configs with
the same ``canonical()`` share a run directory, which is how ``auto_resume`` finds a run's
latest checkpoint again.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import chanfig

from .config_sections import (
    ASYNC_MODES,
    CHECKPOINT_BACKENDS,
    EXPORT_DTYPES,
    FT_PROCESS_GROUPS,
    CheckpointConfig,
    CommConfig,
    CompileConfig,
    DataloaderConfig,
    FaultToleranceConfig,
    FsdpConfig,
    GcConfig,
    HeartbeatConfig,
    ParallelAxesConfig,
    ParallelConfig,
    ProfilingConfig,
    WandbConfig,
    _check_int,
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
NON_SEMANTIC_CHECKPOINT_KEYS = frozenset(
    {
        "dir_name",
        "wait_timeout",
        "interval",
        "keep_latest_k",
        "load_only",
        "async_enabled",
        "async_mode",
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


class RunnerConfig(chanfig.Config):
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
    ``dataloader``, ``fsdp`` (present once you set a key).  Free-form sections such as ``optim``,
    ``sched`` or ``network`` are plain ``Config`` objects.

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
        log_interval: Iterations between progress lines; ``None`` derives it from the budget.
        lineage: Top folder of the run under ``workspace_root`` (default ``"lin"``); the code
            version (git hash) is appended when known.
        experiment: Experiment name (default ``"exp"``).
        name: Display name (default ``"{lineage}-{experiment}"``).
        precision: Autocast dtype: ``"fp16"``/``"float16"``/``"half"`` or ``"bf16"``/``"bfloat16"``.
        sched.interval: When the scheduler steps: ``"step"``, ``"epoch"`` or ``"validation"``.

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

    compile: CompileConfig
    comm: CommConfig
    gc: GcConfig
    profiling: ProfilingConfig
    heartbeat: HeartbeatConfig
    wandb: WandbConfig
    ft: FaultToleranceConfig
    checkpoint: CheckpointConfig
    dataloader: DataloaderConfig
    fsdp: FsdpConfig
    parallel: ParallelConfig

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

    def post(self) -> None:
        """Hook run after ``parse()``; subclasses derive values here and call ``super().post()``."""
        super().post()
        self.validate()

    def validate(self) -> None:
        """
        Check every value; raise ``ValueError``/``TypeError`` naming the key, the value and what is valid.

        Runs when the config is built and after ``parse()``; call it again after editing a
        config in code.
        """
        super().validate()
        if self.get("steps") is not None and self.get("epochs") is not None:
            raise ValueError("`steps` and `epochs` are mutually exclusive; set only one training boundary")
        _check_int(self.get("steps"), "steps", minimum=0)
        _check_int(self.get("epochs"), "epochs", minimum=0)
        _check_int(self.get("accum_steps", 1), "accum_steps", minimum=1, optional=False)
        _check_int(self.get("log_interval"), "log_interval", minimum=1)
        _check_stack(self.get("stack", "auto"))
        for key, _ in _SECTIONS:
            section = self.get(key)
            if isinstance(section, chanfig.Config):
                section.validate()
        if self.get("precision") is not None:
            _choice(self.get("precision"), PRECISIONS, "precision")
        for key in ("sched.interval", "scheduler.interval"):
            if key in self and self[key] is not None:  # ``in`` first: a dotted ``get`` would create ``sched``
                _choice(self[key], SCHEDULER_INTERVALS, key)

    def canonical(self) -> chanfig.NestedDict:
        r"""
        The semantic part of the config: what decides the numbers a run produces.

        ``stack`` is normalised (``"torch"`` and ``"auto"`` become ``"ddp"``),
        ``checkpoint`` keeps only its lower-cased ``backend``, operational keys
        (``NON_SEMANTIC_CONFIG_KEYS``) are dropped, and ``fsdp``/``parallel`` are dropped
        unless ``stack`` is ``"parallel"``.

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
    "PRECISIONS",
    "SCHEDULER_INTERVALS",
    "CheckpointConfig",
    "CommConfig",
    "CompileConfig",
    "DataloaderConfig",
    "FaultToleranceConfig",
    "FsdpConfig",
    "GcConfig",
    "HeartbeatConfig",
    "ParallelAxesConfig",
    "ParallelConfig",
    "ProfilingConfig",
    "RunnerConfig",
    "WandbConfig",
    "check_semantic_match",
    "config_id",
    "resolve_async_mode",
    "semantic_difference",
]
