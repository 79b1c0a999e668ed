"""Nox sessions for the danling workspace (uv backend).

Examples::

    uvx nox -s "tests(torch='2.6')"        # the suite against one torch version
    uvx nox -s isolated                   # every package alone, from its wheel
    uvx nox -s "isolated(package='meters')"
    uvx nox -s lint                       # ruff check, ruff format --check, module size limit
    uvx nox -s bench                      # every script in benchmarks/, tables into docs/benchmarks/
    uvx nox -s docs                       # the documentation site, mkdocs build --strict
"""

from __future__ import annotations

import os
import platform
import shutil
import sys
import tempfile
import time
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

# package folder -> its distribution, the packages it ships, what else an isolated install must provide,
# what it must not pull in, and what its tests need beyond pytest and hypothesis.
PACKAGES: dict[str, dict[str, list[str] | str]] = {
    "nestedtensor": {
        "distribution": "danling-nestedtensor",
        "own": ["danling.tensors"],
        "requires": ["torch"],
        "absent": ["danling.metrics", "danling.optim", "danling.runners", "chanfig", "torchdata"],
        "test_deps": ["numpy"],  # Tensor.numpy() on a NestedTensor is tested; torch itself does not need numpy
    },
    "meters": {
        "distribution": "danling-meters",
        "own": ["danling.metrics"],
        "requires": ["torch", "chanfig"],
        "absent": ["danling.tensors", "danling.optim", "danling.runners", "torchdata"],
        "test_deps": ["numpy", "scipy", "scikit-learn"],
    },
    "lrsched": {
        "distribution": "danling-lrsched",
        "own": ["danling.optim"],
        "requires": ["torch"],
        "absent": ["danling.tensors", "danling.metrics", "danling.runners", "chanfig", "torchdata"],
        "test_deps": [],
    },
    "runner-core": {
        "distribution": "danling-runner-core",
        "own": ["danling.runners", "danling.utils", "danling.data"],
        "requires": ["danling.tensors", "danling.metrics", "danling.optim", "torchdata", "safetensors", "tensorboard"],
        "absent": ["danling.runners.deepspeed_runner", "danling.runners.parallel_runner", "deepspeed", "torchft"],
        "test_deps": ["numpy", "scikit-learn"],
    },
    "runner-deepspeed": {
        "distribution": "danling-runner-deepspeed",
        "own": ["danling.runners.deepspeed_runner"],
        "requires": ["danling.runners", "deepspeed"],
        "absent": ["danling.runners.parallel_runner", "torchft"],
        "test_deps": [],
    },
    "runner-parallel": {
        "distribution": "danling-runner-parallel",
        "own": ["danling.runners.parallel_runner"],
        "requires": ["danling.runners", "torchft", "torch.distributed.fsdp", "torch.distributed.tensor.parallel"],
        "absent": ["danling.runners.deepspeed_runner", "deepspeed"],
        "test_deps": [],
    },
}

BASE_TEST_DEPS = ["pytest>=8.3", "pytest-timeout>=2.3", "hypothesis>=6.100"]

FIND_SPEC = "import importlib.util, sys; print(*[m for m in sys.argv[1:] if importlib.util.find_spec(m) {op} None])"


# Backend runners that need a newer torch than the oldest supported one (runner-parallel: torch>=2.7);
# sessions of older torch leave them out, and conftest.py skips collecting their tests.
BACKEND_PACKAGES = {"runner-deepspeed": "2.7", "runner-parallel": "2.7"}


def _torch_at_least(torch: str, minimum: str) -> bool:
    if torch == "latest":
        return True
    return tuple(map(int, torch.split("."))) >= tuple(map(int, minimum.split(".")))


@nox.session
@nox.parametrize("torch", list(TORCH_VERSIONS))
def tests(session: nox.Session, torch: str) -> None:
    """The whole suite (core packages plus the umbrella) against one torch version."""
    packages = CORE_PACKAGES + [name for name, minimum in BACKEND_PACKAGES.items() if _torch_at_least(torch, minimum)]
    editable = [arg for package in packages for arg in ("-e", f"packages/{package}")]
    # The dev group names the workspace's backend runners; they come from packages/ above, or not at all.
    dev = [requirement for requirement in DEV_DEPENDENCIES if not requirement.startswith("danling-")]
    # setuptools: inductor of torch < 2.11 builds its CPU kernels with it (the torch.compile tests).
    session.install(TORCH_VERSIONS[torch], "setuptools", *editable, "-e", ".", *dev)
    session.run("python", "-c", "import torch; print('torch', torch.__version__)")
    session.run("pytest", *session.posargs)


def _check_modules(session: nox.Session, modules: list[str], *, present: bool) -> None:
    op = "is" if present else "is not"
    wrong = session.run("python", "-c", FIND_SPEC.format(op=op), *modules, silent=True).split()
    if wrong:
        state = "missing from" if present else "pulled into"
        session.error(f"{', '.join(wrong)} {state} the isolated install")


def _module_dir(site: Path, module: str) -> Path:
    return site.joinpath(*module.split("."))


@nox.session
@nox.parametrize("package", list(PACKAGES))
def isolated(session: nox.Session, package: str) -> None:
    """Build every wheel, install one package alone in a fresh venv, check its imports, run its tests there."""
    spec = PACKAGES[package]
    # Not session.create_tmp(): it points TMPDIR inside this git checkout, and the tests' temporary
    # run directories must lie outside any checkout (the runner derives its code id from git).
    wheels = Path(tempfile.mkdtemp(prefix=f"danling-{package}-wheels-"))
    session.run("uv", "build", "--all-packages", "--wheel", "--out-dir", str(wheels), "-q", external=True)
    # Sibling distributions come from the freshly built wheels; everything else from the index.
    session.install("--find-links", str(wheels), f"{spec['distribution']}==0.1.0")
    # Own packages that exist in the source tree must be importable from the wheel.
    source = ROOT / "packages" / package / "src"
    own = [module for module in spec["own"] if _module_dir(source, module).is_dir()]
    _check_modules(session, [*spec["requires"], *own], present=True)
    _check_modules(session, list(spec["absent"]), present=False)
    session.install(*BASE_TEST_DEPS, *spec["test_deps"])
    purelib = session.run("python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])", silent=True)
    doctest_dirs = [str(_module_dir(Path(purelib.strip()), module)) for module in own]
    tests_dir = ROOT / "tests" / package.replace("-", "_")
    targets = ([str(tests_dir)] if any(tests_dir.rglob("test_*.py")) else []) + doctest_dirs
    if not targets:
        session.log(f"{package} has no modules or tests yet; its install and import checks passed")
        return
    # Tests import the installed wheel, never packages/*/src; -p no:cacheprovider keeps the checkout clean.
    session.run("pytest", "-p", "no:cacheprovider", "-q", *targets, *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff check, ruff format --check, the import-linter layer contracts, and the 1000-line module limit."""
    session.install(
        *[requirement for requirement in DEV_DEPENDENCIES if requirement.startswith(("ruff", "import-linter"))]
    )
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
    # The `danling` namespace spans every member's source folder; import-linter reads one package
    # tree, so the contracts in pyproject.toml are checked on a merged copy (imports only, nothing runs).
    with tempfile.TemporaryDirectory() as merged:
        target = Path(merged) / "danling"
        shutil.copytree(ROOT / "src" / "danling", target)
        for source in sorted(ROOT.glob("packages/*/src/danling")):
            shutil.copytree(source, target, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__"))
        session.run("lint-imports", str(ROOT / "pyproject.toml"), env={"PYTHONPATH": merged})
    too_long = [
        f"{path} ({count} lines)"
        for path in sorted(ROOT.glob("packages/*/src/**/*.py")) + sorted(ROOT.glob("src/**/*.py"))
        if (count := len(path.read_text().splitlines())) > 1000
    ]
    if too_long:
        session.error("modules over the 1000-line limit: " + ", ".join(too_long))


@nox.session
def bench(session: nox.Session) -> None:
    """Run every benchmark script; each prints its own table of timings and ratios.

    The ``bench`` dependency group brings the frameworks some scripts compare against (Lightning, Accelerate).
    Each script's output also goes to ``docs/benchmarks/<script>.md`` (git-ignored) with a description of
    the machine, which the documentation site shows on its benchmark pages.
    """
    # Every package, the backend runners too (deepspeed_overhead.py, fsdp_overhead.py); the dev group names
    # the backends, which come from packages/ here and not from an index (as in the tests session).
    editable = [arg for package in PACKAGES for arg in ("-e", f"packages/{package}")]
    dev = [requirement for requirement in DEV_DEPENDENCIES if not requirement.startswith("danling-")]
    bench_dependencies = nox.project.dependency_groups(PYPROJECT, "bench")
    session.install(*editable, "-e", ".", *dev, *bench_dependencies)
    # ``_*.py`` in benchmarks/ are modules the scripts share, not benchmarks
    scripts = session.posargs or [
        str(path) for path in sorted((ROOT / "benchmarks").glob("*.py")) if not path.name.startswith("_")
    ]
    pages = ROOT / "docs" / "benchmarks"
    pages.mkdir(parents=True, exist_ok=True)
    for script in scripts:
        session.log(f"== {script}")
        machine = _machine_description(session)  # per script: the load average changes during a long run
        output = session.run("python", script, silent=True)
        print(output, end="")
        (pages / f"{Path(script).stem}.md").write_text(_benchmark_page(Path(script), output or "", machine))


def _machine_description(session: nox.Session) -> list[str]:
    """Where a benchmark ran: CPU, cores, memory, OS, Python and torch, the load, the time."""
    cpu = platform.processor() or platform.machine()
    memory = ""
    if Path("/proc/cpuinfo").is_file():
        names = [
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ]
        cpu = names[0] if names else cpu
    if Path("/proc/meminfo").is_file():
        total = next(
            (line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal")),
            "",
        )
        memory = f"{int(total) / 2**20:.1f} GiB" if total else ""
    versions = session.run(
        "python", "-c", "import platform, torch; print(platform.python_version(), torch.__version__)", silent=True
    )
    python_version, torch_version = (versions or "? ?").split()[-2:]
    load = ", ".join(f"{value:.2f}" for value in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    return [
        f"- CPU: {cpu}, {os.cpu_count()} logical cores" + (f", {memory} memory" if memory else ""),
        f"- OS: {platform.platform()}",
        f"- Python {python_version}, torch {torch_version}",
        f"- load average (1, 5, 15 min) before the run: {load}",
        f"- run at {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
    ]


def _benchmark_page(script: Path, output: str, machine: list[str]) -> str:
    """The documentation page of one benchmark run: the machine, then the script's output as printed."""
    return "\n".join(
        [
            f"# {script.stem}",
            "",
            f"Output of `python benchmarks/{script.name}`, written by `nox -s bench` on this machine:",
            "",
            *machine,
            "",
            "```text",
            output.rstrip("\n"),
            "```",
            "",
        ]
    )


@nox.session(venv_backend="none")
def docs(session: nox.Session) -> None:
    """Build the documentation site with ``mkdocs build --strict``: a broken reference or a missing page fails.

    It runs in the workspace's locked environment with the ``docs`` dependency group (mkdocs, mkdocstrings,
    matplotlib for the LR plots); extra arguments go to ``mkdocs build`` (``-- --site-dir /tmp/site``).
    """
    # NO_MKDOCS_2_WARNING: Material's banner about its successor, printed on every build otherwise.
    command = ["uv", "run", "--locked", "--group", "docs", "mkdocs", "build", "--strict", *session.posargs]
    session.run(*command, external=True, env={"NO_MKDOCS_2_WARNING": "1"})


if __name__ == "__main__":
    sys.exit("run these sessions with nox (uvx nox -l lists them)")
