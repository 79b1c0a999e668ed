"""The per-element fallback, and the guarantee it gives: no torch function raises just because its input is nested.

``test_torch_function_runs_on_nested_tensors`` takes every function ``torch.overrides.get_testing_overrides()``
lists that runs on a plain float element given as its only argument, runs it on a NestedTensor of such elements,
and compares with the per-element results. The tables below list, each with its reason, the functions whose
NestedTensor meaning is not "the same call on every element" and the few that cannot apply to a batch.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from operator import attrgetter

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from danling.tensors import NestedTensor, forbid_slow_paths
from danling.tensors.ops._fallback import (
    PER_ELEMENT_FUNCTIONS,
    per_element_call,
    per_element_fallback,
    translate_dim_arguments,
)

from ..harness import assert_close_elements
from ..strategies import assert_elements, padded

aten = torch.ops.aten

BATCHES = {"rows": ((3, 4), (5, 4)), "squares": ((3, 3), (4, 4))}
"""Element shapes: a static last dim (``rows``), and both dims ragged (``squares``, for square-matrix functions)."""


def _exists(name: str) -> bool:
    try:
        attrgetter(name.removeprefix("torch."))(torch)
    except AttributeError:
        return False
    return True


_REDUCTION_OPS = (
    *("sum", "mean", "prod", "max", "min", "amax", "amin", "all", "any", "std", "var", "norm"),
    *("nansum", "nanmean", "count_nonzero", "argmax", "argmin", "median", "nanmedian", "aminmax"),
    *("var_mean", "std_mean", "logsumexp", "histc", "unique", "mode"),
)

CANNOT_APPLY = {
    **dict.fromkeys(("torch.msort", "torch.Tensor.msort"), "sorts along dim 0, the batch dim: elements have no order"),
    **dict.fromkeys(
        ("torch.nn.functional.dropout1d", "torch.nn.functional.dropout2d", "torch.nn.functional.dropout3d"),
        "channel dropout needs a channel dim of one size (or elements of rank 4); here element dim 0 varies",
    ),
    "torch.Tensor.set_": "a NestedTensor has no storage of its own to swap",
    "torch.Tensor.to_sparse": "tensors of different shapes have no sparse form together",
    "torch.Tensor.to_mkldnn": "tensors of different shapes have no MKL-DNN form together",
    "torch.Tensor.__dlpack__": "DLPack describes one strided array",
    "torch.fbgemm_linear_quantize_weight": "packs one dense weight matrix from its storage",
    "torch.fbgemm_pack_gemm_matrix_fp16": "packs one dense weight matrix from its storage",
}
"""Functions that must raise a clear error naming the NestedTensor, the batch or the elements."""

REDUCTIONS = {
    name
    for name in (
        *(f"torch{prefix}.{op}" for prefix in ("", ".Tensor") for op in _REDUCTION_OPS),
        *("torch.functional.norm", "torch.linalg.norm", "torch.linalg.vector_norm"),
    )
    if _exists(name)
}
"""Reductions over every value: with no dim, their meaning for a batch (one value over all real data, as
``sum`` does) is the reduction family's to define and test (``test_reduction.py``); here they must run."""

RANDOM = {
    *("torch.rand_like", "torch.randn_like"),
    *("torch.empty_like", "torch.nn.functional.dropout", "torch.nn.functional.gumbel_softmax", "torch.lobpcg"),
    *("torch.functional.pca_lowrank", "torch.functional.svd_lowrank", "torch.nn.functional.rrelu"),
    *(f"torch.nn.init.{name}" for name in ("uniform_", "normal_", "kaiming_uniform_")),
    *(f"torch.Tensor.{name}" for name in ("uniform_", "normal_", "cauchy_", "exponential_", "log_normal_")),
    *(f"torch.Tensor.{name}" for name in ("random_", "bernoulli_")),
}
"""Random or uninitialised results: values cannot match a per-element reference; shapes and dtypes must."""


def _flat(elements: list[Tensor]) -> Tensor:
    return torch.cat([e.reshape(-1) for e in elements])


def _over_the_batch(function: Callable, fill: float) -> Callable[[list[Tensor], NestedTensor], object]:
    """Reference of a normalisation across the batch at every position, over real values only."""

    def reference(elements: list[Tensor], nested: NestedTensor) -> list[Tensor]:
        result = function(padded(elements, fill), dim=0)
        return [result[i][tuple(slice(0, size) for size in e.shape)] for i, e in enumerate(elements)]

    return reference


BATCH_MEANING: dict[str, tuple[str, Callable[[list[Tensor], NestedTensor], object]]] = {
    **{
        f"torch.nn.functional.{name}": (
            "without dim, torch picks dim 0 of a 3-D input: the batch, normalised over real values only",
            _over_the_batch(getattr(F, name), float("inf") if name == "softmin" else -float("inf")),
        )
        for name in ("softmax", "log_softmax", "softmin")
    },
    **dict.fromkeys(
        ("torch.flatten", "torch.Tensor.flatten"),
        (
            "flattening every dim includes the batch: the padded tensor, flattened (spec)",
            lambda e, nt: padded(e).flatten(),
        ),
    ),
    **dict.fromkeys(
        ("torch.fliplr", "torch.Tensor.fliplr"),
        ("dim 1 of a NestedTensor is element dim 0", lambda e, nt: [t.flip(0) for t in e]),
    ),
    **dict.fromkeys(
        ("torch.flipud", "torch.Tensor.flipud", "torch.Tensor.__reversed__"),
        ("dim 0 is the batch: the elements in reverse order", lambda e, nt: e[::-1]),
    ),
    **dict.fromkeys(
        ("torch.unbind", "torch.Tensor.unbind", "torch.unbind_copy"),
        ("unbinding dim 0 gives the elements", lambda e, nt: tuple(e)),
    ),
    "torch.functional.atleast_3d": ("a NestedTensor of 2-D elements already has 3 dims", lambda e, nt: e),
    "torch.nn.functional.normalize": (
        "the default dim=1 is element dim 0",
        lambda e, nt: [F.normalize(t, dim=0) for t in e],
    ),
    **dict.fromkeys(
        ("torch.numel", "torch.Tensor.numel", "torch.Tensor.nelement"),
        ("counts the real values", lambda e, nt: sum(t.numel() for t in e)),
    ),
    "torch.Tensor.nbytes.__get__": ("bytes of the real values", lambda e, nt: sum(t.nbytes for t in e)),
    "torch.Tensor.__len__": ("the batch size", lambda e, nt: len(e)),
    "torch.Tensor.names.__get__": (
        "one name per dim, the batch dim included",
        lambda e, nt: (None,) * (e[0].dim() + 1),
    ),
    **dict.fromkeys(
        ("torch.Tensor.dim", "torch.Tensor.ndimension", "torch.Tensor.ndim.__get__"),
        ("the batch dim counts", lambda e, nt: e[0].dim() + 1),
    ),
    "torch.Tensor.dim_order": ("the batch dim counts", lambda e, nt: tuple(range(e[0].dim() + 1))),
    **dict.fromkeys(
        ("torch.Tensor.size", "torch.Tensor.shape.__get__"),
        ("the padded shape (spec)", lambda e, nt: padded(e).shape),
    ),
    **dict.fromkeys(
        ("torch.Tensor.data_ptr", "torch.Tensor.const_data_ptr"),
        ("the packed values' address", lambda e, nt: nt._values.data_ptr()),
    ),
    **dict.fromkeys(
        ("torch.Tensor.storage", "torch.Tensor.untyped_storage"),
        ("the packed values' storage", lambda e, nt: nt._values.untyped_storage().data_ptr()),
    ),
    "torch.Tensor._cdata.__get__": ("the wrapper's own C++ handle", lambda e, nt: nt._cdata),
    "torch.Tensor.tolist": ("nested lists of every element", lambda e, nt: [t.tolist() for t in e]),
    "torch.Tensor.__repr__": ("the NestedTensor repr", lambda e, nt: repr(nt)),
    **dict.fromkeys(
        ("torch.Tensor.numpy", "torch.Tensor.__array__"),
        ("the padded array, as the shape is the padded shape", lambda e, nt: padded(e).numpy()),
    ),
}
"""Functions whose NestedTensor meaning differs from "the same call on every element": the expected result."""


NOT_TENSOR_FUNCTIONS = {
    "torch.Tensor.share_memory_": "moves this process's test tensors to shared memory; tested in test_storage.py",
    "torch.sym_sum": "adds Python (symbolic) ints for shape arithmetic; on a tensor it iterates over dim 0, in a "
    "way that changed across torch versions",
}
"""Overridable functions that are not tensor functions to run on a batch, left out of the candidates."""


def _name(func: Callable) -> str:
    return torch.overrides.resolve_name(func) or repr(func)


def _elements(shapes: tuple) -> list[Tensor]:
    generator = torch.Generator().manual_seed(0)
    return [torch.randn(shape, generator=generator) for shape in shapes]


def _runs_alone(func: Callable, shapes: tuple) -> bool:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            [func(e) for e in _elements(shapes)]
    except Exception:
        return False
    return True


def _candidates() -> dict[str, tuple[Callable, list[str]]]:
    """Every overridable function that runs on a plain float element alone, with the batches it runs on."""
    found = {}
    for func in torch.overrides.get_testing_overrides():
        if _name(func) in NOT_TENSOR_FUNCTIONS:
            continue
        batches = [batch for batch, shapes in BATCHES.items() if _runs_alone(func, shapes)]
        if batches:
            found[_name(func)] = (func, batches)
    return found


CANDIDATES = _candidates()


def _compare_per_element(result: object, expected: list, exact_values: bool = True) -> None:
    if isinstance(expected[0], Tensor):
        assert isinstance(result, Tensor), f"expected tensors, got {type(result).__name__}"
        elements = list(result.unbind()) if isinstance(result, NestedTensor) else list(result.unbind(0))
        if exact_values:
            assert_close_elements(elements, expected, atol=1e-4, rtol=1e-4)
        else:
            assert [(t.shape, t.dtype) for t in elements] == [(t.shape, t.dtype) for t in expected]
    elif isinstance(expected[0], (tuple, list)) and all(isinstance(t, Tensor) for t in expected[0]):
        assert isinstance(result, (tuple, list)) and len(result) == len(expected[0])
        for part, column in zip(result, zip(*expected)):
            _compare_per_element(part, list(column), exact_values)
    else:
        assert all(value == expected[0] for value in expected), "per-element values differ, they cannot batch"
        assert result == expected[0]


def _compare(result: object, expected: object) -> None:
    if isinstance(expected, tuple) and expected and isinstance(expected[0], Tensor):
        assert isinstance(result, (tuple, list)), f"expected a tuple, got {type(result).__name__}"
        assert_close_elements(list(result), list(expected), atol=1e-6, rtol=1e-6)
    elif isinstance(expected, list) and expected and isinstance(expected[0], Tensor):
        _compare_per_element(result, expected)
    elif isinstance(expected, Tensor):
        torch.testing.assert_close(result, expected)
    elif hasattr(expected, "shape") and hasattr(expected, "dtype"):  # a numpy array
        assert (result == expected).all() and result.shape == expected.shape
    elif isinstance(result, (torch.UntypedStorage, torch.TypedStorage)):
        assert result.data_ptr() == expected
    else:
        assert result == expected


@pytest.mark.parametrize("name", sorted(CANDIDATES))
def test_torch_function_runs_on_nested_tensors(name):
    func, batches = CANDIDATES[name]
    for batch in batches:
        elements = _elements(BATCHES[batch])
        nested = NestedTensor([e.clone() for e in elements])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if name in CANNOT_APPLY:
                with pytest.raises((ValueError, NotImplementedError, TypeError), match=r"NestedTensor|batch|element"):
                    func(nested)
                continue
            result = func(nested)
            if name in REDUCTIONS:
                assert isinstance(result, (Tensor, tuple)), f"{name} on {batch}: got {type(result).__name__}"
                continue
            if name in BATCH_MEANING:
                _compare(result, BATCH_MEANING[name][1](elements, nested))
                continue
            expected = [func(e.clone()) for e in elements]
        _compare_per_element(result, expected, exact_values=name not in RANDOM)


VERSION_SPECIFIC = {"torch.Tensor.const_data_ptr", "torch.Tensor.names.__get__", "torch.rand_like", "torch.randn_like"}
"""Entries that are candidates on some supported torch versions only (2.6 has named tensors, no ``const_data_ptr``)."""


def test_the_tables_name_real_functions():
    listed = set(CANNOT_APPLY) | set(BATCH_MEANING) | RANDOM | REDUCTIONS | set(NOT_TENSOR_FUNCTIONS)
    assert {name for name in listed if not _exists(name)} <= VERSION_SPECIFIC, "entries that name no function"
    assert {name for name in listed - set(CANDIDATES) if _exists(name)} <= (
        REDUCTIONS | set(NOT_TENSOR_FUNCTIONS) | VERSION_SPECIFIC
    ), "entries that no longer name a candidate function"
    assert not (set(CANNOT_APPLY) & set(BATCH_MEANING)) and not (REDUCTIONS & set(BATCH_MEANING))
    assert len(CANDIDATES) > 500


# ------------------------------------------------------------------------------------------ the fallback itself


@pytest.fixture
def tensors():
    return [torch.randn(3, 4), torch.randn(5, 4)]


def test_unhandled_ops_run_per_element_with_translated_dims(tensors):
    nested = NestedTensor(tensors)
    with pytest.raises(RuntimeError, match=r"ran per element: aten\.kthvalue"), forbid_slow_paths():
        torch.kthvalue(nested, 2, 2)
    values, indices = torch.kthvalue(nested, 2, 2)
    assert_elements(values, [t.kthvalue(2, 1).values for t in tensors])
    assert_elements(indices, [t.kthvalue(2, 1).indices for t in tensors])
    assert_elements(nested.diagonal(dim1=1, dim2=2), [t.diagonal(dim1=0, dim2=1) for t in tensors])
    assert_elements(nested.diagonal(), [t.diagonal() for t in tensors])  # defaults keep their element meaning
    sequence_first = NestedTensor(tensors, batch_first=False)
    assert_elements(torch.kthvalue(sequence_first, 1, 0).values, [t.kthvalue(1, 0).values for t in tensors])
    assert_elements(torch.kthvalue(sequence_first, 1, -1).values, [t.kthvalue(1, 1).values for t in tensors])


def test_translate_dim_arguments_uses_the_schema(tensors):
    nested = NestedTensor(tensors)
    args, kwargs = translate_dim_arguments(aten.narrow.default, nested, (nested, 2, 1, 2), {})
    assert args[1:] == (1, 1, 2)  # only ``dim`` is a dim; start and length are kept
    _, kwargs = translate_dim_arguments(aten.flip.default, nested, (nested,), {"dims": [1, -1]})
    assert kwargs == {"dims": [0, 1]}
    with pytest.raises(ValueError, match="dim=0, which includes the batch dimension"):
        torch.kthvalue(nested, 1, 0)


def test_results_that_are_not_tensors(tensors):
    nested = NestedTensor(tensors)
    assert per_element_fallback(aten.is_pinned.default, (nested,), {}) is False  # every element agrees
    info = NestedTensor([torch.tensor(0, dtype=torch.int32), torch.tensor(0, dtype=torch.int32)])
    assert per_element_fallback(aten._linalg_check_errors.default, (info, "inv"), {"is_matrix": True}) is None
    scalars = NestedTensor([torch.tensor([2.0]), torch.tensor([3.0])])
    with pytest.raises(ValueError, match=r"cannot form a batch: 2\.0, 3\.0"):
        per_element_fallback(aten._local_scalar_dense.default, (scalars,), {})
    with pytest.raises(ValueError, match="tuple of 3, tuple of 5"):
        per_element_fallback(aten.unbind.int, (nested, 1), {})


def test_composites_that_read_the_padded_shape_run_per_element():
    squares = [torch.randn(3, 3), torch.randn(4, 4)]
    nested = NestedTensor(squares)
    assert_elements(torch.diag(nested), [t.diag() for t in squares])
    assert_elements(torch.cov(nested), [t.cov() for t in squares], exact=False)
    for got, want in zip(torch.where(nested > 0), zip(*(torch.where(t > 0) for t in squares))):
        assert_elements(got, want)
    assert_elements(torch.linalg.inv(nested), [torch.linalg.inv(t) for t in squares], exact=False)


def test_torch_level_functions_follow_each_element_shape():
    sequences = [torch.randn(6), torch.randn(4)]
    nested = NestedTensor(sequences)
    assert_elements(torch.fft.irfft(nested), [torch.fft.irfft(t) for t in sequences], exact=False)
    assert_elements(torch.linalg.vander(nested), [torch.linalg.vander(t) for t in sequences])
    grids = [torch.randn(3, 5), torch.randn(4, 5)]
    for got, want in zip(torch.gradient(NestedTensor(grids), dim=2), zip(*(torch.gradient(t, dim=1) for t in grids))):
        assert_elements(got, want, exact=False)
    shifted = per_element_call(
        torch.fft.fftshift, (NestedTensor(grids),), {"dim": -1}, PER_ELEMENT_FUNCTIONS[torch.fft.fftshift]
    )
    assert_elements(shifted, [torch.fft.fftshift(t, dim=-1) for t in grids])
    with pytest.raises(ValueError, match="includes the batch dimension"):
        torch.fft.fft(NestedTensor(grids), dim=0)


def test_in_place_ops_write_through_element_views(tensors):
    nested = NestedTensor(tensors)
    values = nested._values
    assert nested.renorm_(2, 1, 1.0) is nested
    assert nested._values is values
    assert_elements(nested, [t.renorm(2, 0, 1.0) for t in tensors], exact=False)


def test_operands_must_have_one_batch_size(tensors):
    first, second = NestedTensor(tensors), NestedTensor(tensors[:1])
    with pytest.raises(ValueError, match=r"batch length mismatch between operands of aten\.atan2\.default: 2 vs 1"):
        per_element_fallback(aten.atan2.default, (first, second), {})


def test_empty_batch_stays_empty():
    empty = NestedTensor([torch.ones(2)])[[]]
    values, indices = torch.kthvalue(empty, 1, 1)
    assert isinstance(values, NestedTensor) and len(values) == 0 and len(indices) == 0
    assert torch.ops.aten.unbind.int(empty, 0) == []


def test_fallback_is_differentiable():
    sources = [torch.randn(3, 4, dtype=torch.float64, requires_grad=True), torch.randn(2, 4, dtype=torch.float64)]
    sources[1].requires_grad_()

    def kth(first: Tensor, second: Tensor) -> Tensor:
        return torch.kthvalue(NestedTensor([first, second]), 2, 1).values.concat

    assert torch.autograd.gradcheck(kth, tuple(sources))
    renormed = lambda first, second: torch.renorm(NestedTensor([first, second]), 2, 2, 1.0).concat  # noqa: E731
    assert torch.autograd.gradcheck(renormed, tuple(sources))
