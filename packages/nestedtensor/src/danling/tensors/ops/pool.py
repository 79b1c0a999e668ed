r"""
Pooling, interpolation and padding of ragged sequences, images and volumes.

Every op gives what it gives on each element alone; elements are ``(C, *spatial)`` (or batched
``(N, C, *spatial)``) with one channel count.

- ``max_pool{1,2,3}d`` (indices included) and ``avg_pool{1,2,3}d`` run on canvases like the
  convolutions (``_canvas.py``): max pooling fills the gaps between images with ``-inf``; average
  pooling sums over full windows and divides by each window's own divisor (``count_include_pad``,
  ``ceil_mode`` and ``divisor_override`` as torch counts them).
- ``adaptive_{avg,max}_pool{1,2,3}d`` and ``interpolate`` sample each element by its own size, so
  no canvas holds them. Packed paths cover the common cases: global average pooling (``output_size``
  1) is one segment mean over the pixel rows, and ``nearest``/``nearest-exact`` resizing one gather
  whose index is computed as torch's kernels compute theirs. Other sizes and modes run per element
  (a documented slow path: one call per element on views of the packed buffer). The output size of
  these ops is set by the arguments, so when every result has the same shape (``output_size`` or
  ``size`` given, unbatched elements) they return a dense ``(B, C, *size)`` tensor, ready for a
  classifier head; otherwise a NestedTensor.
- ``F.pad`` pads static trailing dims on the packed values directly (constant mode); other modes,
  and pads of ragged dims, run per element.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from math import prod

import torch
from torch import Tensor
from torch.nn import functional as F

from .._layout import NestedLayout
from ..nested_tensor import NestedTensor
from ._canvas import (
    CanvasPlan,
    Images,
    Window,
    canvas_plan,
    lift_1d,
    pixel_coordinates,
    pixel_rows,
    ragged_grid,
    with_static_channels,
)
from ._packed import from_elements, is_nested, packed_like, split_elements
from ._registry import check_slow_path, implements
from .conv import expand_argument, input_channels, run_windows

IntOrTuple = int | Sequence[int]


def pool_windows(
    kernel_size: IntOrTuple,
    stride: IntOrTuple | None,
    padding: IntOrTuple,
    dilation: IntOrTuple,
    ceil_mode: bool,
    spatial: int,
    op: str,
) -> tuple[Window, ...]:
    r"""
    Windows of a pooling op; a missing stride means the kernel size, and padding may be at most half a kernel.

    Examples:
        >>> [w.stride for w in pool_windows(3, None, 1, 1, False, 2, "max_pool2d")]
        [3, 3]
        >>> pool_windows(2, None, 2, 1, False, 1, "max_pool1d")
        Traceback (most recent call last):
        ...
        ValueError: max_pool1d padding must be at most half of the kernel size, got padding (2,) for kernel (2,)
    """
    kernels = expand_argument(kernel_size, spatial, "kernel_size", op)
    strides = kernels if stride is None or stride == [] else expand_argument(stride, spatial, "stride", op)
    pads = expand_argument(padding, spatial, "padding", op)
    dilations = expand_argument(dilation, spatial, "dilation", op)
    if any(p > k // 2 for k, p in zip(kernels, pads)):
        raise ValueError(
            f"{op} padding must be at most half of the kernel size, got padding {pads} for kernel {kernels}"
        )
    return tuple(Window(k, s, d, p, p, ceil_mode) for k, s, p, d in zip(kernels, strides, pads, dilations))


def _check_nested(input: object, op: str) -> None:
    if not is_nested(input):
        raise TypeError(f"{op} on NestedTensors takes the NestedTensor as input, got {type(input).__name__}")


# ---------------------------------------------------------------------------- max and average pooling


def max_pool(
    input: NestedTensor,
    kernel_size: IntOrTuple,
    stride: IntOrTuple | None = None,
    padding: IntOrTuple = 0,
    dilation: IntOrTuple = 1,
    ceil_mode: bool = False,
    return_indices: bool = False,
    *,
    spatial: int,
    with_indices: bool = False,
) -> NestedTensor | tuple[NestedTensor, NestedTensor]:
    r"""
    ``F.max_pool{1,2,3}d`` on every element, on canvases; indices count positions within each element.

    Examples:
        >>> import torch.nn.functional as F
        >>> images = NestedTensor([torch.arange(20.0).view(1, 4, 5), torch.arange(9.0).view(1, 3, 3)])
        >>> pooled, indices = F.max_pool2d(images, 2, ceil_mode=True, return_indices=True)
        >>> pooled[1]
        tensor([[[4., 5.],
                 [7., 8.]]])
        >>> indices[1]
        tensor([[[4, 5],
                 [7, 8]]])
    """
    op = f"max_pool{spatial}d"
    channels = input_channels(input, spatial, op)
    windows = pool_windows(kernel_size, stride, padding, dilation, ceil_mode, spatial, op)
    indices = return_indices or with_indices
    dense = getattr(F, f"max_pool{max(spatial, 2)}d")
    kernels = lift_1d([w.kernel for w in windows])
    strides = lift_1d([w.stride for w in windows])
    dilations = lift_1d([w.dilation for w in windows])
    fill = float("-inf") if input.is_floating_point() else torch.iinfo(input.dtype).min

    def pool(canvas: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        return dense(canvas, kernels, strides, 0, dilations, return_indices=indices)

    outputs = run_windows(input, windows, pool, channels, op, fill)
    if not indices:
        return outputs[0]
    if not len(input):
        return outputs[0], outputs[0].long()
    values, canvas_indices = outputs
    plan = canvas_plan(input, Images.of(input, spatial, op), windows)
    return values, packed_like(canvas_indices, element_indices(plan, canvas_indices._values))


def element_indices(plan: CanvasPlan, canvas_indices: Tensor) -> Tensor:
    """Turn flat positions on a canvas ``(pixels, C)`` into flat positions within each output pixel's image."""
    image = plan.output_image
    shape = plan.canvas_shapes[plan.owner[image]]
    origin = plan.origins[image]
    sizes = plan.image_sizes[image]
    remaining, coordinates = canvas_indices, []
    for dim in reversed(range(shape.size(1))):
        extent = shape[:, dim : dim + 1]
        coordinates.append(remaining % extent)
        remaining = torch.div(remaining, extent, rounding_mode="floor")
    flat = torch.zeros_like(canvas_indices)
    for dim, coordinate in enumerate(reversed(coordinates)):
        flat = flat * sizes[:, dim : dim + 1] + (coordinate - origin[:, dim : dim + 1])
    return flat


def avg_pool(
    input: NestedTensor,
    kernel_size: IntOrTuple,
    stride: IntOrTuple | None = None,
    padding: IntOrTuple = 0,
    ceil_mode: bool = False,
    count_include_pad: bool = True,
    divisor_override: int | None = None,
    *,
    spatial: int,
) -> NestedTensor:
    r"""
    ``F.avg_pool{1,2,3}d`` on every element: window sums on canvases, each divided by its own divisor.

    Examples:
        >>> import torch.nn.functional as F
        >>> sequences = NestedTensor([torch.tensor([[1.0, 2.0, 3.0]]), torch.tensor([[4.0, 6.0]])])
        >>> F.avg_pool1d(sequences, 2, padding=1, count_include_pad=False)
        NestedTensor([
            [[1.0000, 2.5000]],
            [[4., 6.]]
        ])
    """
    op = f"avg_pool{spatial}d"
    channels = input_channels(input, spatial, op)
    windows = pool_windows(kernel_size, stride, padding, 1, ceil_mode, spatial, op)
    if divisor_override is not None and divisor_override == 0:
        raise ValueError(f"{op} divisor_override must be non-zero, got {divisor_override}")
    dense = getattr(F, f"avg_pool{max(spatial, 2)}d")
    kernels = tuple(w.kernel for w in windows)
    if spatial == 3 and len(input):  # like torch, 3-d average pooling wants every image at least a kernel large
        small = [size for size in Images.of(input, spatial, op).sizes if any(s < k for s, k in zip(size, kernels))]
        if small:
            raise ValueError(f"{op} got images of spatial size {small[0]}, smaller than the kernel {kernels}")
    canvas_kernels, strides = lift_1d(kernels), lift_1d([w.stride for w in windows])
    (sums,) = run_windows(input, windows, lambda canvas: dense(canvas, canvas_kernels, strides), channels, op)
    if not len(input):
        return sums
    plan = canvas_plan(input, Images.of(input, spatial, op), windows)
    return packed_like(sums, sums._values * _rescale(plan, count_include_pad, divisor_override, sums.dtype))


def _rescale(plan: CanvasPlan, count_include_pad: bool, divisor_override: int | None, dtype: torch.dtype) -> Tensor:
    """Per output pixel ``(pixels, 1)``: window size over the divisor torch would use for that window."""
    key = ("avg_pool_rescale", count_include_pad, divisor_override, dtype)
    factor = plan.memo.get(key)
    if factor is None:
        windows = plan.windows
        device = plan.output_coordinates.device
        kernel = torch.tensor([w.kernel for w in windows], device=device)
        if divisor_override is not None:
            divisor = torch.full((plan.output_coordinates.size(0),), float(divisor_override), device=device)
        else:
            stride = torch.tensor([w.stride for w in windows], device=device)
            pad = torch.tensor([w.pad_before for w in windows], device=device)
            sizes = plan.image_sizes[plan.output_image]
            start = plan.output_coordinates * stride - pad
            end = torch.minimum(start + kernel, sizes + pad)
            if not count_include_pad:
                start, end = start.clamp(min=0), torch.minimum(end, sizes)
            divisor = (end - start).prod(1).to(torch.float64)
        factor = (prod(w.kernel for w in windows) / divisor).to(dtype).unsqueeze(1)
        plan.memo[key] = factor
    return factor


# ---------------------------------------------------------------------------- per-element ops


def map_elements(input: NestedTensor, fn: Callable[[Tensor], object], op: str, dense: bool) -> object:
    """
    Run ``fn`` on every element (a documented slow path); results stack densely when ``dense`` and they can.

    Tuple results (values, indices) give a tuple of the same kind.
    """
    check_slow_path(op)
    results = [fn(element) for element in split_elements(input)]
    if results and isinstance(results[0], tuple):
        return tuple(_combine(list(parts), input, dense) for parts in zip(*results))
    return _combine(results, input, dense)


def _combine(results: list[Tensor], like: NestedTensor, dense: bool) -> Tensor:
    if dense and results and len({tuple(r.shape) for r in results}) == 1:
        return torch.stack(results)
    return from_elements(results, like=like)


def _fixed_size(output_size: object) -> bool:
    sizes = output_size if isinstance(output_size, (tuple, list)) else (output_size,)
    return all(s is not None for s in sizes)


def adaptive_avg_pool(input: NestedTensor, output_size: IntOrTuple, *, spatial: int) -> Tensor:
    r"""
    ``F.adaptive_avg_pool{1,2,3}d`` per element; dense when every result has the same shape.

    Global pooling (``output_size`` 1) of ``(C, *spatial)`` elements runs packed, as one segment mean
    over each element's pixels; other sizes run per element.

    Examples:
        >>> import torch.nn.functional as F
        >>> images = NestedTensor([torch.ones(2, 4, 6), torch.zeros(2, 3, 3)])
        >>> F.adaptive_avg_pool2d(images, 1)
        tensor([[[[1.]],
        <BLANKLINE>
                 [[1.]]],
        <BLANKLINE>
        <BLANKLINE>
                [[[0.]],
        <BLANKLINE>
                 [[0.]]]])
    """
    op = f"adaptive_avg_pool{spatial}d"
    input_channels(input, spatial, op)
    images = Images.of(input, spatial, op) if len(input) else None
    if (
        images is not None
        and not images.batched
        and set(expand_argument(output_size, spatial, "output_size", op)) == {1}
    ):
        return _global_average(with_static_channels(input, images), images)
    dense = getattr(F, op)
    return map_elements(input, lambda e: dense(e, output_size), op, _fixed_size(output_size))


def _global_average(input: NestedTensor, images: Images) -> Tensor:
    """Mean of every element's pixels, ``(B, C, 1, ...)``: one ``index_add`` over the packed pixel rows."""
    layout, device = input._layout, input._values.device
    rows = pixel_rows(input, images)
    owner = layout._cached(("pixel_images", images.batched), device, lambda d: pixel_coordinates(layout, images, d)[0])
    counts = layout._cached(
        ("pixel_counts", images.batched),
        device,
        lambda d: layout.to_device(torch.tensor([prod(s) for s in images.sizes]), d),
    )
    sums = rows.new_zeros(len(images.sizes), rows.size(1)).index_add_(0, owner, rows)
    means = sums / counts.unsqueeze(1).to(sums.dtype)
    return means.view(*means.shape, *(1,) * len(images.sizes[0]))


def adaptive_max_pool(
    input: NestedTensor, output_size: IntOrTuple, return_indices: bool = False, *, spatial: int, with_indices: bool
) -> object:
    r"""
    ``F.adaptive_max_pool{1,2,3}d`` per element; dense when every result has the same shape.

    Examples:
        >>> import torch.nn.functional as F
        >>> sequences = NestedTensor([torch.tensor([[1.0, 5.0, 2.0, 0.0]]), torch.tensor([[3.0, 4.0]])])
        >>> values, indices = F.adaptive_max_pool1d(sequences, 2, return_indices=True)
        >>> values, indices
        (tensor([[[5., 2.]],
        <BLANKLINE>
                [[3., 4.]]]), tensor([[[1, 2]],
        <BLANKLINE>
                [[0, 1]]]))
    """
    op = f"adaptive_max_pool{spatial}d"
    _check_nested(input, op)
    dense = getattr(F, op)
    indices = return_indices or with_indices
    return map_elements(input, lambda e: dense(e, output_size, indices), op, _fixed_size(output_size))


def interpolate(
    input: NestedTensor,
    size: IntOrTuple | None = None,
    scale_factor: float | Sequence[float] | None = None,
    mode: str = "nearest",
    align_corners: bool | None = None,
    recompute_scale_factor: bool | None = None,
    antialias: bool = False,
) -> Tensor:
    r"""
    ``F.interpolate`` of every element ``(C, *spatial)``; ``size`` gives a dense batch.

    ``nearest`` and ``nearest-exact`` run packed (one gather of pixel rows, its index computed as torch
    computes it and cached on the layout); the other modes run per element.

    Examples:
        >>> import torch.nn.functional as F
        >>> images = NestedTensor([torch.randn(3, 4, 6), torch.randn(3, 5, 5)])
        >>> F.interpolate(images, size=(8, 8), mode="bilinear").shape
        torch.Size([2, 3, 8, 8])
        >>> upsampled = F.interpolate(images, scale_factor=2)
        >>> [tuple(element.shape) for element in upsampled.unbind()]
        [(3, 8, 12), (3, 10, 10)]
        >>> torch.equal(upsampled[1], F.interpolate(images[1][None], scale_factor=2)[0])
        True
    """
    _check_nested(input, "interpolate")
    nearest = mode in ("nearest", "nearest-exact") and align_corners is None and not antialias
    if nearest and len(input) and (size is None) != (scale_factor is None):
        return _nearest(input, size, scale_factor, mode == "nearest-exact", bool(recompute_scale_factor))

    def resize(element: Tensor) -> Tensor:
        return F.interpolate(
            element.unsqueeze(0), size, scale_factor, mode, align_corners, recompute_scale_factor, antialias
        ).squeeze(0)

    return map_elements(input, resize, "interpolate", size is not None)


def _nearest(input: NestedTensor, size, scale_factor, exact: bool, recompute: bool) -> Tensor:
    """Nearest-neighbour resizing of every element as one gather of its pixel rows."""
    spatial = input._layout.rank - 1
    images = Images.of(input, spatial, "interpolate")
    input = with_static_channels(input, images)
    if size is not None:
        targets = [expand_argument(size, spatial, "size", "interpolate")] * len(images.sizes)
        scales = (None,) * spatial
    else:
        factors = tuple(float(f) for f in (scale_factor if isinstance(scale_factor, Sequence) else [scale_factor]))
        factors = factors * spatial if len(factors) == 1 else factors
        targets = [tuple(int(s * f) for s, f in zip(sizes, factors)) for sizes in images.sizes]
        scales = (None,) * spatial if recompute else factors
    layout, device = input._layout, input._values.device
    key = ("nearest", exact, tuple(map(tuple, targets)), scales)
    index = layout._cached(
        key, device, lambda d: layout.to_device(_nearest_index(layout, images, targets, scales, exact), d)
    )
    rows = pixel_rows(input, images).index_select(0, index)
    channels = rows.size(1)
    if size is not None:
        return rows.view(len(images.sizes), *targets[0], channels).movedim(-1, 1)
    shapes = tuple((channels, *target) for target in targets)
    output_layout = NestedLayout(shapes, (*range(1, spatial + 1), 0), spatial, (channels,))
    return packed_like(input, rows, output_layout)


def _nearest_index(layout, images: Images, targets, scales, exact: bool) -> Tensor:
    """Row of ``pixel_rows`` every output pixel copies, by torch's nearest-neighbour rule (float32 arithmetic)."""
    cpu = torch.device("cpu")
    image, coordinates = pixel_coordinates(layout, images, cpu)
    sizes = torch.tensor(images.sizes, dtype=torch.long)
    starts = sizes.prod(1).cumsum(0) - sizes.prod(1)
    by_position = torch.empty_like(image)
    by_position[starts[image] + _row_major(coordinates, sizes[image])] = torch.arange(image.numel())
    output_image, output_coordinates = ragged_grid(targets, cpu)
    spatial, source = len(scales), []
    for dim, scale in enumerate(scales):
        inputs = sizes[output_image, dim]
        outputs = torch.tensor(targets, dtype=torch.long)[output_image, dim]
        ratio = inputs.float() / outputs.float() if scale is None else torch.tensor(1.0 / scale).float()
        position = (output_coordinates[:, dim].float() + (0.5 if exact else 0.0)) * ratio
        nearest = torch.minimum(position.floor().long(), inputs - 1)
        if spatial == 2 and not exact:  # torch's 2-d nearest kernel copies unchanged dims and halves doubled ones
            nearest = torch.where(outputs == 2 * inputs, output_coordinates[:, dim] // 2, nearest)
            nearest = torch.where(outputs == inputs, output_coordinates[:, dim], nearest)
        source.append(nearest)
    return by_position[starts[output_image] + _row_major(torch.stack(source, 1), sizes[output_image])]


def _row_major(coordinates: Tensor, sizes: Tensor) -> Tensor:
    """Flat row-major index of ``coordinates`` in boxes of ``sizes`` (both ``(P, dims)``)."""
    flat = torch.zeros(coordinates.size(0), dtype=torch.long)
    for dim in range(coordinates.size(1)):
        flat = flat * sizes[:, dim] + coordinates[:, dim]
    return flat


@implements(F.pad)
def pad(input: NestedTensor, pad: Sequence[int], mode: str = "constant", value: float | None = None) -> NestedTensor:
    r"""
    ``F.pad`` of every element: on the packed values when only static trailing dims are padded with a constant.

    Examples:
        >>> import torch.nn.functional as F
        >>> sequences = NestedTensor([torch.ones(2, 3), torch.ones(1, 3)])
        >>> F.pad(sequences, (1, 0), value=-1.0)
        NestedTensor([
            [[-1.,  1.,  1.,  1.],
             [-1.,  1.,  1.,  1.]],
            [[-1.,  1.,  1.,  1.]]
        ])
        >>> F.pad(sequences, (0, 0, 0, 1)).shape
        torch.Size([2, 3, 3])
    """
    _check_nested(input, "pad")
    layout = input._layout
    padded = len(pad) // 2
    trailing = range(layout.rank - padded, layout.rank)
    values_dims = [layout.values_dim(d) if 0 <= d < layout.rank else None for d in trailing]
    offset = input._values.dim() - padded
    if mode == "constant" and padded <= layout.rank and values_dims == list(range(offset, offset + padded)):
        return packed_like(input, F.pad(input._values, pad, mode, value))
    return map_elements(input, lambda element: F.pad(element, pad, mode, value), "pad", dense=False)


for _spatial in (1, 2, 3):
    _max = partial(max_pool, spatial=_spatial)
    implements(getattr(F, f"max_pool{_spatial}d"), getattr(torch, f"max_pool{_spatial}d"))(_max)
    implements(getattr(F, f"max_pool{_spatial}d_with_indices"))(partial(_max, with_indices=True))
    implements(getattr(F, f"avg_pool{_spatial}d"))(partial(avg_pool, spatial=_spatial))
    implements(getattr(F, f"adaptive_avg_pool{_spatial}d"))(partial(adaptive_avg_pool, spatial=_spatial))
    _adaptive_max = partial(adaptive_max_pool, spatial=_spatial)
    implements(getattr(F, f"adaptive_max_pool{_spatial}d"))(partial(_adaptive_max, with_indices=False))
    implements(getattr(F, f"adaptive_max_pool{_spatial}d_with_indices"))(partial(_adaptive_max, with_indices=True))
implements(torch.adaptive_max_pool1d)(partial(adaptive_max_pool, spatial=1, with_indices=True))
implements(F.interpolate)(interpolate)

__all__ = [
    "adaptive_avg_pool",
    "adaptive_max_pool",
    "avg_pool",
    "element_indices",
    "interpolate",
    "map_elements",
    "max_pool",
    "pad",
    "pool_windows",
]
