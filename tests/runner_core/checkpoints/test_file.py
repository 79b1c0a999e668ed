"""FileCheckpointManager on real files: aliases, retention, async writes, loading, crash safety."""

from __future__ import annotations

import os
import pickle
import shutil
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
from danling.runners.checkpoints.serializer import SerializerProcess
from danling.runners.checkpoints.shared_buffers import SharedBuffers
from danling.runners.config import RunnerConfig
from danling.runners.state import RunnerState
from danling.utils.atomic import process_alive

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


def _aliases(manager) -> dict[str, str]:
    """``{alias: data file it points at}`` for every symbolic link in the directory."""
    return {name: os.readlink(manager.path(name)) for name in _files(manager) if os.path.islink(manager.path(name))}


def _unnamed(manager, name: str) -> list[str]:
    """Data files of saves of ``name`` without a history entry (``{name}-{progress}-{pid}-{serial}.pth``)."""
    return [
        entry for entry in _files(manager) if entry.startswith(f"{name}-") and not os.path.islink(manager.path(entry))
    ]


def test_no_interval_writes_nothing_unless_forced(tmp_path):
    manager = FileCheckpointManager(tmp_path, SYNC)
    assert manager.save(_components(1), progress=1) is False
    assert _files(manager) == []
    manager.save(_components(1), progress=1, force=True)
    [data] = _unnamed(manager, "latest")
    assert data.startswith(f"latest-e000001-{os.getpid()}-")
    assert _files(manager) == [data, "latest.pth"] and _aliases(manager) == {"latest.pth": data}
    assert manager.health.last_successful_target == data and manager.health.last_successful_aliases == ("latest.pth",)


def test_latest_history_and_best_aliases(tmp_path):
    manager = FileCheckpointManager(tmp_path, SYNC, interval=2)
    manager.save(_components(1), progress=1, best=True)  # off the cadence: nothing
    manager.save(_components(2), progress=2, best=True)
    manager.save(_components(3), progress=3, force=True)
    manager.save(_components(4), progress=4)
    # the forced save's own file went once latest moved on
    assert _files(manager) == ["best.pth", "ckpt-e000002.pth", "ckpt-e000004.pth", "latest.pth"]
    assert _aliases(manager) == {"best.pth": "ckpt-e000002.pth", "latest.pth": "ckpt-e000004.pth"}
    assert _step_of(manager.load("latest")) == 4 and _step_of(manager.load("best")) == 2
    assert _step_of(manager.load("ckpt-e000002")) == 2 and _step_of(manager.load("ckpt-e000004.pth")) == 4
    assert manager.health.last_successful_target == "ckpt-e000004.pth"
    assert manager.health.last_successful_aliases == ("latest.pth",)


def test_step_mode_names_and_custom_names(tmp_path):
    manager = FileCheckpointManager(tmp_path, SYNC, interval=500, unit="step")
    manager.save(_components(0), progress=0, name="seed", force=True)
    manager.save(_components(1), progress=1000)
    [seed] = _unnamed(manager, "seed")
    assert seed.startswith("seed-s000000000000-")
    assert _files(manager) == ["ckpt-s000000001000.pth", "latest.pth", seed, "seed.pth"]
    assert _step_of(manager.load("seed")) == 0 and _step_of(manager.load("latest")) == 1


def test_repeated_saves_keep_one_data_file_per_alias(tmp_path):
    manager = FileCheckpointManager(tmp_path, SYNC)
    for step in range(1, 6):
        manager.save(_components(step), progress=step, force=True, best=step == 2)
    [best, latest] = sorted(set(_aliases(manager).values()))
    assert _aliases(manager) == {"best.pth": best, "latest.pth": latest}
    assert _files(manager) == sorted(["best.pth", "latest.pth", best, latest])
    assert _step_of(manager.load("best")) == 2 and _step_of(manager.load("latest")) == 5


def test_keep_latest_k_prunes_history_but_never_what_aliases_name(tmp_path):
    manager = FileCheckpointManager(tmp_path, {**SYNC, "keep_latest_k": 2}, interval=1)
    for epoch in range(1, 5):
        manager.save(_components(epoch), progress=epoch, best=epoch == 1)
    # ckpt-e000001 left the history but stays on disk: best points at it
    assert _files(manager) == ["best.pth", "ckpt-e000001.pth", "ckpt-e000003.pth", "ckpt-e000004.pth", "latest.pth"]
    assert list(manager.history) == ["ckpt-e000003.pth", "ckpt-e000004.pth"]
    assert _step_of(manager.load("best")) == 1
    manager.save(_components(5), progress=5, best=True)  # best moves on: its old file goes
    assert _files(manager) == ["best.pth", "ckpt-e000004.pth", "ckpt-e000005.pth", "latest.pth"]


def test_retention_continues_after_a_restart(tmp_path):
    first = FileCheckpointManager(tmp_path, {**SYNC, "keep_latest_k": 2}, interval=1)
    for epoch in (1, 2, 3):
        first.save(_components(epoch), progress=epoch, best=epoch == 1)
    resumed = FileCheckpointManager(tmp_path, {**SYNC, "keep_latest_k": 2}, interval=1)
    assert list(resumed.history) == ["ckpt-e000001.pth", "ckpt-e000002.pth", "ckpt-e000003.pth"]
    resumed.save(_components(4), progress=4)
    assert _files(resumed) == ["best.pth", "ckpt-e000001.pth", "ckpt-e000003.pth", "ckpt-e000004.pth", "latest.pth"]
    assert _step_of(resumed.load("best")) == 1 and _step_of(resumed.load("latest")) == 4


def test_fsync_is_off_by_default_and_saves_the_same_files_either_way(tmp_path):
    assert FileCheckpointManager(tmp_path / "default", SYNC).config.fsync is False
    for fsync in (False, True):
        manager = FileCheckpointManager(tmp_path / str(fsync), {**SYNC, "fsync": fsync}, interval=1)
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


@pytest.mark.parametrize("writer", ["thread", "process"])
def test_pending_async_saves_are_written_before_the_interpreter_exits(tmp_path, writer):
    if writer == "process" and not SerializerProcess.supported():
        pytest.skip("no shared-memory file system (/dev/shm)")
    script = textwrap.dedent(
        """
        import sys, torch
        from danling.runners.checkpoints import FileCheckpointManager, file
        manager = FileCheckpointManager(sys.argv[1], {"async_mode": "async", "async_writer": sys.argv[2]}, interval=1)
        for epoch in range(1, 4):
            manager.save({"model": {"weight": torch.full((256, 256), float(epoch))}}, progress=epoch)
        if sys.argv[2] == "process":  # the serializer process writes them all, its shared buffers still there
            def refuse(*args, **kwargs):
                raise RuntimeError("written by the training process")
            file.torch.save = refuse
        # no wait() or close(): the script just ends
        """
    )
    subprocess.run([sys.executable, "-c", script, str(tmp_path), writer], check=True, timeout=120)
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


def test_a_failed_latest_alias_fails_the_save_and_leaves_no_file_behind(tmp_path):
    manager = FileCheckpointManager(tmp_path, {**SYNC, "fail_on_error": True}, interval=1)
    os.makedirs(manager.path("latest"))
    with pytest.warns(RuntimeWarning, match="checkpoint save failed"), pytest.raises(OSError):
        manager.save(_components(1), progress=1, force=True)
    assert _files(manager) == ["latest.pth"] and manager.health.saved == 0
    with pytest.warns(RuntimeWarning), pytest.raises(OSError):
        manager.save(_components(2), progress=2)  # a history entry is a checkpoint of its own: it stays
    assert _files(manager) == ["ckpt-e000002.pth", "latest.pth"] and _step_of(manager.load("ckpt-e000002")) == 2


def test_without_symlinks_the_hard_link_layout_keeps_every_guarantee(tmp_path, no_symlinks):
    manager = FileCheckpointManager(tmp_path, {**SYNC, "keep_latest_k": 1}, interval=2)
    manager.save(_components(2), progress=2, best=True)
    manager.save(_components(3), progress=3, force=True)
    assert _files(manager) == ["best.pth", "ckpt-e000002.pth", "latest.pth"] and _aliases(manager) == {}
    assert _step_of(manager.load("latest")) == 3 and _step_of(manager.load("ckpt-e000002")) == 2
    manager.save(_components(4), progress=4)
    assert _files(manager) == ["best.pth", "ckpt-e000004.pth", "latest.pth"]
    assert os.path.samefile(manager.path("latest"), manager.path("ckpt-e000004"))
    assert _step_of(manager.load("best")) == 2 and _step_of(manager.load("latest")) == 4


def test_a_directory_from_the_hard_link_layout_moves_to_links(tmp_path, no_symlinks, monkeypatch):
    old = FileCheckpointManager(tmp_path, {**SYNC, "keep_latest_k": 1}, interval=1)
    old.save(_components(1), progress=1, best=True)
    old.save(_components(2), progress=2)
    monkeypatch.undo()  # the directory moves to a machine with symbolic links
    manager = FileCheckpointManager(tmp_path, {**SYNC, "keep_latest_k": 1}, interval=1)
    manager.save(_components(3), progress=3)
    assert _files(manager) == ["best.pth", "ckpt-e000003.pth", "latest.pth"]
    assert _aliases(manager) == {"latest.pth": "ckpt-e000003.pth"}  # best stays the hard link it was
    assert _step_of(manager.load("best")) == 1 and _step_of(manager.load("latest")) == 3


@pytest.mark.parametrize("copy", ["copytree-symlinks", "copytree", "cp -r"])
def test_a_copied_directory_still_loads(tmp_path, copy):
    manager = FileCheckpointManager(tmp_path / "run" / "checkpoints", SYNC, interval=2)
    manager.save(_components(2), progress=2, best=True)
    manager.save(_components(3), progress=3, force=True)
    source, target = tmp_path / "run", tmp_path / "copy"
    if copy == "cp -r":
        if shutil.which("cp") is None:
            pytest.skip("no cp command on this platform")
        subprocess.run(["cp", "-r", str(source), str(target)], check=True)
    else:
        shutil.copytree(source, target, symlinks=copy == "copytree-symlinks")
    shutil.rmtree(source)
    assert _step_of(load_checkpoint(target)) == 3 and _step_of(load_checkpoint("best", target / "checkpoints")) == 2
    assert _step_of(torch.load(target / "checkpoints" / "latest.pth", weights_only=True)) == 3


def test_torch_load_reads_aliases_directly(tmp_path):
    manager = FileCheckpointManager(tmp_path, SYNC, interval=1)
    manager.save(_components(5), progress=1, best=True)
    for alias in ("latest.pth", "best.pth"):
        assert os.path.islink(tmp_path / alias)
        assert _step_of(torch.load(tmp_path / alias, weights_only=True)) == 5
        assert _step_of(torch.load(tmp_path / alias, weights_only=True, mmap=True)) == 5


def test_a_dangling_alias_is_a_clear_error(tmp_path):
    manager = FileCheckpointManager(tmp_path / "checkpoints", SYNC, interval=1)
    manager.save(_components(1), progress=1)
    os.remove(manager.path("ckpt-e000001"))  # e.g. deleted by hand
    message = r"checkpoint alias '.*latest\.pth' points to 'ckpt-e000001\.pth', which does not exist"
    for source in ("latest", tmp_path, tmp_path / "checkpoints" / "latest.pth"):
        with pytest.raises(CheckpointNotFoundError, match=message):
            load_checkpoint(source, manager.directory)


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

    marker, directory, mode = sys.argv[1:4]
    # the stall is in this process's writes: the serializer process is the other test's business
    manager = FileCheckpointManager(directory, {"async_mode": mode, "async_writer": "thread"}, interval=1)
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


def _kill_when_stalled(script: str, marker, signum: int, *args: str) -> None:
    """Run ``script``, wait until it writes ``marker`` (it then sleeps), and kill it with ``signum``."""
    process = subprocess.Popen([sys.executable, "-c", script, str(marker), *args])
    try:
        deadline = time.monotonic() + 60
        while not marker.exists():
            assert process.poll() is None, "the saving process exited before stalling"
            assert time.monotonic() < deadline, "the saving process never reached the point it stalls at"
            time.sleep(0.05)
        process.send_signal(signum)
        assert process.wait(timeout=30) == -signum
    finally:
        if process.poll() is None:
            process.kill()


@pytest.mark.parametrize(("mode", "signum"), [("disabled", signal.SIGKILL), ("async", signal.SIGTERM)])
def test_killed_mid_save_leaves_latest_loadable(tmp_path, mode, signum):
    directory = tmp_path / "checkpoints"
    _kill_when_stalled(_CRASHING_SAVER, tmp_path / "stalled", signum, str(directory), mode)
    leftovers = [name for name in os.listdir(directory) if ".tmp-" in name]
    assert len(leftovers) == 1 and os.path.getsize(directory / leftovers[0]) > 1_000_000  # really mid-write
    payload = load_checkpoint("latest", directory)
    assert payload["version"] == 1 and torch.equal(payload["model"]["weight"], torch.zeros(8))
    FileCheckpointManager(directory, SYNC)  # a restarted run cleans up the dead process's temporary file
    assert sorted(os.listdir(directory)) == ["ckpt-e000001.pth", "latest.pth"]


_KILLED_WHILE_THE_CHILD_WRITES = textwrap.dedent(
    """
    import os, sys, time, torch
    from danling.runners.checkpoints import FileCheckpointManager
    from danling.runners.checkpoints.serializer import SerializerProcess

    marker, directory = sys.argv[1:3]
    manager = FileCheckpointManager(directory, {"async_mode": "async", "async_writer": "process"}, interval=1)
    manager.save({"model": {"weight": torch.zeros(8)}, "version": 1}, progress=1)
    manager.wait()
    child = SerializerProcess.shared()._process.pid
    written = SerializerProcess.send

    def stall(self, encoded, path, buffers):
        written(self, encoded, path, buffers)  # the child has written the temporary file
        with open(marker, "w") as file:
            file.write(str(child))
        time.sleep(120)

    SerializerProcess.send = stall
    manager.save({"model": {"weight": torch.ones(2_000_000)}, "version": 2}, progress=2)
    manager.wait()
    """
)


def _staging_files_of(pid: int) -> list[str]:
    return [name for name in os.listdir("/dev/shm") if name.startswith(f"danling-stage-{pid}-")]


@pytest.mark.skipif(not SerializerProcess.supported(), reason="no shared-memory file system (/dev/shm)")
@pytest.mark.parametrize("room", [True, False])
def test_the_serializer_process_writes_what_was_staged_in_shared_memory(tmp_path, monkeypatch, room):
    if not room:  # a full /dev/shm (a container's 64 MB): staging falls back to private memory
        monkeypatch.setattr(SharedBuffers, "empty", lambda self, shape, dtype: None)
    sent = []
    send = SerializerProcess.send
    monkeypatch.setattr(SerializerProcess, "send", lambda self, *args: sent.append(args[1]) or send(self, *args))
    manager = FileCheckpointManager(tmp_path, {"async_writer": "process"}, interval=1)
    weight = torch.arange(6.0)
    manager.save({"model": {"weight": weight}, "version": 3}, progress=1)
    weight += 1  # after the save returned: the checkpoint holds the values of the save
    manager.close()
    # private buffers would go through the socket by value: this process writes those itself
    assert len(sent) == (1 if room else 0)
    payload = load_checkpoint("latest", tmp_path)
    assert payload["version"] == 3 and torch.equal(payload["model"]["weight"], torch.arange(6.0))


@pytest.mark.skipif(not SerializerProcess.supported(), reason="no shared-memory file system (/dev/shm)")
def test_killed_while_the_serializer_process_writes(tmp_path):
    directory, marker = tmp_path / "checkpoints", tmp_path / "stalled"
    process = subprocess.Popen([sys.executable, "-c", _KILLED_WHILE_THE_CHILD_WRITES, str(marker), str(directory)])
    try:
        deadline = time.monotonic() + 60
        while not marker.exists() or not marker.read_text():
            assert process.poll() is None and time.monotonic() < deadline, "the saving process never stalled"
            time.sleep(0.05)
        child = int(marker.read_text())
        assert _staging_files_of(process.pid)  # the staged copy lives in shared memory
        process.kill()
        assert process.wait(timeout=30) == -signal.SIGKILL
    finally:
        if process.poll() is None:
            process.kill()
    deadline = time.monotonic() + 30  # the serializer reads end-of-file and exits: no orphan left behind
    while process_alive(child):
        assert time.monotonic() < deadline, f"serializer process {child} outlived the training process"
        time.sleep(0.05)
    leftovers = [name for name in os.listdir(directory) if ".tmp-" in name]
    assert len(leftovers) == 1 and os.path.getsize(directory / leftovers[0]) > 8_000_000  # written, never renamed
    payload = load_checkpoint("latest", directory)
    assert payload["version"] == 1 and torch.equal(payload["model"]["weight"], torch.zeros(8))
    restarted = FileCheckpointManager(directory, {"async_writer": "process"})  # cleans up what the dead run left
    assert sorted(os.listdir(directory)) == ["ckpt-e000001.pth", "latest.pth"]
    assert _staging_files_of(process.pid) == []
    restarted.close()


_KILLED_BEFORE_THE_FLIP = textwrap.dedent(
    """
    import sys, time, torch
    from danling.runners.checkpoints import FileCheckpointManager
    from danling.runners.checkpoints.layout import CheckpointLayout

    marker, directory, forced = sys.argv[1], sys.argv[2], sys.argv[3] == "forced"
    manager = FileCheckpointManager(directory, {"async_mode": "disabled"}, interval=1)
    manager.save({"model": {"weight": torch.zeros(8)}, "version": 1}, progress=1, best=True)

    def stall(self, alias, data):
        # The new file is complete under its final name; the process dies before any alias moves.
        open(marker, "w").close()
        time.sleep(120)

    CheckpointLayout.point = stall
    manager.save({"model": {"weight": torch.ones(8)}, "version": 2}, progress=2, force=forced, best=True)
    """
)


@pytest.mark.parametrize("save", ["history", "forced"])
def test_killed_between_writing_and_flipping_keeps_the_old_aliases(tmp_path, save):
    directory = tmp_path / "checkpoints"
    _kill_when_stalled(_KILLED_BEFORE_THE_FLIP, tmp_path / "stalled", signal.SIGKILL, str(directory), save)
    new = [
        name for name in os.listdir(directory) if name.startswith("ckpt-e000002" if save == "history" else "latest-")
    ]
    assert len(new) == 1 and load_checkpoint(new[0], directory)["version"] == 2  # written in full
    assert not [name for name in os.listdir(directory) if ".tmp-" in name]
    for alias in ("latest", "best"):
        assert load_checkpoint(alias, directory)["version"] == 1
    manager = FileCheckpointManager(directory, SYNC, interval=1)
    # A complete history entry stays one; a file no alias ever named is the dead process's leftover.
    kept = ["ckpt-e000002.pth"] if save == "history" else []
    assert sorted(os.listdir(directory)) == sorted(["best.pth", "ckpt-e000001.pth", "latest.pth", *kept])
    manager.save({"model": {"weight": torch.full((8,), 3.0)}, "version": 3}, progress=3)
    assert manager.load("latest")["version"] == 3 and manager.load("best")["version"] == 1


def test_importing_the_serializer_program_changes_nothing(monkeypatch):
    # doctest collection imports every module: the program's set-up must wait for ``__main__``
    import importlib

    import danling.runners.checkpoints.serializer_child as program

    monkeypatch.setattr(sys, "path", [os.path.dirname(program.__file__), *sys.path])
    before = list(sys.path)
    importlib.reload(program)
    assert sys.path == before


@pytest.mark.skipif(not SerializerProcess.supported(), reason="no shared-memory file system (/dev/shm)")
def test_the_serializer_process_resolves_relative_paths_where_the_caller_stands(tmp_path, monkeypatch):
    (tmp_path / "started").mkdir()
    (tmp_path / "saving").mkdir()
    monkeypatch.chdir(tmp_path / "started")
    serializer, buffers = SerializerProcess(), SharedBuffers()
    serializer.start()  # the child keeps this working directory
    monkeypatch.chdir(tmp_path / "saving")
    weight = buffers.empty((2,), torch.float32)
    weight.fill_(4.0)
    serializer.save({"weight": weight}, "state.pth", buffers)
    serializer.close()
    assert torch.load(tmp_path / "saving" / "state.pth")["weight"].tolist() == [4.0, 4.0]
