import pytest
import torch
from hypothesis import given

from danling.tensors._layout import NestedLayout, canonical_permutation, inverse_permutation

from .strategies import padded, ragged_batches


@pytest.mark.parametrize(
    ("shapes", "permutation", "ragged_rank", "rows", "static"),
    [
        ([(3,), (2,)], (0,), 1, 5, ()),
        ([(9, 8), (11, 8)], (0, 1), 1, 20, (8,)),
        ([(9, 9, 8), (11, 11, 8)], (0, 1, 2), 2, 202, (8,)),
        ([(9, 9, 8, 6), (11, 11, 8, 6)], (0, 1, 2, 3), 2, 202, (8, 6)),
        ([(9, 9, 8, 7), (11, 11, 8, 6)], (0, 1, 3, 2), 3, 1293, (8,)),
        ([(1, 9, 9, 5), (1, 11, 11, 5)], (1, 2, 0, 3), 2, 202, (1, 5)),
        ([(2, 2), (2, 2)], (0, 1), 1, 4, (2,)),
        ([(), ()], (), 0, 2, ()),
    ],
)
def test_canonical_packing(shapes, permutation, ragged_rank, rows, static):
    layout = NestedLayout.from_shapes(shapes)
    assert (layout.permutation, layout.ragged_rank) == (permutation, ragged_rank)
    assert (layout.num_rows, layout.static_sizes) == (rows, static)
    assert canonical_permutation(shapes) == (permutation, ragged_rank)


def test_from_shapes_rejects_bad_shapes():
    with pytest.raises(ValueError, match="same number of dimensions, got ndim 1 and 2"):
        NestedLayout.from_shapes([(3,), (2, 2)])
    with pytest.raises(ValueError, match=r"Invalid permutation dims \(0, 0\) for tensors with rank 2"):
        NestedLayout.from_shapes([(3, 2)], permutation=(0, 0), ragged_rank=1)
    with pytest.raises(ValueError, match="packed as static but its size varies"):
        NestedLayout.from_shapes([(3, 2), (3, 4)], permutation=(0, 1), ragged_rank=1)
    with pytest.raises(ValueError, match="ragged_rank must be between 1 and 2"):
        NestedLayout.from_shapes([(3, 2)], permutation=(0, 1), ragged_rank=0)
    with pytest.raises(ValueError, match="non-negative"):
        NestedLayout.from_shapes([(-1,)])


def test_metadata_tensors_live_on_cpu():
    layout = NestedLayout.from_shapes([(3, 4), (5, 4), (0, 4)])
    assert torch.equal(layout.offsets, torch.tensor([0, 3, 8, 8]))
    assert torch.equal(layout.shape_tensor, torch.tensor([[3, 4], [5, 4], [0, 4]]))
    assert layout.offsets.device.type == layout.shape_tensor.device.type == "cpu"
    assert layout.starts == (0, 3, 8, 8)
    assert layout.logical_shape(True) == torch.Size([3, 5, 4])
    assert layout.logical_shape(False) == torch.Size([5, 3, 4])


@given(ragged_batches())
def test_pack_unpack_round_trip_and_views(tensors):
    layout = NestedLayout.from_shapes([t.shape for t in tensors])
    values = layout.pack(tensors)
    assert values.shape == (layout.num_rows, *layout.static_sizes)
    elements = layout.unpack(values)
    for index, (element, tensor) in enumerate(zip(elements, tensors)):
        assert torch.equal(element, tensor)
        assert torch.equal(layout.element(values, index), tensor)
        if element.numel():
            assert element.untyped_storage().data_ptr() == values.untyped_storage().data_ptr()


@given(ragged_batches())
def test_index_tensors_match_a_per_element_reference(tensors):
    layout = NestedLayout.from_shapes([t.shape for t in tensors])
    cpu = torch.device("cpu")
    batch, *coordinates = layout.row_coordinates(cpu)
    expected_batch = torch.cat([torch.full((n,), i) for i, n in enumerate(layout.packed_sizes)])
    assert torch.equal(batch, expected_batch)
    ragged_max = [layout.max_sizes[d] for d in layout.ragged_dims]
    for i, shape in enumerate(layout.element_shapes):
        rows = batch == i
        sizes = [shape[d] for d in layout.ragged_dims]
        expected = torch.cartesian_prod(*[torch.arange(s) for s in sizes]) if sizes else torch.zeros(0)
        got = torch.stack([c[rows] for c in coordinates], dim=1)
        assert torch.equal(got, expected.reshape(got.shape))
    flat = torch.zeros_like(batch)
    for size, coordinate in zip([len(tensors), *ragged_max], [batch, *coordinates]):
        flat = flat * size + coordinate
    assert torch.equal(layout.padded_row_index(cpu), flat)
    mask = layout.valid_mask(cpu)
    assert torch.equal(mask, padded([torch.ones_like(t, dtype=torch.bool) for t in tensors], False))


def test_valid_mask_cache_survives_an_outside_write():
    layout = NestedLayout.from_shapes([(3,), (1,)])
    mask = layout.valid_mask(torch.device("cpu"))
    assert layout.valid_mask(torch.device("cpu")) is mask
    mask.fill_(False)
    rebuilt = layout.valid_mask(torch.device("cpu"))
    assert torch.equal(rebuilt, torch.tensor([[True, True, True], [True, False, False]]))


def test_derived_layouts():
    layout = NestedLayout.from_shapes([(3, 4), (5, 4), (2, 4)])
    subset = layout.select([2, 0])
    assert subset.element_shapes == ((2, 4), (3, 4)) and subset.permutation == layout.permutation
    empty = layout.select([])
    assert empty.batch_size == 0 and empty.static_sizes == (4,) and empty.logical_shape() == (0, 0, 4)
    wider = layout.with_static_sizes([7])
    assert wider.element_shapes == ((3, 7), (5, 7), (2, 7))
    assert layout.with_static_sizes([4]) is layout
    assert layout.with_element_shapes([(1, 4), (1, 4), (6, 4)]).permutation == (0, 1)
    repacked = layout.with_element_shapes([(1, 4), (1, 5), (1, 6)])
    assert repacked.permutation == (1, 0) and repacked.static_sizes == (1,)
    assert layout.values_dim(1) == 1 and layout.values_dim(0) is None
    assert layout.same_as(NestedLayout.from_shapes([(3, 4), (5, 4), (2, 4)]))
    assert not layout.same_as(subset)
    assert inverse_permutation((2, 0, 1)) == (1, 2, 0)
