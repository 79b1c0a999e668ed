"""``HeartbeatWriter``: a real thread writing a real file, read back while the writer runs."""

from __future__ import annotations

import json
import os
import threading
import time
import warnings

import pytest

from danling.runners.heartbeat import HeartbeatWriter, heartbeat_path
from danling.runners.supervisor import RunnerSupervisor


def _read(path) -> dict:
    with open(path) as file:
        return json.load(file)


def test_a_hung_loop_shows_as_growing_seconds_since_progress(tmp_path):
    path = heartbeat_path(tmp_path, "heartbeats", 0)
    writer = HeartbeatWriter(path, 0.05, fields={"rank": 0})
    writer.start()
    writer.mark_progress("training", global_step=7)
    marked = _read(path)["last_progress_at_unix"] if writer.writes > 1 else None
    time.sleep(0.5)  # the "loop" hangs: no progress, the thread keeps writing
    hung = _read(path)
    assert hung["status"] == "training" and hung["global_step"] == 7
    assert hung["seconds_since_progress"] >= 0.3
    assert hung["updated_at_unix"] - hung["last_progress_at_unix"] >= 0.3
    assert marked is None or marked <= hung["last_progress_at_unix"]
    progressed = time.monotonic()
    writer.mark_progress(global_step=8)
    deadline = progressed + 30  # a loaded machine may delay the writer thread; the file must catch up
    while _read(path)["global_step"] != 8 and time.monotonic() < deadline:
        time.sleep(0.02)
    resumed = _read(path)
    assert resumed["global_step"] == 8
    assert resumed["seconds_since_progress"] <= time.monotonic() - progressed + 0.05
    writer.close()
    assert not any(thread.name == "danling-heartbeat" for thread in threading.enumerate())
    assert os.listdir(os.path.dirname(path)) == ["rank-00000.json"]  # no temporaries left behind


def test_a_status_change_is_written_without_waiting_for_the_interval(tmp_path):
    supervisor = RunnerSupervisor(tmp_path, heartbeat={"enabled": True, "interval_seconds": 3600}, rank=2, world_size=4)
    path = supervisor.init_heartbeat()
    assert path == os.path.join(tmp_path, "heartbeats", "rank-00002.json")
    started = _read(path)
    assert (started["status"], started["event"], started["rank"], started["world_size"]) == (
        "starting",
        "startup",
        2,
        4,
    )
    assert any(thread.name == "danling-heartbeat-rank2" for thread in threading.enumerate())
    supervisor.set_status("saving", event="SIGTERM")
    for _ in range(200):
        if _read(path)["status"] == "saving":
            break
        time.sleep(0.01)
    assert _read(path)["event"] == "SIGTERM"
    supervisor.close()
    assert _read(path)["status"] == "closed"
    assert not any(thread.name == "danling-heartbeat-rank2" for thread in threading.enumerate())


def test_disabled_heartbeat_writes_nothing(tmp_path):
    supervisor = RunnerSupervisor(tmp_path)
    assert supervisor.init_heartbeat() is None
    supervisor.mark_heartbeat_progress(global_step=1)
    supervisor.close()
    assert not (tmp_path / "heartbeats").exists()


def test_a_failing_write_warns_once(tmp_path):
    blocker = tmp_path / "heartbeats"
    blocker.write_text("a file where the folder should be")
    writer = HeartbeatWriter(blocker / "rank-00000.json", 60.0)
    with pytest.warns(RuntimeWarning, match="heartbeat write failed"):
        assert writer.write() is False
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert writer.write() is False
    assert caught == []  # warned once, not at every tick
    with pytest.raises(ValueError, match=r"heartbeat\.interval_seconds must be a positive number, got -1"):
        HeartbeatWriter(tmp_path / "x.json", -1)
