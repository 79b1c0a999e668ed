"""MkDocs hooks: pages and images the site builds from the code instead of committing them.

- ``on_config`` keeps the umbrella package out of mkdocstrings' search path (see below).
- ``on_page_markdown`` fills the benchmark overview's table from the scripts' docstrings.
- ``on_nav`` lists every benchmark page in the "Benchmarks" section of the navigation.
- ``on_files`` adds, as generated files:
  - one learning-rate plot per ``LRScheduler`` strategy and scaling, drawn with matplotlib from
    the real scheduler (``guides/lrsched/*.png``);
  - a placeholder page for every benchmark script whose results ``nox -s bench`` has not written
    into ``docs/benchmarks/`` yet, so the site builds ``--strict`` either way.
"""

from __future__ import annotations

import ast
import io
import os
import site
import sys
from pathlib import Path
from typing import Any

from mkdocs.plugins import event_priority

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = ROOT / "benchmarks"
BENCHMARK_PAGES = "benchmarks"  # folder under docs/ that `nox -s bench` writes into (git-ignored)

# What each plot shows: file name -> (title, LRScheduler keyword arguments).
LR_PLOTS: dict[str, tuple[str, dict[str, Any]]] = {
    "cosine": ("method='cosine'", {"method": "cosine"}),
    "linear": ("method='linear'", {"method": "linear"}),
    "constant": ("method='constant'", {"method": "constant"}),
    "warmup-cooldown": ("warmup_steps and cooldown_steps", {"method": "cosine"}),
}
PLOT_STEPS = 1000
PLOT_LR = 1e-3


_SAVED_SYS_PATH: list[str] = []


@event_priority(100)  # before mkdocstrings' own on_config, which creates its Python handler
def on_config(config: Any) -> Any:
    """Let mkdocstrings' Python handler search the members' folders and the standard library only.

    The handler searches the members' ``src`` folders listed in ``mkdocs.yml``, then ``sys.path``,
    and griffe also follows the ``.pth`` files of every folder it searches. Through site-packages'
    editable ``.pth`` files it would reach the umbrella's ``src/danling/__init__.py``, a regular
    package that extends ``__path__`` only at run time: griffe reads files statically, would stop
    there and never see ``danling.tensors``, ``danling.runners``, ... So the handler is created
    while ``sys.path`` holds neither site-packages nor the umbrella (``on_pre_build`` restores it);
    in the members' folders ``danling`` is a namespace spanning all of them. Third-party types
    (torch, ...) are shown unlinked.
    """
    import mkdocstrings_handlers.python  # noqa: F401  (imported now: site-packages is hidden while the handler is created)

    site_folders = {os.path.abspath(path) for path in (*site.getsitepackages(), site.getusersitepackages())}
    hidden = site_folders | {str(ROOT / "src")}
    _SAVED_SYS_PATH[:] = sys.path
    sys.path[:] = [path for path in sys.path if path and os.path.abspath(path) not in hidden]
    return config


def on_pre_build(config: Any) -> None:
    """Restore ``sys.path`` once mkdocstrings has built its handler (the plots import torch)."""
    if _SAVED_SYS_PATH:
        sys.path[:] = _SAVED_SYS_PATH
        _SAVED_SYS_PATH.clear()


def lr_curves(name: str, total_steps: int = PLOT_STEPS) -> dict[str, list[float]]:
    """The rate of every step of the schedule a plot shows, one curve per label."""
    import torch

    from danling.optim import LRScheduler

    def run(**kwargs: Any) -> list[float]:
        optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=PLOT_LR)
        scheduler = LRScheduler(optimizer, total_steps=total_steps, **kwargs)
        rates = []
        for _ in range(total_steps):
            rates.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            scheduler.step()
        return rates

    kwargs = LR_PLOTS[name][1]
    if name == "warmup-cooldown":
        tenth = total_steps // 10
        return {
            "defaults (5% warmup, 20% cooldown)": run(**kwargs),
            "no warmup, no cooldown": run(warmup_steps=0, cooldown_steps=0, **kwargs),
            f"warmup {2 * tenth}, cooldown {3 * tenth}": run(
                warmup_steps=2 * tenth, cooldown_steps=3 * tenth, **kwargs
            ),
        }
    return {"percentile (default)": run(**kwargs), "numerical": run(scaling="numerical", **kwargs)}


def lr_plot(name: str) -> bytes:
    """One plot as PNG bytes."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    figure, (linear_axes, log_axes) = pyplot.subplots(1, 2, figsize=(10, 3.4), dpi=100)
    for label, rates in lr_curves(name).items():
        for axes in (linear_axes, log_axes):
            axes.plot(range(1, len(rates) + 1), rates, label=label)
    log_axes.set_yscale("log")  # geometric ("percentile") decay is a straight line here
    for axes, scale in ((linear_axes, "linear"), (log_axes, "log")):
        axes.set_title(f"{LR_PLOTS[name][0]}, {scale} scale")
        axes.set_xlabel("step")
        axes.set_ylabel("learning rate")
        axes.grid(alpha=0.3)
    linear_axes.legend()
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    pyplot.close(figure)
    return buffer.getvalue()


def benchmark_placeholder(script: str) -> str:
    """The page of a benchmark that has not been run in this checkout."""
    return (
        f"# {script}\n\n"
        f"No results yet: `benchmarks/{script}.py` has not been run in this checkout.\n\n"
        f"Run `uvx nox -s bench` (every benchmark) or `uvx nox -s bench -- benchmarks/{script}.py` (this one);\n"
        f"it writes `docs/{BENCHMARK_PAGES}/{script}.md` with the printed tables and a description of the machine,\n"
        "and the next build shows them here.\n"
    )


BENCHMARK_TABLE = "<!-- benchmark table: docs/hooks.py lists every script in benchmarks/ here -->"


def benchmark_summary(script: Path) -> str:
    """The first line of a benchmark script's docstring, in Markdown."""
    docstring = ast.get_docstring(ast.parse(script.read_text())) or ""
    first_line = docstring.strip().splitlines()[0] if docstring.strip() else "(no description)"
    return first_line.replace("``", "`")


def benchmark_scripts() -> list[Path]:
    """The benchmark scripts; ``_*.py`` are modules they share, not benchmarks."""
    return sorted(path for path in BENCHMARKS.glob("*.py") if not path.name.startswith("_"))


def benchmark_table() -> str:
    rows = [
        f"| [{path.stem}]({BENCHMARK_PAGES}/{path.stem}.md) | {benchmark_summary(path)} |"
        for path in benchmark_scripts()
    ]
    return "\n".join(["| page | what it measures |", "|---|---|", *rows])


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    """Fill the overview page's table of benchmarks."""
    if page.file.src_uri == "benchmarks.md":
        if BENCHMARK_TABLE not in markdown:
            raise ValueError(f"docs/benchmarks.md lost its {BENCHMARK_TABLE!r} marker")
        return markdown.replace(BENCHMARK_TABLE, benchmark_table())
    return markdown


def on_files(files: Any, config: Any) -> Any:
    """Add the LR plots and the placeholder pages of benchmarks without results."""
    from mkdocs.structure.files import File

    for name in LR_PLOTS:
        files.append(File.generated(config, f"guides/lrsched/{name}.png", content=lr_plot(name)))
    for script in (path.stem for path in benchmark_scripts()):
        uri = f"{BENCHMARK_PAGES}/{script}.md"
        if files.get_file_from_path(uri) is None:
            files.append(File.generated(config, uri, content=benchmark_placeholder(script)))
    return files


def on_nav(nav: Any, config: Any, files: Any) -> Any:
    """List every benchmark page under the "Benchmarks" section, also those of scripts added later."""
    from mkdocs.structure.nav import Section
    from mkdocs.structure.pages import Page

    section = next((item for item in nav.items if isinstance(item, Section) and item.title == "Benchmarks"), None)
    if section is None:
        raise ValueError('mkdocs.yml must have a "Benchmarks" section in its nav for the benchmark pages')
    listed = {page.file.src_uri for page in nav.pages}
    for file in sorted(files.documentation_pages(), key=lambda file: file.src_uri):
        if file.src_uri.startswith(f"{BENCHMARK_PAGES}/") and file.src_uri not in listed:
            page = Page(None, file, config)
            page.parent = section
            section.children.append(page)
            nav.pages.append(page)
    for previous, following in zip(nav.pages, nav.pages[1:]):
        previous.next_page, following.previous_page = following, previous
    return nav
