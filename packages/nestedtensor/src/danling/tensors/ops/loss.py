r"""
Losses on NestedTensors: every loss runs once on the packed values, so padding is never counted.

``reduction="mean"`` is the mean over real positions of the whole batch (every token of every
sequence counts once), ``"sum"`` their sum, ``"none"`` a NestedTensor shaped like the target.
``kl_div``'s ``"batchmean"`` divides the sum by the number of elements ``len(input)``.

Targets line up with the input in one of these forms:

- a NestedTensor with the expected element shapes (any packing; the same packing is free);
- a dense tensor of the padded shape (``target.tensor`` of such a NestedTensor, ``batch_first``
  as the input's): its padding positions are dropped whatever they hold, so no ``ignore_index``
  is needed for them;
- a dense tensor that is already packed (``target.concat``);
- for the elementwise losses, a tensor that broadcasts over static dims (a per-feature target),
  or a scalar. ``weight``, ``pos_weight`` and ``var`` line up the same way. A dense input with a
  NestedTensor target works too.

Elementwise losses (``mse_loss``, ``l1_loss``, ``smooth_l1_loss``, ``huber_loss``,
``binary_cross_entropy(_with_logits)``, ``kl_div``, ``soft_margin_loss``, ``poisson_nll_loss``,
``gaussian_nll_loss``) expect the target with the input's element shapes. Class losses
(``cross_entropy``, ``nll_loss``) read the classes from element dim 1 (``(L_i, C)`` logits with
``(L_i,)`` targets, or ``(L_i, C, d)`` with ``(L_i, d)``), or element dim 0 for ``(C,)`` elements,
exactly as the dense loss reads every element; the target drops that dim (or, holding class
probabilities, has the input's shapes). Class weights are per class and pass through unchanged.
``multi_margin_loss`` reads its input and target the same way, ``multilabel_margin_loss`` takes a
target with the input's shapes, and ``cosine_embedding_loss`` two ``(L_i, D)`` inputs with ``(L_i,)``
targets (one pair per row).

Examples:
    >>> import torch.nn.functional as F
    >>> logits = NestedTensor([torch.randn(3, 4), torch.randn(2, 4)])
    >>> labels = NestedTensor([torch.tensor([0, 3, 1]), torch.tensor([2, 2])])
    >>> loss = F.cross_entropy(logits, labels)
    >>> torch.allclose(loss, F.cross_entropy(logits.concat, labels.concat))
    True
    >>> torch.allclose(loss, F.cross_entropy(logits, labels.tensor))  # padded labels: padding ignored
    True
    >>> F.cross_entropy(logits, labels, reduction="none").shape
    torch.Size([2, 3])
    >>> predictions = NestedTensor([torch.tensor([1.0, 2.0]), torch.tensor([3.0])])
    >>> F.mse_loss(predictions, torch.tensor([[1.0, 0.0], [0.0, 99.0]]))  # (0 + 4 + 9) / 3
    tensor(4.3333)
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from functools import cache
from typing import Any

import torch  # noqa: F401  (the doctests use it)
import torch.nn.functional as F
from torch import Tensor

from .._layout import NestedLayout
from .._padding import dense_to_values
from ..nested_tensor import NestedTensor
from ._packed import align_dense, is_nested, packed_like, same_layout
from ._registry import check_slow_path, implements
from .nn_functional import uniform_dense


@cache
def _signature(func: Callable) -> inspect.Signature:
    return inspect.signature(func)


def _bind(func: Callable, args: tuple, kwargs: dict) -> dict[str, Any]:
    """The call's arguments by name, defaults filled in, legacy ``size_average``/``reduce`` folded into ``reduction``."""
    bound = _signature(func).bind(*args, **kwargs)
    bound.apply_defaults()
    arguments = dict(bound.arguments)
    size_average, reduce = arguments.pop("size_average", None), arguments.pop("reduce", None)
    if size_average is not None or reduce is not None:
        if reduce is False:
            arguments["reduction"] = "none"
        else:
            arguments["reduction"] = "sum" if size_average is False else "mean"
    return arguments


def _padded_shape(layout: NestedLayout, like: NestedTensor) -> tuple[int, ...]:
    return tuple(layout.logical_shape(like._batch_first))


def _lined_up(operand: Any, layout: NestedLayout, like: NestedTensor, name: str, op: str) -> Any:
    r"""
    ``operand`` as values whose rows line up with ``layout`` (the layout of ``like`` or derived from it).

    NestedTensors with other packings are repacked (a per-element path); dense tensors are gathered
    from the padded shape, or broadcast over static dims when ``layout`` is ``like``'s own.
    """
    if not isinstance(operand, Tensor):
        return operand
    if is_nested(operand):
        if operand._layout.same_as(layout):
            return operand._values
        if operand._layout.element_shapes == layout.element_shapes:
            check_slow_path(f"{op}: repacking {name} into the input's packing")
            return layout.pack(operand._layout.unpack(operand._values))
        raise ValueError(
            f"{op}: {name} has element shapes {operand._layout.element_shapes}, expected {layout.element_shapes}"
        )
    if operand.dim() == 0:
        return operand
    if operand.dim() == 1 + len(layout.static_sizes) and operand.shape == (layout.num_rows, *layout.static_sizes):
        return operand.to(like.device)  # already packed (``.concat`` of a NestedTensor with this layout)
    if layout is like._layout:
        aligned = align_dense(like, operand)
        if aligned is not None:
            return aligned
    dense = operand if like._batch_first or operand.dim() < 2 else operand.movedim(1, 0)
    values = dense_to_values(layout, dense.to(like.device))
    if values is None:
        raise ValueError(
            f"{op}: cannot line up {name} of shape {tuple(operand.shape)} with NestedTensor elements; expected a "
            f"NestedTensor, a padded tensor of shape {_padded_shape(layout, like)}, or a tensor that broadcasts over "
            "the static dims"
        )
    return values


def _finish(result: Tensor, reference: NestedTensor, layout: NestedLayout, reduction: str) -> Tensor:
    """Wrap an unreduced result in ``layout``; rank-0 elements give a dense ``(B,)`` tensor."""
    if reduction != "none" or not layout.permutation:
        return result
    return packed_like(reference, result, layout)


# ---------------------------------------------------------------------------- elementwise losses

ELEMENTWISE_LOSSES = (
    F.mse_loss,
    F.l1_loss,
    F.smooth_l1_loss,
    F.huber_loss,
    F.binary_cross_entropy,
    F.binary_cross_entropy_with_logits,
    F.kl_div,
    F.soft_margin_loss,
    F.poisson_nll_loss,
    F.gaussian_nll_loss,
)
"""Losses of an input and a target of the same shape, computed position by position."""

_LINED_UP = ("input", "target", "weight", "pos_weight", "var")


def _elementwise_loss(func: Callable) -> Callable:
    def handler(*args: Any, **kwargs: Any) -> Tensor:
        arguments = _bind(func, args, kwargs)
        reference = next((arguments[n] for n in ("input", "target") if is_nested(arguments[n])), None)
        if reference is None:
            raise TypeError(f"{func.__name__} takes NestedTensors as input or target, not only as weights")
        layout = reference._layout
        for name in _LINED_UP:
            if name in arguments:
                arguments[name] = _lined_up(arguments[name], layout, reference, name, func.__name__)
        reduction = arguments["reduction"]
        if reduction == "batchmean":
            arguments["reduction"] = "sum"
            return func(**arguments) / max(len(reference), 1)
        return _finish(func(**arguments), reference, layout, reduction)

    handler.__name__ = handler.__qualname__ = func.__name__
    handler.__doc__ = f"``F.{func.__name__}`` on the packed values of the input and its lined-up target."
    return handler


for _loss in ELEMENTWISE_LOSSES:
    implements(_loss)(_elementwise_loss(_loss))


# ---------------------------------------------------------------------------- class losses


def drop_static_dim(layout: NestedLayout, dim: int) -> NestedLayout:
    r"""
    The layout of elements without static element dim ``dim`` (packed rows unchanged).

    Examples:
        >>> layout = drop_static_dim(NestedLayout.from_shapes([(3, 5), (2, 5)]), 1)
        >>> layout.element_shapes, layout.static_sizes
        (((3,), (2,)), ())
    """
    shapes = tuple(shape[:dim] + shape[dim + 1 :] for shape in layout.element_shapes)
    permutation = tuple(d - (d > dim) for d in layout.permutation if d != dim)
    static = tuple(size for d, size in zip(layout.static_dims, layout.static_sizes) if d != dim)
    return NestedLayout(shapes, permutation, layout.ragged_rank, static)


def _class_scores(input: NestedTensor, op: str) -> tuple[Tensor, NestedLayout, int]:
    """``(scores with classes at dim 1, layout of class-index targets, values dim the classes came from)``."""
    layout = input._layout
    if layout.rank == 0:
        raise ValueError(f"{op} needs NestedTensor elements with a class dim, got rank-0 elements")
    class_dim = 1 if layout.rank > 1 else 0
    values_dim = layout.values_dim(class_dim)
    if values_dim is not None:
        return input._values.movedim(values_dim, 1), drop_static_dim(layout, class_dim), values_dim
    dense = uniform_dense(input) if layout.rank == 1 else None
    if dense is None:
        raise ValueError(
            f"{op} needs the class dim (element dim {class_dim}) to have one size in every element, got element "
            f"shapes {layout.element_shapes[:4]}{'...' if len(input) > 4 else ''}"
        )
    return dense, NestedLayout.from_shapes([()] * len(input)), -1


def _class_targets(target: Any, input: NestedTensor, target_layout: NestedLayout, values_dim: int, op: str) -> Tensor:
    """Class indices lined up with ``target_layout``, or class probabilities shaped like the scores."""
    if is_nested(target):
        probabilities = same_layout(target, input)
    else:
        probabilities = isinstance(target, Tensor) and target.is_floating_point()
        probabilities = probabilities and (target.dim() == input.dim() or target.shape == input._values.shape)
    if not probabilities:
        return _lined_up(target, target_layout, input, "target", op)
    values = _lined_up(target, input._layout, input, "target", op)
    if values_dim < 0:
        return values.reshape(len(input), -1)
    return values.movedim(values_dim, 1)


def _class_loss(func: Callable, target_like_input: bool = False) -> Callable:
    """A handler of class loss ``func``; ``target_like_input`` when its target has the scores' shape (multi-label)."""

    def handler(*args: Any, **kwargs: Any) -> Tensor:
        arguments = _bind(func, args, kwargs)
        input = arguments["input"]
        if not is_nested(input):
            raise TypeError(
                f"{func.__name__} with a NestedTensor target needs a NestedTensor input; build one from padded "
                "scores with NestedTensor.from_tensor_mask(scores, target.mask)"
            )
        if is_nested(arguments.get("weight")):
            raise TypeError(f"{func.__name__}: class weights must be a dense tensor of shape (C,)")
        scores, target_layout, values_dim = _class_scores(input, func.__name__)
        target = arguments["target"]
        if is_nested(target) and target._layout.same_as(target_layout):
            target_layout = target._layout  # its index tensors may already be cached
        arguments["input"] = scores
        if target_like_input:
            lined_up = _lined_up(target, input._layout, input, "target", func.__name__)
            arguments["target"] = lined_up.reshape(scores.shape) if values_dim < 0 else lined_up.movedim(values_dim, 1)
        else:
            arguments["target"] = _class_targets(target, input, target_layout, values_dim, func.__name__)
        return _finish(func(**arguments), input, target_layout, arguments["reduction"])

    handler.__name__ = handler.__qualname__ = func.__name__
    handler.__doc__ = f"``F.{func.__name__}`` with classes at element dim 1 (0 for 1-D elements), on the packed values."
    return handler


cross_entropy = implements(F.cross_entropy)(_class_loss(F.cross_entropy))
nll_loss = implements(F.nll_loss)(_class_loss(F.nll_loss))
multi_margin_loss = implements(F.multi_margin_loss)(_class_loss(F.multi_margin_loss))
multilabel_margin_loss = implements(F.multilabel_margin_loss)(
    _class_loss(F.multilabel_margin_loss, target_like_input=True)
)


# ---------------------------------------------------------------------------- pair losses


@implements(F.cosine_embedding_loss)
def cosine_embedding_loss(*args: Any, **kwargs: Any) -> Tensor:
    r"""
    ``F.cosine_embedding_loss`` of sequences: ``(L_i, D)`` inputs, ``(L_i,)`` targets of 1 or -1, one pair per row.

    The features (element dim 1, or the whole element for ``(D,)`` elements) must have one size.

    Examples:
        >>> first = NestedTensor([torch.randn(3, 5), torch.randn(2, 5)])
        >>> second = NestedTensor([torch.randn(3, 5), torch.randn(2, 5)])
        >>> target = NestedTensor([torch.tensor([1, -1, 1]), torch.tensor([-1, 1])])
        >>> loss = F.cosine_embedding_loss(first, second, target)
        >>> torch.allclose(loss, F.cosine_embedding_loss(first.concat, second.concat, target.concat))
        True
    """
    arguments = _bind(F.cosine_embedding_loss, args, kwargs)
    input = next((arguments[n] for n in ("input1", "input2") if is_nested(arguments[n])), None)
    if input is None:
        raise TypeError("cosine_embedding_loss with a NestedTensor target needs NestedTensor inputs")
    op = "cosine_embedding_loss"
    scores, target_layout, values_dim = _class_scores(input, op)
    for name in ("input1", "input2"):
        lined_up = _lined_up(arguments[name], input._layout, input, name, op)
        arguments[name] = lined_up.reshape(scores.shape) if values_dim < 0 else lined_up.movedim(values_dim, 1)
    arguments["target"] = _lined_up(arguments["target"], target_layout, input, "target", op)
    return _finish(F.cosine_embedding_loss(**arguments), input, target_layout, arguments["reduction"])


__all__ = [
    "ELEMENTWISE_LOSSES",
    "cosine_embedding_loss",
    "cross_entropy",
    "drop_static_dim",
    "multi_margin_loss",
    "multilabel_margin_loss",
    "nll_loss",
]
