import copy
import pickle
from multiprocessing.reduction import ForkingPickler

import pytest
import torch
import torch.multiprocessing

from danling.tensors import NestedTensor
from danling.tensors._serialization import nested_state, parse_state, rebuild_nested_tensor

from .strategies import assert_elements


@pytest.fixture
def nested():
    tensors = [torch.randn(3, 4, 2), torch.randn(5, 4, 3)]
    return NestedTensor(tensors, batch_first=False, padding_value=-1.0, mask_value=True)


def assert_same(first: NestedTensor, second: NestedTensor) -> None:
    assert_elements(first, second)
    assert first._layout.permutation == second._layout.permutation
    assert (first.batch_first, first.padding_value, first.mask_value) == (
        second.batch_first,
        second.padding_value,
        second.mask_value,
    )
    assert first.shape == second.shape


def test_torch_save_and_load_with_weights_only(nested, tmp_path):
    path = tmp_path / "batch.pt"
    torch.save({"inputs": nested, "step": 3}, path)
    loaded = torch.load(path, weights_only=True)
    assert_same(loaded["inputs"], nested)
    assert loaded["step"] == 3


def test_pickle_copy_and_deepcopy(nested):
    assert_same(pickle.loads(pickle.dumps(nested)), nested)
    shallow = copy.copy(nested)
    assert shallow._values is nested._values
    deep = copy.deepcopy(nested)
    assert_same(deep, nested)
    assert deep._values.data_ptr() != nested._values.data_ptr()


def test_multiprocessing_pickler_round_trip(nested):
    restored = pickle.loads(ForkingPickler.dumps(nested))
    assert_same(restored, nested)


def test_permuted_and_empty_layouts_survive(tmp_path):
    permuted = NestedTensor([torch.randn(2, 3), torch.randn(2, 5)]).transpose(1, 2)
    empty = NestedTensor([torch.randn(2, 3)])[[]]
    for index, value in enumerate([permuted, empty, NestedTensor([]), NestedTensor([torch.tensor(1.0)])]):
        path = tmp_path / f"{index}.pt"
        torch.save(value, path)
        loaded = torch.load(path)
        assert loaded.shape == value.shape and loaded._layout.same_as(value._layout)
        assert torch.equal(loaded._values, value._values)


def test_set_state_restores_in_place(nested):
    other = NestedTensor([torch.zeros(1)])
    other.__setstate__(nested.__getstate__())
    assert_same(other, nested)


def test_state_validation_errors(nested):
    state = nested_state(nested)
    with pytest.raises(KeyError, match="missing required keys: _offsets"):
        parse_state({k: v for k, v in state.items() if k != "_offsets"})
    with pytest.raises(ValueError, match="Unsupported NestedTensor state version 2; expected 1"):
        parse_state({**state, "_state_version": 2})
    with pytest.raises(ValueError, match="offsets must be on CPU, got meta"):
        parse_state({**state, "_offsets": state["_offsets"].to("meta")})
    with pytest.raises(ValueError, match="offsets must use an integer dtype"):
        parse_state({**state, "_offsets": state["_offsets"].float()})
    with pytest.raises(ValueError, match="offsets length must equal batch size \\+ 1"):
        parse_state({**state, "_offsets": state["_offsets"][:-1]})
    with pytest.raises(ValueError, match="offsets must start at 0"):
        parse_state({**state, "_offsets": state["_offsets"] + 1})
    with pytest.raises(ValueError, match="shape_tensor must be 2-D"):
        parse_state({**state, "_physical_shape": state["_physical_shape"].flatten()})
    with pytest.raises(ValueError, match="element_shapes must match shape_tensor exactly"):
        parse_state({**state, "_element_shapes": ((1, 1, 1), (1, 1, 1))})
    with pytest.raises(ValueError, match="offsets\\[-1\\] must equal packed values length"):
        parse_state({**state, "_values": state["_values"][:-1]})
    with pytest.raises(ValueError, match="packed_sizes must match"):
        parse_state({**state, "_offsets": torch.tensor([0, 1, state["_offsets"][-1]])})
    assert_same(rebuild_nested_tensor(state), nested)


def test_tensor_flatten_round_trip(nested):
    names, context = nested.__tensor_flatten__()
    rebuilt = NestedTensor.__tensor_unflatten__({name: getattr(nested, name) for name in names}, context, None, None)
    assert_same(rebuilt, nested)
    assert rebuilt._values is nested._values
