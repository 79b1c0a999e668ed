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


# ---------------------------------------------------------------------------------------------- torch.compile


TORCH_VERSION = tuple(int(part) for part in torch.__version__.split("+")[0].split(".")[:2])
GRAPH_BREAKS_INSIDE_TORCH_FUNCTION = TORCH_VERSION >= (2, 10)
"""Older dynamo (2.6 checked) traces a subclass' ``__torch_function__`` inline and cannot break the graph
inside it: there the eager fallbacks below raise their ``NotImplementedError`` instead (2.10 and 2.15 checked)."""


def _falls_back(call, match: str):
    """``call()``, or on older torch the error naming what could not be traced."""
    if GRAPH_BREAKS_INSIDE_TORCH_FUNCTION:
        return call()
    with pytest.raises(NotImplementedError, match=match):
        call()
    return None


def _block(weight: torch.Tensor, bias: torch.Tensor):
    def block(x):
        hidden = torch.nn.functional.linear(x, weight, bias)
        hidden = torch.nn.functional.gelu(torch.relu(hidden) * 2 + 1 - x.mean(-1, keepdim=True))
        scores = torch.nn.functional.softmax(hidden, -1) + hidden.sigmoid()
        return torch.where(scores > 0.5, scores, -scores).clamp(min=-0.9), scores.amax(1)

    return block


def _compile(fn, backend: str = "aot_eager", fullgraph: bool = True):
    import torch._dynamo.testing

    torch._dynamo.reset()
    counter = torch._dynamo.testing.CompileCounterWithBackend(backend)
    return torch.compile(fn, backend=counter, fullgraph=fullgraph), counter


def test_a_block_of_elementwise_ops_and_linear_compiles_into_one_graph():
    weight, bias = torch.randn(8, 8), torch.randn(8)
    block = _block(weight, bias)
    compiled, counter = _compile(block)
    nested = NestedTensor([torch.randn(3, 8), torch.randn(5, 8)])
    for inputs in (nested, NestedTensor([torch.randn(3, 8), torch.randn(5, 8)])):
        (got, got_peak), (want, want_peak) = compiled(inputs), block(inputs)
        assert isinstance(got, NestedTensor) and got._layout.same_as(want._layout)
        torch.testing.assert_close(got.concat, want.concat)
        torch.testing.assert_close(got_peak, want_peak)
    assert counter.frame_count == 1  # one graph, reused for a batch of the same element shapes
    compiled(NestedTensor([torch.randn(2, 8), torch.randn(4, 8)]))
    assert counter.frame_count == 2  # element shapes are static metadata: new shapes compile again


def test_the_block_compiles_with_inductor():
    if TORCH_VERSION < (2, 11):
        pytest.importorskip("setuptools", reason="inductor of this torch builds its CPU kernels with setuptools")
    weight, bias = torch.randn(8, 8), torch.randn(8)
    block = _block(weight, bias)
    compiled, counter = _compile(block, backend="inductor")
    nested = NestedTensor([torch.randn(3, 8), torch.randn(5, 8)])
    with torch.no_grad():
        got, want = compiled(nested)[0], block(nested)[0]
    torch.testing.assert_close(got.concat, want.concat, atol=1e-5, rtol=1e-5)
    assert counter.frame_count == 1


def test_eager_only_handlers_break_the_graph_and_run_eagerly(clean_tables):
    calls = []

    @implements(torch.nn.functional.softsign)
    def softsign(input):
        calls.append(torch.compiler.is_compiling())
        return apply_packed(torch.nn.functional.softsign, input)

    def block(x):
        return torch.nn.functional.softsign(x * 2) + 1

    nested = NestedTensor([torch.randn(3, 4), torch.randn(2, 4)])
    compiled, counter = _compile(block, fullgraph=False)
    result = _falls_back(lambda: compiled(nested), "softsign.*eager-only")
    if result is not None:
        torch.testing.assert_close(result.concat, block(nested).concat)
        assert counter.frame_count == 2 and calls[0] is False  # split around the eager call, which ran eagerly
    compiled, _ = _compile(block)
    with pytest.raises(Exception, match=r"compile-safe path not implemented for .*softsign.*eager-only"):
        compiled(nested)


def test_per_element_paths_are_never_traced():
    def block(x):
        return torch.kthvalue(x + 1, 1, 1).values * 2

    nested = NestedTensor([torch.randn(3), torch.randn(2)])
    compiled, _ = _compile(block, fullgraph=False)
    torch.testing.assert_close(compiled(nested).concat, block(nested).concat)
    compiled, _ = _compile(block)
    with pytest.raises(Exception, match="would fall back to per-element eager execution"):
        compiled(nested)


def test_training_steps_fall_back_to_eager_with_exact_gradients():
    layer = torch.nn.Linear(4, 3)
    sources = [torch.randn(3, 4, requires_grad=True), torch.randn(2, 4, requires_grad=True)]

    def step(x):
        return (torch.relu(layer(x)) * 2).sum()

    def elementwise(x):
        return (torch.relu(x) * 2 + 1).sigmoid().sum()

    expected = torch.autograd.grad(step(NestedTensor(sources)), layer.weight)[0]
    compiled, _ = _compile(step, fullgraph=False)
    with pytest.warns(UserWarning, match="requires grad cannot be compiled"):
        loss = _falls_back(lambda: compiled(NestedTensor([s.detach() for s in sources])), "requires grad")
    if loss is not None:  # the parameters require grad
        torch.testing.assert_close(torch.autograd.grad(loss, layer.weight)[0], expected)
    expected = torch.autograd.grad(elementwise(NestedTensor(sources)), sources)
    compiled, _ = _compile(elementwise, fullgraph=False)
    with pytest.warns(UserWarning, match="requires grad cannot be compiled"):
        loss = _falls_back(lambda: compiled(NestedTensor(sources)), "requires grad")  # the input requires grad
    for got, want in zip(torch.autograd.grad(loss, sources) if loss is not None else (), expected):
        torch.testing.assert_close(got, want)
    compiled, _ = _compile(step)
    with pytest.raises(Exception, match="requires grad cannot be compiled"), pytest.warns(UserWarning):
        compiled(NestedTensor([s.detach() for s in sources]))
