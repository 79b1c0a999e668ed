"""CheckpointManager basics: cadence, payload, the background writer and failure handling."""

from __future__ import annotations

import threading

import pytest
import torch
from chanfig import NestedDict

from danling.runners.checkpoints import (
    BackgroundWriter,
    CheckpointManager,
    SaveRequest,
    collect_state,
    resolve_checkpoint_interval,
)
from danling.runners.config import RunnerConfig
from danling.runners.state import RunnerState


class RecordingManager(CheckpointManager):
    """A backend whose storage is a list: enough to test everything the base class decides."""

    def __init__(self, *args, fail_on=(), **kwargs):
        super().__init__("unused", *args, **kwargs)
        self.written: list[SaveRequest] = []
        self.fail_on = set(fail_on)

    def _persist(self, request):
        if request.progress in self.fail_on:
            raise OSError(f"disk full at {request.progress}")
        self.written.append(request)
        self.record_success(request.name, (request.name,))


SYNC = {"async_mode": "disabled"}


def test_interval_defaults():
    assert resolve_checkpoint_interval(None, epochs=3) == 1
    assert resolve_checkpoint_interval(None, steps=10) == 1
    assert resolve_checkpoint_interval(None, steps=1001) == 51
    assert resolve_checkpoint_interval(None) == 8192
    assert resolve_checkpoint_interval(0, epochs=3) == 0


@pytest.mark.parametrize(
    ("unit", "interval", "progress", "expected"),
    [
        ("epoch", 1, 1, "ckpt-e000001"),
        ("epoch", 2, 3, None),
        ("epoch", 2, 4, "ckpt-e000004"),
        ("step", 100, 1000, "ckpt-s000000001000"),
        ("step", 100, 0, None),
        ("step", 0, 100, None),
        ("step", None, 100, None),
    ],
)
def test_history_names_follow_the_cadence(unit, interval, progress, expected):
    manager = RecordingManager(SYNC, interval=interval, unit=unit)
    assert manager.history_name(progress) == expected
    assert manager.should_save(progress) is (expected is not None)


def test_force_last_step_and_load_only():
    manager = RecordingManager(SYNC, interval=5)
    assert not manager.should_save(3)
    assert manager.should_save(3, force=True) and manager.should_save(3, last_step=True)
    read_only = RecordingManager({"load_only": True, "async_mode": "disabled"}, interval=1)
    assert not read_only.should_save(1, force=True) and not read_only.should_save(1, last_step=True)
    assert read_only.save({"x": 1}, progress=1, force=True) is False


def test_interval_falls_back_to_config():
    assert RecordingManager({"interval": 3, "async_mode": "disabled"}).history_name(6) == "ckpt-e000006"
    assert RecordingManager(SYNC).history_name(6) is None  # no interval anywhere: no periodic saves


def test_unknown_unit_and_bad_names():
    with pytest.raises(ValueError, match=r"Unknown checkpoint unit: 'batch'\. Valid options are: epoch, step"):
        RecordingManager(SYNC, unit="batch")
    manager = RecordingManager(SYNC, interval=1)
    for name in ("", "../latest", "a/b", ".hidden"):
        with pytest.raises(ValueError, match="plain file name"):
            manager.save({}, progress=1, name=name)


def test_save_builds_the_request():
    manager = RecordingManager({"async_mode": "disabled", "last_save_model_only": True}, interval=2)
    model = torch.nn.Linear(2, 1)
    assert manager.save({"model": model}, progress=1) is False
    assert manager.save(lambda: {"model": model}, progress=2, best=True)
    assert manager.save({"model": model}, progress=3, name="final", last_step=True)
    first, final = manager.written
    assert (first.name, first.history, first.best, first.export_model) == ("latest", "ckpt-e000002", True, False)
    assert (final.name, final.history, final.export_model) == ("final", None, True)
    assert torch.equal(first.payload["model"]["weight"], model.weight)
    assert manager.health.saved == 2


def test_forced_saves_never_create_history():
    manager = RecordingManager(SYNC, interval=1)
    manager.save({"model": {}}, progress=2, force=True)  # e.g. on SIGTERM, part-way into epoch 3
    manager.save({"model": {}}, progress=0, name="seed", force=True)
    manager.save({"model": {}}, progress=3, last_step=True)
    assert [request.history for request in manager.written] == [None, None, "ckpt-e000003"]


def test_state_callable_only_called_when_due():
    manager = RecordingManager(SYNC, interval=10)
    calls = []
    manager.save(lambda: calls.append(1) or {}, progress=3)
    assert calls == []


def test_collect_state_of_components():
    config = RunnerConfig(epochs=1)
    state = RunnerState(config)
    payload = collect_state({"runner": config, "state": state, "optimizer": torch.optim.SGD([torch.zeros(1)], lr=1)})
    assert type(payload["runner"]) is dict and payload["runner"]["epochs"] == 1
    assert payload["state"]["train"] == {"global_step": 0, "micro_step": 0, "epoch": 0}
    assert payload["optimizer"]["param_groups"][0]["lr"] == 1
    assert "state_dict" not in config  # inspecting the config did not create keys
    assert collect_state({"other": NestedDict(a=1)})["other"] == {"a": 1}
    with pytest.raises(ValueError, match="must be a mapping"):
        collect_state([1, 2])


def test_async_save_snapshots_before_returning():
    manager = RecordingManager({"async_mode": "async"}, interval=1)
    weight = torch.zeros(2)
    manager.save({"model": {"weight": weight}}, progress=1)
    weight.add_(5)  # training goes on while the writer works
    assert manager.wait(timeout=10)
    assert torch.equal(manager.written[0].payload["model"]["weight"], torch.zeros(2))
    assert manager.close(timeout=10)


def test_payloads_a_backend_keeps_are_never_recycled():
    # RecordingManager keeps every payload, so it does not declare ``recycles_snapshots``.
    manager = RecordingManager({"async_mode": "async"}, interval=1)
    weight = torch.zeros(64)
    for progress in range(1, 4):
        weight.fill_(progress)
        manager.save({"model": {"weight": weight}}, progress=progress)
        assert manager.wait(timeout=10)
    assert [int(request.payload["model"]["weight"][0]) for request in manager.written] == [1, 2, 3]
    assert manager.close(timeout=10)


def test_failures_are_recorded_and_training_continues():
    manager = RecordingManager(SYNC, interval=1, fail_on={2})
    manager.save({"x": 1}, progress=1)
    with pytest.warns(RuntimeWarning, match="checkpoint save failed: disk full at 2"):
        assert manager.save({"x": 2}, progress=2)
    manager.save({"x": 3}, progress=3)
    assert manager.health.error_count == 1 and manager.health.last_failed_target == "latest"
    assert manager.health.last_error == "OSError: disk full at 2" and manager.health.saved == 2


def test_fail_on_error_raises_sync_and_async():
    manager = RecordingManager({"async_mode": "disabled", "fail_on_error": True}, interval=1, fail_on={1})
    with pytest.warns(RuntimeWarning), pytest.raises(OSError, match="disk full at 1"):
        manager.save({}, progress=1)
    background = RecordingManager({"async_mode": "async", "fail_on_error": True}, interval=1, fail_on={1})
    with pytest.warns(RuntimeWarning):
        background.save({}, progress=1)
        with pytest.raises(OSError, match="disk full at 1"):
            background.wait()
    assert background.close()


def _blocking_writer():
    release = threading.Event()
    started = threading.Event()
    order: list[tuple[str, int]] = []

    def write(request):
        started.set()
        release.wait(10)
        order.append((request.name, request.progress))

    return BackgroundWriter(write, name="test-writer"), release, started, order


def test_background_writer_coalesces_latest_but_keeps_reliable_saves():
    writer, release, started, order = _blocking_writer()
    writer.submit(SaveRequest("latest", {}, progress=1))
    assert started.wait(10)  # 1 is being written; the rest queue up
    writer.submit(SaveRequest("latest", {}, progress=2))
    writer.submit(SaveRequest("latest", {}, progress=3, history="ckpt-e000003"))
    writer.submit(SaveRequest("latest", {}, progress=4))
    writer.submit(SaveRequest("seed", {}, progress=0))
    writer.submit(SaveRequest("latest", {}, progress=5))
    assert writer.pending == 4  # 1 in flight; queued: 3 (history), seed, 5 (2 and 4 were superseded)
    assert not writer.wait(timeout=0.05)
    release.set()
    assert writer.close(timeout=10)
    assert order == [("latest", 1), ("latest", 3), ("seed", 0), ("latest", 5)]
    with pytest.raises(RuntimeError, match="writer is closed"):
        writer.submit(SaveRequest("latest", {}, progress=6))


def test_close_timeout_keeps_the_writer_for_a_retry():
    writer, release, started, order = _blocking_writer()
    writer.submit(SaveRequest("latest", {}, progress=1))
    assert started.wait(10)
    assert writer.close(timeout=0.0) is False
    writer.submit(SaveRequest("latest", {}, progress=2))  # still accepting work
    release.set()
    assert writer.close(timeout=10) is True
    assert order == [("latest", 1), ("latest", 2)]
