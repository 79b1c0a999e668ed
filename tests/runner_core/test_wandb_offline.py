"""Weights & Biases for real, offline: the run's own ``.wandb`` log is read back and checked against the runner."""

from __future__ import annotations

import json
import os
import struct
import time
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.runner_core.toy_runners import ClassifierRunner, base_config

wandb_internal_pb2 = pytest.importorskip("wandb.proto.wandb_internal_pb2")

_BLOCK = 32 * 1024  # the .wandb file is a LevelDB-style log: 32 KiB blocks of (crc, length, type) chunks
_FULL, _LAST = 1, 4


def read_wandb_records(path: Path):
    """Yield the protobuf ``Record``s of an offline run's ``.wandb`` file."""
    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B transaction log"
    position, chunks = 7, []
    while position + 7 <= len(data):
        left_in_block = _BLOCK - position % _BLOCK
        if left_in_block < 7:
            position += left_in_block
            continue
        _, length, kind = struct.unpack("<IHB", data[position : position + 7])
        if length == 0 and kind == 0:  # zero padding up to the end of the block
            position += left_in_block
            continue
        if position + 7 + length > len(data):  # a record still being written
            return
        chunks.append(data[position + 7 : position + 7 + length])
        position += 7 + length
        if kind in (_FULL, _LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(b"".join(chunks))
            chunks = []
            yield record


def complete_records(log_file: Path, timeout: float = 60.0) -> list:
    """The records of ``log_file`` once its ``exit`` record is there: W&B's service may still be writing
    the file after ``finish()`` returned."""
    deadline = time.monotonic() + timeout
    while True:
        records = list(read_wandb_records(log_file))
        if any(record.WhichOneof("record_type") == "exit" for record in records) or time.monotonic() > deadline:
            return records
        time.sleep(0.1)


def logged_history(run_dir: Path) -> tuple[list[dict[str, float]], object]:
    (log_file,) = run_dir.glob("wandb/offline-run-*/run-*.wandb")
    rows, run_record, kinds = [], None, []
    for record in complete_records(log_file):
        kind = record.WhichOneof("record_type")
        kinds.append(kind)
        if kind == "history":
            rows.append(
                {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
            )
        elif kind == "run":
            run_record = record.run
    assert run_record is not None, f"no run record in {log_file}: {kinds}"
    return rows, run_record


def test_an_offline_wandb_run_holds_every_scalar_on_its_split_axis(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DISABLE_CODE", "true")
    config = base_config(
        tmp_path,
        epochs=2,
        lineage="offline-lineage",
        tensorboard=True,
        wandb={"enabled": True, "mode": "offline"},
        optim={"type": "sgd", "lr": 0.1},
        dataloader={"batch_size": 8},
    )
    runner = ClassifierRunner(config)
    runner.train()
    runner.close()

    rows, run_record = logged_history(Path(runner.workspace.dir))
    assert (run_record.project, run_record.run_group, run_record.display_name) == ("offline-lineage", "exp", runner.id)

    # training lines: one per step, at the global step, equal to what TensorBoard received
    train = {row["train/step"]: row["train/loss"] for row in rows if "train/loss" in row and "train/step" in row}
    events = EventAccumulator(os.path.join(runner.workspace.dir, "tensorboard", runner.timestamp))
    events.Reload()
    board = {event.step: event.value for event in events.Scalars("train/loss")}
    assert sorted(train) == sorted(board) and len(train) >= runner.train_state.global_step
    assert train == pytest.approx(board, rel=1e-6)

    # epoch results: the validation loss of every epoch, numbered by epoch (below the steps logged before it)
    val = {row["val/step"]: row["val/loss"] for row in rows if "val/loss" in row}
    expected = {epoch: float(result["val"]["loss"]) for epoch, result in runner.results.items()}
    assert val == pytest.approx(expected)
    assert len(val) == 2
