import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st
from torch import nn
from torch.nn import functional as F

from danling.tensors import NestedTensor, forbid_slow_paths

from ..harness import check_op
from ..strategies import ragged_images

MAX_POOL = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}
AVG_POOL = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}
ADAPTIVE_AVG = {1: F.adaptive_avg_pool1d, 2: F.adaptive_avg_pool2d, 3: F.adaptive_avg_pool3d}
ADAPTIVE_MAX = {1: F.adaptive_max_pool1d, 2: F.adaptive_max_pool2d, 3: F.adaptive_max_pool3d}
LINEAR_MODES = {1: "linear", 2: "bilinear", 3: "trilinear"}


def check_or_raises(op, images, **kwargs):
    """The nested op matches every element, or raises like torch does on some element."""
    try:
        for image in images:
            op(image)
    except RuntimeError:
        with pytest.raises((ValueError, RuntimeError)):
            op(NestedTensor(images))
        return None
    return check_op(op, [images], **kwargs)


def window_arguments(data, spatial: int, dilation: bool) -> dict:
    kernel = data.draw(st.lists(st.integers(1, 3), min_size=spatial, max_size=spatial))
    arguments = {
        "kernel_size": kernel,
        "stride": data.draw(st.sampled_from([None, 1, 2])),
        "padding": data.draw(st.integers(0, min(kernel) // 2)),
        "ceil_mode": data.draw(st.booleans()),
    }
    if dilation and not arguments["padding"]:  # dilated windows over padding may miss every value (torch then
        arguments["dilation"] = data.draw(st.integers(1, 2))  # reports an index outside the input)
    return arguments


@given(st.integers(1, 3), st.data())
def test_max_pool_and_its_indices_match_every_element(spatial, data):
    images = data.draw(ragged_images(spatial=spatial))
    arguments = window_arguments(data, spatial, dilation=True)
    pool = MAX_POOL[spatial]
    check_or_raises(lambda x: pool(x, **arguments), images)
    try:
        expected = [pool(image, **arguments, return_indices=True) for image in images]
    except RuntimeError:
        return
    with forbid_slow_paths():
        values, indices = pool(NestedTensor(images), **arguments, return_indices=True)
    for got, index, (want, want_index) in zip(values.unbind(), indices.unbind(), expected):
        assert torch.equal(got, want) and torch.equal(index, want_index)


@given(st.integers(1, 3), st.data())
def test_avg_pool_matches_every_element(spatial, data):
    images = data.draw(ragged_images(spatial=spatial))
    arguments = window_arguments(data, spatial, dilation=False)
    arguments["count_include_pad"] = data.draw(st.booleans())
    if spatial > 1:
        arguments["divisor_override"] = data.draw(st.sampled_from([None, 3]))
    pool = AVG_POOL[spatial]
    check_or_raises(lambda x: pool(x, **arguments), images, atol=1e-5, rtol=1e-5)


def test_pool_modules_on_batched_elements():
    images = [torch.randn(2, 3, 6, 5), torch.randn(1, 3, 4, 7)]  # (N, C, H, W), N ragged
    check_op(nn.MaxPool2d(3, stride=2, padding=1), [images])
    check_op(nn.AvgPool2d(2, ceil_mode=True, count_include_pad=False), [images], atol=1e-6)


def test_gradcheck_in_float64():
    images = NestedTensor([torch.randn(2, 5, 3), torch.randn(2, 2, 4)], dtype=torch.float64)
    values = images._values.clone().requires_grad_()

    def max_pool(values):
        return F.max_pool2d(images._rewrap(values), 2, stride=1, padding=1)._values

    def avg_pool(values):
        return F.avg_pool2d(images._rewrap(values), 3, stride=2, padding=1, ceil_mode=True)._values

    def adaptive(values):
        return F.adaptive_max_pool2d(images._rewrap(values), (2, 3))

    def resize(values):
        return F.interpolate(images._rewrap(values), scale_factor=1.5, mode="bicubic")._values

    for function in (max_pool, avg_pool, adaptive, resize):
        assert torch.autograd.gradcheck(function, (values,))


@given(st.integers(1, 3), st.data())
def test_adaptive_pools_match_every_element(spatial, data):
    images = data.draw(ragged_images(spatial=spatial, batched=False))
    size = tuple(data.draw(st.lists(st.integers(1, 3), min_size=spatial, max_size=spatial)))
    result = check_op(lambda x: ADAPTIVE_AVG[spatial](x, size), [images], packed=False, dense=True, atol=1e-6)
    assert result.shape == (len(images), images[0].size(0), *size)
    check_op(lambda x: ADAPTIVE_MAX[spatial](x, size), [images], packed=False, dense=True)
    values, indices = ADAPTIVE_MAX[spatial](NestedTensor(images), size, return_indices=True)
    for image, value, index in zip(images, values, indices):
        want, want_index = ADAPTIVE_MAX[spatial](image, size, return_indices=True)
        assert torch.equal(value, want) and torch.equal(index, want_index)


@given(st.integers(1, 3), st.data())
def test_global_average_pooling_runs_packed(spatial, data):
    images = data.draw(ragged_images(spatial=spatial, batched=False))
    pool = ADAPTIVE_AVG[spatial]
    result = check_op(lambda x: pool(x, 1), [images], dense=True, atol=1e-5, rtol=1e-5)
    assert result.shape == (len(images), images[0].size(0), *(1,) * spatial)


def test_adaptive_pools_stay_nested_when_shapes_differ():
    batched = [torch.randn(2, 3, 5, 4), torch.randn(1, 3, 3, 3)]  # N differs
    check_op(lambda x: F.adaptive_avg_pool2d(x, 2), [batched], packed=False, dense=False, atol=1e-6)
    keep_width = [torch.randn(3, 5, 4), torch.randn(3, 3, 6)]
    check_op(lambda x: F.adaptive_max_pool2d(x, (2, None)), [keep_width], packed=False, dense=False)


@pytest.mark.parametrize("spatial", [1, 2, 3])
@pytest.mark.parametrize("mode", ["nearest", "nearest-exact", "linear", "area"])
def test_interpolate_matches_every_element(spatial, mode):
    images = [torch.randn(2, *((4, 3, 2)[:spatial])), torch.randn(2, *((3, 5, 3)[:spatial]))]
    mode = LINEAR_MODES[spatial] if mode == "linear" else mode
    options = {"mode": mode} | ({"align_corners": True} if mode in LINEAR_MODES.values() else {})

    def resize(x, **kwargs):
        batched = x if isinstance(x, NestedTensor) else x[None]
        output = F.interpolate(batched, **kwargs, **options)
        return output if isinstance(x, NestedTensor) else output[0]

    packed = mode.startswith("nearest")  # nearest modes gather packed rows; the others run per element
    scaled = check_op(lambda x: resize(x, scale_factor=2), [images], packed=packed, dense=False, atol=1e-6)
    assert scaled.shape[2:] == tuple(2 * max(s) for s in zip(*(i.shape[1:] for i in images)))
    check_op(lambda x: resize(x, size=(6, 5, 4)[:spatial]), [images], packed=packed, dense=True, atol=1e-6)


@given(
    st.integers(1, 3),
    st.sampled_from(["nearest", "nearest-exact"]),
    st.floats(0.3, 3.0),
    st.booleans(),
    st.data(),
)
def test_nearest_resizing_copies_the_pixels_torch_picks(spatial, mode, factor, recompute, data):
    images = data.draw(ragged_images(spatial=spatial, batched=False))
    assume(all(int(s * factor) >= 1 for image in images for s in image.shape[1:]))
    options = {"mode": mode, "scale_factor": factor, "recompute_scale_factor": recompute}
    with forbid_slow_paths():
        output = F.interpolate(NestedTensor(images), **options)
    for got, image in zip(output.unbind(), images):
        assert torch.equal(got, F.interpolate(image[None], **options)[0])


def test_bicubic_with_antialias():
    images = [torch.randn(3, 8, 9), torch.randn(3, 6, 12)]

    def resize(x):
        batched = x if isinstance(x, NestedTensor) else x[None]
        output = F.interpolate(batched, scale_factor=0.5, mode="bicubic", antialias=True)
        return output if isinstance(x, NestedTensor) else output[0]

    check_op(resize, [images], packed=False, atol=1e-5)


def test_constant_pad_of_static_trailing_dims_runs_on_the_packed_values():
    sequences = [torch.randn(4, 3), torch.randn(2, 3)]
    result = check_op(lambda x: F.pad(x, (1, 2), value=-1.0), [sequences])
    assert result._values.shape == (6, 6)
    check_op(lambda x: F.pad(x, (-1, 1)), [sequences])


@pytest.mark.parametrize("mode", ["constant", "reflect", "replicate", "circular"])
def test_pad_of_ragged_dims_runs_per_element(mode):
    images = [torch.randn(2, 4, 5), torch.randn(2, 3, 3)]
    check_op(lambda x: F.pad(x, (1, 2, 2, 1), mode=mode), [images], packed=False)


def test_bad_inputs_are_named():
    images = NestedTensor([torch.randn(2, 5, 5), torch.randn(2, 4, 4)])
    with pytest.raises(ValueError, match="at most half of the kernel size"):
        F.max_pool2d(images, 2, padding=2)
    with pytest.raises(ValueError, match="too small"):
        F.avg_pool2d(images, 5)
    with pytest.raises(ValueError, match=r"expects elements of 2 dims \(C, \*spatial\)"):
        F.max_pool1d(NestedTensor([torch.randn(5), torch.randn(3)]), 2)
