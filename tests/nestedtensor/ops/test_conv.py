import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st
from torch import nn
from torch.nn import functional as F

from danling.tensors import NestedTensor, forbid_slow_paths

from ..harness import check_op
from ..strategies import ragged_images

CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
CONV_TRANSPOSE = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


def check_or_raises(op, images, **kwargs):
    """The nested op matches every element, or raises like torch does on some element."""
    try:
        empty = any(op(image).numel() == 0 for image in images)
    except RuntimeError:
        with pytest.raises((ValueError, RuntimeError)):
            op(NestedTensor(images))
        return None
    assume(not empty)  # grouped transposed convolutions give empty outputs where the others raise; we raise
    return check_op(op, [images], atol=1e-4, rtol=1e-4, **kwargs)


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel lengths")
@given(st.integers(1, 3), st.booleans(), st.data())
def test_convolution_matches_every_element(spatial, batched, data):
    images = data.draw(ragged_images(spatial=spatial, batched=batched))
    channels = images[0].size(int(batched))
    groups = data.draw(st.sampled_from([g for g in (1, 2) if channels % g == 0]))
    kernel = tuple(data.draw(st.lists(st.integers(1, 3), min_size=spatial, max_size=spatial)))
    stride = data.draw(st.integers(1, 2))
    dilation = data.draw(st.integers(1, 2))
    padding = data.draw(st.sampled_from([0, 1, 2, "valid"] + (["same"] if stride == 1 else [])))
    weight = torch.randn(2 * groups, channels // groups, *kernel)
    bias = data.draw(st.sampled_from([None, torch.randn(2 * groups)]))
    conv = CONV[spatial]
    result = check_or_raises(lambda x: conv(x, weight, bias, stride, padding, dilation, groups), images)
    if result is not None:
        assert result._values.shape[1:] == (2 * groups,), "outputs are packed channels-last"


@given(st.integers(1, 3), st.booleans(), st.data())
def test_transposed_convolution_matches_every_element(spatial, batched, data):
    images = data.draw(ragged_images(spatial=spatial, batched=batched))
    channels = images[0].size(int(batched))
    groups = data.draw(st.sampled_from([g for g in (1, 2) if channels % g == 0]))
    kernel = tuple(data.draw(st.lists(st.integers(1, 3), min_size=spatial, max_size=spatial)))
    stride, dilation = data.draw(st.integers(1, 3)), data.draw(st.integers(1, 2))
    padding = data.draw(st.integers(0, 2))
    output_padding = data.draw(st.integers(0, max(stride, dilation) - 1))
    weight = torch.randn(channels, 3, *kernel)
    bias = torch.randn(3 * groups)
    convt = CONV_TRANSPOSE[spatial]
    check_or_raises(lambda x: convt(x, weight, bias, stride, padding, output_padding, groups, dilation), images)


@pytest.mark.parametrize("transposed", [False, True])
def test_weight_and_bias_gradients_match_a_loop(transposed):
    images = [torch.randn(3, 5, 7), torch.randn(3, 8, 4), torch.randn(3, 6, 6)]
    layer = (nn.ConvTranspose2d if transposed else nn.Conv2d)(3, 4, 3, stride=2, padding=1)
    reference = (nn.ConvTranspose2d if transposed else nn.Conv2d)(3, 4, 3, stride=2, padding=1)
    reference.load_state_dict(layer.state_dict())
    with forbid_slow_paths():
        output = layer(NestedTensor(images))
    weights = [torch.randn(o.shape) for o in output.unbind()]
    sum((o * w).sum() for o, w in zip(output.unbind(), weights)).backward()
    sum((reference(i) * w).sum() for i, w in zip(images, weights)).backward()
    torch.testing.assert_close(layer.weight.grad, reference.weight.grad, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(layer.bias.grad, reference.bias.grad, atol=1e-4, rtol=1e-4)


def test_gradcheck_in_float64():
    images = NestedTensor([torch.randn(2, 4, 3), torch.randn(2, 2, 5)], dtype=torch.float64, requires_grad=True)
    weight = torch.randn(3, 2, 2, 2, dtype=torch.float64, requires_grad=True)
    weight_t = torch.randn(2, 3, 2, 2, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(3, dtype=torch.float64, requires_grad=True)

    def convolve(values, weight, bias):
        nested = images._rewrap(values)
        return F.conv2d(nested, weight, bias, padding=1, dilation=(1, 2))._values

    def convolve_transposed(values, weight):
        nested = images._rewrap(values)
        return F.conv_transpose2d(nested, weight, stride=2, padding=1, output_padding=1)._values

    assert torch.autograd.gradcheck(convolve, (images._values, weight, bias))
    assert torch.autograd.gradcheck(convolve_transposed, (images._values, weight_t))


def test_sequences_in_the_usual_layout_run_packed_and_keep_channels_last():
    sequences = [torch.randn(length, 6) for length in (9, 2, 5)]  # (L, C), as a Linear would produce them
    nested = NestedTensor(sequences).transpose(1, 2)
    weight = torch.randn(4, 6, 3)
    with forbid_slow_paths():
        output = F.conv1d(nested, weight, padding=1)
    assert output._values.shape == (16, 4)
    for element, sequence in zip(output.unbind(), sequences):
        torch.testing.assert_close(element, F.conv1d(sequence.t(), weight, padding=1), atol=1e-5, rtol=1e-5)


def test_uniform_and_statically_sized_batches():
    uniform = [torch.randn(2, 4, 4) for _ in range(3)]
    check_op(lambda x: F.conv2d(x, torch.ones(3, 2, 3, 3), padding=1), [uniform], atol=1e-4)
    fixed_height = [torch.randn(2, 4, width) for width in (3, 6, 5)]
    check_op(lambda x: F.conv2d(x, torch.ones(3, 2, 2, 2), stride=2), [fixed_height], atol=1e-4)


def test_padding_modes_of_conv_modules():
    images = [torch.randn(2, 5, 6), torch.randn(2, 3, 4)]
    for mode in ("reflect", "replicate", "circular"):
        layer = nn.Conv2d(2, 3, 3, padding=1, padding_mode=mode)
        check_op(layer, [images], packed=False, atol=1e-5)


def test_empty_batch():
    empty = NestedTensor([torch.randn(2, 3)])[:0]
    output = F.conv1d(empty, torch.randn(4, 2, 3))
    assert len(output) == 0 and output._values.shape == (0, 4)


def test_bad_inputs_are_named():
    images = NestedTensor([torch.randn(2, 5, 5), torch.randn(2, 4, 4)])
    with pytest.raises(ValueError, match="expects 3 input channels"):
        F.conv2d(images, torch.randn(4, 3, 3, 3))
    with pytest.raises(ValueError, match="one channel count"):
        F.conv2d(NestedTensor([torch.randn(2, 5, 5), torch.randn(3, 5, 5)]), torch.randn(4, 2, 3, 3))
    with pytest.raises(ValueError, match=r"expects elements of 4 dims \(C, \*spatial\)"):
        F.conv3d(images, torch.randn(4, 2, 3, 3, 3))
    with pytest.raises(ValueError, match="too small"):
        F.conv2d(images, torch.randn(4, 2, 5, 5))
    with pytest.raises(ValueError, match="not supported for strided"):
        F.conv2d(images, torch.randn(4, 2, 3, 3), stride=2, padding="same")
    with pytest.raises(ValueError, match="stride to be an int or 2 ints"):
        F.conv2d(images, torch.randn(4, 2, 3, 3), stride=(1, 1, 1))
    with pytest.raises(TypeError, match="takes the NestedTensor as input"):
        F.conv1d(torch.randn(2, 5), NestedTensor([torch.randn(3, 2, 1)]))
    with pytest.raises(ValueError, match="output_padding must be smaller"):
        F.conv_transpose2d(images, torch.randn(2, 4, 3, 3), output_padding=1)
