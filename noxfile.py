"""Nox sessions for the danling workspace (uv backend).

Examples::

    uvx nox -s "tests(torch='2.6')"        # the suite against one torch version
    uvx nox -s isolated                   # every package alone, from its wheel
    uvx nox -s "isolated(package='meters')"
    uvx nox -s lint                       # ruff check, ruff format --check, module size limit
    uvx nox -s bench                      # every script in benchmarks/
"""

from __future__ import annotations

import sys
from pathlib import Path

import nox

nox.options.default_venv_backend = "uv"
nox.options.sessions = ["tests", "isolated", "lint"]

ROOT = Path(__file__).parent
PYPROJECT = nox.project.load_toml(ROOT / "pyproject.toml")
DEV_DEPENDENCIES = nox.project.dependency_groups(PYPROJECT, "dev")

# torch versions the suite is checked against: the oldest supported, a middle one, the latest.
TORCH_VERSIONS = {"2.6": "torch==2.6.*", "2.10": "torch==2.10.*", "latest": "torch"}

CORE_PACKAGES = ["nestedtensor", "meters", "lrsched", "runner-core"]

# package folder -> what an isolated install must provide, must not pull in, and needs to run its tests.
PACKAGES: dict[str, dict[str, list[str] | str]] = {
    "nestedtensor": {
        "distribution": "danling-nestedtensor",
        "modules": ["danling.tensors"],
        "absent": ["danling.metrics", "danling.optim", "danling.runners", "chanfig", "torchdata"],
        "test_deps": [],
    },
    "meters": {
        "distribution": "danling-meters",
        "modules": ["danling.metrics"],
        "absent": ["danling.tensors", "danling.optim", "danling.runners", "torchdata"],
        "test_deps": ["numpy", "scipy", "scikit-learn"],
    },
    "lrsched": {
        "distribution": "danling-lrsched",
        "modules": ["danling.optim"],
        "absent": ["danling.tensors", "danling.metrics", "danling.runners", "chanfig", "torchdata"],
        "test_deps": [],
    },
    "runner-core": {
        "distribution": "danling-runner-core",
        "modules": ["danling.runners", "danling.utils", "danling.data"],
        "absent": ["danling.runners.deepspeed_runner", "danling.runners.parallel_runner", "deepspeed", "torchft"],
        "test_deps": ["numpy", "scikit-learn"],
    },
    "runner-deepspeed": {
        "distribution": "danling-runner-deepspeed",
        "modules": ["deepspeed", "danling.runners"],
        "absent": ["danling.runners.parallel_runner", "torchft"],
        "test_deps": [],
    },
    "runner-parallel": {
        "distribution": "danling-runner-parallel",
        "modules": ["torchft", "danling.runners"],
        "absent": ["danling.runners.deepspeed_runner", "deepspeed"],
        "test_deps": [],
    },
}

BASE_TEST_DEPS = ["pytest>=8.3", "pytest-timeout>=2.3", "hypothesis>=6.100"]

FIND_SPEC = "import importlib.util, sys; print(*[m for m in sys.argv[1:] if importlib.util.find_spec(m) {op} None])"


@nox.session
@nox.parametrize("torch", list(TORCH_VERSIONS))
def tests(session: nox.Session, torch: str) -> None:
    """The whole suite (core packages plus the umbrella) against one torch version."""
    editable = [arg for package in CORE_PACKAGES for arg in ("-e", f"packages/{package}")]
    session.install(TORCH_VERSIONS[torch], *editable, "-e", ".", *DEV_DEPENDENCIES)
    session.run("python", "-c", "import torch; print('torch', torch.__version__)")
    session.run("pytest", *session.posargs)


def _check_modules(session: nox.Session, modules: list[str], *, present: bool) -> None:
    op = "is" if present else "is not"
    wrong = session.run("python", "-c", FIND_SPEC.format(op=op), *modules, silent=True).split()
    if wrong:
        state = "missing from" if present else "pulled into"
        session.error(f"{', '.join(wrong)} {state} the isolated install")


@nox.session
@nox.parametrize("package", list(PACKAGES))
def isolated(session: nox.Session, package: str) -> None:
    """Build every wheel, install one package alone in a fresh venv, check its imports, run its tests there."""
    spec = PACKAGES[package]
    wheels = Path(session.create_tmp()) / "wheels"
    session.run("uv", "build", "--all-packages", "--wheel", "--out-dir", str(wheels), "-q", external=True)
    # Sibling distributions come from the freshly built wheels; everything else from the index.
    session.install("--find-links", str(wheels), f"{spec['distribution']}==0.1.0")
    _check_modules(session, list(spec["modules"]), present=True)
    _check_modules(session, list(spec["absent"]), present=False)
    session.install(*BASE_TEST_DEPS, *spec["test_deps"])
    tests_dir = ROOT / "tests" / package.replace("-", "_")
    site = session.run("python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])", silent=True)
    source_dirs = [
        str(Path(site.strip(), *module.split(".")))
        for module in spec["modules"]
        if module.startswith("danling.") and (Path(site.strip(), *module.split("."))).is_dir()
    ]
    has_tests = any(tests_dir.rglob("test_*.py"))
    if not has_tests and not source_dirs:
        session.log(f"{package} has no tests and no doctests yet; import checks passed")
        return
    targets = ([str(tests_dir)] if has_tests else []) + source_dirs
    # -p no:cacheprovider keeps the checkout clean; tests import the wheel, never packages/*/src.
    session.run("pytest", "-p", "no:cacheprovider", "-q", *targets, *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff check, ruff format --check, and the hard 1000-line limit on modules."""
    session.install("ruff>=0.9")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
    too_long = [
        f"{path} ({count} lines)"
        for path in sorted(ROOT.glob("packages/*/src/**/*.py")) + sorted(ROOT.glob("src/**/*.py"))
        if (count := len(path.read_text().splitlines())) > 1000
    ]
    if too_long:
        session.error("modules over the 1000-line limit: " + ", ".join(too_long))


@nox.session
def bench(session: nox.Session) -> None:
    """Run every benchmark script; each prints its own table of timings and ratios."""
    editable = [arg for package in CORE_PACKAGES for arg in ("-e", f"packages/{package}")]
    session.install(*editable, "-e", ".", *DEV_DEPENDENCIES)
    scripts = session.posargs or [str(path) for path in sorted((ROOT / "benchmarks").glob("*.py"))]
    for script in scripts:
        session.log(f"== {script}")
        session.run("python", script)


if __name__ == "__main__":
    sys.exit("run these sessions with nox (uvx nox -l lists them)")
