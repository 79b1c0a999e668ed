"""FileCheckpointManager on real files: aliases, retention, async writes, loading, crash safety."""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from danling.runners.checkpoints import (
    CheckpointNotFoundError,
    FileCheckpointManager,
    load_checkpoint,
    read_config,
    resolve_checkpoint_path,
)
from danling.runners.checkpoints.file import MODEL_EXPORT
from danling.runners.config import RunnerConfig
from danling.runners.state import RunnerState

SYNC = {"async_mode": "disabled"}


def _components(step: int) -> dict:
    model = torch.nn.Linear(3, 2)
    with torch.no_grad():
        model.weight.fill_(step)
    config = RunnerConfig(epochs=5)
    state = RunnerState(config)
    state.train.epoch = step
    return {"runner": config, "state": state, "model": model}


def _files(manager):
    return sorted(name for name in os.listdir(manager.directory))


def _step_of(payload) -> int:
    return int(payload["model"]["weight"][0, 0])


def test_no_interval_writes_nothing_unless_forced(tmp_path):
    manager = FileCheckpointManager(tmp_path, SYNC)
    assert manager.save(_components(1), progress=1) is False
    assert _files(manager) == []
    manager.save(_components(1), progress=1, force=True)
    assert _files(manager) == ["latest.pth"]


def test_latest_history_and_best_aliases(tmp_path):
    manager = FileCheckpointManager(tmp_path, SYNC, interval=2)
    manager.save(_components(1), progress=1, best=True)  # off the cadence: nothing
    manager.save(_components(2), progress=2, best=True)
    manager.save(_components(3), progress=3, force=True)
    manager.save(_components(4), progress=4)
    assert _files(manager) == ["best.pth", "ckpt-e000002.pth", "ckpt-e000004.pth", "latest.pth"]
    assert _step_of(manager.load("latest")) == 4 and _step_of(manager.load("best")) == 2
    assert _step_of(manager.load("ckpt-e000002")) == 2 and _step_of(manager.load("ckpt-e000004.pth")) == 4
    assert os.path.samefile(manager.path("latest"), manager.path("ckpt-e000004"))  # a hard link, no copy
    assert manager.health.last_successful_target == "ckpt-e000004.pth"
    assert manager.health.last_successful_aliases == ("latest.pth", "ckpt-e000004.pth")


def test_step_mode_names_and_custom_names(tmp_path):
    manager = FileCheckpointManager(tmp_path, SYNC, interval=500, unit="step")
    manager.save(_components(0), progress=0, name="seed", force=True)
    manager.save(_components(1), progress=1000)
    assert _files(manager) == ["ckpt-s000000001000.pth", "latest.pth", "seed.pth"]
    assert _step_of(manager.load("seed")) == 0


def test_keep_latest_k_prunes_history_but_not_aliases(tmp_path):
    manager = FileCheckpointManager(tmp_path, {**SYNC, "keep_latest_k": 2}, interval=1)
    for epoch in range(1, 5):
        manager.save(_components(epoch), progress=epoch, best=epoch == 1)
    assert _files(manager) == ["best.pth", "ckpt-e000003.pth", "ckpt-e000004.pth", "latest.pth"]
    assert _step_of(manager.load("best")) == 1  # best survives the pruning of its history file


def test_retention_continues_after_a_restart(tmp_path):
    first = FileCheckpointManager(tmp_path, {**SYNC, "keep_latest_k": 2}, interval=1)
    for epoch in (1, 2):
        first.save(_components(epoch), progress=epoch)
    resumed = FileCheckpointManager(tmp_path, {**SYNC, "keep_latest_k": 2}, interval=1)
    assert list(resumed.history) == ["ckpt-e000001.pth", "ckpt-e000002.pth"]
    resumed.save(_components(3), progress=3)
    assert _files(resumed) == ["ckpt-e000002.pth", "ckpt-e000003.pth", "latest.pth"]


def test_without_fsync_saves_are_still_atomic_and_loadable(tmp_path):
    manager = FileCheckpointManager(tmp_path, {**SYNC, "fsync": False}, interval=1)
    manager.save(_components(1), progress=1)
    manager.save(_components(2), progress=2)
    assert _files(manager) == ["ckpt-e000001.pth", "ckpt-e000002.pth", "latest.pth"]
    assert _step_of(manager.load()) == 2


def test_only_the_main_process_cleans_up_temporaries(tmp_path, monkeypatch):
    stale = tmp_path / "latest.pth.tmp-999999999-1"  # no such process
    stale.write_bytes(b"partial")
    monkeypatch.setenv("RANK", "1")
    FileCheckpointManager(tmp_path, SYNC)
    assert stale.exists()
    monkeypatch.setenv("RANK", "0")
    FileCheckpointManager(tmp_path, SYNC)
    assert not stale.exists()


def test_load_only_never_writes(tmp_path):
    manager = FileCheckpointManager(tmp_path, {**SYNC, "load_only": True}, interval=1)
    assert not manager.save(_components(1), progress=1, force=True, last_step=True)
    assert _files(manager) == []


def test_async_saves_land_in_order_with_snapshots(tmp_path):
    manager = FileCheckpointManager(tmp_path, {"async_mode": "async", "keep_latest_k": 3}, interval=2)
    components = _components(0)
    model = components["model"]
    for epoch in range(1, 7):
        with torch.no_grad():
            model.weight.fill_(epoch)
        manager.save(components, progress=epoch, best=epoch == 2)
        with torch.no_grad():
            model.weight.fill_(-1)  # an in-place update right after the call must not leak in
    assert manager.close(timeout=30)
    assert _files(manager) == ["best.pth", "ckpt-e000002.pth", "ckpt-e000004.pth", "ckpt-e000006.pth", "latest.pth"]
    assert [_step_of(manager.load(name)) for name in ("latest", "best", "ckpt-e000004")] == [6, 2, 4]
    assert manager.health.error_count == 0


def test_pending_async_saves_are_written_before_the_interpreter_exits(tmp_path):
    script = textwrap.dedent(
        """
        import sys, torch
        from danling.runners.checkpoints import FileCheckpointManager
        manager = FileCheckpointManager(sys.argv[1], {"async_mode": "async"}, interval=1)
        for epoch in range(1, 4):
            manager.save({"model": {"weight": torch.full((256, 256), float(epoch))}}, progress=epoch)
        # no wait() or close(): the script just ends
        """
    )
    subprocess.run([sys.executable, "-c", script, str(tmp_path)], check=True, timeout=120)
    assert sorted(os.listdir(tmp_path)) == ["ckpt-e000001.pth", "ckpt-e000002.pth", "ckpt-e000003.pth", "latest.pth"]
    assert torch.all(load_checkpoint("latest", tmp_path)["model"]["weight"] == 3)


def test_pinned_memory_mode_falls_back_to_async(tmp_path):
    manager = FileCheckpointManager(tmp_path, {"async_mode": "async_with_pinned_mem"}, interval=1)
    assert manager.async_mode == "async"
    manager.save(_components(1), progress=1)
    assert manager.close(timeout=30) and _files(manager) == ["ckpt-e000001.pth", "latest.pth"]


def test_alias_failure_is_recorded_and_latest_still_written(tmp_path):
    manager = FileCheckpointManager(tmp_path, SYNC, interval=1)
    os.makedirs(manager.path("best"))  # a directory where the alias file goes
    with pytest.warns(RuntimeWarning, match="checkpoint save failed"):
        manager.save(_components(1), progress=1, best=True)
    assert manager.health.error_count == 1 and manager.health.last_failed_target == "best.pth"
    assert _step_of(manager.load("latest")) == 1 and manager.health.saved == 1


def test_checkpoints_load_with_weights_only_and_restore_state(tmp_path):
    manager = FileCheckpointManager(tmp_path, SYNC, interval=1)
    components = _components(3)
    components["state"].rng.capture()
    components["optimizer"] = torch.optim.AdamW(components["model"].parameters())
    components["model"](torch.ones(1, 3)).sum().backward()
    components["optimizer"].step()
    manager.save(components, progress=1)
    payload = torch.load(manager.path("latest"), weights_only=True)
    assert sorted(payload) == ["model", "optimizer", "runner", "state"]
    restored = RunnerState(RunnerConfig(payload["runner"]))
    restored.load_state_dict(payload["state"])
    assert restored.train.epoch == 3
    optimizer = torch.optim.AdamW(torch.nn.Linear(3, 2).parameters())
    optimizer.load_state_dict(payload["optimizer"])
    assert optimizer.state_dict()["state"][0]["step"] == 1


def test_untrusted_objects_need_weights_only_false(tmp_path):
    manager = FileCheckpointManager(tmp_path, SYNC, interval=1)
    manager.save({"custom": Exotic(3)}, progress=1)
    with pytest.raises(pickle.UnpicklingError, match="weights_only=False"):
        manager.load()
    assert manager.load(weights_only=False)["custom"].value == 3


class Exotic:
    def __init__(self, value):
        self.value = value


def test_resolving_sources(tmp_path):
    run = tmp_path / "run"
    manager = FileCheckpointManager(run / "checkpoints", SYNC, interval=1)
    manager.save(_components(2), progress=1)
    latest = str(run / "checkpoints" / "latest.pth")
    assert resolve_checkpoint_path(latest) == latest
    assert resolve_checkpoint_path(run / "checkpoints") == latest
    assert resolve_checkpoint_path(run) == latest
    assert resolve_checkpoint_path("ckpt-e000001", run / "checkpoints").endswith("ckpt-e000001.pth")
    assert _step_of(load_checkpoint(run)) == 2


@pytest.mark.parametrize("source", ["missing.pth", "best", "nowhere/latest.pth"])
def test_missing_checkpoint_is_a_clear_error(tmp_path, source):
    manager = FileCheckpointManager(tmp_path, SYNC, interval=1)
    with pytest.raises(CheckpointNotFoundError, match=f"checkpoint '{source}' does not exist") as error:
        manager.load(source)
    assert isinstance(error.value, FileNotFoundError) and isinstance(error.value, ValueError)
    with pytest.raises(CheckpointNotFoundError, match="looked for"):
        load_checkpoint(tmp_path / "empty-dir-is-not-a-checkpoint")


def test_read_config(tmp_path):
    manager = FileCheckpointManager(tmp_path, SYNC, interval=1)
    manager.save(_components(1), progress=1)
    config = read_config(manager.path("latest"))
    assert isinstance(config, RunnerConfig) and config.epochs == 5
    manager.save({"model": torch.nn.Linear(1, 1)}, progress=2, name="weights", force=True)
    with pytest.raises(ValueError, match="checkpoint is missing key 'runner'"):
        read_config(manager.path("weights"))


def test_final_save_exports_the_model(tmp_path):
    config = {**SYNC, "last_save_model_only": True, "export_dtype": "bf16"}
    manager = FileCheckpointManager(tmp_path, config, interval=1)
    components = _components(7)
    manager.save(components, progress=2, last_step=True)
    assert _files(manager) == ["ckpt-e000002.pth", "latest.pth", "model.safetensors"]
    weights = manager.load_model()
    assert weights["weight"].dtype == torch.bfloat16 and torch.all(weights["weight"] == 7)
    assert torch.equal(load_checkpoint(MODEL_EXPORT, tmp_path)["model"]["weight"], weights["weight"])
    assert _step_of(manager.load("latest")) == 7  # the full checkpoint stays resumable
    with pytest.raises(CheckpointNotFoundError, match=r"model export 'other\.safetensors' does not exist"):
        manager.load_model("other.safetensors")


def test_export_model_directly(tmp_path):
    manager = FileCheckpointManager(tmp_path, SYNC)
    model = torch.nn.Linear(4, 4)
    path = manager.export_model(model.state_dict())
    fresh = torch.nn.Linear(4, 4)
    fresh.load_state_dict(manager.load_model(path))
    assert torch.equal(fresh.weight, model.weight)


_CRASHING_SAVER = textwrap.dedent(
    """
    import os, sys, time, torch
    import danling.utils.atomic as atomic
    from danling.runners.checkpoints import FileCheckpointManager

    directory, marker, mode = sys.argv[1:4]
    manager = FileCheckpointManager(directory, {"async_mode": mode}, interval=1)
    manager.save({"model": {"weight": torch.zeros(8)}, "version": 1}, progress=1)
    manager.wait()

    class SlowDisk:
        # A file that stalls half way through, so the process dies with a partial temporary file.
        def __init__(self, file):
            self.file, self.written = file, 0
        def write(self, data):
            self.written += self.file.write(data)
            if self.written > 1_000_000:
                self.file.flush()
                open(marker, "w").close()
                time.sleep(120)
            return len(data)
        def __getattr__(self, name):
            return getattr(self.file, name)
        def __enter__(self):
            return self
        def __exit__(self, *exc_info):
            self.file.close()

    real_open = open
    atomic.open = lambda path, mode="r": SlowDisk(real_open(path, mode))
    manager.save({"model": {"weight": torch.ones(2_000_000)}, "version": 2}, progress=2)
    manager.wait()
    """
)


@pytest.mark.parametrize(("mode", "signum"), [("disabled", signal.SIGKILL), ("async", signal.SIGTERM)])
def test_killed_mid_save_leaves_latest_loadable(tmp_path, mode, signum):
    directory, marker = tmp_path / "checkpoints", tmp_path / "stalled"
    process = subprocess.Popen([sys.executable, "-c", _CRASHING_SAVER, str(directory), str(marker), mode])
    try:
        deadline = time.monotonic() + 60
        while not marker.exists():
            assert process.poll() is None, "the saving process exited before stalling"
            assert time.monotonic() < deadline, "the saving process never reached the middle of its write"
            time.sleep(0.05)
        process.send_signal(signum)
        assert process.wait(timeout=30) == -signum
    finally:
        if process.poll() is None:
            process.kill()
    leftovers = [name for name in os.listdir(directory) if ".tmp-" in name]
    assert len(leftovers) == 1 and os.path.getsize(directory / leftovers[0]) > 1_000_000  # really mid-write
    payload = load_checkpoint("latest", directory)
    assert payload["version"] == 1 and torch.equal(payload["model"]["weight"], torch.zeros(8))
    FileCheckpointManager(directory, SYNC)  # a restarted run cleans up the dead process's temporary file
    assert sorted(os.listdir(directory)) == ["ckpt-e000001.pth", "latest.pth"]
