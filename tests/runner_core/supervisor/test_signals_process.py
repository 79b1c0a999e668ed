"""Real signals to a real subprocess running a loop under ``RunnerSupervisor`` (see ``loop_script.py``)."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time

import pytest

from tests.runner_core.supervisor import loop_script

SCRIPT = os.path.join(os.path.dirname(__file__), "loop_script.py")


def _start(workspace, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, SCRIPT, str(workspace), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _read_json(path) -> dict:
    for _ in range(600):
        try:
            with open(path) as file:
                return json.load(file)
        except FileNotFoundError:
            time.sleep(0.05)
    raise AssertionError(f"{path} never appeared")


class _Lines:
    """Collect a subprocess's stdout lines on a thread, with the time each arrived."""

    def __init__(self, process: subprocess.Popen):
        self.lines: queue.Queue[tuple[float, str]] = queue.Queue()
        self.seen: list[str] = []
        self._thread = threading.Thread(target=self._read, args=(process,), daemon=True)
        self._thread.start()

    def _read(self, process: subprocess.Popen) -> None:
        for line in process.stdout:
            self.lines.put((time.monotonic(), line.strip()))
        self.lines.put((time.monotonic(), "<eof>"))

    def next_step_after(self, moment: float, timeout: float = 120.0) -> int:
        """The number of the first ``step N`` line that arrived after ``moment``."""
        deadline = time.monotonic() + timeout
        while True:
            arrived, line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            self.seen.append(line)
            if line == "<eof>":
                raise AssertionError(f"the loop ended early: {self.seen[-5:]}")
            if arrived > moment and line.startswith("step "):
                return int(line.split()[1])

    def rest(self) -> list[str]:
        self._thread.join(timeout=60)
        while not self.lines.empty():
            self.seen.append(self.lines.get()[1])
        return [line for line in self.seen if line != "<eof>"]


def test_heartbeats_pause_with_the_process_and_sigterm_saves_and_exits_zero(tmp_path):
    """One training subprocess: heartbeats advance, freeze under SIGSTOP, resume; SIGTERM mid-step ends it cleanly."""
    interval, step_seconds = 0.1, 0.2
    process = _start(tmp_path, "--step-seconds", str(step_seconds), "--heartbeat-interval", str(interval))
    lines = _Lines(process)
    path = tmp_path / "heartbeats" / "rank-00000.json"
    try:
        lines.next_step_after(0.0)
        first = _read_json(path)
        time.sleep(3 * step_seconds)
        second = _read_json(path)
        assert second["updated_at_unix"] > first["updated_at_unix"]
        assert second["global_step"] > first.get("global_step", 0)
        assert (second["status"], second["pid"], second["id"]) == ("training", process.pid, "loop-script")

        process.send_signal(signal.SIGSTOP)
        time.sleep(2 * interval)  # a write in flight when the process stopped has landed by now
        paused = _read_json(path)
        time.sleep(6 * interval)
        assert _read_json(path) == paused  # no thread left running to write: the file is frozen

        process.send_signal(signal.SIGCONT)
        resumed_at = time.monotonic()
        step = lines.next_step_after(resumed_at)
        time.sleep(step_seconds / 2)  # inside the next step, between its two halves
        process.send_signal(signal.SIGTERM)
        assert _read_json(path)["updated_at_unix"] > paused["updated_at_unix"]
        process.wait(timeout=60)
        stderr = process.stderr.read()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)
    assert process.returncode == 0, stderr
    assert "received SIGTERM; saving checkpoint and exiting" in stderr
    printed = lines.rest()
    last = int(printed[-2].split()[1])
    assert printed[-1] == f"exit {last}" and last > step
    # the step in flight was completed, the save ran after it, and the loop left right then
    assert _read_json(tmp_path / "saved.json") == {"step": last, "first_half": last, "second_half": last}
    final = _read_json(path)
    assert (final["status"], final["event"], final["global_step"]) == ("closed", "shutdown", last)


@pytest.mark.parametrize("delay", [0.0, 0.05, 0.13, 0.31])
def test_sigterm_at_any_moment_stops_at_a_step_boundary(tmp_path, delay, capsys):
    """The same loop in this process, signalled by a timer thread at moments all over a step."""
    previous = signal.getsignal(signal.SIGTERM)

    def send_sigterm() -> None:
        while signal.getsignal(signal.SIGTERM) == previous:  # until the loop installed its handler
            time.sleep(0.001)
        time.sleep(delay)
        os.kill(os.getpid(), signal.SIGTERM)

    timer = threading.Thread(target=send_sigterm)
    timer.start()
    try:
        assert loop_script.main([str(tmp_path), "--step-seconds", "0.1"]) == 0
    finally:
        timer.join()
    saved = _read_json(tmp_path / "saved.json")
    assert saved["first_half"] == saved["second_half"] == saved["step"] >= 1
    assert capsys.readouterr().out.splitlines()[-1] == f"exit {saved['step']}"
    assert signal.getsignal(signal.SIGTERM) == previous


def test_without_sigterm_the_loop_runs_to_its_end(tmp_path, capsys):
    assert loop_script.main([str(tmp_path), "--steps", "3", "--step-seconds", "0"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "exit 3"
    assert not (tmp_path / "saved.json").exists()
