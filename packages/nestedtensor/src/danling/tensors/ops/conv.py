r"""
Convolutions and transposed convolutions of any rank on ragged sequences, images and volumes.

``F.conv1d/2d/3d`` and ``F.conv_transpose1d/2d/3d`` (hence ``nn.Conv*`` and ``nn.ConvTranspose*``)
take a NestedTensor whose elements are ``(C, *spatial)`` (or batched ``(N, C, *spatial)``) with a
channel count shared by all elements, and give what the op gives on every element alone: stride,
padding (ints, per-dim tuples, ``'valid'`` and ``'same'``), dilation, groups and output padding
included, with gradients for input, weight and bias. One rank-generic implementation serves all
six ops: the images are laid on a few dense canvases and the dense op runs once per canvas (see
``_canvas.py`` for the layout and the measurements behind it). The output is packed channels-last,
``(pixels, C_out)``, so a following pointwise op or ``Linear`` over channels runs on it directly.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial

import torch
from torch import Tensor

from .._layout import NestedLayout
from ..nested_tensor import NestedTensor
from ._canvas import Images, Window, canvas_plan, lift_1d, run_on_canvases, with_static_channels, wrap_output
from ._packed import is_nested, packed_like
from ._registry import implements

IntOrTuple = int | Sequence[int]


def expand_argument(value: IntOrTuple, spatial: int, name: str, op: str) -> tuple[int, ...]:
    r"""
    An int or per-dim sequence argument as one int per spatial dim.

    Examples:
        >>> expand_argument(2, 3, "stride", "conv3d")
        (2, 2, 2)
        >>> expand_argument((1, 2), 3, "stride", "conv3d")
        Traceback (most recent call last):
        ...
        ValueError: conv3d expects stride to be an int or 3 ints, got (1, 2)
    """
    if isinstance(value, int):
        return (value,) * spatial
    values = tuple(int(v) for v in value)
    if len(values) == 1:
        return values * spatial
    if len(values) != spatial:
        raise ValueError(f"{op} expects {name} to be an int or {spatial} ints, got {value}")
    return values


def forward_windows(
    kernel: Sequence[int],
    stride: IntOrTuple,
    padding: IntOrTuple | str,
    dilation: IntOrTuple,
    op: str,
) -> tuple[Window, ...]:
    r"""
    Windows of a forward convolution; ``padding='same'`` pads ``dilation * (kernel - 1)``, the extra one after.

    Examples:
        >>> [(w.pad_before, w.pad_after) for w in forward_windows((4, 3), 1, "same", 1, "conv2d")]
        [(1, 2), (1, 1)]
    """
    spatial = len(kernel)
    strides = expand_argument(stride, spatial, "stride", op)
    dilations = expand_argument(dilation, spatial, "dilation", op)
    if isinstance(padding, str):
        if padding not in ("same", "valid"):
            raise ValueError(f"{op} padding must be 'same', 'valid' or ints, got {padding!r}")
        if padding == "same" and any(s != 1 for s in strides):
            raise ValueError(f"{op} padding='same' is not supported for strided convolutions, got stride {strides}")
        totals = [d * (k - 1) if padding == "same" else 0 for k, d in zip(kernel, dilations)]
        pads = [(total // 2, total - total // 2) for total in totals]
    else:
        pads = [(p, p) for p in expand_argument(padding, spatial, "padding", op)]
    return tuple(Window(k, s, d, before, after) for k, s, d, (before, after) in zip(kernel, strides, dilations, pads))


def input_channels(input: object, spatial: int, op: str) -> int:
    """Channel count of a NestedTensor input of a window op, checking its type and element rank (0 if empty)."""
    if not is_nested(input):
        raise TypeError(f"{op} on NestedTensors takes the NestedTensor as input, got {type(input).__name__} input")
    if not len(input):
        return 0
    return input._layout.element_shapes[0][Images.of(input, spatial, op).channel_dim]


def _check_weight(weight: Tensor, spatial: int, op: str) -> None:
    if is_nested(weight) or weight.dim() != spatial + 2:
        raise ValueError(f"{op} expects a dense weight of {spatial + 2} dims, got {tuple(weight.shape)}")


def _empty_output(input: NestedTensor, images: Images, channels: int) -> NestedTensor:
    rank = input._layout.rank
    permutation = (*(d for d in range(rank) if d != images.channel_dim), images.channel_dim)
    layout = NestedLayout((), permutation, rank - 1, (channels,))
    return packed_like(input, input._values.new_zeros(0, channels), layout)


def run_windows(
    input: NestedTensor,
    windows: tuple[Window, ...],
    dense_op: Callable[[Tensor], Tensor | tuple[Tensor, ...]],
    channels_out: int,
    op: str,
    fill: float = 0.0,
) -> tuple[NestedTensor, ...]:
    r"""
    Run a dense window op (built for ``(1, C, *spatial)`` input, no padding) over every image of ``input``.

    Returns one NestedTensor per output of ``dense_op``, each element ``([N,] C', *output sizes)``.
    """
    images = Images.of(input, len(windows), op)
    if not len(input):
        return (_empty_output(input, images, channels_out),)
    input = with_static_channels(input, images)
    plan = canvas_plan(input, images, windows)
    return tuple(wrap_output(input, plan, rows) for rows in run_on_canvases(input, plan, dense_op, fill))


def convolution(
    input: NestedTensor,
    weight: Tensor,
    bias: Tensor | None = None,
    stride: IntOrTuple = 1,
    padding: IntOrTuple | str = 0,
    dilation: IntOrTuple = 1,
    groups: int = 1,
    *,
    spatial: int,
) -> NestedTensor:
    r"""
    ``F.conv{1,2,3}d`` on every element of a NestedTensor, computed on canvases (no per-element loop).

    Examples:
        >>> import torch.nn.functional as F
        >>> images = NestedTensor([torch.randn(3, 5, 7), torch.randn(3, 8, 4)])
        >>> weight = torch.randn(6, 3, 3, 3)
        >>> output = F.conv2d(images, weight, padding=1, stride=2)
        >>> [tuple(element.shape) for element in output.unbind()]
        [(6, 3, 4), (6, 4, 2)]
        >>> torch.allclose(output[1], F.conv2d(images[1], weight, padding=1, stride=2), atol=1e-5)
        True
        >>> sequences = NestedTensor([torch.randn(10, 4), torch.randn(6, 4)]).transpose(1, 2)
        >>> F.conv1d(sequences, torch.randn(8, 4, 3), padding="same").shape
        torch.Size([2, 8, 10])
    """
    op = f"conv{spatial}d"
    channels = input_channels(input, spatial, op)
    _check_weight(weight, spatial, op)
    if len(input) and channels != weight.size(1) * groups:
        raise ValueError(
            f"{op} with weight {tuple(weight.shape)} and groups={groups} expects {weight.size(1) * groups} "
            f"input channels, got elements of shapes {input._layout.element_shapes}"
        )
    windows = forward_windows(tuple(weight.shape[2:]), stride, padding, dilation, op)
    dense = getattr(torch, f"conv{max(spatial, 2)}d")
    kernel = weight.unsqueeze(2) if spatial == 1 else weight
    strides = lift_1d([w.stride for w in windows])
    dilations = lift_1d([w.dilation for w in windows])
    return run_windows(
        input, windows, lambda canvas: dense(canvas, kernel, bias, strides, 0, dilations, groups), weight.size(0), op
    )[0]


def conv_transpose(
    input: NestedTensor,
    weight: Tensor,
    bias: Tensor | None = None,
    stride: IntOrTuple = 1,
    padding: IntOrTuple = 0,
    output_padding: IntOrTuple = 0,
    groups: int = 1,
    dilation: IntOrTuple = 1,
    *,
    spatial: int,
) -> NestedTensor:
    r"""
    ``F.conv_transpose{1,2,3}d`` on every element of a NestedTensor, computed on canvases.

    Examples:
        >>> import torch.nn.functional as F
        >>> features = NestedTensor([torch.randn(4, 3, 5), torch.randn(4, 2, 2)])
        >>> weight = torch.randn(4, 2, 3, 3)
        >>> output = F.conv_transpose2d(features, weight, stride=2, padding=1, output_padding=1)
        >>> [tuple(element.shape) for element in output.unbind()]
        [(2, 6, 10), (2, 4, 4)]
        >>> expected = F.conv_transpose2d(features[0], weight, stride=2, padding=1, output_padding=1)
        >>> torch.allclose(output[0], expected, atol=1e-5)
        True
    """
    op = f"conv_transpose{spatial}d"
    channels = input_channels(input, spatial, op)
    _check_weight(weight, spatial, op)
    if len(input) and channels != weight.size(0):
        raise ValueError(
            f"{op} with weight {tuple(weight.shape)} expects {weight.size(0)} input channels, "
            f"got elements of shapes {input._layout.element_shapes}"
        )
    strides = expand_argument(stride, spatial, "stride", op)
    pads = expand_argument(padding, spatial, "padding", op)
    extra = expand_argument(output_padding, spatial, "output_padding", op)
    dilations = expand_argument(dilation, spatial, "dilation", op)
    for s, d, e in zip(strides, dilations, extra):
        if e >= max(s, d):
            raise ValueError(f"{op} output_padding must be smaller than stride or dilation, got {extra}")
    windows = tuple(
        Window(k, s, d, p, p, transposed=True, output_padding=e)
        for k, s, d, p, e in zip(weight.shape[2:], strides, dilations, pads, extra)
    )
    dense = getattr(torch, f"conv_transpose{max(spatial, 2)}d")
    kernel = weight.unsqueeze(2) if spatial == 1 else weight
    canvas_strides, canvas_dilations = lift_1d(strides), lift_1d(dilations)
    return run_windows(
        input,
        windows,
        lambda canvas: dense(canvas, kernel, bias, canvas_strides, 0, 0, groups, canvas_dilations),
        weight.size(1) * groups,
        op,
    )[0]


for _spatial in (1, 2, 3):
    implements(getattr(torch, f"conv{_spatial}d"))(partial(convolution, spatial=_spatial))
    implements(getattr(torch, f"conv_transpose{_spatial}d"))(partial(conv_transpose, spatial=_spatial))

__all__ = ["conv_transpose", "convolution", "expand_argument", "forward_windows", "input_channels", "run_windows"]
