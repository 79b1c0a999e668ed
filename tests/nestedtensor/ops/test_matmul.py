import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from danling.tensors import NestedTensor, forbid_slow_paths
from danling.tensors.ops.matmul import parse_equation

from ..harness import check_op


@st.composite
def lengths(draw, low: int = 0) -> list[int]:
    return draw(st.lists(st.integers(low, 5), min_size=1, max_size=4))


@given(lengths())
def test_nested_times_dense_weight_runs_on_the_packed_rows(sizes):
    weight, vector = torch.randn(4, 6), torch.randn(4)
    tensors = [torch.randn(n, 4) for n in sizes]
    check_op(lambda x: x @ weight, [tensors], lambda e: e @ weight)
    check_op(lambda x: torch.matmul(x, vector), [tensors], lambda e: e @ vector)
    heads = [torch.randn(2, n, 4) for n in sizes]  # (heads, length, dim): a static dim before the ragged one
    per_head = torch.randn(2, 4, 3)
    check_op(lambda x: x @ weight, [heads], lambda e: e @ weight)
    check_op(lambda x: x @ per_head, [heads], lambda e: e @ per_head)
    columns = [torch.randn(4, n) for n in sizes]
    left = torch.randn(5, 4)
    check_op(lambda x: left @ x, [columns], lambda e: left @ e)
    check_op(lambda x: x.transpose(1, 2) @ weight, [columns], lambda e: e.T @ weight)


@given(lengths(low=1))
def test_products_of_two_ragged_sizes_run_per_element(sizes):
    queries = [torch.randn(n, 4) for n in sizes]
    keys = [torch.randn(n + 1, 4) for n in sizes]
    check_op(lambda q, k: q @ k.mT, [queries, keys], lambda q, k: q @ k.T, packed=False)


def test_same_layout_operands_contract_on_the_packed_rows():
    first = [torch.randn(3, 2, 4), torch.randn(5, 2, 4)]
    second = [torch.randn(3, 2, 4), torch.randn(5, 2, 4)]
    check_op(lambda a, b: torch.einsum("blhd,blhd->blh", a, b), [first, second], lambda a, b: (a * b).sum(-1))
    check_op(
        lambda a, b: torch.einsum("blhd,blhe->blde", a, b),
        [first, second],
        lambda a, b: torch.einsum("lhd,lhe->lde", a, b),
    )


def test_einsum_in_nested_tensor_dims():
    tensors = [torch.randn(3, 4), torch.randn(5, 4)]
    weight = torch.randn(4, 6)
    check_op(lambda x: torch.einsum("bld,de->ble", x, weight), [tensors], lambda e: e @ weight)
    check_op(lambda x: torch.einsum("bld,de->bel", x, weight), [tensors], lambda e: (e @ weight).T)
    check_op(lambda x: torch.einsum("...d,de->...e", x, weight), [tensors], lambda e: e @ weight)
    check_op(lambda x: torch.einsum("bld,de", x, weight), [tensors], lambda e: (e @ weight).T)  # implicit: "bel"
    summed = check_op(lambda x: torch.einsum("bld->bd", x), [tensors], lambda e: e.sum(0), dense=True)
    assert summed.shape == (2, 4)
    check_op(
        lambda x: torch.einsum("bld,d->b", x, weight[:, 0]), [tensors], lambda e: (e @ weight[:, 0]).sum(), dense=True
    )
    with forbid_slow_paths():
        total = torch.einsum("bld->", NestedTensor(tensors))
    torch.testing.assert_close(total, sum(t.sum() for t in tensors))
    with pytest.raises(ValueError, match="keeps its batch dim first or second"):
        torch.einsum("bld->ldb", NestedTensor(tensors))
    sequence_first = check_op(
        lambda x: torch.einsum("lbd,de->lbe", x, weight),
        [tensors],
        lambda e: e @ weight,
        nested_kwargs={"batch_first": False},
    )
    assert not sequence_first.batch_first
    check_op(lambda x: torch.einsum(["bld", "de"][0] + ",de->bel", [x, weight]), [tensors], lambda e: (e @ weight).T)


def test_dense_operands_with_a_batch_axis():
    tensors = [torch.randn(3, 4), torch.randn(5, 4)]
    per_element = torch.randn(2, 4, 6)
    result = torch.bmm(NestedTensor(tensors), per_element)
    for element, expected in zip(result, [t @ w for t, w in zip(tensors, per_element)]):
        torch.testing.assert_close(element, expected)
    broadcast = torch.matmul(NestedTensor(tensors), torch.randn(1, 4, 6))
    assert broadcast.shape == (2, 5, 6)
    uniform = [torch.randn(3, 4), torch.randn(3, 4)]
    uniform_result = torch.bmm(NestedTensor(uniform), per_element)  # one dense bmm
    for element, expected in zip(uniform_result, [t @ w for t, w in zip(uniform, per_element)]):
        torch.testing.assert_close(element, expected)


def test_mm_and_mv_of_a_batch_of_vectors_are_dense():
    vectors = [torch.randn(4), torch.randn(4)]
    weight = torch.randn(4, 3)
    check_op(lambda x: torch.mm(x, weight), [vectors], lambda e: e @ weight, dense=True)
    check_op(lambda x: torch.mv(x, vectors[0]), [vectors], lambda e: e @ vectors[0], dense=True)
    matrices = [torch.randn(3, 4), torch.randn(5, 4)]
    with pytest.raises(RuntimeError, match=r"expected operands of \(2, 2\) dims, got 3 and 2"):
        torch.mm(NestedTensor(matrices), weight)
    with pytest.raises(RuntimeError, match=r"expected operands of \(3, 3\) dims"):
        torch.bmm(NestedTensor(matrices), weight)


def test_weight_gradient_sums_over_every_row():
    tensors = [torch.randn(3, 4), torch.randn(5, 4)]
    weight = torch.randn(4, 6, requires_grad=True)
    reference = weight.detach().clone().requires_grad_()
    (NestedTensor(tensors) @ weight).concat.square().sum().backward()
    sum((t @ reference).square().sum() for t in tensors).backward()
    torch.testing.assert_close(weight.grad, reference.grad)


def test_parse_equation_expands_ellipsis_and_implicit_output():
    assert parse_equation("...ij,jk", [torch.zeros(2, 3, 4), torch.zeros(4, 5)]) == (
        [["a", "i", "j"], ["j", "k"]],
        ["a", "i", "k"],
    )
    assert parse_equation("ij,jk->ik", [torch.zeros(2, 3), torch.zeros(3, 4)])[1] == ["i", "k"]
    with pytest.raises(ValueError, match="names 2 operands, got 1"):
        parse_equation("ij,jk->ik", [torch.zeros(2, 3)])
    with pytest.raises(ValueError, match="has 2 letters for an operand of 3 dims"):
        parse_equation("ij->i", [torch.zeros(2, 3, 4)])
    with pytest.raises(ValueError, match="one letter for their batch dims"):
        torch.einsum("bi,ci->bc", NestedTensor([torch.zeros(2)]), NestedTensor([torch.zeros(2)]))


def test_gradcheck():
    first = torch.randn(3, 2, dtype=torch.float64, requires_grad=True)
    second = torch.randn(1, 2, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)

    def products(a, b, w):
        nested = NestedTensor([a, b])
        pieces = [
            (nested @ w).concat,
            torch.einsum("bld,de->bel", nested, w).concat,
            torch.einsum("bld->bd", nested),
            (nested @ nested.mT).concat,
            torch.bmm(nested, torch.stack([w, w * 2])).concat,
        ]
        return torch.cat([piece.flatten() for piece in pieces])

    assert torch.autograd.gradcheck(products, (first, second, weight))
