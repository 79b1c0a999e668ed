import pytest
import torch
from torch._C import DispatchKey

from danling.tensors import NestedTensor
from danling.tensors.ops import _registry
from danling.tensors.ops._fallback import per_element_fallback
from danling.tensors.ops._packed import apply_packed
from danling.tensors.ops._registry import (
    ATEN_OPS,
    TORCH_FUNCTIONS,
    aten_rule,
    implements,
    implements_aten,
    resolve_aten,
)

aten = torch.ops.aten


@pytest.fixture
def clean_tables():
    """Registrations made by a test are removed afterwards."""
    torch_functions, aten_ops, rules = dict(TORCH_FUNCTIONS), dict(ATEN_OPS), list(_registry.ATEN_RULES)
    compile_safe = set(_registry.COMPILE_SAFE)
    yield
    TORCH_FUNCTIONS.clear()
    TORCH_FUNCTIONS.update(torch_functions)
    ATEN_OPS.clear()
    ATEN_OPS.update(aten_ops)
    _registry.ATEN_RULES[:] = rules
    _registry.COMPILE_SAFE.clear()
    _registry.COMPILE_SAFE.update(compile_safe)
    _registry._resolved.clear()


@pytest.fixture
def nested():
    return NestedTensor([torch.tensor([1.0, -2.0, 3.0]), torch.tensor([-4.0, 5.0])])


def test_torch_level_handler_receives_the_python_call(clean_tables, nested):
    calls = []

    @implements(torch.nn.functional.softsign)
    def softsign(input):
        calls.append(input)
        return apply_packed(torch.nn.functional.softsign, input)

    result = torch.nn.functional.softsign(nested)
    assert calls == [nested] and isinstance(result, NestedTensor)
    assert torch.allclose(result.concat, torch.nn.functional.softsign(nested.concat))


def test_aten_handler_for_a_packet_covers_every_overload(clean_tables, nested):
    @implements_aten(aten.sgn)
    def sign(func, args, kwargs):
        return apply_packed(func, args[0], *args[1:], **kwargs)

    assert all(ATEN_OPS[getattr(aten.sgn, name)] is sign for name in aten.sgn.overloads())
    assert torch.sgn(nested).tolist() == [[1.0, -1.0, 1.0], [-1.0, 1.0]]


def test_rules_are_consulted_after_the_table_and_memoised(clean_tables, nested):
    seen = []

    @aten_rule(lambda op: op is aten.kthvalue.default)
    def kthvalue_rule(func, args, kwargs):
        seen.append(func)
        return per_element_fallback(func, args, kwargs)

    assert resolve_aten(aten.kthvalue.default) is kthvalue_rule
    values, _ = torch.kthvalue(nested, 1, 1)
    assert seen == [aten.kthvalue.default] and values.tolist() == [-2.0, -4.0]
    assert resolve_aten(aten.kthvalue.default) is kthvalue_rule
    assert _registry._resolved[aten.kthvalue.default] is kthvalue_rule

    @implements_aten(aten.kthvalue.default)
    def kthvalue_entry(func, args, kwargs):
        return per_element_fallback(func, args, kwargs)

    assert resolve_aten(aten.kthvalue.default) is kthvalue_entry  # an explicit entry wins over rules


def test_unhandled_ops_fall_back_per_element():
    assert resolve_aten(aten.kthvalue.default) is per_element_fallback


def test_aten_handlers_run_with_autograd_on_the_values(clean_tables):
    flags = []

    @implements_aten(aten.erfinv.default)
    def erfinv(func, args, kwargs):
        flags.append(torch._C._dispatch_tls_local_exclude_set().has(DispatchKey.AutogradFunctionality))
        return apply_packed(func, args[0])

    source = torch.tensor([0.1, 0.2, 0.3], requires_grad=True)
    nested = NestedTensor(source[:2], source[2:])
    torch.erfinv(nested).sum().backward()
    assert flags == [False]
    expected = torch.sqrt(torch.tensor(torch.pi)) / 2 * torch.exp(torch.erfinv(source.detach()) ** 2)
    assert torch.allclose(source.grad, expected)
    with torch.no_grad():
        torch.erfinv(nested)
    assert flags[-1] is True  # no grad wanted: the autograd keys stay excluded
    with torch.inference_mode():
        assert torch.erfinv(nested)._values.is_inference()


def test_eager_only_handlers_refuse_to_be_traced(clean_tables, nested, monkeypatch):
    monkeypatch.setattr(_registry, "_is_compiling", lambda: True)
    monkeypatch.setattr(_registry, "traced", lambda args, kwargs: True)  # as if the values were fake
    with pytest.raises(
        NotImplementedError, match=r"compile-safe path not implemented for aten\.equal\.default: aten handler"
    ):
        torch.equal(nested, nested)
    with pytest.raises(NotImplementedError, match="would fall back to per-element eager execution"):
        torch.kthvalue(nested, 1, 1)
    with pytest.raises(NotImplementedError, match="handler is marked eager-only"):
        torch.reshape(nested, (-1,))

    @implements_aten(aten.equal.default, compile_safe=True)
    def traced_equal(func, args, kwargs):
        return True

    assert torch.equal(nested, nested)
