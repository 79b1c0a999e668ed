"""Typed settings: every key the runners read is declared, misspelt keys in sections are errors."""

from __future__ import annotations

import math
import re
import warnings
from pathlib import Path

import chanfig
import pytest

from danling.runners.config import (
    CheckpointConfig,
    DataloaderConfig,
    DeepSpeedConfig,
    FsdpConfig,
    OptimConfig,
    ParallelAxesConfig,
    RunnerConfig,
    SchedConfig,
    UnknownKeyError,
    config_id,
)
from danling.runners.config_fields import Field, OpenSection, Section, declared_keys, fields
from danling.runners.ema import EmaConfig

ROOT = Path(__file__).resolve().parents[2]

#: Keys the runners read, from the spec's RunnerConfig, TorchRunner and backend notes and issue 11.
RUNNER_KEYS = {
    "stack", "seed", "deterministic", "steps", "epochs", "accum_steps", "score_split", "score_name",
    "workspace_root", "auto_resume", "resume", "pretrained", "log", "tensorboard", "log_interval",
    "lineage", "experiment", "name", "dir", "log_file", "checkpoint_dir", "train_splits", "evaluate_splits",
    "patience", "precision", "max_grad_norm", "max_grad_value", "skip_nonfinite_grad", "backend", "init_method", "adopt_process_group",
    "activation_checkpoint", "graceful_sigint", "ema", "optim", "optimizer", "sched", "scheduler", "dataloader", "deepspeed",
    "compile", "comm", "gc", "profiling", "heartbeat", "wandb", "ft", "checkpoint", "parallel", "fsdp",
}  # fmt: skip


def _closed_sections() -> list[tuple[str, type, dict]]:
    """(dotted path, class, mapping that reaches it) for every closed section of a RunnerConfig."""
    config = RunnerConfig(fsdp={}, dataloader={}, ema={})
    found = []
    for path, value in _walk(config):
        if isinstance(value, Section) and value._closed_:
            found.append((path, type(value)))
    found.append(("ema", EmaConfig))
    return found


def _walk(config, prefix=""):
    for key, value in config.items():
        if isinstance(value, chanfig.Config):
            yield f"{prefix}{key}", value
            yield from _walk(value, f"{prefix}{key}.")


def _keys_of(cls: type) -> list[str]:
    if issubclass(cls, Section):
        return sorted(declared_keys(cls))
    return sorted(chanfig.utils.annotation.get_cached_annotations(cls))


def test_every_key_the_runners_read_is_declared():
    assert sorted(RUNNER_KEYS - declared_keys(RunnerConfig)) == []


def test_runner_sources_read_only_declared_keys():
    # ``self.config.<key>`` / ``self.config.get("<key>")`` in the packages: every name is a declared
    # key of RunnerConfig or of a section (checkpoint managers hold the checkpoint section), or a method.
    pattern = re.compile(r"\b(?:self|runner)\.config(?:\.get\(\s*[\"']([A-Za-z_]\w*)|\.([A-Za-z_]\w*))")
    sections = [cls for _, cls in _closed_sections()] + [OptimConfig, SchedConfig, DeepSpeedConfig, RunnerConfig]
    known = set().union(*(_keys_of(cls) for cls in sections), *(dir(cls) for cls in sections))
    read = {}
    for path in (ROOT / "packages").glob("*/src/**/*.py"):
        for match in pattern.finditer(path.read_text()):
            read.setdefault(match.group(1) or match.group(2), path.name)
    assert read, "the scan found no config reads"
    assert {key: where for key, where in read.items() if key not in known} == {}


def test_unset_fields_read_their_defaults_and_change_nothing():
    config = RunnerConfig()
    before, identity = config.dict(), config_id(config)
    for name, field in fields(RunnerConfig).items():
        assert getattr(config, name) == field.default, name
        assert name not in config and name not in before, name
    assert config["precision"] is None and config.get("max_grad_norm") is None
    assert (config.patience, config.lineage, config.skip_nonfinite_grad, config.ema) == (math.inf, "lin", False, None)
    assert config.dict() == before and config_id(config) == identity


def test_touching_on_demand_sections_keeps_the_run_identity():
    for stack in ("ddp", "parallel", "deepspeed"):
        config = RunnerConfig(stack=stack)
        identity = config_id(config)
        touched = (config.optim, config.optimizer, config.sched, config.scheduler, config.deepspeed, config.fsdp)
        assert [type(section) for section in touched] == [
            OptimConfig, OptimConfig, SchedConfig, SchedConfig, DeepSpeedConfig, FsdpConfig,
        ]  # fmt: skip
        assert (config.optim.type, config.sched.interval, config.dataloader.batch_size) == (None, None, None)
        assert config.fsdp.enabled is False and config_id(config) == identity, stack
        config.optim.lr = 0.1
        assert config_id(config) != identity  # a section that holds something is part of the identity
    parallel = RunnerConfig(stack="parallel")
    fsdp_on = RunnerConfig(stack="parallel", fsdp={"enabled": True})
    assert config_id(parallel) != config_id(fsdp_on)
    unset = RunnerConfig(optim=None, sched=None, dataloader=None)  # "not configured", as in ``optim: null``
    assert (unset.optim, unset.sched, unset.dataloader) == (None, None, None)
    assert config_id(unset) == config_id(RunnerConfig())


def test_set_fields_are_stored_typed_and_round_trip(tmp_path):
    config = RunnerConfig(
        precision="bf16",
        max_grad_norm=1,
        skip_nonfinite_grad=True,
        patience=3,
        train_splits=["train"],
        backend="gloo",
        activation_checkpoint={"mode": "op"},
        ema={"decay": 0.99},
        optim={"type": "adamw", "lr": 1e-3, "betas": [0.9, 0.95], "eps": 1e-8},
        sched={"type": "cosine", "interval": "step", "warmup_steps": 5},
        deepspeed={"zero_optimization": {"stage": 2}},
        dataloader={"batch_size": 8, "val": {"batch_size": 32}},
    )
    assert (config.precision, config.max_grad_norm, config.skip_nonfinite_grad, config.patience) == ("bf16", 1, True, 3)
    assert isinstance(config.ema, EmaConfig) and (config.ema.decay, config.ema.interval) == (0.99, 1)
    assert (config.optim.lr, config.optim.eps, config.sched.warmup_steps) == (1e-3, 1e-8, 5)
    assert config.deepspeed.zero_optimization.stage == 2 and config.dataloader.val.batch_size == 32
    for fmt in ("yaml", "json"):
        path = str(tmp_path / f"config.{fmt}")
        getattr(config, fmt)(path)
        loaded = getattr(RunnerConfig, f"from_{fmt}")(path)
        assert loaded == config and config_id(loaded) == config_id(config)
        assert isinstance(loaded.ema, EmaConfig) and isinstance(loaded.sched, SchedConfig)


def test_command_line_sets_fields_and_sections():
    args = ["--precision", "fp16", "--skip_nonfinite_grad", "false", "--max_grad_value", "0.5"]
    args += ["--dataloader.shuffle", "false", "--ema.decay", "0.9", "--sched.interval", "epoch", "--optim.lr", "0.1"]
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no "did you mean" hint for a declared key
        config = RunnerConfig().parse(args)
    assert (config.precision, config.skip_nonfinite_grad, config.max_grad_value) == ("fp16", False, 0.5)
    assert config.dataloader.shuffle is False  # the string "false" used to be stored, and it is truthy
    assert isinstance(config.ema, EmaConfig) and config.ema.decay == 0.9
    assert isinstance(config.sched, SchedConfig) and config.sched.interval == "epoch" and config.optim.lr == 0.1


@pytest.mark.parametrize(
    ("settings", "error", "message"),
    [
        ({"max_grad_norm": "big"}, TypeError, "max_grad_norm must be float or None, got 'big'"),
        ({"max_grad_norm": True}, TypeError, "max_grad_norm must be float or None, got True"),
        ({"max_grad_value": 0}, ValueError, "max_grad_value must be a positive number, got 0"),
        ({"skip_nonfinite_grad": "maybe"}, TypeError, "skip_nonfinite_grad must be bool, got 'maybe'"),
        ({"patience": -1}, ValueError, "patience must be >= 0, got -1"),
        ({"lineage": 3}, TypeError, "lineage must be str, got 3"),
        ({"train_splits": 3}, TypeError, "train_splits must be list or tuple or str or None, got 3"),
        ({"backend": 1}, TypeError, "backend must be str or None, got 1"),
        ({"ema": 0.9}, TypeError, r"ema must be a mapping of EMA settings .* got 0.9"),
        ({"ema": {"decay": 2}}, ValueError, r"ema.decay must be a number in \[0, 1\]"),
        ({"optim": {"lr": "fast"}}, TypeError, "optim.lr must be float or None, got 'fast'"),
        ({"sched": {"monitor": 1}}, TypeError, "sched.monitor must be str or None, got 1"),
        ({"dataloader": {"batch_size": 2.5}}, TypeError, "dataloader.batch_size must be int or None, got 2.5"),
        ({"dataloader": {"val": {"shuffle": "often"}}}, TypeError, "dataloader.val.shuffle must be bool or None"),
        ({"optim": {"lr": 1}, "optimizer": {"lr": 2}}, ValueError, "`optim` and `optimizer` name the same"),
        ({"sched": {"type": "x"}, "scheduler": {"type": "y"}}, ValueError, "`sched` and `scheduler` name the same"),
    ],
)
def test_bad_values_are_rejected_naming_the_key(settings, error, message):
    with pytest.raises(error, match=message):
        RunnerConfig(settings)


def _misspell(key: str) -> str:
    return key + key[-1]


@pytest.mark.parametrize(("path", "cls"), _closed_sections(), ids=lambda value: getattr(value, "__name__", value))
def test_a_misspelt_key_in_any_closed_section_names_the_closest_key(path, cls):
    for key in _keys_of(cls):
        typo = _misspell(key)
        expected = f"unknown key '{typo}' in {path}; did you mean '{key}'?"
        dotted = {f"{path}.{typo}": 1}  # as ``--path.typo`` on the command line
        nested = chanfig.NestedDict(dotted).dict()  # as in a file
        for settings in (dotted, nested):
            with pytest.raises(UnknownKeyError) as caught:
                RunnerConfig(settings)
            assert str(caught.value) == expected
            assert (caught.value.key, caught.value.section, caught.value.suggestion) == (typo, path, key)


@pytest.mark.parametrize("how", ["attribute", "item", "dotted item", "constructor", "command line", "edit, validate"])
def test_checkpoint_intervall_fails_every_way_it_can_be_written(how, tmp_path):
    message = "unknown key 'intervall' in checkpoint; did you mean 'interval'?"
    config = RunnerConfig()
    with pytest.raises(UnknownKeyError, match=re.escape(message)) as caught:
        if how == "attribute":
            config.checkpoint.intervall = 5
        elif how == "item":
            config.checkpoint["intervall"] = 5
        elif how == "dotted item":
            config.checkpoint["intervall.steps"] = 5
        elif how == "constructor":
            CheckpointConfig(intervall=5)
        elif how == "command line":
            with pytest.warns(RuntimeWarning, match="Unrecognized argument"):  # chanfig's own hint
                config.parse(["--checkpoint.intervall", "5"])
        else:
            config["checkpoint.intervall"] = 5  # a dotted path reaches the section without its ``set``
            config.validate()
    assert isinstance(caught.value, ValueError) and isinstance(caught.value, KeyError)


def test_reading_a_misspelt_key_raises_instead_of_creating_it():
    config = RunnerConfig()
    with pytest.raises(AttributeError, match="unknown key 'intervall' in checkpoint; did you mean 'interval'"):
        _ = config.checkpoint.intervall
    with pytest.raises(UnknownKeyError, match="did you mean 'tensor'"):
        _ = config.parallel.axes["tensr"]
    assert config.checkpoint.get("intervall") is None and not hasattr(config.checkpoint, "intervall")
    assert "intervall" not in config.checkpoint
    with pytest.raises(UnknownKeyError, match="unknown key 'zzz' in gc; valid keys are: disable_automatic, generat"):
        config.gc.zzz = 1


def test_open_sections_and_the_top_level_take_free_form_keys():
    config = RunnerConfig(
        learning_rate=0.1,
        network={"type": "mlp", "hidden": [8, 8]},
        optim={"type": "sgd", "momentum": 0.9, "nesterov": True},
        sched={"type": "step", "step_size": 3, "gamma": 0.5},
        deepspeed={"zero_optimization": {"stage": 3, "offload_param": {"device": "cpu"}}},
        dataloader={"train": {"shuffle": False}, "test": {"batch_size": 1}},
    )
    config.network.depth = 2
    config.compile.options = {"trace.enabled": True}
    assert config.learning_rate == 0.1 and config.network.dict() == {"type": "mlp", "hidden": [8, 8], "depth": 2}
    assert config.optim.momentum == 0.9 and config.sched.gamma == 0.5
    assert config.deepspeed.zero_optimization.offload_param.device == "cpu"
    assert config.dataloader.train.shuffle is False and config.dataloader.test.batch_size == 1
    config.validate()


def test_a_dataloader_key_with_a_plain_value_must_be_a_loader_argument():
    with pytest.raises(UnknownKeyError, match="unknown key 'workers' in dataloader; did you mean 'num_workers'"):
        RunnerConfig(dataloader={"workers": 2})
    assert RunnerConfig(dataloader={"workers": {"num_workers": 2}}).dataloader.workers.num_workers == 2  # a split


def test_subclass_annotations_keep_the_inherited_types():
    class Experiment(RunnerConfig):
        epochs: int = 10
        learning_rate: float = 0.001

    config = Experiment()
    config.dataloader.batch_size = 4
    config.sched.type = "cosine"
    assert type(config.dataloader) is DataloaderConfig and type(config.sched) is SchedConfig
    assert config.epochs == 10 and config.stack == "auto" and config.precision is None
    loaded = Experiment({"fsdp": {"enabled": True}, "parallel": {"axes": {"tensor": 2}}})
    assert type(loaded.fsdp) is FsdpConfig and type(loaded.parallel.axes) is ParallelAxesConfig
    with pytest.raises(UnknownKeyError, match="did you mean 'batch_size'"):
        Experiment(dataloader={"batch_sise": 4})
    with pytest.raises(TypeError, match="'seed' has invalid type"):  # inherited annotations are still checked
        Experiment(seed="x")


def test_a_section_subclass_declares_fields_and_stays_closed():
    class DemoConfig(Section):
        _path_ = "demo"
        size: int = 1
        scale = Field(None, float, doc="A factor.")

    class OpenDemo(OpenSection):
        scale = Field(2.0, float, doc="A factor.")

    demo = DemoConfig(scale=0.5)
    assert demo.dict() == {"size": 1, "scale": 0.5} and DemoConfig().scale is None
    with pytest.raises(UnknownKeyError, match="unknown key 'scal' in demo; did you mean 'scale'"):
        DemoConfig(scal=1.0)
    assert OpenDemo(extra=1).dict() == {"extra": 1} and OpenDemo().scale == 2.0


@pytest.mark.parametrize(
    "cls",
    [RunnerConfig, OptimConfig, SchedConfig, DeepSpeedConfig, *(cls for _, cls in _closed_sections())],
    ids=lambda cls: cls.__name__,
)
def test_every_declared_key_is_documented(cls):
    attributes = (cls.__doc__ or "").split("Attributes:", 1)[-1]
    documented = set(re.findall(r"^\s{8}(\w+):", attributes, flags=re.M))
    assert sorted(set(_keys_of(cls)) - documented) == []
    for name, field in fields(cls).items():
        assert field.doc, name


def test_declared_field_defaults_are_the_runner_defaults():
    config = RunnerConfig()
    assert (config.backend, config.init_method, config.precision, config.max_grad_norm) == (None,) * 4
    assert (config.experiment, config.name, config.train_splits, config.activation_checkpoint) == (
        "exp",
        None,
        None,
        None,
    )
    assert isinstance(RunnerConfig.precision, Field) and RunnerConfig.precision.name == "precision"
