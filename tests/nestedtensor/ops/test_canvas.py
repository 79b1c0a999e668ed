import itertools

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch.nn import functional as F

from danling.tensors import NestedTensor, forbid_slow_paths
from danling.tensors.ops._canvas import (
    BUCKET_FILL,
    Images,
    Window,
    _buckets,
    canvas_plan,
    pixel_coordinates,
    pixel_rows,
    with_static_channels,
)

from ..strategies import ragged_images


def torch_size(window: Window, size: int) -> int | None:
    """Output length the dense op gives (None where it refuses the input)."""
    x = torch.zeros(1, 1, size)
    try:
        if window.transposed:
            w = torch.zeros(1, 1, window.kernel)
            return F.conv_transpose1d(
                x, w, None, window.stride, window.pad_before, window.output_padding, 1, window.dilation
            ).size(-1)
        return F.max_pool1d(
            x, window.kernel, window.stride, window.pad_before, window.dilation, ceil_mode=window.ceil_mode
        ).size(-1)
    except RuntimeError:
        return None


def test_window_output_sizes_match_torch():
    for kernel, stride, dilation, size, ceil_mode in itertools.product(
        (1, 2, 3), (1, 2, 3), (1, 2), range(1, 9), (0, 1)
    ):
        for pad in range(0, kernel // 2 + 1):
            window = Window(kernel, stride, dilation, pad, pad, ceil_mode=bool(ceil_mode))
            expected = torch_size(window, size)
            assert (window.output_size(size) if window.output_size(size) > 0 else None) == expected, window
        for pad, extra in itertools.product(range(3), range(max(stride, dilation))):
            window = Window(kernel, stride, dilation, pad, pad, transposed=True, output_padding=extra)
            expected = torch_size(window, size)
            assert window.output_size(size) == expected or (expected is None and window.output_size(size) < 1)


@given(st.integers(1, 3), st.integers(1, 3), st.integers(1, 2), st.integers(0, 2), st.booleans(), st.integers(1, 9))
def test_every_window_of_an_image_stays_inside_its_slot(kernel, stride, dilation, pad, ceil_mode, size):
    window = Window(kernel, stride, dilation, pad, pad, ceil_mode=ceil_mode)
    slot = window.slot(size)
    first = window.data_offset() - pad  # slot position of the first window's start
    last_end = first + (window.output_size(size) - 1) * stride + window.reach
    assert first >= 0 and last_end <= slot
    assert slot >= pad + size + pad


@given(st.integers(1, 3), st.integers(1, 3), st.integers(1, 2), st.integers(0, 2), st.integers(1, 9), st.data())
def test_transposed_slots_keep_neighbours_apart(kernel, stride, dilation, pad, size, data):
    extra = data.draw(st.integers(0, max(stride, dilation) - 1))
    window = Window(kernel, stride, dilation, pad, pad, transposed=True, output_padding=extra)
    slot = window.slot(size)
    read_start, read_end = window.output_offset(0), window.output_offset(0) + window.output_size(size)
    contributions_end = (size - 1) * stride + window.reach  # this image writes output positions [0, end)
    next_start = slot * stride  # the next image writes from here on
    assert read_end <= next_start and contributions_end <= next_start + pad
    assert read_start >= 0 and read_end <= window.canvas_output_size(slot)


def test_buckets_group_images_of_similar_size():
    assert _buckets([[], [], []]) == [[0, 1, 2]]  # sequences: one canvas
    assert _buckets([[10], [9], [10]]) == [[0, 1, 2]]
    assert _buckets([[10, 10], [3, 3], [10, 9], [3, 2]]) == [[0, 2], [1], [3]]  # 6 < 0.8 * 9
    assert _buckets([[10, 10], [3, 3], [10, 9], [3, 3]]) == [[0, 2], [1, 3]]
    assert _buckets([[4, 10], [10, 4]]) == [[0], [1]]  # same area, but together they would fill 40%
    assert BUCKET_FILL >= 0.5


@given(st.booleans(), st.data())
def test_pixel_rows_and_coordinates_address_every_element_value(batched, data):
    images = data.draw(ragged_images(batched=batched))
    nested = NestedTensor(images)
    found = Images.of(nested, images[0].dim() - 1 - batched, "test")
    nested = with_static_channels(nested, found)
    rows = pixel_rows(nested, found)
    image, coordinates = pixel_coordinates(nested._layout, found, torch.device("cpu"))
    flat = [i for element in images for i in (element.unbind(0) if batched else [element])]
    assert rows.size(0) == image.numel() == sum(i[0].numel() for i in flat)
    for row, index, where in zip(rows, image.tolist(), coordinates.tolist()):
        assert torch.equal(row, flat[index][(slice(None), *where)])


@given(ragged_images(spatial=2, batched=False))
def test_plan_lands_every_pixel_on_its_own_canvas_position(images):
    nested = NestedTensor(images)
    images_of = Images.of(nested, 2, "test")
    windows = (Window(3, 2, 1, 1, 1), Window(2, 1, 2, 0, 0))
    try:
        plan = canvas_plan(nested, images_of, windows)
    except ValueError:
        return
    rows = pixel_rows(nested, images_of).size(0)
    pixel = torch.ones(plan.numel, dtype=torch.bool).index_fill_(0, plan.canvas_fill, False)
    copied = plan.canvas_source[pixel]
    assert torch.equal(copied.sort().values, torch.arange(rows))  # every pixel once, the rest is fill
    assert plan.canvas_source.numel() == plan.numel
    assert int(plan.gather_index.max()) < plan.output_numel
    assert canvas_plan(nested, images_of, windows) is plan  # cached on the layout


def test_rare_layouts_with_channels_among_the_ragged_rows_are_repacked():
    images = [torch.randn(4, 2, 3), torch.randn(4, 2, 3)]
    swapped = NestedTensor(images).permute(0, 1, 3, 2)  # uniform: channels are the ragged dim, order permuted
    found = Images.of(swapped, 2, "conv2d")
    with pytest.raises(RuntimeError, match="ran per element"), forbid_slow_paths():
        with_static_channels(swapped, found)
    weight = torch.randn(1, 4, 2, 1)
    output = F.conv2d(swapped, weight)
    for element, image in zip(output.unbind(), images):
        torch.testing.assert_close(element, F.conv2d(image.transpose(1, 2), weight))
