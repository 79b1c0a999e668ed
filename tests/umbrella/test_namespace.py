"""The umbrella distribution: one ``danling`` namespace over every member, lazy top-level names."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

import danling

ROOT = Path(__file__).resolve().parents[2]


def test_every_installed_member_contributes_to_the_namespace():
    paths = [Path(path).resolve() for path in danling.__path__]
    for member in ("nestedtensor", "meters", "lrsched", "runner-core"):
        assert ROOT / "packages" / member / "src" / "danling" in paths, member


def test_no_member_ships_a_danling_init():
    assert sorted(ROOT.glob("packages/*/src/danling/__init__.py")) == []
    assert (ROOT / "src" / "danling" / "__init__.py").is_file()


def test_backend_runner_package_extends_runners_path():
    runners = importlib.import_module("danling.runners")
    assert ROOT / "packages" / "runner-core" / "src" / "danling" / "runners" in map(Path, runners.__path__)


@pytest.mark.parametrize(
    ("name", "module"),
    [("NestedTensor", "danling.tensors"), ("AverageMeter", "danling.metrics"), ("LRScheduler", "danling.optim")],
)
def test_top_level_names_are_the_package_objects(name, module):
    assert getattr(danling, name) is getattr(importlib.import_module(module), name)
    assert name in dir(danling)


def test_import_danling_is_lazy():
    code = "import sys, danling; print(sorted(m for m in sys.modules if m.startswith(('danling.', 'torch'))))"
    loaded = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert loaded.strip() == "[]"


def test_missing_backend_distribution_is_named(monkeypatch):
    """Where danling-runner-deepspeed is not installed, the error says to install it."""
    import importlib

    import danling.runners

    real_import_module = importlib.import_module

    def without_deepspeed_runner(name, *args, **kwargs):
        if name.startswith("danling.runners.deepspeed_runner"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return real_import_module(name, *args, **kwargs)

    for namespace in (danling, danling.runners):
        monkeypatch.delitem(vars(namespace), "DeepSpeedRunner", raising=False)
        monkeypatch.setattr(namespace, "import_module", without_deepspeed_runner)
    with pytest.raises(ImportError, match="pip install danling-runner-deepspeed"):
        danling.DeepSpeedRunner  # noqa: B018


def test_unknown_attribute_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'NotAThing'"):
        danling.NotAThing  # noqa: B018
