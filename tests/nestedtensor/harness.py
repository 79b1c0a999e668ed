"""One harness for every NestedTensor op test: the nested result must equal the per-element results.

``check_op`` builds NestedTensors from lists of element tensors, runs the op on them, runs the
reference op on every element alone, and compares values, shapes, dtypes and the gradients that
reach the source tensors. By default it also proves the op ran on the packed buffer (no
per-element Python loop) with ``forbid_slow_paths``.

    >>> import torch
    >>> elements = [torch.randn(3, 4), torch.randn(5, 4)]
    >>> result = check_op(torch.tanh, [elements])
    >>> result.shape
    torch.Size([2, 5, 4])

A dense result (an op whose per-element results all share a shape, such as ``nt.sum(dim=1)``)
is compared with the stacked per-element results.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from danling.tensors import NestedTensor
from danling.tensors.ops._registry import forbid_slow_paths


def _leaves(elements: Sequence[Tensor], grad: bool) -> list[Tensor]:
    return [t.detach().clone().requires_grad_(grad and t.is_floating_point()) for t in elements]


def _outputs(result: Any) -> list[Tensor]:
    if isinstance(result, NestedTensor):
        return list(result)  # the elements, whichever dim holds the batch (batch_first or not)
    if isinstance(result, Tensor):
        return list(result.unbind(0))
    raise TypeError(f"expected a NestedTensor or a Tensor from the op, got {type(result).__name__}")


def _nested_result_elements(result: Any, expected: list[Tensor], dense: bool | None) -> list[Tensor]:
    if dense is True and isinstance(result, NestedTensor):
        raise AssertionError("expected a dense Tensor (all per-element results share a shape), got a NestedTensor")
    if dense is False and not isinstance(result, NestedTensor):
        raise AssertionError(f"expected a NestedTensor, got {type(result).__name__}")
    if not isinstance(result, NestedTensor):
        assert result.shape == torch.Size([len(expected), *expected[0].shape]), (result.shape, expected[0].shape)
    return _outputs(result)


def assert_close_elements(actual: Sequence[Tensor], expected: Sequence[Tensor], atol: float, rtol: float) -> None:
    """Same count, shapes and dtypes, values close (NaNs equal)."""
    assert len(actual) == len(expected), (len(actual), len(expected))
    for index, (got, want) in enumerate(zip(actual, expected)):
        assert got.shape == want.shape, f"element {index}: shape {tuple(got.shape)} != {tuple(want.shape)}"
        assert got.dtype == want.dtype, f"element {index}: dtype {got.dtype} != {want.dtype}"
        torch.testing.assert_close(got, want, atol=atol, rtol=rtol, equal_nan=True, msg=f"element {index}")


def check_op(
    op: Callable[..., Any],
    operands: Sequence[Sequence[Tensor]],
    reference: Callable[..., Any] | None = None,
    *,
    nested_kwargs: dict[str, Any] | None = None,
    grad: bool = True,
    packed: bool = True,
    dense: bool | None = None,
    atol: float = 1e-5,
    rtol: float = 1.3e-6,
) -> Any:
    """Check ``op(*nested_operands)`` against ``reference(*element_operands)`` for every element.

    Args:
        op: the call on NestedTensors, e.g. ``lambda x: F.linear(x, w)``.
        operands: one list of element tensors per nested operand (all lists the same length).
        reference: the call on one element of each operand; defaults to ``op``.
        nested_kwargs: keyword arguments of the NestedTensor constructor (``batch_first`` ...).
        grad: also compare the gradients reaching the source tensors (floating point only).
        packed: run ``op`` inside ``forbid_slow_paths()`` to prove no per-element loop runs.
        dense: ``True`` if the result must be a dense Tensor, ``False`` if it must be nested.

    Returns the op's result, for further assertions.
    """
    reference = reference or op
    count = len(operands[0])
    assert all(len(elements) == count for elements in operands), "every operand needs the same batch size"
    nested_sources = [_leaves(elements, grad) for elements in operands]
    element_sources = [_leaves(elements, grad) for elements in operands]
    nested = [NestedTensor(sources, **(nested_kwargs or {})) for sources in nested_sources]
    if packed:
        with forbid_slow_paths():
            result = op(*nested)
    else:
        result = op(*nested)
    expected = [reference(*(sources[index] for sources in element_sources)) for index in range(count)]
    actual = _nested_result_elements(result, expected, dense)
    assert_close_elements([t.detach() for t in actual], [t.detach() for t in expected], atol, rtol)
    if grad and any(t.requires_grad for sources in nested_sources for t in sources):
        _check_gradients(actual, expected, nested_sources, element_sources, atol, rtol)
    return result


def _check_gradients(
    actual: list[Tensor],
    expected: list[Tensor],
    nested_sources: list[list[Tensor]],
    element_sources: list[list[Tensor]],
    atol: float,
    rtol: float,
) -> None:
    generator = torch.Generator().manual_seed(0)
    weights = [torch.randn(t.shape, generator=generator, dtype=torch.float64) for t in expected]
    differentiable = [(got, want, w) for got, want, w in zip(actual, expected, weights) if want.requires_grad]
    if not differentiable:
        return
    nested_loss = sum((got.double() * w).sum() for got, _, w in differentiable)
    element_loss = sum((want.double() * w).sum() for _, want, w in differentiable)
    nested_loss.backward()
    element_loss.backward()
    for operand, (nested, element) in enumerate(zip(nested_sources, element_sources)):
        for index, (got, want) in enumerate(zip(nested, element)):
            if want.grad is None:
                assert got.grad is None or not got.grad.any(), f"operand {operand} element {index}: unexpected grad"
                continue
            assert got.grad is not None, f"operand {operand} element {index}: gradient did not reach the source"
            torch.testing.assert_close(
                got.grad, want.grad, atol=atol * 10, rtol=rtol * 10, msg=f"grad of operand {operand} element {index}"
            )
