"""Model-only safetensors export: tied weights, dtype casts, atomic replacement."""

from __future__ import annotations

import os

import pytest
import torch
from safetensors import safe_open

from danling.runners.checkpoints import load_model_state, save_model_state


class TiedModel(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(6, 4)
        self.norm = torch.nn.BatchNorm1d(4)
        self.head = torch.nn.Linear(4, 6, bias=False)
        self.head.weight = self.embed.weight


def test_round_trip_restores_a_model_with_tied_weights(tmp_path):
    model = TiedModel()
    model.norm(torch.randn(3, 4))  # gives the running stats and the integer step counter values
    path = save_model_state(model.state_dict(), tmp_path / "model.safetensors")
    state = load_model_state(path)
    assert state["head.weight"] is state["embed.weight"]
    with safe_open(path, framework="pt") as file:
        assert "head.weight" not in set(file.keys())  # stored once
    fresh = TiedModel()
    fresh.load_state_dict(state)
    for name, tensor in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[name], tensor), name


def test_dtype_cast_applies_to_floating_point_only(tmp_path):
    model = TiedModel()
    state = load_model_state(save_model_state(model.state_dict(), tmp_path / "m.safetensors", dtype="float16"))
    assert state["embed.weight"].dtype == torch.float16
    assert state["norm.num_batches_tracked"].dtype == torch.int64
    assert torch.equal(state["embed.weight"], model.embed.weight.detach().half())  # the cast, stored exactly
    assert torch.equal(state["norm.running_var"], model.norm.running_var.half())


def test_views_of_one_buffer_and_non_contiguous_tensors(tmp_path):
    storage = torch.arange(12.0)
    state = {
        "first": storage[:6],
        "second": storage[6:],
        "transposed": storage.view(3, 4).t(),
        "scalar": torch.tensor(2),
    }
    loaded = load_model_state(save_model_state(state, tmp_path / "views.safetensors", metadata={"epoch": "3"}))
    for name, tensor in state.items():
        assert torch.equal(loaded[name], tensor), name
    with safe_open(str(tmp_path / "views.safetensors"), framework="pt") as file:
        assert file.metadata()["epoch"] == "3" and file.metadata()["format"] == "pt"


def test_non_tensor_entries_are_rejected_and_old_file_kept(tmp_path):
    path = tmp_path / "model.safetensors"
    save_model_state({"w": torch.ones(1)}, path)
    with pytest.raises(TypeError, match="cannot export 'extra' to safetensors: expected a tensor, got dict"):
        save_model_state({"w": torch.zeros(1), "extra": {}}, path)
    assert torch.equal(load_model_state(path)["w"], torch.ones(1)) and os.listdir(tmp_path) == ["model.safetensors"]


def test_missing_file():
    with pytest.raises(FileNotFoundError):
        load_model_state("/nonexistent/model.safetensors")
