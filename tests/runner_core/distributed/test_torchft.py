"""TorchFT with DDP: a lighthouse on loopback and two replica groups (one process each).

One group is killed with SIGKILL mid-training; the other keeps training alone; the killed group
is started again with the same command, rejoins the quorum, takes the weights, optimizer and
scheduler state from the live group, resumes its own data where its loader checkpoint left it,
and both groups end with equal weights.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

pytest.importorskip("torchft")

pytestmark = [pytest.mark.distributed, pytest.mark.timeout(240)]

SCRIPT = Path(__file__).with_name("ft_replica.py")
ROOT = Path(__file__).resolve().parents[3]
STEPS = 60
KILL_AT = 10


@pytest.fixture
def lighthouse():
    from torchft.coordination import LighthouseServer

    server = LighthouseServer(bind="[::]:0", min_replicas=1, join_timeout_ms=200, heartbeat_timeout_ms=1000)
    yield server.address()
    server.shutdown()


def launch(root: Path, replica: int, lighthouse: str, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "TORCHFT_LIGHTHOUSE": lighthouse}
    env["FT_LAUNCHED_AT"] = str(time.time())
    env.pop("FT_REPLICA_ID", None)
    command = [sys.executable, str(SCRIPT), str(root), str(replica), str(STEPS), *extra]
    log = open(root / f"log-{replica}-{time.monotonic_ns()}.txt", "w")  # noqa: SIM115 (closed with the process)
    return subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)


def progress(root: Path, replica: int) -> int:
    path = root / f"progress-{replica}"
    return int(path.read_text() or 0) if path.exists() else 0


def logs(root: Path) -> str:
    return "\n".join(f"== {path.name}\n{path.read_text()[-4000:]}" for path in sorted(root.glob("log-*.txt")))


def wait_for(root: Path, condition, processes: list[subprocess.Popen], what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        if any(process.poll() not in (None, 0) for process in processes):
            pytest.fail(f"a replica group failed while waiting for {what}:\n{logs(root)}")
        time.sleep(0.02)
    pytest.fail(f"timed out waiting for {what}:\n{logs(root)}")


def finish(root: Path, process: subprocess.Popen, timeout: float = 120) -> None:
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        pytest.fail(f"a replica group did not finish:\n{logs(root)}")
    assert process.returncode == 0, logs(root)


def kill_and_rejoin(root: Path, lighthouse: str, *extra: str) -> dict:
    """Run the scenario; return the restarted group's report."""
    survivor = launch(root, 0, lighthouse, *extra)
    victim = launch(root, 1, lighthouse, *extra)
    try:
        wait_for(root, lambda: progress(root, 1) >= KILL_AT, [survivor, victim], f"group 1 to reach step {KILL_AT}")
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        killed_at = progress(root, 1)
        assert killed_at < STEPS
        # the survivor trains on alone: it leaves the dead group out of the quorum
        alone_from = progress(root, 0)
        wait_for(root, lambda: progress(root, 0) >= alone_from + 5, [survivor], "the survivor to train alone")
        (root / "ready-1").unlink()  # written by the killed process
        (root / "restarting-1").touch()  # the survivor waits for the restarted group's runner (see ft_replica.py)
        restarted = launch(root, 1, lighthouse, *extra)
        finish(root, survivor)
        finish(root, restarted)
    finally:
        for process in (survivor, victim):
            if process.poll() is None:
                process.kill()
    report = json.loads((root / "report-1.json").read_text())
    report["killed_at"], report["survivor_alone_from"] = killed_at, alone_from
    return report


def assert_same_weights(root: Path) -> None:
    survivor = torch.load(root / "final-0.pt", weights_only=True)
    restarted = torch.load(root / "final-1.pt", weights_only=True)
    assert survivor.keys() == restarted.keys()
    for name, value in survivor.items():
        assert torch.equal(value, restarted[name]), name


def test_a_killed_replica_group_rejoins_and_recovers_from_its_peer(tmp_path, lighthouse):
    report = kill_and_rejoin(tmp_path, lighthouse)
    assert progress(tmp_path, 0) == progress(tmp_path, 1) == STEPS
    # the restarted group's first update came after the steps the survivor made alone: it took the peer's state
    assert report["first_update"]["step"] > report["survivor_alone_from"] + 5 > KILL_AT
    # its own loader checkpoint put it back where its data was (saved every 5 steps before the kill)
    assert report["start_position"]["train"] >= 5
    assert_same_weights(tmp_path)
    print(f"recovery: {report['first_update']}")
