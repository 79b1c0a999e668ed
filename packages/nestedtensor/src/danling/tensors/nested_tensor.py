"""``NestedTensor``: a batch of tensors of different shapes, stored packed, with padded and mask views.

The class holds the data model (one packed buffer plus a [`NestedLayout`][danling.tensors._layout.NestedLayout]),
its views and conversions, and the two dispatch entry points. Operations live in ``danling.tensors.ops``
(see ``ops/_registry.py`` for how a call reaches them).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from math import prod
from typing import Any

import torch
from torch import Tensor

from . import _padding, _serialization
from ._coercion import check_bool, check_padding_value, pack_inputs, set_requires_grad
from ._layout import NestedLayout


class NestedTensor(torch.Tensor):
    r"""
    A batch of tensors whose shapes differ, stored as one packed buffer plus the shape of each element.

    Elements may vary along several dims (images of different height and width); dims whose size is
    the same in every element stay dense. The NestedTensor reports the padded shape (batch size,
    then the largest size along each element dim) and offers three views:

    - ``.tensor``: the padded dense tensor (``padding_value`` where an element has no data);
    - ``.mask``: boolean mask of real positions (``mask_value`` marks padding);
    - ``.concat``: the packed buffer itself, no padding.

    Indexing with an int gives an element (unpadded); slices, lists and index tensors select elements
    and give a NestedTensor; a tuple index applies its remaining items inside every element.
    Torch operations work on the packed buffer (see ``danling.tensors.ops``); gradients flow to the
    tensors the NestedTensor was built from.

    Args:
        *tensors: Tensors, nested lists or numbers, one per element (or one iterable of them).
            A lone tensor is a batch of one; a ``torch.nested`` tensor is converted (no copy for the
            jagged layout).
        dtype: Cast the data to this dtype; by default element dtypes are promoted to a common one.
        device: Move the data to this device.
        requires_grad: ``True`` makes the result require grad (still connected to sources that do),
            ``False`` detaches it, ``None`` follows the sources.
        pin_memory: Pin the packed buffer (CPU only).
        batch_first: Whether the batch is dim 0 (``(B, N, *)``) or dim 1 (``(N, B, *)``).
        padding_value: Fill value of ``.tensor``.
        mask_value: Value ``.mask`` holds at padding positions (``False`` by default, so True = data).

    Raises:
        ValueError: If a lone argument is not iterable, or elements differ in device or rank.

    Examples:
        Two sequences of different lengths, and the three views of them:

        >>> batch = NestedTensor(torch.tensor([7, 8]), torch.tensor([9, 10, 11]))
        >>> batch.shape  # (batch, longest)
        torch.Size([2, 3])
        >>> batch.tensor  # padded with padding_value (0)
        tensor([[ 7,  8,  0],
                [ 9, 10, 11]])
        >>> batch.mask  # True where a value is real
        tensor([[ True,  True, False],
                [ True,  True,  True]])
        >>> batch.concat  # the real values back to back, as they are stored
        tensor([ 7,  8,  9, 10, 11])

        An integer picks one element (unpadded); slices give NestedTensors:

        >>> batch[1]
        tensor([ 9, 10, 11])
        >>> batch[:, 1:]  # every element without its first value
        NestedTensor([
            [8],
            [10, 11]
        ])

        Conversions keep the ragged structure:

        >>> batch.to(torch.float).tensor
        tensor([[ 7.,  8.,  0.],
                [ 9., 10., 11.]])
        >>> batch.half().concat.dtype
        torch.float16
        >>> batch.tolist()
        [[7, 8], [9, 10, 11]]
        >>> NestedTensor([0.5], [1.5, 2.5])  # Python lists work as elements too
        NestedTensor([
            [0.5000],
            [1.5000, 2.5000]
        ])
    """

    _values: Tensor
    _layout: NestedLayout
    _batch_first: bool
    _padding_value: float
    _mask_value: bool
    _logical_shape: torch.Size
    _padded_cache: tuple | None

    @staticmethod
    def __new__(
        cls,
        *tensors: Any,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
        requires_grad: bool | None = None,
        pin_memory: bool = False,
        batch_first: bool = True,
        padding_value: float = 0.0,
        mask_value: bool = False,
    ) -> NestedTensor:
        values, layout = pack_inputs(tensors, dtype=dtype, device=device)
        return cls._finish(
            values,
            layout,
            dtype=dtype,
            device=device,
            requires_grad=requires_grad,
            pin_memory=pin_memory,
            batch_first=batch_first,
            padding_value=padding_value,
            mask_value=mask_value,
        )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        """Everything happens in ``__new__``."""

    @classmethod
    def _finish(
        cls,
        values: Tensor,
        layout: NestedLayout,
        *,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
        requires_grad: bool | None = None,
        pin_memory: bool = False,
        batch_first: bool = True,
        padding_value: float = 0.0,
        mask_value: bool = False,
    ) -> NestedTensor:
        """Apply the public constructor options to freshly packed values and wrap them."""
        if dtype is not None or device is not None:
            values = values.to(device=device, dtype=dtype)
        values = set_requires_grad(values, requires_grad)
        if pin_memory and values.device.type == "cpu" and not values.is_pinned():
            values = values.pin_memory()
        return cls._from_packed(
            values,
            layout,
            batch_first=check_bool("batch_first", batch_first),
            padding_value=check_padding_value(padding_value),
            mask_value=check_bool("mask_value", mask_value),
        )

    @classmethod
    def _from_packed(
        cls,
        values: Tensor,
        layout: NestedLayout,
        *,
        batch_first: bool = True,
        padding_value: float = 0.0,
        mask_value: bool = False,
    ) -> NestedTensor:
        """Wrap packed ``values`` laid out by ``layout`` without copying or checking (the fast path of every op)."""
        if values.requires_grad:
            _registry.check_compiled_autograd(values)
        shape = layout.logical_shape(batch_first)
        nested = Tensor._make_wrapper_subclass(cls, shape, dtype=values.dtype, device=values.device)
        nested._values = values
        nested._layout = layout
        nested._batch_first = batch_first
        nested._padding_value = padding_value
        nested._mask_value = mask_value
        nested._logical_shape = shape
        nested._padded_cache = None
        return nested

    def _rewrap(self, values: Tensor, layout: NestedLayout | None = None) -> NestedTensor:
        """A NestedTensor of ``values`` with this one's layout (unless given) and settings."""
        if layout is not None and layout is not self._layout:
            return type(self)._from_packed(
                values,
                layout,
                batch_first=self._batch_first,
                padding_value=self._padding_value,
                mask_value=self._mask_value,
            )
        # Same layout: ``_from_packed`` with the logical shape reused, inlined (the hot path of elementwise ops).
        if values.requires_grad:
            _registry.check_compiled_autograd(values)
        nested = Tensor._make_wrapper_subclass(
            type(self), self._logical_shape, dtype=values.dtype, device=values.device
        )
        nested._values = values
        nested._layout = self._layout
        nested._batch_first = self._batch_first
        nested._padding_value = self._padding_value
        nested._mask_value = self._mask_value
        nested._logical_shape = self._logical_shape
        nested._padded_cache = None
        return nested

    def _replace_packed(self, values: Tensor, layout: NestedLayout) -> None:
        """Swap in new packed data in place (used when an assignment changes an element's shape)."""
        self._values = values
        self._layout = layout
        self._logical_shape = layout.logical_shape(self._batch_first)
        self._padded_cache = None

    # ---------------------------------------------------------------- dispatch entry points

    @classmethod
    def __torch_function__(cls, func: Callable, types: tuple, args: tuple = (), kwargs: dict | None = None) -> Any:
        if kwargs is None:
            kwargs = {}
        handler = _registry.TORCH_FUNCTIONS.get(func)
        if handler is not None:
            if torch.compiler.is_dynamo_compiling() or (
                func not in _registry.COMPILE_SAFE and _registry.traced(args, kwargs)
            ):
                return _registry.call_while_compiling(func, handler, args, kwargs)
            return handler(*args, **kwargs)
        if torch.compiler.is_dynamo_compiling():
            return _registry.continue_while_compiling(func, args, kwargs)
        return _registry.continue_to_aten(func, args, kwargs)

    @classmethod
    def __torch_dispatch__(cls, func: Callable, types: tuple, args: tuple = (), kwargs: dict | None = None) -> Any:
        return _registry.dispatch_aten(func, args, kwargs or {})

    # ---------------------------------------------------------------- views

    @property
    def tensor(self) -> Tensor:
        r"""
        Padded dense tensor of shape ``self.shape``; positions without data hold ``padding_value``.

        Cached until the data, ``batch_first`` or ``padding_value`` change (treat it as read-only).

        Examples:
            >>> nested_tensor = NestedTensor([torch.tensor([1, 2, 3]), torch.tensor([4, 5])])
            >>> nested_tensor.tensor
            tensor([[1, 2, 3],
                    [4, 5, 0]])
        """
        values = self._values
        tracked = not values.is_inference()
        if tracked:
            key = (values._version, self._batch_first, self._padding_value, torch.is_grad_enabled())
            cached = self._padded_cache
            if cached is not None and cached[0] == key and cached[1]._version == cached[2]:
                return cached[1]
        padded = _padding.to_padded(self._layout, values, self._padding_value)
        if not self._batch_first and padded.dim() > 1:
            padded = padded.movedim(0, 1)
        if tracked:
            self._padded_cache = (key, padded, padded._version)
        return padded

    @property
    def mask(self) -> Tensor:
        r"""
        Boolean mask of ``.tensor``: ``not mask_value`` at real data, ``mask_value`` at padding.

        When the last element dim is static (e.g. channels), the mask leaves it out: elements of shape
        ``(9, 8)`` and ``(11, 8)`` have a ``(2, 11, 8)`` tensor and a ``(2, 11)`` mask.

        Examples:
            >>> nested_tensor = NestedTensor([torch.tensor([1, 2, 3]), torch.tensor([4, 5])])
            >>> nested_tensor.mask
            tensor([[ True,  True,  True],
                    [ True,  True, False]])
        """
        mask = _padding.padded_mask(self._layout, self._values.device)
        if not self._batch_first and mask.dim() > 1:
            mask = mask.movedim(0, 1)
        return ~mask if self._mask_value else mask

    @property
    def tensor_mask(self) -> tuple[Tensor, Tensor]:
        r"""
        ``(self.tensor, self.mask)``.

        Examples:
            >>> nested_tensor = NestedTensor([torch.tensor([1, 2, 3]), torch.tensor([4, 5])])
            >>> nested_tensor.tensor_mask
            (tensor([[1, 2, 3],
                    [4, 5, 0]]), tensor([[ True,  True,  True],
                    [ True,  True, False]]))
        """
        return self.tensor, self.mask

    @property
    def concat(self) -> Tensor:
        r"""
        The packed buffer (no copy): every element's data, ragged dims flattened into rows.

        Static dims stay as trailing dims, so a ``Linear`` or a loss can run on it directly. For
        1-D elements it equals ``torch.cat`` of the elements.

        Examples:
            >>> nested_tensor = NestedTensor([torch.randn(9, 8), torch.randn(11, 8)])
            >>> nested_tensor.concat.shape
            torch.Size([20, 8])
            >>> nested_tensor = NestedTensor([torch.randn(9, 9, 8), torch.randn(11, 11, 8)])
            >>> nested_tensor.concat.shape
            torch.Size([202, 8])
            >>> nested_tensor = NestedTensor([torch.randn(9, 9, 8, 6), torch.randn(11, 11, 8, 6)])
            >>> nested_tensor.concat.shape
            torch.Size([202, 8, 6])
            >>> nested_tensor = NestedTensor([torch.randn(9, 9, 8, 7), torch.randn(11, 11, 8, 6)])
            >>> nested_tensor.concat.shape
            torch.Size([1293, 8])
            >>> nested_tensor = NestedTensor([torch.randn(1, 9, 9, 5), torch.randn(1, 11, 11, 5)])
            >>> nested_tensor.concat.shape
            torch.Size([202, 1, 5])
        """
        return self._values

    @property
    def occupancy(self) -> float:
        r"""
        Fraction of ``.tensor`` that holds real data (``numel() / shape.numel()``).

        Examples:
            >>> nested_tensor = NestedTensor([torch.tensor([1, 2, 3, 4]), torch.tensor([5, 6])])
            >>> nested_tensor.occupancy
            0.75
        """
        padded = self._logical_shape.numel()
        return 0.0 if padded == 0 else self.numel() / padded

    # ---------------------------------------------------------------- settings

    @property
    def batch_first(self) -> bool:
        """Whether the batch is dim 0; setting it moves the batch dim of ``shape``, ``.tensor`` and ``.mask``."""
        return self._batch_first

    @batch_first.setter
    def batch_first(self, value: bool) -> None:
        if check_bool("batch_first", value) != self._batch_first:
            self._batch_first = value
            self._logical_shape = self._layout.logical_shape(value)
            self._padded_cache = None

    @property
    def padding_value(self) -> float:
        """Fill value of ``.tensor``."""
        return self._padding_value

    @padding_value.setter
    def padding_value(self, value: float) -> None:
        self._padding_value = check_padding_value(value)

    @property
    def mask_value(self) -> bool:
        """Value of ``.mask`` at padding positions."""
        return self._mask_value

    @mask_value.setter
    def mask_value(self, value: bool) -> None:
        self._mask_value = check_bool("mask_value", value)

    @property
    def dtype(self) -> torch.dtype:  # type: ignore[override]
        return self._values.dtype

    @dtype.setter
    def dtype(self, value: torch.dtype) -> None:
        raise AttributeError("NestedTensor.dtype is read-only; use .to(dtype=...) to create a converted tensor.")

    @property
    def device(self) -> torch.device:  # type: ignore[override]
        return self._values.device

    @device.setter
    def device(self, value: torch.device) -> None:
        raise AttributeError("NestedTensor.device is read-only; use .to(device=...) to create a moved tensor.")

    # ---------------------------------------------------------------- autograd (it lives on the packed values)

    @property
    def requires_grad(self) -> bool:  # type: ignore[override]
        return self._values.requires_grad

    @requires_grad.setter
    def requires_grad(self, value: bool) -> None:
        self._values.requires_grad_(value)

    def requires_grad_(self, requires_grad: bool = True) -> NestedTensor:  # type: ignore[override]
        self._values.requires_grad_(requires_grad)
        return self

    @property
    def grad(self) -> NestedTensor | None:  # type: ignore[override]
        """Gradient accumulated on the packed values, in this tensor's layout."""
        grad = self._values.grad
        return None if grad is None else self._rewrap(grad)

    @grad.setter
    def grad(self, value: Tensor | None) -> None:
        self._values.grad = value._values if isinstance(value, NestedTensor) else value

    @property
    def grad_fn(self) -> Any:  # type: ignore[override]
        return self._values.grad_fn

    @property
    def is_leaf(self) -> bool:  # type: ignore[override]
        return self._values.is_leaf

    def retain_grad(self) -> None:
        self._values.retain_grad()

    def backward(
        self,
        gradient: Tensor | None = None,
        retain_graph: bool | None = None,
        create_graph: bool = False,
        inputs: Sequence[Tensor] | None = None,
    ) -> None:  # type: ignore[override]
        """Backpropagate from this tensor; ``gradient`` may be a NestedTensor of the same layout or padded dense."""
        if isinstance(gradient, NestedTensor):
            gradient = gradient._values
        elif isinstance(gradient, Tensor) and gradient.shape == self.shape and self.dim() > 0:
            gradient = self.nested_like(gradient)._values
        if inputs is not None:
            inputs = [i._values if isinstance(i, NestedTensor) else i for i in inputs]
        self._values.backward(gradient, retain_graph=retain_graph, create_graph=create_graph, inputs=inputs)

    def register_hook(self, hook: Callable[[NestedTensor], Tensor | None]) -> Any:
        """Register ``hook(grad)`` on the packed values; it receives and may return a NestedTensor."""

        def values_hook(grad: Tensor) -> Tensor | None:
            result = hook(self._rewrap(grad))
            return result._values if isinstance(result, NestedTensor) else result

        return self._values.register_hook(values_hook)

    # ---------------------------------------------------------------- shape

    @property
    def shape(self) -> torch.Size:  # type: ignore[override]
        """Padded shape: the batch size plus, per element dim, the largest size."""
        return self._logical_shape

    def size(self, dim: int | None = None) -> torch.Size | int:  # type: ignore[override]
        r"""
        Padded shape, or its size along ``dim``.

        Examples:
            >>> nested_tensor = NestedTensor([torch.tensor([1, 2, 3]), torch.tensor([4, 5])])
            >>> nested_tensor.size()
            torch.Size([2, 3])
            >>> nested_tensor.size(0)
            2
            >>> nested_tensor[1] = torch.tensor([4, 5, 6, 7])
            >>> nested_tensor.shape
            torch.Size([2, 4])
            >>> nested_tensor.size(1)
            4
        """
        return self._logical_shape if dim is None else self._logical_shape[dim]

    def dim(self) -> int:
        r"""
        Number of dims of the padded shape (element rank plus one).

        Examples:
            >>> nested_tensor = NestedTensor([torch.tensor([1, 2, 3]), torch.tensor([4, 5])])
            >>> nested_tensor.dim()
            2
        """
        return len(self._logical_shape)

    @property
    def ndim(self) -> int:  # type: ignore[override]
        return len(self._logical_shape)

    def numel(self) -> int:
        r"""
        Number of real values (padding not counted).

        Examples:
            >>> nested_tensor = NestedTensor([torch.tensor([1, 2, 3]), torch.tensor([4, 5])])
            >>> nested_tensor.numel()
            5
        """
        return self._values.numel()

    @property
    def T(self) -> NestedTensor:  # type: ignore[override]
        """Every element with its dims reversed; the batch dim stays where it is."""
        if self._layout.rank < 2:
            return self
        return _shape.permute_elements(self, tuple(reversed(range(self._layout.rank))))

    @property
    def mT(self) -> NestedTensor:  # type: ignore[override]
        """Every element with its last two dims swapped."""
        rank = self._layout.rank
        if rank < 2:
            raise RuntimeError(f"tensor.mT is only supported on matrices or batches of matrices. Got {rank}-D tensor.")
        order = list(range(rank))
        order[-2], order[-1] = order[-1], order[-2]
        return _shape.permute_elements(self, tuple(order))

    @property
    def _offsets(self) -> Tensor:
        """CPU ``(B + 1,)`` row offsets of the elements in ``_values``."""
        return self._layout.offsets

    @property
    def _physical_shape(self) -> Tensor:
        """CPU ``(B, rank)`` tensor of element shapes."""
        return self._layout.shape_tensor

    @property
    def _permutation(self) -> tuple[int, ...]:
        """Element dims in packing order: ragged dims, then static dims."""
        return self._layout.permutation

    # ---------------------------------------------------------------- container protocol

    def __len__(self) -> int:
        return self._layout.batch_size

    def __iter__(self) -> Iterator[Tensor]:
        _registry.check_slow_path("iteration")
        return iter(self._layout.unpack(self._values))

    def unbind(self, dim: int = 0) -> tuple[Tensor, ...]:  # type: ignore[override]
        """Views of the elements; only the batch dim can be unbound."""
        if dim not in (_ops_packed.batch_dim(self), _ops_packed.batch_dim(self) - self.dim()):
            raise NotImplementedError(
                "torch.unbind for NestedTensor only supports unbinding along the batch dimension."
            )
        return self._layout.unpack(self._values)

    def __bool__(self) -> bool:
        raise RuntimeError(
            "Boolean value of NestedTensor is ambiguous. Use .numel(), .any(), .all(), or an explicit reduction."
        )

    def tolist(self) -> list:  # type: ignore[override]
        r"""
        Elements as nested Python lists.

        Examples:
            >>> nested_tensor = NestedTensor([torch.tensor([1, 2, 3]), torch.tensor([4, 5])])
            >>> nested_tensor.tolist()
            [[1, 2, 3], [4, 5]]
        """
        _registry.check_slow_path("tolist")
        return [element.tolist() for element in self._layout.unpack(self._values)]

    def __repr__(self, *, tensor_contents: Any = None) -> str:  # type: ignore[override]
        name = type(self).__name__
        if not len(self):
            return f"{name}()"
        elements = self._layout.unpack(self._values.detach())
        shown = elements if len(elements) <= 10 else elements[:5]
        lines = [f"{name}(["]
        for index, element in enumerate(shown):
            text = repr(element)
            first, *rest = text[text.index("(") + 1 : -1].splitlines()
            body = ["    " + first] + ["     " + line.lstrip() for line in rest]
            if index < len(shown) - 1 or len(shown) < len(elements):
                body[-1] += ","
            lines.extend(body)
        if len(shown) < len(elements):
            lines.append(f"    ... ({len(elements)} tensors)")
        lines.append("], requires_grad=True)" if self.requires_grad else "])")
        return "\n".join(lines)

    # ---------------------------------------------------------------- conversions

    def concatenate(self) -> tuple[Tensor, tuple[torch.Size, ...]]:
        r"""
        The packed buffer and the element shapes: everything needed to rebuild with ``from_concatenated``.

        Examples:
            >>> nested_tensor = NestedTensor([torch.randn(9, 8), torch.randn(11, 8)])
            >>> concat_tensor, shapes = nested_tensor.concatenate()
            >>> concat_tensor.shape
            torch.Size([20, 8])
            >>> shapes
            (torch.Size([9, 8]), torch.Size([11, 8]))
            >>> reconstructed = NestedTensor.from_concatenated(concat_tensor, shapes)
            >>> torch.equal(nested_tensor.tensor, reconstructed.tensor)
            True
        """
        return self._values, tuple(torch.Size(shape) for shape in self._layout.element_shapes)

    @classmethod
    def from_concatenated(cls, concat_tensor: Tensor, shapes: Sequence[Sequence[int]], **kwargs: Any) -> NestedTensor:
        r"""
        Rebuild a NestedTensor from the output of [`concatenate`][danling.tensors.NestedTensor.concatenate].

        ``concat_tensor`` may have any shape with the right number of values; it is reshaped (no copy
        when possible) into the canonical packing of ``shapes``. ``kwargs`` are constructor options.

        Raises:
            ValueError: If ``concat_tensor`` has the wrong number of values.

        Examples:
            >>> nested_tensor = NestedTensor([torch.randn(9, 9, 8), torch.randn(11, 11, 8)])
            >>> concat_tensor, shapes = nested_tensor.concatenate()
            >>> reconstructed = NestedTensor.from_concatenated(concat_tensor, shapes)
            >>> concat_tensor.shape
            torch.Size([202, 8])
            >>> reconstructed.shape
            torch.Size([2, 11, 11, 8])
            >>> torch.equal(nested_tensor.tensor, reconstructed.tensor)
            True
        """
        layout = NestedLayout.from_shapes(shapes)
        expected = sum(prod(shape) for shape in layout.element_shapes)
        if concat_tensor.numel() != expected:
            raise ValueError(
                f"Concatenated tensor has {concat_tensor.numel()} elements but expected {expected} "
                f"based on shapes {tuple(shapes)}"
            )
        if not layout.element_shapes:
            values = concat_tensor.reshape(0)
        elif not layout.permutation:
            values = concat_tensor.reshape(len(layout.element_shapes))
        else:
            values = concat_tensor.reshape(layout.num_rows, *layout.static_sizes)
        return cls._finish(values, layout, **kwargs)

    @classmethod
    def from_tensor_mask(cls, tensor: Tensor, mask: Tensor, *, batched: bool = False, **kwargs: Any) -> NestedTensor:
        r"""
        Build a NestedTensor from a padded tensor and its mask (vectorised, no loop over elements).

        ``mask`` follows ``mask_value`` (given in ``kwargs``, default ``False``: True marks data).
        A 1-D mask selects rows of ``tensor``: with ``batched=True`` each selected row is an element,
        otherwise the selection is one element. A 2-D mask must be a prefix mask per row; an N-D mask
        a hierarchical ragged prefix, each element keeping the smallest box around its data (invalid
        positions inside the box take ``padding_value``). ``tensor`` may have trailing dims the mask
        lacks (e.g. ``(B, N, C)`` with a ``(B, N)`` mask). ``batch_first=False`` reads ``(N, B, *)``.

        Raises:
            ValueError: If batch sizes differ or the mask has interior gaps.

        Examples:
            >>> padded_tensor = torch.tensor([[1, 2, 3, 0, 0],
            ...                                [4, 5, 0, 0, 0],
            ...                                [6, 7, 8, 9, 0]])
            >>> mask_tensor = torch.tensor([[1, 1, 1, 0, 0],
            ...                             [1, 1, 0, 0, 0],
            ...                             [1, 1, 1, 1, 0]])
            >>> nested_tensor = NestedTensor.from_tensor_mask(padded_tensor, mask_tensor)
            >>> nested_tensor
            NestedTensor([
                [1, 2, 3],
                [4, 5],
                [6, 7, 8, 9]
            ])
        """
        mask = mask.to(device=tensor.device, dtype=torch.bool)
        valid = ~mask if kwargs.get("mask_value", False) else mask
        values, layout = _padding.values_from_tensor_mask(
            tensor,
            valid,
            batched=batched,
            batch_first=kwargs.get("batch_first", True),
            padding_value=check_padding_value(kwargs.get("padding_value", 0.0)),
        )
        return cls._finish(values, layout, **kwargs)

    def nested_like(self, tensor: Tensor, strict: bool = True) -> NestedTensor:
        r"""
        A NestedTensor with this one's element shapes, taking its data from a padded dense ``tensor``.

        A NestedTensor argument is cloned. With ``strict=False`` the dense tensor may differ in shape
        (batch size excepted): a larger one is cropped, a smaller one yields shorter elements.

        Raises:
            ValueError: If ``strict`` and the shapes differ, or the batch sizes differ.

        Examples:
            >>> nested_tensor = NestedTensor([torch.tensor([1, 2, 3]), torch.tensor([4, 5])])
            >>> (nested_tensor == nested_tensor.nested_like(nested_tensor)).all()
            tensor(True)
            >>> tensor = nested_tensor.tensor
            >>> (nested_tensor == nested_tensor.nested_like(tensor)).all()
            tensor(True)
            >>> f = nested_tensor.nested_like(torch.randn(2, 2))
            Traceback (most recent call last):
            ...
            ValueError: The shape of NestedTensor and input tensor does not match, ...
            >>> p = nested_tensor.nested_like(torch.randn(2, 2), False)
            >>> p = nested_tensor.nested_like(torch.randn(3, 3), False)
            Traceback (most recent call last):
            ...
            ValueError: The batch size of NestedTensor and input tensor does not match, 2 != 3
        """
        expected, given = self._logical_shape, tensor.shape
        if isinstance(tensor, NestedTensor):
            return tensor.clone()
        if strict and given != expected:
            raise ValueError(f"The shape of NestedTensor and input tensor does not match, {expected} != {given}")
        batch_dim = _ops_packed.batch_dim(self)
        dense_batch = tensor.size(batch_dim)
        if dense_batch != len(self):
            raise ValueError(
                f"The batch size of NestedTensor and input tensor does not match, {len(self)} != {dense_batch}"
            )
        dense = tensor.to(self.device).movedim(batch_dim, 0)
        values = _padding.dense_to_values(self._layout, dense)
        if values is not None:
            return self._rewrap(values)
        _registry.check_slow_path("nested_like with a dense tensor smaller than the padded shape")
        return _ops_packed.from_elements(_padding.clipped_elements(self._layout, dense), like=self)

    def to_torch_nested(self) -> Tensor:
        r"""
        Convert to a ``torch.nested`` tensor, sharing memory when the layout allows it.

        Elements varying along their first dim only give the jagged layout (zero-copy); rank-0
        elements, or elements ragged along other dims, give the strided layout (a copy).

        Examples:
            >>> nested_tensor = NestedTensor([[2, 3, 5], [7, 8]])
            >>> nt = nested_tensor.to_torch_nested()
            >>> nt.layout == torch.jagged
            True
            >>> nt.values()
            tensor([2, 3, 5, 7, 8])
        """
        layout = self._layout
        if layout.rank and layout.ragged_dims == (0,) and layout.is_identity:
            offsets = layout.to_device(layout.offsets, self._values.device)
            return torch.nested.nested_tensor_from_jagged(self._values, offsets)
        return torch.nested.as_nested_tensor(list(layout.unpack(self._values)), layout=torch.strided)

    def pin_memory(self, device: Any = None) -> NestedTensor:  # type: ignore[override]
        """Copy of this tensor with its packed buffer in pinned memory."""
        if device is None:
            return self._rewrap(self._values.pin_memory())
        return self._rewrap(self._values.pin_memory(device))

    # ---------------------------------------------------------------- copying and serialization

    def __copy__(self) -> NestedTensor:
        return self._rewrap(self._values)

    def __deepcopy__(self, memo: dict) -> NestedTensor:
        if id(self) not in memo:
            memo[id(self)] = self._rewrap(self._values.clone())
        return memo[id(self)]

    def __getstate__(self) -> dict:
        return _serialization.nested_state(self)

    def __setstate__(self, state: dict) -> None:
        values, layout, settings = _serialization.parse_state(state)
        self._batch_first = settings["batch_first"]
        self._padding_value = settings["padding_value"]
        self._mask_value = settings["mask_value"]
        self._replace_packed(values, layout)

    def __reduce_ex__(self, protocol: int) -> tuple:
        return _serialization.rebuild_nested_tensor, (self.__getstate__(),)

    def __tensor_flatten__(self) -> tuple[list[str], tuple]:
        if self._values.requires_grad:
            _registry.check_compiled_autograd(self._values, frame=True)
        return ["_values"], _serialization.flatten_context(self)

    @staticmethod
    def __tensor_unflatten__(inner_tensors: dict, context: tuple, outer_size: Any, outer_stride: Any) -> NestedTensor:
        layout, settings = _serialization.unflatten_context(context)
        return NestedTensor._from_packed(inner_tensors["_values"], layout, **settings)


# The op handlers import this module to register against NestedTensor, so the registry (and with it
# every family in ``ops/__init__.py``) is imported once the class exists.
from .ops import _packed as _ops_packed  # noqa: E402
from .ops import _registry  # noqa: E402
from .ops import shape as _shape  # noqa: E402
