"""Every ```python example of the documentation site runs.

Each page's blocks run in order in one namespace (a later block may use what an earlier one
defined), in a fresh temporary working directory, so files an example writes (checkpoints, runs)
land there. A page fails at its first block that raises, and the failure names the page and the
line the block starts on.
"""

from __future__ import annotations

import importlib.util
import os
import re
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[2] / "docs"
GENERATED = {"benchmarks"}  # folders `nox -s bench` writes into; not hand-written guides
FENCE = re.compile(r"^(?P<indent>[ \t]*)```(?P<info>[^\n`]*)\n(?P<code>.*?)^(?P=indent)```[ \t]*$", re.M | re.S)

# Pages whose examples need an optional backend: skipped where its distribution's dependency is
# absent, as the root conftest.py skips collecting that backend's own tests.
REQUIRES = {"guides/deepspeed.md": "deepspeed", "guides/parallel.md": "torchft"}


@dataclass(frozen=True)
class Block:
    page: str
    line: int
    code: str


def python_blocks(text: str, page: str) -> list[Block]:
    """The fenced ```python blocks of a Markdown page, with the line each starts on."""
    blocks = []
    for match in FENCE.finditer(text):
        info = match["info"].strip().split()
        if info and info[0] in {"python", "py"}:
            line = text.count("\n", 0, match.start()) + 2  # the first line of code, 1-based
            blocks.append(Block(page, line, textwrap.dedent(match["code"])))
    return blocks


def pages() -> list[Path]:
    return sorted(
        path
        for path in DOCS.rglob("*.md")
        if path.relative_to(DOCS).parts[0] not in GENERATED and python_blocks(path.read_text(), str(path))
    )


def run_page(blocks: list[Block]) -> None:
    """Run a page's blocks in order in one namespace; re-raise a failure naming its block."""
    namespace: dict[str, object] = {"__name__": "__docs__"}
    for block in blocks:
        try:
            exec(compile(block.code, f"{block.page}:{block.line}", "exec"), namespace)
        except Exception as error:
            raise AssertionError(f"the example at {block.page}:{block.line} failed: {error!r}") from error


def test_every_guide_has_examples() -> None:
    names = {str(path.relative_to(DOCS)) for path in pages()}
    expected = {
        "getting-started.md",
        "guides/nestedtensor.md",
        "guides/meters.md",
        "guides/lrsched.md",
        "guides/runners.md",
        "guides/deepspeed.md",
        "guides/parallel.md",
    }
    assert expected <= names, f"pages without ```python examples: {sorted(expected - names)}"


@pytest.mark.parametrize("path", pages(), ids=lambda path: str(path.relative_to(DOCS)))
def test_page_examples_run(path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    page = str(path.relative_to(DOCS))
    if page in REQUIRES and importlib.util.find_spec(REQUIRES[page]) is None:
        pytest.skip(f"{REQUIRES[page]} is not installed")
    monkeypatch.chdir(tmp_path)
    environ = dict(os.environ)  # runners and DeepSpeed set LOCAL_RANK & co.; later tests must not see them
    try:
        run_page(python_blocks(path.read_text(), page))
    finally:
        os.environ.clear()
        os.environ.update(environ)


def test_a_broken_example_fails_naming_its_page_and_line() -> None:
    text = "# A page\n\n```python\nvalue = 1\n```\n\nText.\n\n```python\nassert value == 2, value\n```\n"
    blocks = python_blocks(text, "page.md")
    assert [block.line for block in blocks] == [4, 10]
    with pytest.raises(AssertionError, match=r"page\.md:10 failed: AssertionError\(1\)"):
        run_page(blocks)


def test_only_python_fences_run() -> None:
    text = "```bash\nexit 1\n```\n\n```text\nnot code\n```\n\n    ```python\n    x = 1\n    ```\n"
    assert [block.code for block in python_blocks(text, "page.md")] == ["x = 1\n"]
