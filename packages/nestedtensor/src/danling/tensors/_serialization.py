"""Pickling of NestedTensor: a plain-data state (tensors, ints, tuples) and a checked rebuild.

``pickle``, ``copy`` and ``torch.save`` go through ``NestedTensor.__reduce_ex__``, which returns
``rebuild_nested_tensor`` and the state. ``rebuild_nested_tensor`` is registered with
``torch.serialization.add_safe_globals``, so ``torch.load(..., weights_only=True)`` (the default since
torch 2.6) loads NestedTensors without trusting arbitrary code.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ._layout import NestedLayout

STATE_VERSION = 1
_PACKING_KEYS = ("_values", "_offsets", "_permutation", "_physical_shape", "_logical_shape")
_SETTING_KEYS = ("batch_first", "padding_value", "mask_value")
_CACHED_KEYS = ("_pin_memory", "_packed_sizes", "_element_shapes")
REQUIRED_KEYS = ("_state_version", *_PACKING_KEYS, *_SETTING_KEYS, *_CACHED_KEYS)
"""The documented state keys, in the documented order; ``nested_state`` writes exactly these."""


def nested_state(nested: Any) -> dict:
    """State of a NestedTensor as a dict of tensors and Python values (no caches), with the documented keys.

    How many element dims are ragged and the sizes of the static ones are not stored: they are the
    trailing dims of ``_values`` (``(rows, *static sizes)``), which ``parse_state`` reads back.
    """
    layout, values = nested._layout, nested._values
    return {
        "_state_version": STATE_VERSION,
        "_values": values,
        "_offsets": layout.offsets,
        "_permutation": layout.permutation,
        "_physical_shape": layout.shape_tensor,
        "_logical_shape": tuple(nested._logical_shape),
        "batch_first": nested._batch_first,
        "padding_value": nested._padding_value,
        "mask_value": nested._mask_value,
        "_pin_memory": values.device.type == "cpu" and values.is_pinned(),
        "_packed_sizes": layout.packed_sizes,
        "_element_shapes": layout.element_shapes,
    }


def _check_metadata_tensor(name: str, tensor: Any, ndim: int) -> None:
    if not isinstance(tensor, Tensor):
        raise ValueError(f"{name} must be a tensor, got {type(tensor).__name__}")
    if tensor.device.type != "cpu":
        raise ValueError(f"{name} must be on CPU, got {tensor.device}")
    if tensor.dim() != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {tuple(tensor.shape)}")
    if tensor.dtype.is_floating_point or tensor.dtype.is_complex or tensor.dtype == torch.bool:
        raise ValueError(f"{name} must use an integer dtype, got {tensor.dtype}")


def parse_state(state: dict) -> tuple[Tensor, NestedLayout, dict]:
    """Validate a state and return ``(values, layout, settings)``."""
    missing = [key for key in REQUIRED_KEYS if key not in state]
    if missing:
        raise KeyError(f"Serialized NestedTensor state is missing required keys: {', '.join(missing)}")
    if state["_state_version"] != STATE_VERSION:
        raise ValueError(f"Unsupported NestedTensor state version {state['_state_version']}; expected {STATE_VERSION}")
    values, offsets, shapes = state["_values"], state["_offsets"], state["_physical_shape"]
    _check_metadata_tensor("offsets", offsets, 1)
    _check_metadata_tensor("shape_tensor", shapes, 2)
    batch = shapes.size(0)
    if offsets.numel() != batch + 1:
        raise ValueError(
            f"offsets length must equal batch size + 1, got offsets.numel()={offsets.numel()}, batch_size={batch}"
        )
    if (shapes < 0).any():
        raise ValueError("shape_tensor must be non-negative")
    if int(offsets[0]) != 0:
        raise ValueError("offsets must start at 0")
    if (offsets.diff() < 0).any():
        raise ValueError("offsets must be monotonically non-decreasing")
    element_shapes = tuple(tuple(row) for row in shapes.tolist())
    if tuple(map(tuple, state["_element_shapes"])) != element_shapes:
        raise ValueError("element_shapes must match shape_tensor exactly")
    permutation = tuple(int(d) for d in state["_permutation"])
    layout = _layout(values, element_shapes, permutation)
    sizes = tuple(offsets.diff().tolist())
    if sizes != layout.packed_sizes or tuple(state["_packed_sizes"]) != sizes:
        raise ValueError("packed_sizes must match the element shapes and offsets")
    expected_rows = int(offsets[-1])
    if values.shape[:1] != (expected_rows,) and batch:
        raise ValueError(
            f"offsets[-1] must equal packed values length, got offsets[-1]={expected_rows} and "
            f"values.shape[0]={values.shape[0] if values.dim() else 0}"
        )
    settings = {key: state[key] for key in ("batch_first", "padding_value", "mask_value")}
    return values, layout, settings


def _layout(values: Tensor, element_shapes: tuple, permutation: tuple[int, ...]) -> NestedLayout:
    """The layout of ``values``: its trailing dims are the static element dims, the rest are ragged."""
    static_sizes = tuple(values.shape[1:])
    ragged_rank = len(permutation) - len(static_sizes)
    fits = values.dim() >= 1 and (ragged_rank > 0 if permutation else not static_sizes)
    layout = None
    if fits and element_shapes:
        layout = NestedLayout.from_shapes(element_shapes, permutation, ragged_rank)
        fits = layout.static_sizes == static_sizes
    if not fits:
        raise ValueError(
            f"values of shape {tuple(values.shape)} do not fit elements {element_shapes[:4]} packed with "
            f"permutation {permutation}: expected (rows, *sizes of the static dims)"
        )
    return layout or NestedLayout((), permutation, ragged_rank, static_sizes)


def rebuild_nested_tensor(state: dict) -> Any:
    """Rebuild a NestedTensor from ``nested_state`` output (the target of ``__reduce_ex__``)."""
    from .nested_tensor import NestedTensor

    values, layout, settings = parse_state(state)
    return NestedTensor._finish(values, layout, **settings)


def flatten_context(nested: Any) -> tuple:
    """Python metadata for ``__tensor_flatten__`` (``torch.compile`` traces ``_values`` only)."""
    layout = nested._layout
    return (
        layout.element_shapes,
        layout.permutation,
        layout.ragged_rank,
        layout.static_sizes,
        nested._batch_first,
        nested._padding_value,
        nested._mask_value,
    )


def unflatten_context(context: tuple) -> tuple[NestedLayout, dict]:
    """Inverse of ``flatten_context``: the layout and the settings to pass to ``_from_packed``."""
    shapes, permutation, ragged_rank, static_sizes, batch_first, padding_value, mask_value = context
    settings = {"batch_first": batch_first, "padding_value": padding_value, "mask_value": mask_value}
    return NestedLayout(shapes, permutation, ragged_rank, static_sizes), settings


torch.serialization.add_safe_globals([rebuild_nested_tensor])
