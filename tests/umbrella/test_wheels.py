"""``uv build --all-packages`` gives one wheel per distribution, each holding only its own modules."""

from __future__ import annotations

import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# wheel name prefix -> folders (inside the wheel) its modules may live in
OWNED = {
    "danling-": ("danling/__init__.py",),
    "danling_nestedtensor-": ("danling/tensors/",),
    "danling_meters-": ("danling/metrics/",),
    "danling_lrsched-": ("danling/optim/",),
    "danling_runner_core-": ("danling/runners/", "danling/utils/", "danling/data/"),
    "danling_runner_deepspeed-": ("danling/runners/deepspeed_runner/",),
    "danling_runner_parallel-": ("danling/runners/parallel_runner/",),
}
BACKEND_FOLDERS = ("danling/runners/deepspeed_runner/", "danling/runners/parallel_runner/")


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> dict[str, zipfile.ZipFile]:
    uv = shutil.which("uv")
    if uv is None:
        pytest.fail("uv is required to build the wheels (pip install uv)")
    out = tmp_path_factory.mktemp("wheels")
    subprocess.run([uv, "build", "--all-packages", "--wheel", "--out-dir", str(out), "-q"], cwd=ROOT, check=True)
    return {path.name: zipfile.ZipFile(path) for path in sorted(out.glob("*.whl"))}


def _modules(wheel: zipfile.ZipFile) -> list[str]:
    return [name for name in wheel.namelist() if ".dist-info/" not in name]


def test_one_wheel_per_distribution(wheels):
    prefixes = sorted(prefix for prefix in OWNED for name in wheels if name.startswith(prefix) and "0.1.0" in name)
    assert len(wheels) == 7
    assert prefixes == sorted(OWNED)


def test_each_wheel_holds_only_its_own_modules(wheels):
    for name, wheel in wheels.items():
        prefix = max((p for p in OWNED if name.startswith(p)), key=len)
        owned = OWNED[prefix]
        strays = [module for module in _modules(wheel) if not module.startswith(owned)]
        assert strays == [], f"{name} ships modules of another distribution: {strays}"
        if prefix == "danling_runner_core-":
            assert not [m for m in _modules(wheel) if m.startswith(BACKEND_FOLDERS)]


def test_only_the_umbrella_ships_danling_init(wheels):
    shipping = [name for name, wheel in wheels.items() if "danling/__init__.py" in wheel.namelist()]
    assert len(shipping) == 1 and shipping[0].startswith("danling-0.1.0")


def test_runner_core_wheel_declares_the_ddp_stack(wheels):
    (name,) = [name for name in wheels if name.startswith("danling_runner_core-")]
    wheel = wheels[name]
    (entry_points,) = [n for n in wheel.namelist() if n.endswith(".dist-info/entry_points.txt")]
    text = wheel.read(entry_points).decode()
    assert "[danling.runners]" in text and "ddp = danling.runners.torch_runner:TorchRunner" in text
