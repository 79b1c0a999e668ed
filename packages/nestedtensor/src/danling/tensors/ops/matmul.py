r"""
Matrix products with NestedTensors: ``matmul`` (``@``), ``mm``, ``bmm``, ``mv`` and ``torch.einsum``.

Each is an einsum in NestedTensor dims (the batch dim has a letter), computed one of three ways:

1. **Packed** (the common case, ``nt @ weight``): the NestedTensor operands share one layout and
   one letter per ragged dim, no dense operand uses a ragged letter or the batch letter, and the
   output keeps every ragged letter (one einsum over the packed rows) or none of them (one einsum
   over the rows, then one sum of every element's rows).
2. **Dense**: when the elements of every NestedTensor operand share one shape, the values are a
   dense tensor in disguise and one dense einsum does it all, a dense ``(B, K, N)`` operand with one
   matrix per element included.
3. **Per element** (a documented slow path, guarded by ``check_slow_path``): products whose sizes
   vary per element on both sides (``q @ k.mT`` of sequences of different lengths: every element has
   its own matrix shape) and dense operands with one matrix per element of a ragged batch (``bmm``
   with a dense ``(B, K, N)``): one matmul per element on views of the values, where a padded batch
   would pay for the padding and a gather of weights per row would copy ``rows x K x N`` numbers.

The result is a NestedTensor when it keeps a ragged dim of the inputs, a dense tensor otherwise
(``mm`` of a batch of vectors by a matrix is ``(B, N)``, as for dense tensors).
"""

from __future__ import annotations

import string
from collections.abc import Iterator, Sequence

import torch
from torch import Tensor

from .._layout import NestedLayout
from ..nested_tensor import NestedTensor
from ._packed import batch_dim, from_elements, is_nested, packed_like, same_layout
from ._registry import check_slow_path, implements, implements_aten
from ._rows import is_uniform

aten = torch.ops.aten

Terms = list[list[str]]


def _fresh_letters(used: str) -> Iterator[str]:
    return (letter for letter in string.ascii_letters if letter not in used)


def parse_equation(equation: str, operands: Sequence[Tensor]) -> tuple[Terms, list[str]]:
    r"""
    One letter per dim of every operand and of the output: ``...`` expanded, an implicit output made explicit.

    Examples:
        >>> parse_equation("...ij,jk", [torch.zeros(2, 3, 4), torch.zeros(4, 5)])
        ([['a', 'i', 'j'], ['j', 'k']], ['a', 'i', 'k'])
    """
    equation = equation.replace(" ", "")
    left, arrow, right = equation.partition("->")
    inputs = left.split(",")
    if len(inputs) != len(operands):
        raise ValueError(f"einsum(): the equation {equation!r} names {len(inputs)} operands, got {len(operands)}")
    widths = [op.dim() - len(term.replace("...", "")) for term, op in zip(inputs, operands) if "..." in term]
    fresh = _fresh_letters(equation)
    ellipsis = [next(fresh) for _ in range(max(widths, default=0))]
    terms = []
    for term, operand in zip(inputs, operands):
        head, dots, tail = term.partition("...")
        letters = [*head, *(ellipsis[len(ellipsis) - (operand.dim() - len(head) - len(tail)) :] if dots else ()), *tail]
        if len(letters) != operand.dim():
            raise ValueError(
                f"einsum(): term {term!r} has {len(letters)} letters for an operand of {operand.dim()} dims"
            )
        terms.append(letters)
    if arrow:
        head, dots, tail = right.partition("...")
        return terms, [*head, *(ellipsis if dots else ()), *tail]
    counts = [letter for term in inputs for letter in term if letter != "."]
    return terms, [*ellipsis, *sorted(letter for letter in set(counts) if counts.count(letter) == 1)]


def _equation(terms: Terms, output: Sequence[str]) -> str:
    return ",".join("".join(term) for term in terms) + "->" + "".join(output)


def _dense_view(nt: NestedTensor) -> Tensor:
    """A NestedTensor whose elements share one shape, as the dense tensor of its logical dims (no padding)."""
    layout = nt._layout
    shape = layout.element_shapes[0]
    dense = nt._values.reshape(len(nt), *(shape[d] for d in layout.permutation))
    dense = dense.permute(0, *(1 + layout.permutation.index(d) for d in range(layout.rank)))
    return dense.movedim(0, batch_dim(nt))


def _nested_result(dense: Tensor, position: int, like: NestedTensor) -> NestedTensor:
    """A dense result whose dim ``position`` is the batch, as a NestedTensor."""
    batch_first = position == 0 or dense.dim() == 1
    elements = dense.movedim(position, 0)
    layout = NestedLayout.from_shapes([tuple(elements.shape[1:])] * elements.shape[0])
    values = elements.reshape(layout.num_rows, *layout.static_sizes) if layout.permutation else elements.reshape(-1)
    return type(like)._from_packed(
        values, layout, batch_first=batch_first, padding_value=like._padding_value, mask_value=like._mask_value
    )


class _Contraction:
    """An einsum over NestedTensor and dense operands, with the facts the three strategies need."""

    def __init__(self, terms: Terms, output: list[str], operands: Sequence[Tensor]) -> None:
        self.nested = [i for i, op in enumerate(operands) if is_nested(op)]
        self.like: NestedTensor = operands[self.nested[0]]
        batch_letters = {terms[i][batch_dim(operands[i])] for i in self.nested}
        if len(batch_letters) > 1:
            raise ValueError(
                f"einsum(): NestedTensor operands need one letter for their batch dims, got {batch_letters}"
            )
        self.batch = batch_letters.pop()
        terms, operands = [list(t) for t in terms], list(operands)
        for i, op in enumerate(operands):  # a dense size-1 batch axis just broadcasts
            if not is_nested(op) and self.batch in terms[i] and op.shape[terms[i].index(self.batch)] == 1:
                operands[i] = op.squeeze(terms[i].index(self.batch))
                terms[i].remove(self.batch)
        self.terms, self.output, self.operands = terms, output, operands
        self.element_terms = [
            [letter for d, letter in enumerate(terms[i]) if d != batch_dim(operands[i])]
            if i in self.nested
            else terms[i]
            for i in range(len(operands))
        ]
        self.ragged = {self.element_terms[i][d] for i in self.nested for d in operands[i]._layout.ragged_dims}
        self.keeps_ragged = any(letter in output for letter in self.ragged)
        if self.keeps_ragged and self.batch in output and output.index(self.batch) > 1:
            raise ValueError(
                f"einsum(): a NestedTensor result keeps its batch dim first or second (batch_first), but the output "
                f"{''.join(output)!r} puts {self.batch!r} at position {output.index(self.batch)}"
            )

    def dense(self) -> Tensor:
        """Every NestedTensor operand has elements of one shape: one dense einsum."""
        operands = [_dense_view(op) if is_nested(op) else op for op in self.operands]
        result = torch.einsum(_equation(self.terms, self.output), *operands)
        if self.batch in self.output and self.keeps_ragged:
            return _nested_result(result, self.output.index(self.batch), self.like)
        return result

    def packed(self) -> Tensor | None:
        """One einsum over the packed rows, or ``None`` when the operands do not allow it."""
        layout = self.like._layout
        ragged = [self.element_terms[self.nested[0]][d] for d in layout.ragged_dims]
        for i in self.nested:
            op = self.operands[i]
            static_letters = [self.element_terms[i][d] for d in layout.static_dims]
            if not same_layout(op, self.like) or [self.element_terms[i][d] for d in layout.ragged_dims] != ragged:
                return None
            if set(static_letters) & set(ragged):
                return None
        dense_letters = {letter for i, term in enumerate(self.terms) if i not in self.nested for letter in term}
        if dense_letters & {*ragged, self.batch} or not layout.permutation:
            return None
        kept = [letter for letter in ragged if letter in self.output]
        if kept and (len(kept) != len(ragged) or self.batch not in self.output):
            return None
        row = next(_fresh_letters("".join(letter for term in self.terms for letter in term)))
        terms = [
            [row, *(self.element_terms[i][d] for d in layout.static_dims)] if i in self.nested else term
            for i, term in enumerate(self.terms)
        ]
        element_output = [letter for letter in self.output if letter != self.batch]
        rest = [letter for letter in element_output if letter not in ragged]
        operands = [op._values if is_nested(op) else op for op in self.operands]
        if self.batch not in self.output:  # everything summed over the batch: the rows are summed too
            return torch.einsum(_equation(terms, rest), *operands)
        values = torch.einsum(_equation(terms, [row, *rest]), *operands)
        position = self.output.index(self.batch)
        if not kept:
            summed = values.new_zeros(len(self.like), *values.shape[1:])
            summed = summed.index_add(0, layout.row_batch_index(values.device), values)
            return summed.movedim(0, position)
        return self._rewrap(values, element_output, ragged, position)

    def _rewrap(self, values: Tensor, element_output: list[str], ragged: list[str], position: int) -> NestedTensor:
        layout = self.like._layout
        ragged_positions = [element_output.index(letter) for letter in ragged]
        static_positions = [d for d, letter in enumerate(element_output) if letter not in ragged]
        static_sizes = dict(zip(static_positions, values.shape[1:]))
        source = dict(zip(ragged_positions, layout.ragged_dims))
        shapes = tuple(
            tuple(shape[source[d]] if d in source else static_sizes[d] for d in range(len(element_output)))
            for shape in layout.element_shapes
        )
        new_layout = NestedLayout(shapes, (*ragged_positions, *static_positions), len(ragged), tuple(values.shape[1:]))
        return type(self.like)._from_packed(
            values,
            new_layout,
            batch_first=position == 0,
            padding_value=self.like._padding_value,
            mask_value=self.like._mask_value,
        )

    def per_element(self) -> Tensor:
        """One einsum per element, on views of the values (documented slow path)."""
        check_slow_path(f"einsum {_equation(self.terms, self.output)} per element")
        element_output = [letter for letter in self.output if letter != self.batch]
        terms = [
            [letter for letter in term if letter != self.batch] if self.batch in term else term for term in self.terms
        ]
        equation = _equation(terms, element_output)
        views = [op._layout.unpack(op._values) if is_nested(op) else None for op in self.operands]
        results = []
        for index in range(len(self.like)):
            operands = [
                view[index]
                if view is not None
                else (op.select(self.terms[i].index(self.batch), index) if self.batch in self.terms[i] else op)
                for i, (op, view) in enumerate(zip(self.operands, views))
            ]
            results.append(torch.einsum(equation, *operands))
        if self.batch not in self.output:
            return torch.stack(results).sum(0)
        position = self.output.index(self.batch)
        if not self.keeps_ragged:
            return torch.stack(results, position)
        nested = from_elements(results, like=self.like)
        nested.batch_first = position == 0 or not element_output
        return nested

    def compute(self) -> Tensor:
        if all(is_uniform(self.operands[i]._layout) for i in self.nested):
            return self.dense()
        result = self.packed()
        return self.per_element() if result is None else result


def nested_einsum(equation: str, operands: Sequence[Tensor]) -> Tensor:
    r"""
    ``torch.einsum`` with NestedTensor operands; letters name NestedTensor dims, the batch dim included.

    Examples:
        >>> nt = NestedTensor([torch.ones(3, 4), torch.ones(2, 4)])
        >>> torch.einsum("bld,de->ble", nt, torch.ones(4, 5)).shape
        torch.Size([2, 3, 5])
        >>> torch.einsum("bld->bd", nt)
        tensor([[3., 3., 3., 3.],
                [2., 2., 2., 2.]])
    """
    terms, output = parse_equation(equation, operands)
    return _Contraction(terms, output, operands).compute()


@implements(torch.einsum)
def einsum(equation: str, *operands) -> Tensor:
    """``torch.einsum(equation, *operands)`` (or with one list of operands) when a NestedTensor is among them."""
    if not isinstance(equation, str):
        raise NotImplementedError("einsum with NestedTensors takes an equation string, not the sublist format")
    if len(operands) == 1 and isinstance(operands[0], (list, tuple)):
        operands = tuple(operands[0])
    return nested_einsum(equation, operands)


def _matmul_terms(left: int, right: int) -> tuple[Terms, list[str]]:
    """Letters of ``torch.matmul`` for operands of ``left`` and ``right`` dims (batch dims broadcast)."""
    batch = list("abcdefgh"[: max(left, right, 2) - 2])
    row, inner, column = "x", "y", "z"
    first = [inner] if left == 1 else [*batch[len(batch) - (left - 2) :], row, inner]
    second = [inner] if right == 1 else [*batch[len(batch) - (right - 2) :], inner, column]
    output = batch if left > 2 or right > 2 else []
    return [first, second], [*output, *([row] if left > 1 else []), *([column] if right > 1 else [])]


def _weight_product(nt: NestedTensor, weight: Tensor) -> NestedTensor | None:
    """``nt @ weight`` for a 2-D dense weight along the static last dim of the values: one matmul, or ``None``."""
    layout = nt._layout
    if weight.dim() != 2 or not layout.permutation or layout.permutation[-1] != layout.rank - 1:
        return None
    if layout.ragged_rank == layout.rank:
        return None
    return packed_like(nt, nt._values.matmul(weight))


@implements_aten(aten.matmul.default)
def matmul(func, args, kwargs) -> Tensor:
    r"""
    ``nt @ other``, ``other @ nt``, ``torch.matmul``: dims as for dense tensors, the batch dim included.

    Examples:
        >>> nt = NestedTensor([torch.ones(3, 4), torch.ones(2, 4)])
        >>> (nt @ torch.ones(4, 6)).shape
        torch.Size([2, 3, 6])
        >>> (torch.ones(5, 3) @ NestedTensor([torch.ones(3, 4), torch.ones(3, 2)])).shape
        torch.Size([2, 5, 4])
    """
    left, right = args[0], args[1]
    if is_nested(left) and not is_nested(right):
        product = _weight_product(left, right)
        if product is not None:
            return product
    terms, output = _matmul_terms(left.dim(), right.dim())
    return _Contraction(terms, output, [left, right]).compute()


@implements_aten(aten.mm.default, aten.bmm.default, aten.mv.default)
def matrix_product(func, args, kwargs) -> Tensor:
    r"""
    ``torch.mm``/``bmm``/``mv``: ``matmul`` once the operand ranks are checked like the dense ops do.

    Examples:
        >>> vectors = NestedTensor([torch.ones(4), torch.ones(4)])
        >>> torch.mm(vectors, torch.ones(4, 2))
        tensor([[4., 4.],
                [4., 4.]])
        >>> torch.bmm(NestedTensor([torch.ones(3, 4), torch.ones(2, 4)]), torch.ones(2, 4, 5)).shape
        torch.Size([2, 3, 5])
    """
    left, right = args[0], args[1]
    ranks = {aten.mm.default: (2, 2), aten.bmm.default: (3, 3), aten.mv.default: (2, 1)}[func]
    if (left.dim(), right.dim()) != ranks:
        raise RuntimeError(f"{func}: expected operands of {ranks} dims, got {left.dim()} and {right.dim()}")
    terms, output = _matmul_terms(*ranks)
    return _Contraction(terms, output, [left, right]).compute()


__all__ = ["einsum", "matmul", "matrix_product", "nested_einsum", "parse_equation"]
