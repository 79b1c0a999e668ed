import pytest
import torch

from danling.tensors import NestedTensor
from danling.tensors.ops._packed import (
    align_dense,
    apply_packed,
    batch_dim,
    dims_argument,
    element_dim,
    from_elements,
    is_nested,
    packed_like,
    rewrap_result,
    same_layout,
    unwrap_packed,
)


@pytest.fixture
def channels():
    return NestedTensor([torch.randn(3, 4), torch.randn(2, 4)], padding_value=-1.0, mask_value=True)


def test_packed_like_keeps_settings_and_tracks_new_static_sizes(channels):
    wider = packed_like(channels, torch.zeros(5, 6))
    assert wider.shape == (2, 3, 6) and [t.shape for t in wider] == [(3, 6), (2, 6)]
    assert (wider.padding_value, wider.mask_value) == (-1.0, True)
    same = apply_packed(torch.neg, channels)
    assert same._layout is channels._layout
    with pytest.raises(ValueError, match=r"Cannot rewrap values of shape \(4, 4\)"):
        packed_like(channels, torch.zeros(4, 4))


def test_dims_translate_to_element_coordinates():
    batch_first = NestedTensor([torch.zeros(3, 4)])
    assert (batch_dim(batch_first), element_dim(batch_first, 1), element_dim(batch_first, -1)) == (0, 0, 1)
    sequence_first = NestedTensor([torch.zeros(3, 4)], batch_first=False)
    assert (batch_dim(sequence_first), element_dim(sequence_first, 0), element_dim(sequence_first, 2)) == (1, 0, 1)
    with pytest.raises(ValueError, match="Cannot translate the batch dimension"):
        element_dim(sequence_first, 1)
    with pytest.raises(IndexError, match="Dimension out of range"):
        element_dim(batch_first, 3)
    assert dims_argument(None) is None and dims_argument([]) is None and dims_argument(2) == [2]


def test_align_dense_operands(channels):
    assert align_dense(channels, torch.tensor(2.0)).dim() == 0
    padded = channels.tensor
    assert torch.equal(align_dense(channels, padded), channels._values)
    bias = torch.arange(4.0)
    assert torch.equal(channels._values + align_dense(channels, bias), channels._values + bias)
    assert align_dense(channels, torch.ones(1, 1, 4)).shape == (1, 4)
    assert align_dense(channels, torch.ones(3, 1)) is None  # varies along the ragged dim
    images = NestedTensor([torch.zeros(2, 3, 5), torch.zeros(2, 4, 5)])  # static dims 0 and 2
    scale = torch.arange(2.0).view(2, 1, 1) * 10 + torch.arange(5.0)
    result = images._values + align_dense(images, scale)
    for element, values in zip(images, packed_like(images, result)):
        assert torch.equal(values, element + scale)


def test_unwrap_packed_lines_up_operands_or_refuses(channels):
    other = channels * 2
    reference, args, kwargs, owners = unwrap_packed((channels, other), {"alpha": 3})
    assert reference is channels and args[0] is channels._values and args[1] is other._values
    assert kwargs == {"alpha": 3} and owners[id(other._values)] is other
    assert unwrap_packed((channels, NestedTensor([torch.zeros(1, 4), torch.zeros(2, 4)])), {}) is None
    assert unwrap_packed((channels, torch.ones(3, 1)), {}) is None
    assert unwrap_packed((torch.ones(2),), {}) is None


def test_rewrap_result_maps_mutated_values_back(channels):
    _, args, _, owners = unwrap_packed((channels,), {})
    assert rewrap_result(args[0], channels, owners) is channels
    pair = rewrap_result((args[0] * 2, args[0] > 0), channels, owners)
    assert isinstance(pair, tuple) and all(is_nested(x) and same_layout(x, channels) for x in pair)
    assert rewrap_result(3, channels, owners) == 3


def test_from_elements_uses_the_settings_of_like(channels):
    rebuilt = from_elements([torch.ones(1), torch.ones(2)], like=channels)
    assert rebuilt.padding_value == -1.0 and rebuilt.mask_value and rebuilt.shape == (2, 2)
