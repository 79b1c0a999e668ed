"""RunnerConfig: keys and defaults, access styles, CLI, files, validation, canonical form and id."""

from __future__ import annotations

import re

import pytest
from chanfig import Config
from hypothesis import given
from hypothesis import strategies as st

from danling.runners.config import (
    NON_SEMANTIC_CHECKPOINT_KEYS,
    NON_SEMANTIC_CONFIG_KEYS,
    CheckpointConfig,
    CompileConfig,
    DataloaderConfig,
    FsdpConfig,
    ParallelAxesConfig,
    ParallelConfig,
    RunnerConfig,
    WandbConfig,
    check_semantic_match,
    config_id,
    semantic_difference,
)

TOP_LEVEL_DEFAULTS = {
    "stack": "auto",
    "seed": None,
    "deterministic": False,
    "steps": None,
    "epochs": None,
    "accum_steps": 1,
    "score_split": None,
    "score_name": "loss",
    "workspace_root": "experiments",
    "auto_resume": False,
    "resume": None,
    "pretrained": None,
    "log": True,
    "tensorboard": False,
    "log_interval": None,
}


def test_fresh_config_has_documented_defaults():
    config = RunnerConfig().dict()
    for key, value in TOP_LEVEL_DEFAULTS.items():
        assert config[key] == value, key
    assert config["checkpoint"]["backend"] == "auto" and config["checkpoint"]["async_enabled"] is True
    assert config["checkpoint"]["dir_name"] == "checkpoints" and config["checkpoint"]["keep_latest_k"] == 0
    assert config["compile"]["optimize_ddp"] == "ddp_optimizer" and config["compile"]["enable"] is False
    assert config["gc"] == {"interval": None, "generation": 1, "disable_automatic": True}
    assert config["heartbeat"] == {"enabled": False, "interval_seconds": 60.0, "dir_name": "heartbeats"}
    assert config["profiling"]["active"] == 3 and config["profiling"]["trace_dir"] == "profiles"
    assert config["ft"]["process_group"] == "gloo" and config["ft"]["process_group_timeout_ms"] == 10000
    assert config["wandb"]["enabled"] is False and config["comm"]["init_timeout_seconds"] is None
    assert config["parallel"]["pipeline_schedule"] == "1F1B"
    assert config["parallel"]["axes"] == dict.fromkeys(
        ["replicate", "shard", "context", "pipeline", "tensor", "expert", "expert_tensor"], 1
    )
    assert "dataloader" not in config and "fsdp" not in config


def test_sections_are_typed_and_partial_mappings_get_defaults():
    config = RunnerConfig({"checkpoint": {"backend": "dcp"}, "wandb": {"enabled": True}, "fsdp": {"enabled": True}})
    assert isinstance(config.checkpoint, CheckpointConfig) and config.checkpoint.backend == "dcp"
    assert config.checkpoint.dict() == {**CheckpointConfig().dict(), "backend": "dcp"}
    assert isinstance(config.wandb, WandbConfig) and config.wandb.project is None
    assert isinstance(config.fsdp, FsdpConfig) and config.fsdp.reshard_after_forward is None
    assert isinstance(config.parallel, ParallelConfig) and isinstance(config.parallel.axes, ParallelAxesConfig)
    assert isinstance(config.compile, CompileConfig)


def test_dataloader_section_keeps_only_what_was_set():
    config = RunnerConfig({"dataloader": {"batch_size": 8}})
    assert isinstance(config.dataloader, DataloaderConfig) and config.dataloader.dict() == {"batch_size": 8}
    assert config.dataloader.get("shuffle") is None
    later = RunnerConfig()
    later.dataloader.batch_size = 4
    later.dataloader.train = {"shuffle": False}
    assert isinstance(later.dataloader, DataloaderConfig)
    assert later.dataloader.dict() == {"batch_size": 4, "train": {"shuffle": False}}


def test_loading_a_file_keeps_its_values_over_subclass_defaults(tmp_path):
    class Experiment(RunnerConfig):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.optim.lr = 1e-3
            self.checkpoint.keep_latest_k = 3

    config = Experiment().parse(["--optim.lr", "0.01", "--epochs", "4"])
    config.yaml(tmp_path / "config.yaml")
    loaded = Experiment.from_yaml(tmp_path / "config.yaml")
    assert type(loaded) is Experiment and loaded == config and loaded.optim.lr == 0.01
    assert isinstance(loaded.checkpoint, CheckpointConfig) and loaded.checkpoint.keep_latest_k == 3
    (tmp_path / "bad.yaml").write_text("steps: 3\nepochs: 4\n")
    with pytest.raises(ValueError, match="mutually exclusive"):
        Experiment.from_yaml(tmp_path / "bad.yaml")


def test_attribute_item_and_dotted_access():
    config = RunnerConfig({"parallel.axes.tensor": 2, "compile": {"options": {"trace.enabled": True}}})
    assert config.parallel.axes.tensor == 2 and config["parallel"]["axes"]["shard"] == 1
    assert config.compile.options.dict() == {"trace": {"enabled": True}}
    config.optim.lr = 0.01
    config["network"]["type"] = "mlp"
    assert config["optim.lr"] == 0.01 and config.get("network.type") == "mlp"
    assert "optim.lr" in config and "optim.momentum" not in config
    assert isinstance(config.optim, Config)


def test_caller_mapping_is_not_mutated():
    raw = {"epochs": 3, "optim": {"lr": 0.1}}
    config = RunnerConfig(raw)
    config.optim.lr = 0.2
    assert raw == {"epochs": 3, "optim": {"lr": 0.1}}


def test_parse_cli_overrides_and_post_validates():
    config = RunnerConfig().parse(["--epochs", "5", "--optim.lr", "0.01", "--checkpoint.interval", "2"])
    assert (config.epochs, config.optim.lr, config.checkpoint.interval) == (5, 0.01, 2)
    assert isinstance(config.checkpoint, CheckpointConfig)
    with pytest.raises(ValueError, match="mutually exclusive"):
        RunnerConfig(steps=10).parse(["--epochs", "2"])
    with pytest.raises(ValueError, match=r"Unknown checkpoint\.backend: 'zip'"):
        RunnerConfig().parse(["--checkpoint.backend", "zip"])


def test_subclass_defaults_init_and_post():
    class Experiment(RunnerConfig):
        epochs: int = 10
        learning_rate: float = 0.001

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.optim.type = "adamw"

        def post(self):
            super().post()
            self.experiment = f"{self.optim.type}@{self.learning_rate}"

    config = Experiment()
    assert config.epochs == 10 and config.dict()["learning_rate"] == 0.001 and config.optim.type == "adamw"
    config.parse(["--learning_rate", "0.1"])
    assert config.experiment == "adamw@0.1"


@pytest.mark.parametrize("fmt", ["yaml", "json"])
def test_file_round_trip_keeps_section_types(tmp_path, fmt):
    config = RunnerConfig(epochs=3, seed=7, optim={"lr": 0.1}, dataloader={"batch_size": 16})
    config.checkpoint.keep_latest_k = 2
    path = str(tmp_path / f"config.{fmt}")
    getattr(config, fmt)(path)
    for loaded in (getattr(RunnerConfig, f"from_{fmt}")(path), RunnerConfig(path)):
        assert loaded == config
        assert isinstance(loaded.checkpoint, CheckpointConfig) and isinstance(loaded.dataloader, DataloaderConfig)
        assert config_id(loaded) == config_id(config)


@pytest.mark.parametrize(
    ("overrides", "error", "message"),
    [
        ({"steps": 10, "epochs": 2}, ValueError, "`steps` and `epochs` are mutually exclusive"),
        ({"stack": "horovod"}, ValueError, "Unknown stack: 'horovod'. Valid options are: .*ddp.*deepspeed"),
        ({"checkpoint": {"backend": "zip"}}, ValueError, "Valid options are: auto, (.*, )?dcp, (.*, )?file"),
        ({"checkpoint": {"async_mode": "later"}}, ValueError, "async, async_with_pinned_mem, disabled"),
        ({"checkpoint": {"export_dtype": "int8"}}, ValueError, "Unknown checkpoint.export_dtype: 'int8'.*bf16"),
        ({"checkpoint": {"keep_latest_k": -1}}, ValueError, "keep_latest_k must be >= 0, got -1"),
        ({"ft": {"process_group": "mpi"}}, ValueError, "Valid options are: gloo, nccl"),
        ({"ft": {"replica_id": 2}}, ValueError, r"ft.replica_id must be in \[0, 0\], got 2"),
        ({"gc": {"generation": 3}}, ValueError, "gc.generation must be one of 0, 1, or 2, got 3"),
        ({"gc": {"interval": 0}}, ValueError, "gc.interval must be >= 1, got 0"),
        ({"heartbeat": {"interval_seconds": -1}}, ValueError, "heartbeat.interval_seconds must be a positive"),
        ({"accum_steps": 0}, ValueError, "accum_steps must be >= 1, got 0"),
        ({"epochs": -1}, ValueError, "epochs must be >= 0, got -1"),
        ({"epochs": "ten"}, TypeError, "'epochs' has invalid type"),
        ({"precision": "fp8"}, ValueError, "Unknown precision: 'fp8'. Valid options are: bf16, bfloat16"),
        ({"sched": {"interval": "daily"}}, ValueError, "Unknown sched.interval: 'daily'.*epoch, step, validation"),
    ],
)
def test_invalid_values_are_rejected_with_the_valid_options(overrides, error, message):
    with pytest.raises(error, match=message):
        RunnerConfig(overrides)


def test_validate_catches_edits_made_after_construction():
    config = RunnerConfig(steps=10)
    config.epochs = 3
    with pytest.raises(ValueError, match="mutually exclusive"):
        config.validate()
    config = RunnerConfig()
    config.checkpoint.backend = "nfs"
    with pytest.raises(ValueError, match=r"checkpoint\.backend"):
        config.validate()


def test_canonical_keeps_only_semantic_settings():
    config = RunnerConfig(
        stack="torch",
        epochs=2,
        log=False,
        resume="x.pth",
        lineage="l",
        dataloader={"batch_size": 8},
        checkpoint={"backend": "DCP", "interval": 3, "keep_latest_k": 2, "load_only": True},
        fsdp={"enabled": True},
    )
    canonical = config.canonical().dict()
    assert canonical["stack"] == "ddp" and canonical["epochs"] == 2
    assert canonical["checkpoint"] == {"backend": "dcp"} and canonical["dataloader"] == {"batch_size": 8}
    assert not (NON_SEMANTIC_CONFIG_KEYS & canonical.keys())
    assert "fsdp" not in canonical and "parallel" not in canonical
    parallel = RunnerConfig(stack="parallel", fsdp={"enabled": True}).canonical()
    assert parallel["fsdp"]["enabled"] is True and parallel["parallel"]["axes"]["tensor"] == 1


def test_config_id_matches_the_reference_implementation():
    # Ids computed by the reference implementation with chanfig 0.0.117: runs keep their directories.
    assert config_id(RunnerConfig()) == "9aa95f8aa163"
    assert config_id(RunnerConfig(epochs=1)) == "ce9e3be0fee6"
    normalised = RunnerConfig(stack="ddp", checkpoint={"backend": "file"})
    assert config_id(normalised) == "833be5f2e1a6"


def test_hash_ignores_operational_settings_and_order():
    base = RunnerConfig(epochs=2, optim={"lr": 0.1, "type": "sgd"})
    other = RunnerConfig({"optim": {"type": "sgd", "lr": 0.1}, "epochs": 2})
    other.ft.enabled = True
    other.checkpoint.keep_latest_k = 5
    other.heartbeat.enabled = True
    other.log = False
    assert hash(base) == hash(other) and base.canonical() == other.canonical()
    for change in ({"seed": 1}, {"name": "x"}, {"optim": {"lr": 0.2}}, {"checkpoint": {"backend": "dcp"}}):
        changed = RunnerConfig(base.dict())
        changed.merge(change)
        assert config_id(changed) != config_id(base), change


@given(st.integers(min_value=0, max_value=10**6), st.floats(allow_nan=False, allow_infinity=False, width=32))
def test_config_id_is_stable_and_twelve_hex_digits(epochs, lr):
    config = RunnerConfig(epochs=epochs, optim={"lr": lr})
    first = config_id(config)
    assert first == config_id(RunnerConfig(epochs=epochs, optim={"lr": lr}, log=False))
    assert re.fullmatch(r"[0-9a-f]{12}", first), first  # zero-padded, lower case
    assert int(first, 16) == hash(config) % 2**48  # the low 48 bits of the config's hash


def test_allowing_a_degree_change_does_not_make_a_parallel_run_another_run():
    saved = RunnerConfig(stack="parallel", parallel={"axes": {"tensor": 2}})
    resuming = RunnerConfig(stack="parallel", parallel={"axes": {"tensor": 2}, "allow_degree_change": True})
    assert hash(saved) == hash(resuming)
    assert hash(saved) != hash(RunnerConfig(stack="parallel", parallel={"axes": {"tensor": 4}}))


def test_semantic_difference_is_symmetric():
    saved = {"epochs": 2, "optim": {"lr": 0.1, "weight_decay": 0.01}, "heartbeat": {"enabled": True}}
    current = {"epochs": 2, "optim": {"lr": 0.2}, "resume": "latest.pth", "checkpoint": {"interval": 5}}
    assert semantic_difference(saved, current) == {"optim.lr": (0.1, 0.2), "optim.weight_decay": (0.01, None)}
    check_semantic_match({"epochs": 2, "log": True}, {"epochs": 2, "log": False, "auto_resume": True})
    with pytest.raises(ValueError, match=r"semantically different.*checkpoint.backend"):
        check_semantic_match({"checkpoint": {"backend": "dcp"}}, {"checkpoint": {"backend": "file"}})


def test_non_semantic_key_tables_cover_operational_checkpoint_settings():
    assert set(CheckpointConfig().keys()) - NON_SEMANTIC_CHECKPOINT_KEYS == {"backend"}
