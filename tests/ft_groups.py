"""Two TorchFT replica groups and a lighthouse on loopback, for the fault-tolerance tests of the runners.

``kill_and_rejoin`` runs the scenario: both groups (``runner_core/distributed/ft_replica.py``, one
process each) train; group 1 is killed with SIGKILL mid-training; group 0 keeps training alone;
group 1 is started again with the same command, rejoins the quorum and recovers from group 0.
``assert_same_weights`` compares the weights both groups saved at the end.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tests" / "runner_core" / "distributed" / "ft_replica.py"
STEPS = 60
KILL_AT = 10


@contextlib.contextmanager
def lighthouse_server() -> Iterator[str]:
    """A lighthouse in this process (its address): quorums of one group allowed, stragglers waited for 200 ms."""
    from torchft.coordination import LighthouseServer

    server = LighthouseServer(bind="[::]:0", min_replicas=1, join_timeout_ms=200, heartbeat_timeout_ms=1000)
    try:
        yield server.address()
    finally:
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


def kill_and_rejoin(root: Path, *extra: str) -> dict:
    """Run the scenario (``extra``: arguments of ``ft_replica.py``); return the restarted group's report."""
    with lighthouse_server() as lighthouse:
        return _kill_and_rejoin(root, lighthouse, *extra)


def _kill_and_rejoin(root: Path, lighthouse: str, *extra: str) -> dict:
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
