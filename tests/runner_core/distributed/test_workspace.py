"""Main-process-only behaviour with real ranks: two processes joined by gloo on loopback."""

from __future__ import annotations

import contextlib
import io
import os

import pytest

from tests.distributed import run_workers


def _main_process_duties(rank: int, world_size: int, root: str) -> dict:
    from danling.runners.utils import get_rank, get_world_size, on_main_process
    from danling.runners.workspace import RunnerWorkspace

    for name in ("RANK", "WORLD_SIZE"):  # ranks must come from the process group itself
        os.environ.pop(name, None)

    @on_main_process
    def summary() -> str:
        return f"written by {get_rank()}"

    workspace = RunnerWorkspace({"workspace_root": root, "lineage": "dist", "epochs": 1}, timestamp="T")
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        workspace.init_print()
        print(f"hello from {rank}")
        print(f"forced from {rank}", force=True)
        logger = workspace.init_logging()
        workspace.close()
    return {
        "rank": get_rank(),
        "world_size": get_world_size(),
        "summary": summary(),
        "metadata": [os.path.basename(path) for path in workspace.save_metadata()],
        "logger": logger is not None,
        "stdout": stdout.getvalue(),
        "dir": workspace.dir,
    }


@pytest.mark.distributed
def test_only_rank_zero_prints_logs_and_writes(tmp_path):
    zero, one = run_workers(_main_process_duties, 2, str(tmp_path))
    assert (zero["rank"], one["rank"], zero["world_size"], one["world_size"]) == (0, 1, 2, 2)
    assert zero["summary"] == "written by 0" and one["summary"] is None
    assert "runner.yaml" in zero["metadata"] and one["metadata"] == []
    assert zero["logger"] and not one["logger"]
    assert zero["stdout"] == "hello from 0\nforced from 0\n" and one["stdout"] == "forced from 1\n"
    assert zero["dir"] == one["dir"]  # every rank computes the same run directory
