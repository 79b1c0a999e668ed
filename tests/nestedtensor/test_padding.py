import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from danling.tensors import NestedTensor
from danling.tensors._layout import NestedLayout
from danling.tensors._padding import (
    _pad_with_jagged_kernel,
    _PadSequences,
    dense_to_values,
    mask_drops_last_dim,
    padded_mask,
    to_padded,
    uniform_values,
    values_from_tensor_mask,
)

from .strategies import padded, ragged_batches

CPU = torch.device("cpu")


@given(ragged_batches(), st.sampled_from([0.0, -1.0, 7.5]))
def test_to_padded_matches_per_element_padding(tensors, fill):
    layout = NestedLayout.from_shapes([t.shape for t in tensors])
    assert torch.equal(to_padded(layout, layout.pack(tensors), fill), padded(tensors, fill))


@pytest.mark.parametrize("fill", [0.0, -2.5])
def test_accelerator_padding_kernel_agrees_with_the_cpu_path(fill):
    # Accelerators pad sequences with the jagged kernel, the CPU with one interleaving cat.
    tensors = [torch.randn(n, 3) for n in (4, 0, 7, 1)]
    layout = NestedLayout.from_shapes([t.shape for t in tensors])
    values = layout.pack(tensors)
    expected = padded(tensors, fill)
    assert torch.equal(_pad_with_jagged_kernel(values, layout, fill), expected)
    assert torch.equal(to_padded(layout, values, fill), expected)


def test_padding_sequences_on_the_cpu_has_exact_gradients():
    tensors = [torch.randn(n, 2, dtype=torch.float64) for n in (3, 0, 4)]
    layout = NestedLayout.from_shapes([t.shape for t in tensors])
    values = layout.pack(tensors).requires_grad_()
    assert torch.autograd.gradcheck(lambda v: to_padded(layout, v, -1.0), (values,))


def test_padding_gradient_is_packed_back_in_one_kernel():
    tensors = [torch.randn(n, 2, dtype=torch.float64) for n in (3, 1, 4)]
    layout = NestedLayout.from_shapes([t.shape for t in tensors])
    values = layout.pack(tensors).requires_grad_()
    assert torch.autograd.gradcheck(lambda v: _PadSequences.apply(v, layout, 0.0), (values,))


@given(ragged_batches(), st.booleans())
def test_round_trip_through_padded_tensor_and_mask(tensors, batch_first):
    nested = NestedTensor(tensors, batch_first=batch_first)
    rebuilt = NestedTensor.from_tensor_mask(nested.tensor, nested.mask, batch_first=batch_first)
    assert len(rebuilt) == len(tensors)
    for got, want in zip(rebuilt, tensors):
        if want.numel() == 0:  # an element without data comes back with zero extents
            assert got.numel() == 0 and got.dim() == want.dim()
        else:
            assert torch.equal(got, want)


@given(ragged_batches(), st.sampled_from([0, 2]))
def test_dense_to_values_inverts_padding_and_crops(tensors, extra):
    layout = NestedLayout.from_shapes([t.shape for t in tensors])
    dense = padded(tensors, float("nan"))
    bigger = torch.nn.functional.pad(dense, [0, extra] * (dense.dim() - 1), value=float("nan"))
    assert torch.equal(dense_to_values(layout, bigger), layout.pack(tensors))


def test_dense_to_values_refuses_mismatched_tensors():
    layout = NestedLayout.from_shapes([(3, 2), (1, 2)])
    assert dense_to_values(layout, torch.zeros(2, 2, 2)) is None  # too short along the ragged dim
    assert dense_to_values(layout, torch.zeros(3, 3, 2)) is None  # wrong batch size
    assert dense_to_values(layout, torch.zeros(2, 3)) is None  # wrong rank


def test_mask_drops_a_static_last_dim_only():
    channels = NestedLayout.from_shapes([(9, 8), (11, 8)])
    assert mask_drops_last_dim(channels) and padded_mask(channels, CPU).shape == (2, 11)
    images = NestedLayout.from_shapes([(9, 9, 8, 7), (11, 11, 8, 6)])
    assert not mask_drops_last_dim(images) and padded_mask(images, CPU).shape == (2, 11, 11, 8, 7)
    sequences = NestedLayout.from_shapes([(3,), (2,)])
    assert not mask_drops_last_dim(sequences)
    scalars = NestedLayout.from_shapes([(), ()])
    assert torch.equal(padded_mask(scalars, CPU), torch.tensor([True, True]))


def test_uniform_values_packs_without_copy():
    dense = torch.arange(24.0).view(2, 3, 4)
    values, layout = uniform_values(dense)
    assert values.data_ptr() == dense.data_ptr() and values.shape == (6, 4)
    assert layout.element_shapes == ((3, 4), (3, 4))


def test_from_tensor_mask_keeps_trailing_channels():
    tensor = torch.arange(2 * 3 * 2).view(2, 3, 2)
    valid = torch.tensor([[True, True, False], [True, False, False]])
    values, layout = values_from_tensor_mask(tensor, valid)
    assert layout.element_shapes == ((2, 2), (1, 2))
    assert torch.equal(values, torch.tensor([[0, 1], [2, 3], [6, 7]]))


def test_from_tensor_mask_n_d_fills_inside_the_box():
    tensor = torch.arange(1.0, 10.0).view(1, 3, 3)
    valid = torch.tensor([[[True, True, True], [True, True, False], [False, False, False]]])
    values, layout = values_from_tensor_mask(tensor, valid, padding_value=-1.0)
    assert layout.element_shapes == ((2, 3),)
    assert torch.equal(values.reshape(-1), torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, -1.0]))


def test_from_tensor_mask_one_d_masks():
    tensor = torch.arange(6).view(3, 2)
    valid = torch.tensor([True, False, True])
    values, layout = values_from_tensor_mask(tensor, valid, batched=True)
    assert layout.element_shapes == ((2,), (2,)) and torch.equal(values, torch.tensor([0, 1, 4, 5]))
    values, layout = values_from_tensor_mask(tensor, valid)
    assert layout.element_shapes == ((2, 2),)


def test_from_tensor_mask_rejects_gaps_and_mismatches():
    with pytest.raises(ValueError, match="2-D masks requires each row to be a valid prefix mask"):
        values_from_tensor_mask(torch.zeros(1, 3), torch.tensor([[True, False, True]]))
    gap = torch.tensor([[[False, True], [True, True]]])
    with pytest.raises(ValueError, match="valid hierarchical ragged prefix"):
        values_from_tensor_mask(torch.zeros(1, 2, 2), gap)
    hole_row = torch.tensor([[[True], [False], [True]]])
    with pytest.raises(ValueError, match="valid hierarchical ragged prefix"):
        values_from_tensor_mask(torch.zeros(1, 3, 1), hole_row)
    with pytest.raises(ValueError, match="Tensor/mask batch dimension mismatch: 2 vs 3"):
        values_from_tensor_mask(torch.zeros(2, 4), torch.ones(3, 4, dtype=torch.bool))


def test_padding_paths_agree_and_are_differentiable():
    sequences = [torch.randn(3, 2, dtype=torch.complex64), torch.randn(1, 2, dtype=torch.complex64)]
    layout = NestedLayout.from_shapes([t.shape for t in sequences])
    assert torch.equal(to_padded(layout, layout.pack(sequences), 0.0), padded(sequences))  # generic path
    for shapes in ([(3, 2), (1, 2)], [(3, 2), (1, 4)]):  # jagged kernel, then the generic scatter
        sources = [torch.randn(shape, requires_grad=True) for shape in shapes]
        layout = NestedLayout.from_shapes(shapes)
        weights = torch.randn(2, *layout.max_sizes)
        (to_padded(layout, layout.pack(sources), -1.0) * weights).sum().backward()
        for index, source in enumerate(sources):
            assert torch.equal(source.grad, weights[(index, *(slice(0, s) for s in source.shape))])


@pytest.mark.parametrize(
    ("dtype", "fill"), [(torch.bool, True), (torch.int64, -3), (torch.complex64, 0.5), (torch.float16, 2.0)]
)
def test_padding_sequences_keeps_dtype_and_fill(dtype, fill):
    tensors = [torch.arange(n * 2).reshape(n, 2).to(dtype) for n in (2, 5, 0)]
    layout = NestedLayout.from_shapes([t.shape for t in tensors])
    out = to_padded(layout, layout.pack(tensors), fill)
    assert out.dtype == dtype and torch.equal(out, padded(tensors, fill))
    flat = [t[:, 0].contiguous() for t in tensors]  # 1-D elements: nothing static
    layout = NestedLayout.from_shapes([t.shape for t in flat])
    assert torch.equal(to_padded(layout, layout.pack(flat), fill), padded(flat, fill))
