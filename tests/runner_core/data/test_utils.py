"""to_device keeps structure and moves every tensor."""

from __future__ import annotations

from collections import namedtuple

import pytest
import torch
from chanfig import FlatDict, NestedDict

from danling.data import to_device

Batch = namedtuple("Batch", ["input", "target"])


class Movable:
    def __init__(self):
        self.moved_to = None

    def to(self, device):
        self.moved_to = device
        return self


def _meta(tree):
    return to_device(tree, "meta")  # a real second device on any machine


def test_tensors_move_and_subclasses_survive():
    class Tagged(torch.Tensor):
        pass

    tagged = torch.ones(2).as_subclass(Tagged)
    moved = _meta(tagged)
    assert moved.device.type == "meta" and type(moved) is Tagged


def test_plain_dict_becomes_flatdict_with_moved_values():
    batch = {"input": torch.ones(2, 3), "meta": {"ids": torch.arange(2)}, "name": "x"}
    moved = _meta(batch)
    assert isinstance(moved, FlatDict) and moved.input.device.type == "meta"
    assert moved["meta"]["ids"].device.type == "meta" and moved.name == "x"
    assert batch["input"].device.type == "cpu"  # the input dict is not modified


def test_flatdict_is_moved_in_place_including_nested_lists():
    batch = NestedDict({"x": torch.ones(1), "y.z": torch.zeros(1), "seq": [torch.ones(1)]})
    moved = _meta(batch)
    assert moved is batch
    assert batch.x.device.type == "meta" and batch.y.z.device.type == "meta"
    assert batch.seq[0].device.type == "meta"


def test_sequences_keep_their_types():
    moved = _meta([torch.ones(1), (torch.ones(1), 3), Batch(torch.ones(1), torch.zeros(1))])
    assert isinstance(moved, list) and type(moved[1]) is tuple and moved[1][1] == 3
    assert type(moved[2]) is Batch and moved[2].target.device.type == "meta"
    assert moved[0].device.type == "meta"


def test_objects_with_to_and_plain_values():
    movable = Movable()
    assert to_device(movable, torch.device("cpu")) is movable and movable.moved_to == torch.device("cpu")
    assert to_device("text", "cpu") == "text" and to_device(None, "cpu") is None and to_device(3, "cpu") == 3


def test_module_moves():
    module = torch.nn.Linear(2, 2)
    assert _meta(module).weight.device.type == "meta"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_round_trip():
    batch = {"input": torch.ones(4).pin_memory()}
    on_gpu = to_device(batch, "cuda")
    assert on_gpu.input.is_cuda
    back = to_device(on_gpu, "cpu")
    assert torch.equal(back.input, torch.ones(4))  # copy to host is blocking, safe to read
