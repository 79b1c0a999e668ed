"""DCPCheckpointManager on real directories: pointers, retention, async saves, loading, crash safety, 1 and 2 ranks."""

from __future__ import annotations

import multiprocessing
import os
import random
import shutil
import signal
import time

import pytest
import torch

from danling.runners.checkpoints import (
    CheckpointNotFoundError,
    DCPCheckpointManager,
    FileCheckpointManager,
    collect_state,
    load_dcp_checkpoint,
    load_model_state,
    read_dcp_config,
    resolve_dcp_checkpoint,
)
from danling.runners.checkpoints.dcp_structure import MANIFEST
from danling.runners.config import RunnerConfig
from tests.distributed import run_workers

SYNC = {"async_mode": "disabled"}


def _stepped(seed: int = 0) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    """A model and an Adam optimizer after one step: its state is keyed by parameter ids (ints)."""
    torch.manual_seed(seed)
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    model(torch.randn(4, 3)).pow(2).sum().backward()
    optimizer.step()
    return model, optimizer


def _config() -> RunnerConfig:
    return RunnerConfig(epochs=3, seed=7, optim={"type": "adam", "lr": 0.1}, dataloader={}, tags=["a", "b"])


def _payload(model, optimizer, version: int = 1) -> dict:
    return {
        "runner": _config(),
        "model": model,
        "optimizer": optimizer,
        "fresh": torch.optim.SGD(model.parameters(), lr=0.5),  # never stepped: an empty ``state`` dict
        "results": [{"train": {"loss": 0.25}}, {"val": {}}],
        "loop": {"step": version, "names": ["x", "y"], "by_id": {3: "three", 5: [1, 2]}, "none": None},
    }


def _equal(left, right) -> bool:
    """Deep equality of state trees (tensors by value, dict keys with their types)."""
    if isinstance(left, torch.Tensor) or isinstance(right, torch.Tensor):
        return isinstance(left, torch.Tensor) and isinstance(right, torch.Tensor) and torch.equal(left, right)
    if isinstance(left, dict) or isinstance(right, dict):
        return (
            isinstance(left, dict)
            and isinstance(right, dict)
            and left.keys() == right.keys()
            and all(_equal(left[key], right[key]) for key in left)
        )
    if isinstance(left, (list, tuple)) and isinstance(right, (list, tuple)):
        return type(left) is type(right) and len(left) == len(right) and all(map(_equal, left, right))
    return left == right


def _pointer(directory, name: str) -> str:
    with open(os.path.join(directory, f"{name}.pointer")) as file:
        return file.read()


def _entries(directory) -> list[str]:
    return sorted(os.listdir(directory))


# one process, no process group


def test_round_trip_keeps_every_entry_as_it_was(tmp_path):
    model, optimizer = _stepped()
    payload = _payload(model, optimizer)
    manager = DCPCheckpointManager(tmp_path, SYNC, interval=1)
    assert manager.save(payload, progress=1)
    expected = collect_state(payload)  # state_dict() of each component, the config as a plain dict
    loaded = manager.load()
    assert _equal(loaded, expected)
    assert list(loaded["optimizer"]["state"]) == [0, 1]  # parameter ids stay ints
    assert loaded["fresh"]["state"] == {} and loaded["loop"]["by_id"] == {3: "three", 5: [1, 2]}
    assert MANIFEST not in loaded
    restored_model, restored_optimizer = _stepped(seed=1)
    restored_model.load_state_dict(loaded["model"])
    restored_optimizer.load_state_dict(loaded["optimizer"])
    assert torch.equal(
        restored_optimizer.state[restored_model.weight]["exp_avg"], optimizer.state[model.weight]["exp_avg"]
    )


def test_a_template_is_filled_in_place_and_entries_it_lacks_are_read_whole(tmp_path):
    model, optimizer = _stepped()
    manager = DCPCheckpointManager(tmp_path, SYNC, interval=1)
    manager.save(_payload(model, optimizer), progress=1)
    target = torch.nn.Linear(3, 2)
    weight = target.weight
    target_optimizer = torch.optim.Adam(target.parameters(), lr=0.1)  # no step yet: no moments to fill
    loaded = manager.load("latest", template=lambda: {"model": target, "optimizer": target_optimizer})
    assert target.weight is weight and torch.equal(weight, model.weight)  # loaded into the live parameter
    target_optimizer.load_state_dict(loaded["optimizer"])
    assert torch.equal(target_optimizer.state[target.weight]["exp_avg"], optimizer.state[model.weight]["exp_avg"])
    assert loaded["loop"]["by_id"] == {3: "three", 5: [1, 2]} and loaded["runner"]["seed"] == 7


def test_each_save_writes_a_new_directory_and_pointers_name_it(tmp_path):
    manager = DCPCheckpointManager(tmp_path, SYNC, interval=2, unit="step")
    model, optimizer = _stepped()
    assert not manager.save(_payload(model, optimizer), progress=1)  # off the cadence
    manager.save(_payload(model, optimizer), progress=2, best=True)
    saved = model.weight.detach().clone()
    assert _pointer(tmp_path, "latest") == _pointer(tmp_path, "best") == "ckpt-s000000000002"
    with torch.no_grad():
        model.weight.add_(1)
    manager.save(_payload(model, optimizer, version=3), progress=3, force=True)  # forced: no history entry
    forced = _pointer(tmp_path, "latest")
    assert forced.startswith("latest-s000000000003-") and forced in _entries(tmp_path)
    assert _pointer(tmp_path, "best") == "ckpt-s000000000002"
    manager.save(_payload(model, optimizer, version=4), progress=4, name="seed", force=True)
    assert _pointer(tmp_path, "seed") == _pointer(tmp_path, "latest") != forced  # a custom name moves latest too
    assert forced not in _entries(tmp_path)  # no pointer names it any more
    assert manager.load("best")["loop"]["step"] == 1 and manager.load("seed")["loop"]["step"] == 4
    assert torch.equal(manager.load("ckpt-s000000000002")["model"]["weight"], saved)
    assert manager.health.last_successful_aliases == ("latest.pointer", "seed.pointer")


def test_retention_keeps_the_newest_history_and_whatever_a_pointer_names(tmp_path):
    manager = DCPCheckpointManager(tmp_path, {**SYNC, "keep_latest_k": 2}, interval=1)
    model, optimizer = _stepped()
    for epoch in range(1, 6):
        manager.save(_payload(model, optimizer, epoch), progress=epoch, best=epoch == 1)
    assert [entry for entry in _entries(tmp_path) if entry.startswith("ckpt-")] == [
        "ckpt-e000001",  # best still names it
        "ckpt-e000004",
        "ckpt-e000005",
    ]
    manager.save(_payload(model, optimizer, 6), progress=6, best=True)
    assert _entries(tmp_path) == ["best.pointer", "ckpt-e000005", "ckpt-e000006", "latest.pointer"]
    restarted = DCPCheckpointManager(tmp_path, {**SYNC, "keep_latest_k": 2}, interval=1)
    restarted.save(_payload(model, optimizer, 7), progress=7)  # counts the history found on disk
    assert [entry for entry in _entries(tmp_path) if entry.startswith("ckpt-")] == ["ckpt-e000006", "ckpt-e000007"]


def test_a_step_saved_again_after_a_restart_gets_a_directory_of_its_own(tmp_path):
    model, optimizer = _stepped()
    DCPCheckpointManager(tmp_path, SYNC, interval=1).save(_payload(model, optimizer, 1), progress=2)
    original = os.listdir(tmp_path / "ckpt-e000002")
    manager = DCPCheckpointManager(tmp_path, SYNC, interval=1)
    manager.save(_payload(model, optimizer, 2), progress=2)
    again = _pointer(tmp_path, "ckpt-e000002")
    assert again.startswith("ckpt-e000002-") and _pointer(tmp_path, "latest") == again
    assert os.listdir(tmp_path / "ckpt-e000002") == original  # never overwritten
    assert manager.load("ckpt-e000002")["loop"]["step"] == 2
    kept = DCPCheckpointManager(tmp_path, {**SYNC, "keep_latest_k": 1}, interval=1)
    kept.save(_payload(model, optimizer, 3), progress=3)  # retention drops both entries of step 2, and the pointer
    assert _entries(tmp_path) == ["ckpt-e000003", "latest.pointer"]


def test_async_saves_flip_the_pointer_when_written(tmp_path):
    manager = DCPCheckpointManager(tmp_path, {"async_mode": "async"}, interval=1)
    model, optimizer = _stepped()
    for epoch in (1, 2):
        saved = model.weight.detach().clone()
        assert manager.save(_payload(model, optimizer, epoch), progress=epoch)
        assert manager.maybe_wait_for_staging()
        with torch.no_grad():
            model.weight.add_(100)  # after staging, the write cannot see this
    assert manager.close()
    assert _pointer(tmp_path, "latest") == "ckpt-e000002"
    loaded = manager.load()
    assert loaded["loop"]["step"] == 2 and torch.equal(loaded["model"]["weight"], saved)
    assert manager.health.saved == 2 and manager.health.error_count == 0


def test_async_failures_are_recorded_and_raised_when_asked(tmp_path):
    manager = DCPCheckpointManager(tmp_path, {"async_mode": "async", "fail_on_error": True}, interval=1)
    manager.save({"model": {"weight": torch.zeros(2)}}, progress=1)
    manager.wait()
    # A file where the next save's directory must go: the write fails in DCP's thread.
    (tmp_path / "ckpt-e000002").write_text("in the way")
    failed = r"(?s)could not save checkpoint 'ckpt-e000002'.*File exists"
    with pytest.warns(RuntimeWarning, match="checkpoint save failed"), pytest.raises(RuntimeError, match=failed):
        manager.save({"model": {"weight": torch.ones(2)}}, progress=2)  # DCP makes the directory in its thread
        manager.wait()
    assert manager.health.error_count == 1 and manager.health.last_failed_target == "ckpt-e000002"
    assert _pointer(tmp_path, "latest") == "ckpt-e000001"
    manager.save({"model": {"weight": torch.full((2,), 3.0)}}, progress=3)  # raised once; saving goes on
    assert manager.close() and _pointer(tmp_path, "latest") == "ckpt-e000003"
    assert manager.health.error_count == 1 and manager.health.saved == 2


def test_the_final_save_exports_the_model(tmp_path):
    manager = DCPCheckpointManager(tmp_path, {**SYNC, "last_save_model_only": True}, interval=1)
    model, optimizer = _stepped()
    manager.save(_payload(model, optimizer), progress=3, last_step=True)
    exported = load_model_state(tmp_path / "model.safetensors")
    assert exported.keys() == model.state_dict().keys() and torch.equal(exported["weight"], model.weight)
    assert manager.health.last_successful_aliases[-1] == "model.safetensors"


def test_finding_checkpoints_by_name_pointer_directory_and_run(tmp_path):
    run = tmp_path / "run"
    directory = run / "checkpoints"
    manager = DCPCheckpointManager(directory, SYNC, interval=1)
    model, optimizer = _stepped()
    manager.save(_payload(model, optimizer), progress=1, best=True)
    target = str(directory / "ckpt-e000001")
    for source in ("latest", "best", "best.pointer", "ckpt-e000001", directory / "best.pointer", directory, run):
        assert manager.resolve(source) == target, source
    assert resolve_dcp_checkpoint(run) == resolve_dcp_checkpoint(target) == target
    assert DCPCheckpointManager.recognizes(str(run)) and DCPCheckpointManager.recognizes(target)
    assert DCPCheckpointManager.recognizes(str(directory / "latest.pointer"))
    config = DCPCheckpointManager.read_config(str(run))
    assert isinstance(config, RunnerConfig) and config.dict() == _config().dict()
    assert read_dcp_config(directory / "best.pointer").seed == 7
    assert torch.equal(load_dcp_checkpoint(run)["model"]["weight"], model.weight)
    with pytest.raises(CheckpointNotFoundError, match=r"'nope' does not exist \(looked for .*nope\.pointer"):
        manager.resolve("nope")
    assert manager.exists("latest") and not manager.exists("nope")


def test_a_pointer_to_a_missing_checkpoint_fails_loudly(tmp_path):
    manager = DCPCheckpointManager(tmp_path, SYNC, interval=1)
    manager.save({"model": {"weight": torch.zeros(2)}}, progress=1)
    shutil.rmtree(tmp_path / "ckpt-e000001")
    assert manager.exists("latest")  # it exists, and loading it must not quietly start afresh
    with pytest.raises(CheckpointNotFoundError, match="names 'ckpt-e000001', which is not a complete DCP checkpoint"):
        manager.load("latest")
    assert not DCPCheckpointManager.recognizes(str(tmp_path))


def test_other_formats_are_not_recognized(tmp_path):
    files = FileCheckpointManager(tmp_path / "file", SYNC, interval=1)
    files.save({"model": {"weight": torch.zeros(2)}}, progress=1)
    assert not DCPCheckpointManager.recognizes(str(tmp_path / "file"))
    assert not DCPCheckpointManager.recognizes(str(tmp_path / "missing"))
    (tmp_path / "deepspeed").mkdir()
    (tmp_path / "deepspeed" / "global_step1").mkdir()
    (tmp_path / "deepspeed" / "latest.pointer").write_text("global_step1")  # a DeepSpeed engine tag, no .metadata
    assert not DCPCheckpointManager.recognizes(str(tmp_path / "deepspeed"))


def test_a_checkpoint_without_a_runner_entry_has_no_config(tmp_path):
    DCPCheckpointManager(tmp_path, SYNC, interval=1).save({"model": {"weight": torch.zeros(2)}}, progress=1)
    with pytest.raises(ValueError, match="has no 'runner' entry"):
        read_dcp_config(tmp_path)


# crash safety: a process killed with SIGKILL at several moments of a save


def _saver(directory: str, moment: str, ready) -> None:
    """Save version 1, then save newer versions and stop (or run on) at ``moment`` until killed."""
    from danling.runners.checkpoints import dcp as module

    manager = DCPCheckpointManager(directory, SYNC, interval=1)
    big = 1 << 18

    def payload(version: int) -> dict:
        return {"model": {f"w{i}": torch.full((big,), float(version)) for i in range(4)}, "version": version}

    manager.save(payload(1), progress=1)

    def stall(*args, **kwargs):
        ready.set()
        time.sleep(600)

    if moment == "shards written, no metadata yet":
        module.FileSystemWriter.finish = stall
    elif moment == "complete, pointers not flipped":
        module.atomic_write = stall
    else:
        ready.set()
    for version in range(2, 10_000):
        manager.save(payload(version), progress=version)


def _consistent_version(directory) -> int:
    """The version ``latest`` holds, checking that every tensor in it belongs to that version."""
    loaded = load_dcp_checkpoint("latest", directory)
    version = loaded["version"]
    assert all(torch.equal(tensor, torch.full_like(tensor, float(version))) for tensor in loaded["model"].values())
    return version


@pytest.fixture(scope="module")
def forkserver():
    """Child processes forked from a server that has imported torch already: each starts in milliseconds."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["torch", "danling.runners.checkpoints.dcp", __name__])
    return context


@pytest.mark.parametrize(
    "moment",
    [
        "shards written, no metadata yet",
        "complete, pointers not flipped",
        "at random 1",
        "at random 2",
        "at random 3",
    ],
)
def test_latest_always_loads_after_a_sigkill(tmp_path, forkserver, moment):
    directory = str(tmp_path)
    ready = forkserver.Event()
    process = forkserver.Process(target=_saver, args=(directory, moment, ready))
    process.start()
    try:
        assert ready.wait(120), "the saver did not get going"
        if moment.startswith("at random"):
            time.sleep(random.uniform(0.05, 0.6))
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.join(30)
        if process.is_alive():
            process.kill()
    version = _consistent_version(directory)
    if not moment.startswith("at random"):
        assert version == 1
    manager = DCPCheckpointManager(directory, SYNC, interval=1)  # a restarted run: debris goes, saving goes on
    leftovers = [entry for entry in _entries(tmp_path) if ".tmp-" in entry]
    dirs = [entry for entry in _entries(tmp_path) if os.path.isdir(tmp_path / entry)]
    assert not leftovers and all(os.path.isfile(tmp_path / entry / ".metadata") for entry in dirs)
    manager.save({"model": {"w0": torch.full((4,), float(version + 1))}, "version": version + 1}, progress=version + 1)
    assert _consistent_version(directory) == version + 1


# real process groups: one gloo rank, and two


def _one_rank(rank, world_size, root):
    manager = DCPCheckpointManager(root, {"async_mode": "async"}, interval=1)
    dedicated = manager._group is not None  # async saves on their own gloo group
    model, optimizer = _stepped()
    manager.save(_payload(model, optimizer), progress=1, best=True)
    manager.wait()
    target = torch.nn.Linear(3, 2)
    loaded = manager.load(template=lambda: {"model": target})
    target_optimizer = torch.optim.Adam(target.parameters(), lr=0.1)
    target_optimizer.load_state_dict(loaded["optimizer"])
    manager.close()
    return dedicated, torch.equal(target.weight, model.weight), sorted(os.listdir(root))


@pytest.mark.distributed
def test_a_one_rank_group_saves_asynchronously_and_loads_in_place(tmp_path):
    [(dedicated, loaded, entries)] = run_workers(_one_rank, 1, str(tmp_path))
    assert dedicated and loaded
    assert entries == ["best.pointer", "ckpt-e000001", "latest.pointer"]


def _full(rows: int = 8) -> torch.Tensor:
    return torch.arange(rows * 2, dtype=torch.float32).reshape(rows, 2)


def _two_ranks(rank, world_size, root, written_by_one):
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    mesh = init_device_mesh("cpu", (world_size,))

    def sharded(tensor):
        return distribute_tensor(tensor, mesh, [Shard(0)])

    out = {}
    # 2 ranks save: a sharded weight, a replicated bias, plain data; history, best, retention and the export.
    manager = DCPCheckpointManager(os.path.join(root, "two"), {**SYNC, "keep_latest_k": 1}, interval=1)
    for epoch in (1, 2):
        payload = {
            "model": {"weight": sharded(_full() * epoch), "bias": torch.full((2,), float(epoch))},
            "optimizer": {"state": {}, "param_groups": [{"lr": 0.1, "params": [0, 1]}]},
            "runner": _config(),
            "loop": {"epoch": epoch, "by_id": {0: "zero"}},
        }
        manager.save(payload, progress=epoch, best=epoch == 1, last_step=epoch == 2)
    manager.export_model(payload["model"])
    out["entries"] = sorted(os.listdir(os.path.join(root, "two")))
    # Asynchronous, on the dedicated gloo group, while the default group keeps working.
    background = DCPCheckpointManager(os.path.join(root, "async"), {"async_mode": "async"}, interval=1)
    background.save({"model": {"weight": sharded(_full())}, "loop": {"epoch": 1}}, progress=1)
    busy = torch.ones(1)
    torch.distributed.all_reduce(busy)  # a training collective while the save is in flight
    background.close()
    torch.distributed.barrier()  # rank 0 has flipped the pointer
    out["async"] = (background._group is not None, busy.item(), os.listdir(os.path.join(root, "async")))
    # Read back into 2 shards a checkpoint that 1 process wrote, and one that 2 ranks wrote.
    reader = DCPCheckpointManager(written_by_one, SYNC)
    weight = sharded(torch.zeros(8, 2))
    loaded = reader.load(template=lambda: {"model": {"weight": weight, "bias": torch.zeros(2)}})
    out["from_one"] = (weight.to_local().tolist(), loaded["model"]["bias"].tolist(), loaded["loop"]["by_id"])
    weight = sharded(torch.zeros(8, 2))
    manager.load("best", template=lambda: {"model": {"weight": weight}})
    out["from_two"] = weight.to_local().tolist()
    return out


@pytest.fixture(scope="module")
def two_rank_results(tmp_path_factory):
    root = tmp_path_factory.mktemp("dcp-ranks")
    one = DCPCheckpointManager(root / "one", SYNC, interval=1)
    one.save({"model": {"weight": _full() * 3, "bias": torch.ones(2)}, "loop": {"by_id": {1: "one"}}}, progress=1)
    return root, run_workers(_two_ranks, 2, str(root), str(root / "one"), timeout=240)


@pytest.mark.distributed
def test_two_ranks_write_one_checkpoint_that_one_process_reads_whole(two_rank_results):
    root, results = two_rank_results
    assert (
        results[0]["entries"]
        == results[1]["entries"]
        == [
            "best.pointer",
            "ckpt-e000001",  # older than keep_latest_k allows, but best names it
            "ckpt-e000002",
            "latest.pointer",
            "model.safetensors",
        ]
    )
    loaded = load_dcp_checkpoint("latest", root / "two")  # no process group here
    assert torch.equal(loaded["model"]["weight"], _full() * 2) and torch.equal(
        loaded["model"]["bias"], torch.full((2,), 2.0)
    )
    assert loaded["optimizer"] == {"state": {}, "param_groups": [{"lr": 0.1, "params": [0, 1]}]}
    assert loaded["loop"] == {"epoch": 2, "by_id": {0: "zero"}} and loaded["runner"] == _config().dict()
    assert torch.equal(load_dcp_checkpoint("best", root / "two")["model"]["weight"], _full())
    exported = load_model_state(root / "two" / "model.safetensors")  # gathered from the shards
    assert torch.equal(exported["weight"], _full() * 2)
    target = {"weight": torch.zeros(8, 2)}
    DCPCheckpointManager(root / "two", SYNC).load(template=lambda: {"model": target})
    assert torch.equal(target["weight"], _full() * 2)


@pytest.mark.distributed
def test_two_ranks_save_asynchronously_on_their_own_group(two_rank_results):
    root, results = two_rank_results
    for dedicated, busy, entries in (result["async"] for result in results):
        assert dedicated and busy == 2.0 and sorted(entries) == ["ckpt-e000001", "latest.pointer"]
    assert torch.equal(load_dcp_checkpoint("latest", root / "async")["model"]["weight"], _full())


@pytest.mark.distributed
def test_checkpoints_reshard_from_one_process_to_two_ranks(two_rank_results):
    _, results = two_rank_results
    rows = (_full() * 3).tolist()
    assert [result["from_one"][0] for result in results] == [rows[:4], rows[4:]]
    assert all(result["from_one"][1:] == ([1.0, 1.0], {1: "one"}) for result in results)
    assert [result["from_two"] for result in results] == [_full()[:4].tolist(), _full()[4:].tolist()]
