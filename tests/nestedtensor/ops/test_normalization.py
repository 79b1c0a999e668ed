import copy
from functools import partial
from math import inf

import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, given
from hypothesis import strategies as st
from torch import nn

from danling.tensors import NestedTensor, forbid_slow_paths

from ..harness import check_op
from .test_nn_functional import channel_batches, feature_batches, nested_gradcheck

TOLERANCE = {"atol": 1e-5, "rtol": 1e-4}


def per_sample(op):
    """The reference of a batch-of-samples op (``group_norm``, ``instance_norm``) on one element."""
    return lambda x: op(x[None])[0]


# ---------------------------------------------------------------------------- layer_norm, rms_norm

TRAILING_NORMS = {
    "layer_norm": lambda shape, weight: lambda x: F.layer_norm(x, shape, weight, None if weight is None else -weight),
    "rms_norm": lambda shape, weight: lambda x: F.rms_norm(x, shape, weight),
}


@given(feature_batches(max_lead=3), st.sampled_from(sorted(TRAILING_NORMS)), st.booleans())
def test_trailing_norms_over_the_feature_dim(elements, name, affine):
    op = TRAILING_NORMS[name]((4,), torch.rand(4) + 0.5 if affine else None)
    check_op(op, [elements], dense=False, **TOLERANCE)


@pytest.mark.parametrize("name", sorted(TRAILING_NORMS))
def test_trailing_norms_over_two_static_dims(name):
    elements = [torch.randn(5, 2, 3), torch.randn(1, 2, 3)]
    check_op(TRAILING_NORMS[name]((2, 3), torch.rand(2, 3)), [elements], dense=False, **TOLERANCE)


@pytest.mark.parametrize("name", sorted(TRAILING_NORMS))
def test_trailing_norms_over_a_ragged_dim(name):
    ragged = [torch.randn(3, 2), torch.randn(3, 5)]  # the normalized last dim differs per element
    for element in ragged:
        op = TRAILING_NORMS[name]((element.shape[-1],), torch.ones(element.shape[-1]))
        with pytest.raises(RuntimeError):
            op(NestedTensor(ragged))
    uniform = [torch.randn(4), torch.randn(4)]  # one shape: the values are viewed as a (2, 4) batch
    check_op(TRAILING_NORMS[name]((4,), torch.rand(4)), [uniform], dense=False, **TOLERANCE)


def test_layer_norm_module_gradients_equal_the_packed_op():
    layer = nn.LayerNorm(4)
    nn.init.normal_(layer.weight)
    elements = [torch.randn(3, 4), torch.randn(6, 4)]
    upstream = torch.randn(9, 4)
    with forbid_slow_paths():
        (layer(NestedTensor(elements))._values * upstream).sum().backward()
    nested_grads = [p.grad.clone() for p in layer.parameters()]
    layer.zero_grad()
    (layer(torch.cat(elements)) * upstream).sum().backward()
    for nested_grad, parameter in zip(nested_grads, layer.parameters()):
        torch.testing.assert_close(nested_grad, parameter.grad)


def test_layer_norm_keeps_batch_first_and_autocast_dtype():
    nested = NestedTensor([torch.randn(3, 4), torch.randn(2, 4)], batch_first=False)
    result = F.layer_norm(nested, (4,))
    assert not result.batch_first and result.shape == nested.shape
    half = F.layer_norm(nested.to(torch.bfloat16), (4,))
    assert half.dtype == torch.bfloat16


# ---------------------------------------------------------------------------- group_norm, instance_norm


@given(channel_batches(channels=6, rank=3), st.sampled_from([1, 2, 6]))
def test_group_norm_matches_every_element(elements, groups):
    assume(min(e.numel() for e in elements) > groups)
    weight, bias = torch.rand(6), torch.randn(6)
    op = per_sample(lambda x: F.group_norm(x, groups, weight, bias))
    check_op(lambda x: F.group_norm(x, groups, weight, bias), [elements], op, dense=False, **TOLERANCE)


def test_group_norm_module_and_its_parameter_gradients():
    layer = nn.GroupNorm(2, 4)
    nn.init.normal_(layer.weight)
    elements = [torch.randn(4, 5), torch.randn(4, 2), torch.randn(4, 7)]
    check_op(layer, [elements], per_sample(layer), dense=False, **TOLERANCE)
    layer.zero_grad()
    layer(NestedTensor(elements)).sum().backward()
    nested_grads = [p.grad.clone() for p in layer.parameters()]
    layer.zero_grad()
    sum(layer(e[None]).sum() for e in elements).backward()
    for nested_grad, parameter in zip(nested_grads, layer.parameters()):
        torch.testing.assert_close(nested_grad, parameter.grad, **TOLERANCE)


def test_group_norm_rejects_channels_not_divisible_by_groups():
    with pytest.raises(ValueError, match=r"4 channels .* num_groups=3"):
        F.group_norm(NestedTensor([torch.randn(4, 2), torch.randn(4, 3)]), 3)


def test_single_values_per_group_are_rejected_like_the_dense_ops():
    nested = NestedTensor([torch.randn(4, 3), torch.randn(4, 1)])
    with pytest.raises(ValueError, match=r"more than 1 value per group .* \(4, 1\) with 4 groups"):
        F.group_norm(nested, 4)
    with pytest.raises(ValueError, match="more than 1 value per group"):
        F.instance_norm(nested)
    F.instance_norm(nested, torch.zeros(4), torch.ones(4), use_input_stats=False)  # no statistics needed
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        F.batch_norm(NestedTensor([torch.randn(2, 1)]), None, None, training=True)


def test_group_norm_on_uniform_and_on_ragged_channels():
    uniform = [torch.randn(4, 3), torch.randn(4, 3)]
    check_op(lambda x: F.group_norm(x, 2), [uniform], per_sample(lambda x: F.group_norm(x, 2)), **TOLERANCE)
    ragged_channels = [torch.randn(2, 3), torch.randn(4, 3)]
    check_op(lambda x: F.group_norm(x, 2), [ragged_channels], per_sample(lambda x: F.group_norm(x, 2)), packed=False)


@given(channel_batches(channels=3, rank=3))
def test_instance_norm_matches_every_element(elements):
    assume(min(e[0].numel() for e in elements) > 1)
    weight, bias = torch.rand(3), torch.randn(3)
    op = per_sample(lambda x: F.instance_norm(x, weight=weight, bias=bias))
    check_op(lambda x: F.instance_norm(x, weight=weight, bias=bias), [elements], op, dense=False, **TOLERANCE)


def test_instance_norm_running_statistics_average_the_element_updates():
    elements = [torch.randn(3, 5) * 2 + 1, torch.randn(3, 2), torch.randn(3, 9) - 1]
    layer = nn.InstanceNorm1d(3, track_running_stats=True, momentum=0.3)
    with forbid_slow_paths():
        layer(NestedTensor(elements))
    means, variances = [], []
    for element in elements:
        reference = nn.InstanceNorm1d(3, track_running_stats=True, momentum=0.3)
        reference(element[None])
        means.append(reference.running_mean)
        variances.append(reference.running_var)
    torch.testing.assert_close(layer.running_mean, torch.stack(means).mean(0))
    torch.testing.assert_close(layer.running_var, torch.stack(variances).mean(0))
    layer.eval()
    # The reference gets its own buffers: aten's instance_norm (torch < 2.7) writes them back even in
    # eval mode, which would bump the version of the buffers the nested result saved for backward.
    check_op(layer, [elements], per_sample(copy.deepcopy(layer)), dense=False, **TOLERANCE)


@given(channel_batches(channels=5, rank=3))
def test_local_response_norm_matches_every_element(elements):
    op = lambda x: F.local_response_norm(x, 3, alpha=0.1)  # noqa: E731
    check_op(op, [elements], per_sample(op), dense=False, **TOLERANCE)


def test_local_response_norm_on_channels_only_elements():
    vectors = [torch.rand(5, 1), torch.rand(5, 1)]  # one position: values are (B, C) rows
    op = lambda x: F.local_response_norm(x, 2)  # noqa: E731
    check_op(op, [[torch.rand(5, 2), torch.rand(5, 4)]], per_sample(op), dense=False, **TOLERANCE)
    check_op(op, [vectors], per_sample(op), dense=False, **TOLERANCE)


# ---------------------------------------------------------------------------- batch_norm


def concatenated_batch_norm(elements, *args, **kwargs):
    """Reference: batch_norm over all real positions (elements flattened and concatenated), split back."""
    channels = elements[0].shape[0]
    flat = torch.cat([e.reshape(channels, -1) for e in elements], dim=1)
    normalized = F.batch_norm(flat[None], *args, **kwargs)[0]
    pieces = normalized.split([e[0].numel() for e in elements], dim=1)
    return [piece.reshape(e.shape) for piece, e in zip(pieces, elements)]


@given(channel_batches(channels=3, rank=3))
def test_batch_norm_training_uses_statistics_of_all_real_positions(elements):
    assume(sum(e[0].numel() for e in elements) > 1)
    nested_stats = (torch.zeros(3), torch.ones(3))
    reference_stats = (torch.zeros(3), torch.ones(3))
    weight, bias = torch.rand(3), torch.randn(3)
    with forbid_slow_paths():
        result = F.batch_norm(NestedTensor(elements), *nested_stats, weight, bias, training=True)
    expected = concatenated_batch_norm(elements, *reference_stats, weight, bias, training=True)
    for got, want in zip(result.unbind(), expected):
        torch.testing.assert_close(got, want, **TOLERANCE)
    for got, want in zip(nested_stats, reference_stats):
        torch.testing.assert_close(got, want, **TOLERANCE)


def test_batch_norm_module_train_then_eval():
    layer = nn.BatchNorm1d(3)
    elements = [torch.randn(3, 4) + 2, torch.randn(3, 1), torch.randn(3, 6)]
    reference = nn.BatchNorm1d(3)
    result = layer(NestedTensor(elements))
    expected = concatenated_batch_norm(elements, reference.running_mean, reference.running_var, training=True)
    for got, want in zip(result.unbind(), expected):
        torch.testing.assert_close(got, want, **TOLERANCE)
    torch.testing.assert_close(layer.running_mean, reference.running_mean)
    layer.eval()
    # The reference gets its own buffers: aten's instance_norm (torch < 2.7) writes them back even in
    # eval mode, which would bump the version of the buffers the nested result saved for backward.
    check_op(layer, [elements], per_sample(copy.deepcopy(layer)), dense=False, **TOLERANCE)


def test_batch_norm_of_uniform_vectors_and_of_ragged_vectors():
    layer = nn.BatchNorm1d(4)
    vectors = [torch.randn(4) for _ in range(5)]
    result = layer(NestedTensor(vectors))
    torch.testing.assert_close(torch.stack(result.unbind()), nn.BatchNorm1d(4)(torch.stack(vectors)), **TOLERANCE)
    with pytest.raises(ValueError, match="channel dim"):
        F.batch_norm(NestedTensor([torch.randn(3), torch.randn(2)]), None, None, training=True)


def test_torch_batch_norm_and_instance_norm_take_the_aten_argument_order():
    elements = [torch.randn(2, 3), torch.randn(2, 5)]
    nested = NestedTensor(elements)
    weight, bias = torch.rand(2), torch.randn(2)
    via_torch = torch.batch_norm(nested, weight, bias, None, None, True, 0.1, 1e-5, False)
    torch.testing.assert_close(via_torch._values, F.batch_norm(nested, None, None, weight, bias, True)._values)
    via_torch = torch.instance_norm(nested, weight, bias, None, None, True, 0.1, 1e-5, False)
    torch.testing.assert_close(via_torch._values, F.instance_norm(nested, weight=weight, bias=bias)._values)


# ---------------------------------------------------------------------------- normalize


@given(feature_batches(max_lead=2), st.sampled_from([1.0, 2.0, 3.0, inf]), st.integers(-2, -1))
def test_normalize_along_static_and_ragged_dims(elements, p, dim):
    rank = elements[0].dim()
    element_dim = rank + dim if dim >= -rank else 0
    check_op(
        lambda x: F.normalize(x, p, dim=element_dim + 1),
        [elements],
        lambda x: F.normalize(x, p, dim=element_dim),
        dense=False,
        **TOLERANCE,
    )


def test_normalize_across_two_ragged_dims_and_zero_vectors():
    images = [torch.randn(3, 4), torch.randn(2, 5), torch.zeros(2, 2)]
    for dim in (1, 2):
        op, reference = partial(F.normalize, dim=dim), partial(F.normalize, dim=dim - 1)
        result = check_op(op, [images], reference)
        assert not result._values.isnan().any()
    nested = NestedTensor(images, requires_grad=True)
    F.normalize(nested, dim=1).sum().backward()
    assert torch.isfinite(nested.grad._values).all()


def test_normalize_with_p_zero_runs_per_element_and_rejects_the_batch_dim():
    elements = [torch.randn(3, 2), torch.randn(1, 2)]
    check_op(lambda x: F.normalize(x, 0.5, dim=1), [elements], lambda x: F.normalize(x, 0.5, dim=0), packed=False)
    with pytest.raises(ValueError, match="batch dimension"):
        F.normalize(NestedTensor(elements), dim=0)


# ---------------------------------------------------------------------------- autograd

GRADCHECKS = {
    "layer_norm": (lambda x, w, b: F.layer_norm(x, (3,), w, b), [(2, 3), (4, 3)], (torch.rand(3), torch.randn(3))),
    "rms_norm": (lambda x, w: F.rms_norm(x, (3,), w), [(2, 3), (4, 3)], (torch.rand(3),)),
    "group_norm": (lambda x, w, b: F.group_norm(x, 2, w, b), [(4, 3), (4, 2)], (torch.rand(4), torch.randn(4))),
    "instance_norm": (lambda x: F.instance_norm(x), [(2, 3), (2, 4)], ()),
    "batch_norm": (lambda x, w: F.batch_norm(x, None, None, w, training=True), [(2, 3), (2, 2)], (torch.rand(2),)),
    "local_response_norm": (lambda x: F.local_response_norm(x, 2, alpha=0.5), [(3, 2), (3, 1)], ()),
    "normalize_static": (lambda x: F.normalize(x, dim=-1), [(2, 3), (1, 3)], ()),
    "normalize_ragged": (lambda x: F.normalize(x, dim=1), [(2, 3), (4, 3)], ()),
    "normalize_ragged_inf": (lambda x: F.normalize(x, inf, dim=1), [(2, 3), (4, 3)], ()),
}


@pytest.mark.parametrize("name", sorted(GRADCHECKS))
def test_gradcheck(name):
    op, shapes, extra = GRADCHECKS[name]
    nested_gradcheck(op, shapes, *(t.double().requires_grad_() for t in extra))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu_without_host_syncs():
    elements = [torch.randn(4, 5, 3), torch.randn(4, 2, 3)]
    ops = [
        lambda x: F.layer_norm(x, (3,)),
        lambda x: F.rms_norm(x, (3,)),
        lambda x: F.group_norm(x, 2),
        lambda x: F.instance_norm(x),
        lambda x: F.batch_norm(x, None, None, training=True),
        lambda x: F.normalize(x, dim=2),
        lambda x: F.normalize(x, float("inf"), dim=2),
        lambda x: F.local_response_norm(x, 2),
    ]
    cpu = NestedTensor(elements)
    cuda = cpu.cuda()
    for op in ops:
        op(cuda)  # first calls copy the layout's index tensors to the device
    torch.cuda.set_sync_debug_mode("error")
    try:
        results = [op(cuda) for op in ops]
    finally:
        torch.cuda.set_sync_debug_mode("default")
    for op, result in zip(ops, results):
        torch.testing.assert_close(result._values.cpu(), op(cpu)._values, **TOLERANCE)
