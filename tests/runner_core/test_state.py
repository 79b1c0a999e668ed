"""RunnerState: counters round-trip, and RNG capture/restore replays the same random numbers."""

from __future__ import annotations

import random

import pytest
import torch
from torch.distributed.checkpoint.stateful import Stateful

from danling.runners.config import RunnerConfig
from danling.runners.state import (
    RunnerElasticState,
    RunnerRNGState,
    RunnerState,
    RunnerTrainState,
    capture_numpy_rng_state,
    restore_numpy_rng_state,
    seed_everything,
)


def _draws() -> list[float]:
    values = [random.random(), torch.rand(1).item(), torch.randint(0, 10**6, (1,)).item()]
    try:
        import numpy
    except ImportError:
        return values
    return [*values, float(numpy.random.rand())]


def test_train_state_round_trip_ignores_unknown_keys():
    state = RunnerTrainState(global_step=3, micro_step=7, epoch=2)
    assert state.state_dict() == {"global_step": 3, "micro_step": 7, "epoch": 2}
    fresh = RunnerTrainState()
    fresh.load_state_dict({"global_step": 5, "micro_step": 9, "epoch": 4, "tokens_seen": 1024})
    assert fresh == RunnerTrainState(5, 9, 4) and not hasattr(fresh, "tokens_seen")
    fresh.load_state_dict({"epoch": 6})
    assert fresh == RunnerTrainState(5, 9, 6)
    with pytest.raises(TypeError, match="expects a mapping"):
        fresh.load_state_dict([("epoch", 1)])


def test_elastic_state_reads_torchelastic_restart_count(monkeypatch):
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "3")
    assert RunnerElasticState.from_env().state_dict() == {"restart_count": 3}
    monkeypatch.delenv("TORCHELASTIC_RESTART_COUNT")
    assert RunnerElasticState.from_env().restart_count == 0


def test_runner_state_wraps_config_and_is_stateful():
    raw = {"epochs": 2}
    state = RunnerState(config=raw)
    assert isinstance(state.config, RunnerConfig) and state.config.epochs == 2 and raw == {"epochs": 2}
    config = RunnerConfig(steps=5)
    assert RunnerState(config).config is config
    assert isinstance(state, Stateful)


def test_runner_state_round_trip_and_tolerates_partial_input():
    state = RunnerState(RunnerConfig())
    state.train.global_step, state.train.epoch, state.elastic.restart_count = 11, 2, 1
    state.rng.capture()
    saved = state.state_dict()
    assert set(saved) == {"train", "elastic", "rng"} and set(saved["rng"]) == {
        "python",
        "numpy",
        "torch_cpu",
        "torch_cuda",
    }
    fresh = RunnerState(RunnerConfig())
    fresh.load_state_dict(saved)
    assert fresh.train == state.train and fresh.elastic.restart_count == 1
    assert torch.equal(fresh.rng.torch_cpu, state.rng.torch_cpu)
    fresh.load_state_dict({"train": None, "elastic": 5})  # not mappings: ignored
    assert fresh.train.global_step == 11


def test_rng_capture_and_restore_replays_every_generator():
    seed_everything(123)
    rng = RunnerRNGState().capture()
    expected = _draws()
    _draws()
    rng.restore()
    assert _draws() == expected


def test_rng_state_survives_a_weights_only_checkpoint(tmp_path):
    seed_everything(5)
    state = RunnerState(RunnerConfig())
    state.rng.capture()
    expected = _draws()
    torch.save({"state": state.state_dict()}, tmp_path / "latest.pth")

    seed_everything(99)  # a new process would start from anywhere
    loaded = torch.load(tmp_path / "latest.pth", weights_only=True)
    resumed = RunnerState(RunnerConfig())
    resumed.load_state_dict(loaded["state"])
    resumed.rng.restore()
    assert _draws() == expected


def test_python_state_from_text_formats_is_accepted():
    random.seed(1)
    state = random.getstate()
    as_lists = [state[0], list(state[1]), state[2]]  # what JSON/YAML give back
    expected = random.random()
    RunnerRNGState(python=as_lists).restore()
    assert random.random() == expected


def test_python_state_is_saved_packed_and_restores_from_either_form():
    random.seed(2)
    captured = RunnerRNGState().capture()
    # one tensor instead of 625 ints: a checkpoint pickles one object for it, not 625
    assert isinstance(captured.python[1], torch.Tensor) and captured.python[1].numel() == 625
    expected = [random.random() for _ in range(3)]
    captured.restore()
    assert [random.random() for _ in range(3)] == expected
    random.seed(2)
    plain = random.getstate()  # what older checkpoints (and the spec's) hold
    random.random()
    RunnerRNGState(python=plain).restore()
    assert random.random() == expected[0]


def test_numpy_state_forms():
    numpy = pytest.importorskip("numpy")
    numpy.random.seed(3)
    captured = capture_numpy_rng_state()
    assert isinstance(captured["state"]["key"], torch.Tensor)
    expected = numpy.random.rand(3)
    restore_numpy_rng_state(captured)
    assert numpy.array_equal(numpy.random.rand(3), expected)
    legacy = numpy.random.get_state()
    expected = numpy.random.rand(2)
    restore_numpy_rng_state(legacy)
    assert numpy.array_equal(numpy.random.rand(2), expected)


def test_seed_everything_makes_runs_repeat():
    seed_everything(2**40 + 3)  # larger than numpy's 32-bit seed range
    first = _draws()
    seed_everything(2**40 + 3)
    assert _draws() == first
    with pytest.raises(TypeError, match="seed must be an integer"):
        seed_everything("1")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_rng_round_trip():
    torch.cuda.init()
    rng = RunnerRNGState().capture()
    assert rng.torch_cuda is not None
    expected = torch.rand(3, device="cuda")
    rng.restore()
    assert torch.equal(torch.rand(3, device="cuda"), expected)
