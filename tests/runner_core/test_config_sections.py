"""Typed config sections validate themselves and resolve their enumerations."""

from __future__ import annotations

import pytest

from danling.runners.config_sections import (
    CheckpointConfig,
    CommConfig,
    DataloaderConfig,
    FaultToleranceConfig,
    GcConfig,
    HeartbeatConfig,
    ParallelAxesConfig,
    ParallelConfig,
    resolve_async_mode,
)


@pytest.mark.parametrize(
    ("mode", "enabled", "expected"),
    [
        (None, True, "async"),
        (None, False, "disabled"),
        (True, False, "async"),
        (False, True, "disabled"),
        ("ON", False, "async"),
        ("off", True, "disabled"),
        ("Async-With-Pinned-Mem", True, "async_with_pinned_mem"),
        ("disabled", True, "disabled"),
    ],
)
def test_resolve_async_mode(mode, enabled, expected):
    assert resolve_async_mode(mode, enabled) == expected


def test_checkpoint_section_resolves_spellings():
    config = CheckpointConfig(backend=" DCP ", async_mode="enable", export_dtype="BF16")
    assert config.resolved_backend() == "dcp"
    assert config.resolved_async_mode() == "async"
    assert config.resolved_export_dtype() == "bfloat16"
    assert CheckpointConfig().resolved_export_dtype() is None
    assert CheckpointConfig(async_enabled=False).resolved_async_mode() == "disabled"


@pytest.mark.parametrize(
    ("section", "values", "message"),
    [
        (
            CheckpointConfig,
            {"interval": "often"},
            r"'interval' has invalid type\. Value 'often' is not of type",
        ),
        (CheckpointConfig, {"wait_timeout": 0}, "checkpoint.wait_timeout must be a positive number"),
        (CommConfig, {"init_timeout_seconds": 0}, "comm.init_timeout_seconds must be >= 1, got 0"),
        (GcConfig, {"generation": True}, "gc.generation must be one of 0, 1, or 2"),
        (HeartbeatConfig, {"interval_seconds": 0}, "heartbeat.interval_seconds must be a positive number"),
        (FaultToleranceConfig, {"group_size": 0}, "ft.group_size must be >= 1, got 0"),
        (FaultToleranceConfig, {"group_size": 2, "replica_id": -1}, r"ft.replica_id must be in \[0, 1\], got -1"),
        (FaultToleranceConfig, {"min_replica_size": 0}, "ft.min_replica_size must be >= 1"),
    ],
)
def test_sections_reject_bad_values_on_their_own(section, values, message):
    with pytest.raises((ValueError, TypeError), match=message):
        section(values)


def test_valid_sections_build():
    assert FaultToleranceConfig(group_size=4, replica_id=3).replica_id == 3
    assert GcConfig(interval=8, generation=2).interval == 8
    assert HeartbeatConfig(interval_seconds=5).interval_seconds == 5.0  # coerced to the declared float


def test_parallel_section_always_has_axes():
    config = ParallelConfig({"axes": {"shard": -1}})
    assert isinstance(config.axes, ParallelAxesConfig) and config.axes.shard == -1 and config.axes.tensor == 1
    assert isinstance(ParallelConfig().axes, ParallelAxesConfig)


def test_dataloader_section_has_no_defaults():
    assert DataloaderConfig().dict() == {}
    assert DataloaderConfig(batch_size=2, num_workers=1).dict() == {"batch_size": 2, "num_workers": 1}
