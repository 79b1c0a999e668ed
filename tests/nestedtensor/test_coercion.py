import pytest
import torch

from danling.tensors import PNTensor
from danling.tensors._coercion import (
    check_bool,
    check_padding_value,
    coerce_elements,
    pack_inputs,
    set_requires_grad,
    unpack_arguments,
)


def test_unpack_arguments_accepts_varargs_an_iterable_or_one_tensor():
    a, b = torch.ones(2), torch.ones(3)
    assert unpack_arguments((a, b)) == (a, b)
    assert unpack_arguments(([a, b],)) == (a, b)
    assert unpack_arguments((a,)) == (a,)  # a lone tensor is a batch of one
    assert unpack_arguments(((x for x in [1, 2]),)) == (1, 2)
    with pytest.raises(ValueError, match=r"tensors must be an Iterable, but got <class 'int'>\."):
        unpack_arguments((5,))


def test_coerce_promotes_dtypes_and_converts_lists():
    elements = coerce_elements(([1, 2], torch.tensor([0.5], dtype=torch.float64)))
    assert [t.dtype for t in elements] == [torch.float64, torch.float64]
    assert coerce_elements(([1, 2], [3]))[0].dtype == torch.int64
    cast = coerce_elements((torch.tensor([1, 2]),), dtype=torch.float16)
    assert cast[0].dtype == torch.float16


def test_coerce_rejects_mixed_devices_and_ranks():
    with pytest.raises(
        ValueError, match="All tensors in NestedTensor must be on the same device, but got cpu and meta"
    ):
        coerce_elements((torch.ones(2), torch.ones(2, device="meta")))
    with pytest.raises(ValueError, match=r"same number of dimensions, got ndim 1 and 2\. If using a DataLoader"):
        coerce_elements((torch.ones(2), torch.ones(2, 2)))


def test_coerce_drops_python_subclasses():
    element = coerce_elements((PNTensor([1, 2]), torch.nn.Parameter(torch.ones(2))))
    assert all(type(t) is torch.Tensor for t in element)


def test_pack_inputs_reuses_a_jagged_torch_nested_buffer():
    values = torch.arange(10.0).view(5, 2)
    nested = torch.nested.nested_tensor_from_jagged(values, torch.tensor([0, 2, 5]))
    packed, layout = pack_inputs((nested,))
    assert packed.data_ptr() == values.data_ptr()
    assert layout.element_shapes == ((2, 2), (3, 2))
    strided = torch.nested.nested_tensor([torch.ones(2, 3), torch.ones(2, 1)])
    packed, layout = pack_inputs((strided,))
    assert layout.element_shapes == ((2, 3), (2, 1)) and packed.numel() == 8


def test_pack_inputs_of_nothing_is_an_empty_batch():
    values, layout = pack_inputs((), dtype=torch.int32)
    assert values.shape == (0,) and values.dtype == torch.int32 and layout.batch_size == 0


def test_settings_are_validated():
    assert check_bool("batch_first", False) is False
    with pytest.raises(TypeError, match="batch_first must be a bool, got int"):
        check_bool("batch_first", 1)
    assert check_padding_value("2") == 2.0
    with pytest.raises(TypeError, match="padding_value must be float-convertible, got list"):
        check_padding_value([1])


def test_requires_grad_option():
    source = torch.ones(3, requires_grad=True)
    connected = set_requires_grad(source * 2, True)
    assert connected.grad_fn is not None  # stays attached to the source
    leaf = set_requires_grad(torch.ones(3), True)
    assert leaf.is_leaf and leaf.requires_grad
    detached = set_requires_grad(source * 2, False)
    assert not detached.requires_grad
