"""SIGTERM mid-run: the step in flight finishes, a checkpoint of it is written, the process exits 0,
and the run continued from ``latest`` ends bit for bit where an uninterrupted run ends."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SCRIPT = Path(__file__).with_name("preemptible.py")
ROOT = Path(__file__).resolve().parents[3]
STEPS = 30


def launch(root: Path, *, ranks: int = 1, sleep: float = 0.05) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    # Under DDP, file checkpoints hold rank 0's RNG state only, so a resumed rank 1 draws other dropout
    # masks than it would have: the DDP case trains without dropout (see the runner-core README).
    dropout = "0.1" if ranks == 1 else "0.0"
    command = [sys.executable, str(SCRIPT), str(root), str(STEPS), "--sleep", str(sleep), "--dropout", dropout]
    if ranks > 1:
        torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ranks}"]
        command = [*torchrun, *command[1:]]
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_for_step(root: Path, step: int, process: subprocess.Popen, rank: int = 0, timeout: float = 240) -> None:
    progress = root / f"progress-{rank}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if progress.exists() and int(progress.read_text() or 0) >= step:
            return
        if process.poll() is not None:
            pytest.fail(f"the job ended before step {step}:\n{process.stdout.read()}")
        time.sleep(0.01)
    process.kill()
    pytest.fail(f"the job did not reach step {step} in {timeout} s")


def finish(process: subprocess.Popen, timeout: float = 240) -> str:
    output, _ = process.communicate(timeout=timeout)
    assert process.returncode == 0, output
    return output


def latest_step(root: Path) -> int:
    (latest,) = root.glob("*/*/checkpoints/latest.pth")
    return torch.load(latest, weights_only=True)["state"]["train"]["global_step"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> dict[str, torch.Tensor]:
    root = tmp_path_factory.mktemp("uninterrupted")
    finish(launch(root, sleep=0.0))
    return torch.load(root / "final-0.pt", weights_only=True)


@pytest.mark.parametrize("moment", [3, 19])
def test_sigterm_saves_the_step_reached_and_resumes_exactly(tmp_path, uninterrupted, moment):
    process = launch(tmp_path)
    wait_for_step(tmp_path, moment, process)
    process.send_signal(signal.SIGTERM)
    output = finish(process)
    assert "stopped by SIGTERM" in output
    reached = int((tmp_path / "progress-0").read_text())
    assert moment <= reached < STEPS and not (tmp_path / "final-0.pt").exists()
    assert latest_step(tmp_path) == reached  # the forced save holds the last finished step

    finish(launch(tmp_path, sleep=0.0))  # the same command continues from latest
    resumed = torch.load(tmp_path / "final-0.pt", weights_only=True)
    assert resumed.keys() == uninterrupted.keys()
    for name, value in uninterrupted.items():
        assert torch.equal(resumed[name], value), name


@pytest.mark.distributed
def test_sigterm_to_one_ddp_rank_stops_both_at_the_same_step(tmp_path, uninterrupted):
    process = launch(tmp_path, ranks=2)
    wait_for_step(tmp_path, 7, process, rank=1)
    os.kill(int((tmp_path / "pid-1").read_text()), signal.SIGTERM)
    output = finish(process)
    steps = {int((tmp_path / f"progress-{rank}").read_text()) for rank in (0, 1)}
    assert len(steps) == 1, output  # both ranks agreed on where to stop
    (reached,) = steps
    assert 7 <= reached < STEPS and latest_step(tmp_path) == reached

    finish(launch(tmp_path, ranks=2, sleep=0.0))
    finals = [torch.load(tmp_path / f"final-{rank}.pt", weights_only=True) for rank in (0, 1)]
    control = tmp_path / "control"
    control.mkdir()
    finish(launch(control, ranks=2, sleep=0.0))
    expected = torch.load(control / "final-0.pt", weights_only=True)
    for name, value in expected.items():
        assert torch.equal(finals[0][name], value) and torch.equal(finals[1][name], value), name
