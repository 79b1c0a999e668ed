"""The stack registry resolves names and aliases through the ``danling.runners`` entry points."""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

import pytest

from danling.runners import registry
from danling.runners.registry import (
    RUNNER_REGISTRY,
    STACK_DISTRIBUTIONS,
    StackNotInstalledError,
    normalize_stack_name,
    resolve_runner_class,
)


class PluginRunner:
    """Stands in for a backend distribution's runner class: the entry point below names it."""


@pytest.fixture
def installed_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Install, for real, a distribution whose entry points register ``parallel`` and ``my-stack``."""

    def install(names: tuple[str, ...]) -> None:
        dist_info = tmp_path / "danling_test_plugin-0.1.0.dist-info"
        dist_info.mkdir()
        (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: danling-test-plugin\nVersion: 0.1.0\n")
        lines = "\n".join(f"{name} = {__name__}:PluginRunner" for name in names)
        (dist_info / "entry_points.txt").write_text(f"[{registry.ENTRY_POINT_GROUP}]\n{lines}\n")
        monkeypatch.syspath_prepend(str(tmp_path))

    return install


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (None, "ddp"),
        ("", "ddp"),
        ("auto", "ddp"),
        ("AUTO", "ddp"),
        ("torch", "ddp"),
        (" ddp ", "ddp"),
        ("ds", "deepspeed"),
        ("DeepSpeed", "deepspeed"),
        ("parallel", "parallel"),
        ("my-stack", "my_stack"),
    ],
)
def test_normalize_stack_name(given, expected):
    assert normalize_stack_name(given) == expected


def test_core_registers_ddp_entry_point():
    (entry_point,) = [ep for ep in metadata.entry_points(group="danling.runners") if ep.name == "ddp"]
    assert entry_point.value == "danling.runners.torch_runner:TorchRunner"
    assert entry_point.dist is not None and entry_point.dist.metadata["Name"] == "danling-runner-core"


def test_alias_resolves_through_an_installed_entry_point(installed_plugin):
    installed_plugin(("parallel", "my-stack"))
    assert resolve_runner_class("parallel") is PluginRunner
    assert resolve_runner_class("My-Stack") is PluginRunner
    assert RUNNER_REGISTRY["my_stack"] is PluginRunner
    assert {"ddp", "torch", "parallel", "my_stack"} <= set(RUNNER_REGISTRY)


def test_deepspeed_alias_resolves_through_an_installed_entry_point(installed_plugin):
    installed_plugin(("deepspeed",))
    assert resolve_runner_class("ds") is PluginRunner
    assert RUNNER_REGISTRY["ds"] is RUNNER_REGISTRY["deepspeed"] is PluginRunner


@pytest.fixture
def without_backends(monkeypatch: pytest.MonkeyPatch) -> None:
    """The environment of a user who installed runner-core alone: only its own entry points are found."""
    installed = registry._entry_points
    monkeypatch.setattr(
        registry, "_entry_points", lambda: {name: ep for name, ep in installed().items() if name == "ddp"}
    )


@pytest.mark.parametrize(("stack", "distribution"), [("deepspeed", "danling-runner-deepspeed"), ("ds", None)])
def test_missing_backend_names_its_distribution(stack, distribution, without_backends):
    canonical = normalize_stack_name(stack)
    expected = distribution or STACK_DISTRIBUTIONS[canonical]
    with pytest.raises(StackNotInstalledError, match=f"pip install {expected}"):
        resolve_runner_class(stack)
    assert stack not in RUNNER_REGISTRY


def test_missing_parallel_backend_names_its_distribution(without_backends):
    with pytest.raises(ImportError, match="danling-runner-parallel"):
        resolve_runner_class("parallel")


@pytest.mark.parametrize(
    ("stack", "module", "name"),
    [
        ("deepspeed", "danling.runners.deepspeed_runner", "DeepSpeedRunner"),
        ("ds", "danling.runners.deepspeed_runner", "DeepSpeedRunner"),
        ("parallel", "danling.runners.parallel_runner", "ParallelRunner"),
    ],
)
def test_installed_backends_resolve_through_their_entry_points(stack, module, name):
    pytest.importorskip(module)
    runner_class = resolve_runner_class(stack)
    assert runner_class.__name__ == name and runner_class.__module__.startswith(module)
    assert RUNNER_REGISTRY[normalize_stack_name(stack)] is runner_class


def test_unknown_stack_lists_valid_options():
    with pytest.raises(ValueError, match=r"Unknown stack: 'nope'\. Valid options are: auto, ddp, deepspeed, ds"):
        resolve_runner_class("nope")


def test_registry_is_a_read_only_mapping_of_installed_stacks(without_backends):
    with pytest.raises(KeyError):
        RUNNER_REGISTRY["deepspeed"]
    with pytest.raises(TypeError):
        RUNNER_REGISTRY["x"] = PluginRunner  # type: ignore[index]
    assert "auto" not in RUNNER_REGISTRY
    assert repr(RUNNER_REGISTRY).startswith("RUNNER_REGISTRY(")
