import torch

from danling.tensors import NestedTensor, forbid_slow_paths


def make():
    return NestedTensor([torch.arange(6.0).view(3, 2), torch.arange(2.0).view(1, 2)], padding_value=-1.0)


def test_conversions_run_once_on_the_packed_values():
    nested = make()
    with forbid_slow_paths():
        converted = [
            nested.to(torch.float64),
            nested.half(),
            nested.long(),
            nested.to("meta"),
            nested.type(torch.int32),
        ]
    for result, dtype in zip(converted, [torch.float64, torch.float16, torch.int64, torch.float32, torch.int32]):
        assert result.dtype == dtype and result._layout is nested._layout and result.padding_value == -1.0
    assert converted[3].device.type == "meta" and converted[3]._offsets.device.type == "cpu"
    assert nested.to(torch.float32) is nested


def test_clone_detach_and_data():
    source = torch.ones(4, 2, requires_grad=True)
    nested = NestedTensor(source[:3], source[3:])
    clone = nested.clone()
    assert clone._values.data_ptr() != nested._values.data_ptr() and clone.requires_grad
    detached = nested.detach()
    assert not detached.requires_grad and detached._values.data_ptr() == nested._values.data_ptr()
    data = nested.data
    assert not data.requires_grad and data._layout is nested._layout
    clone.sum().backward()
    assert source.grad.sum() == 8


def test_like_constructors_keep_element_shapes():
    nested = make()
    with forbid_slow_paths():
        made = [torch.zeros_like(nested), torch.ones_like(nested), torch.full_like(nested, 3), torch.empty_like(nested)]
        random = [torch.rand_like(nested), torch.randn_like(nested), torch.randint_like(nested, 10)]
    for result in made + random:
        assert isinstance(result, NestedTensor) and result._layout is nested._layout
    assert made[2].tolist() == [[[3.0, 3.0]] * 3, [[3.0, 3.0]]]
    assert torch.zeros_like(nested, dtype=torch.int8).dtype == torch.int8


def test_new_tensors_are_dense():
    nested = make()
    ones = nested.new_ones((2, 2))
    assert type(ones) is torch.Tensor and ones.dtype == nested.dtype and torch.equal(ones, torch.ones(2, 2))
    assert nested.new_zeros(3).shape == (3,) and nested.new_full((1,), 4.0).item() == 4.0


def test_contiguity_refers_to_the_packed_values():
    nested = NestedTensor([torch.randn(3, 2, 4), torch.randn(1, 2, 4)])
    assert nested.is_contiguous() and nested.contiguous() is nested
    assert nested.transpose(2, 3).is_contiguous()  # a permutation only changes the packing order
    window = nested[..., 1:3]  # a slice of a static dim is a strided view of the values
    assert not window.is_contiguous()
    compact = window.contiguous()
    assert compact.is_contiguous() and torch.equal(compact.tensor, window.tensor)
    assert nested.element_size() == 4
