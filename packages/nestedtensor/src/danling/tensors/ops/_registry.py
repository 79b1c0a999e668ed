r"""
Dispatch tables of NestedTensor: which handler runs for a torch function or an aten op.

How a call reaches a handler
============================

``NestedTensor`` has two entry points, both thin: they look the call up here.

1. ``__torch_function__`` sees every Python-level call on a NestedTensor (``torch.sum(nt)``,
   ``nt.sum()``, ``nt[0]``, ``F.linear(nt, w)``, property getters), before autograd and before
   composite ops decompose. ``TORCH_FUNCTIONS`` maps the Python callable (``torch.sum``,
   ``torch.Tensor.sum``, ``torch.Tensor.__getitem__``, ``F.linear``: register every alias you handle)
   to a handler called as ``handler(*args, **kwargs)``. On a miss the call continues into C++ with
   torch-function handling and the wrapper's autograd kernels switched off (``continue_to_aten``;
   handlers that want the aten path for some inputs call it too); calls that only read metadata
   (``nt.is_cuda``) end there.
2. Calls that compute reach ``__torch_dispatch__`` as one aten overload each, with normalised
   arguments; composite ops arrive whole (``aten.linear.default``, ``aten.softmax.int``).
   ``ATEN_OPS`` maps overloads to handlers called as ``handler(func, args, kwargs)``. A miss
   consults the rules registered with [`aten_rule`][danling.tensors.ops._registry.aten_rule] (every
   op tagged ``torch.Tag.pointwise`` runs on the packed values, see ``elementwise.py``), then runs
   the decomposition of a composite op (its parts dispatch here again), and finally
   [`per_element_fallback`][danling.tensors.ops._fallback.per_element_fallback], which runs the op on
   every element and packs the results, so every torch function works on a NestedTensor.

Prefer the aten level: arguments are normalised (one signature per overload), and one handler
serves ``torch.add``, ``Tensor.add``, ``Tensor.__add__`` and calls made from C++. Use the torch level
when the Python signature carries meaning the aten op loses (``reshape`` and ``flatten`` would
decompose into ``view`` with sizes computed from the padded shape), for speed on the hottest calls
(it skips the trip through C++), or when the op returns plain tensors that are views of the values
(``nt[0]``, ``unbind``).

Autograd lives on the packed values
===================================

The wrapper never requires grad and never enters C++ autograd; ``nt._values`` carries the graph,
and ``nt.requires_grad``/``nt.grad``/``nt.backward`` delegate to it. Torch-level handlers run with
autograd on, so whatever they compute on ``_values`` is recorded. Aten-level handlers run below
autograd, so ``dispatch_aten`` re-enables it around them (``inner_autograd``). Either way a
handler only computes on real tensors and never writes a backward formula: gradients of
``nt.sum()``, ``nt.tensor`` or ``nt * w`` (``w`` a dense tensor requiring grad) reach the tensors
the NestedTensor was built from, and ``w``.

Writing a handler
=================

A handler module (one per op family, imported by ``ops/__init__.py``) looks like::

    from ._packed import apply_packed, element_dim
    from ._registry import implements, implements_aten

    @implements_aten(torch.ops.aten.tanh.default)
    def tanh(func, args, kwargs):
        return apply_packed(func, args[0], *args[1:], **kwargs)

    @implements(torch.cumsum, torch.Tensor.cumsum)
    def cumsum(input, dim, *, dtype=None):
        ...

Helpers for handlers live in ``_packed.py``:

- ``is_nested(x)``, ``same_layout(a, b)``: type and layout checks;
- ``packed_like(nt, values, layout=None)``: wrap new values in ``nt``'s layout and configuration
  (trailing dims may change size, e.g. after a linear layer on a static last dim);
- ``apply_packed(func, nt, *args, **kwargs)``: ``packed_like(nt, func(nt._values, ...))``;
- ``unwrap_packed(args, kwargs)``: replace NestedTensors by their values and align dense operands
  with the packed rows, or ``None`` when the operands do not line up;
- ``element_dim(nt, dim)``: logical dim -> element dim (``ValueError`` for the batch dim);
- ``from_elements(tensors, like=nt)``: pack a list of per-element results;
- ``per_element_fallback(func, args, kwargs)`` (in ``_fallback.py``): the generic slow path.

Layout objects (``nt._layout``, ``_layout.py``) answer which element dims are ragged or static,
where a static dim sits in ``values`` (``values_dim``), and give cached per-device index tensors
(``row_batch_index``, ``row_coordinates``, ``padded_row_index``, ``valid_mask``).

Rules of the house: no Python loop over elements except in a documented per-element path (guard it
with ``check_slow_path`` so tests can forbid it with ``forbid_slow_paths()``; padded copies are
guarded by ``check_padding`` and forbidden with ``forbid_slow_paths(padding=True)``); metadata stays on the
CPU and is copied to the device once per layout; aten handlers that return plain tensors must not
return views of ``_values`` (the wrapper's autograd kernel would re-register them as views of the
wrapper), so element views are served at the torch level.

``torch.compile``
=================

A NestedTensor is a traceable wrapper subclass (``__tensor_flatten__``): dynamo records torch calls
on it, and the calls run through these tables on fake values while dynamo and AOTAutograd trace, so a
compiled graph holds the handlers' ops on the packed values. A handler may run there only if it was
registered with ``compile_safe=True`` (``implements``, ``implements_aten``, ``aten_rule``): it must
compute on ``_values`` with torch ops, read metadata only from the layout (Python ints on the CPU)
and never loop over elements. Anything else (an eager-only handler, the per-element fallback, any
path that calls ``check_slow_path``) raises ``NotImplementedError`` naming the op while tracing;
dynamo turns that into a graph break (the op runs eagerly, the rest compiles) and
``fullgraph=True`` into an error carrying the message. Layouts are Python metadata, so a compiled
function is specialised to the element shapes it saw, like a static-shape graph.

Where dynamo traces our Python itself (the body of a torch function whose call broke the graph),
eager-only handlers and misses go through ``torch._dynamo.disable`` (``call_while_compiling``,
``continue_while_compiling``) so they run eagerly. Values that require grad are never traced
(``check_compiled_autograd``): the wrapper keeps C++ autograd out, so AOTAutograd would see no graph
to differentiate and drop the gradients; those parts run eagerly with a warning. On torch 2.6,
whose dynamo inlines ``__torch_function__`` and cannot break the graph inside it, these fallbacks
raise their ``NotImplementedError`` instead.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch._C import DispatchKey
from torch._guards import TracingContext
from torch._subclasses.fake_tensor import is_fake

from .. import _guard
from .._guard import check_padding, forbid_slow_paths

__all__ = [
    "ATEN_OPS",
    "ATEN_RULES",
    "COMPILE_SAFE",
    "TORCH_FUNCTIONS",
    "aten_rule",
    "below_autograd",
    "call_while_compiling",
    "check_compiled_autograd",
    "check_padding",
    "check_slow_path",
    "compile_unsupported",
    "continue_to_aten",
    "continue_while_compiling",
    "dispatch_aten",
    "forbid_slow_paths",
    "implements",
    "implements_aten",
    "inner_autograd",
    "resolve_aten",
    "traced",
]

AtenHandler = Callable[[Any, tuple, dict], Any]

TORCH_FUNCTIONS: dict[Callable, Callable] = {}
"""Python-level callables (``torch.sum``, ``torch.Tensor.__getitem__``) -> ``handler(*args, **kwargs)``."""

ATEN_OPS: dict[torch._ops.OpOverload, AtenHandler] = {}
"""Aten overloads (``aten.sum.dim_IntList``) -> ``handler(func, args, kwargs)``."""

ATEN_RULES: list[tuple[Callable[[torch._ops.OpOverload], bool], AtenHandler]] = []
"""``(predicate, handler)`` pairs consulted, in order, for overloads missing from ``ATEN_OPS``."""

COMPILE_SAFE: set = set()
"""Functions and overloads whose handler may run while ``torch.compile`` traces."""

_COMPILE_SAFE_RULES: set = set()

_resolved: dict[torch._ops.OpOverload, AtenHandler] = {}


def implements(*funcs: Callable, compile_safe: bool = False) -> Callable[[Callable], Callable]:
    r"""
    Register a torch-level handler for each of ``funcs`` (a torch function, a ``Tensor`` method, ...).

    Examples:
        >>> @implements(torch.Tensor.element_size)
        ... def element_size(self):
        ...     return self._values.element_size()
        >>> TORCH_FUNCTIONS[torch.Tensor.element_size] is element_size
        True
        >>> del TORCH_FUNCTIONS[torch.Tensor.element_size]
    """

    def register(handler: Callable) -> Callable:
        for func in funcs:
            TORCH_FUNCTIONS[func] = handler
            (COMPILE_SAFE.add if compile_safe else COMPILE_SAFE.discard)(func)
        return handler

    return register


def _overloads(op: torch._ops.OpOverload | torch._ops.OpOverloadPacket) -> list[torch._ops.OpOverload]:
    if isinstance(op, torch._ops.OpOverloadPacket):
        return [getattr(op, name) for name in op.overloads()]
    return [op]


def implements_aten(
    *ops: torch._ops.OpOverload | torch._ops.OpOverloadPacket, compile_safe: bool = False
) -> Callable[[AtenHandler], AtenHandler]:
    r"""
    Register an aten-level handler for each overload in ``ops`` (a packet registers all its overloads).

    Examples:
        >>> @implements_aten(torch.ops.aten.sgn)
        ... def sgn(func, args, kwargs):
        ...     raise NotImplementedError
        >>> ATEN_OPS[torch.ops.aten.sgn.default] is sgn
        True
        >>> for op in _overloads(torch.ops.aten.sgn):
        ...     del ATEN_OPS[op]
    """

    def register(handler: AtenHandler) -> AtenHandler:
        for op in ops:
            for overload in _overloads(op):
                ATEN_OPS[overload] = handler
                _resolved.pop(overload, None)
                (COMPILE_SAFE.add if compile_safe else COMPILE_SAFE.discard)(overload)
        return handler

    return register


def aten_rule(
    predicate: Callable[[torch._ops.OpOverload], bool], compile_safe: bool = False
) -> Callable[[AtenHandler], AtenHandler]:
    r"""
    Register a handler for every overload that ``predicate`` accepts and ``ATEN_OPS`` does not list.

    With ``compile_safe=True`` the overloads it resolves join ``COMPILE_SAFE``.

    Examples:
        >>> @aten_rule(lambda op: op.name().startswith("aten::special_never_called"))
        ... def never(func, args, kwargs):
        ...     raise NotImplementedError
        >>> ATEN_RULES.pop()[1] is never
        True
    """

    def register(handler: AtenHandler) -> AtenHandler:
        ATEN_RULES.append((predicate, handler))
        if compile_safe:
            _COMPILE_SAFE_RULES.add(handler)
        _resolved.clear()
        return handler

    return register


def decompose(func: torch._ops.OpOverload, args: tuple, kwargs: dict) -> Any:
    """Default for composite ops: run their aten decomposition, whose parts dispatch here again."""
    return func.decompose(*args, **kwargs)


def resolve_aten(func: torch._ops.OpOverload) -> AtenHandler:
    """
    The handler ``__torch_dispatch__`` runs for ``func``.

    In order: its ``ATEN_OPS`` entry, the first matching rule, the decomposition of a composite op
    (``aten.linear`` into ``t`` and ``matmul``...), the per-element fallback.
    """
    handler = ATEN_OPS.get(func) or _resolved.get(func)
    if handler is not None:
        return handler
    handler = next((rule for predicate, rule in ATEN_RULES if predicate(func)), None)
    if handler in _COMPILE_SAFE_RULES:
        COMPILE_SAFE.add(func)
    if handler is None and torch._C._dispatch_has_kernel_for_dispatch_key(func.name(), "CompositeImplicitAutograd"):
        handler = decompose
    if handler is None:
        from ._fallback import per_element_fallback

        handler = per_element_fallback
    _resolved[func] = handler
    return handler


def compile_unsupported(op: object, detail: str) -> None:
    """Raise the error that tells a ``torch.compile`` user which op has no traceable handler yet."""
    raise NotImplementedError(f"NestedTensor compile-safe path not implemented for {op}: {detail}")


def _is_compiling() -> bool:
    """Whether ``torch.compile`` is tracing: dynamo itself, or ops it (or AOTAutograd) runs on fake values."""
    return torch.compiler.is_compiling() or TracingContext.try_get() is not None


def traced(args: tuple, kwargs: dict) -> bool:
    r"""
    Whether a call on these operands is part of a ``torch.compile`` trace.

    Dynamo also calls tensor methods on the real inputs it wraps (``is_contiguous``, ``untyped_storage``):
    those calls see real packed values and run as in eager mode.

    Examples:
        >>> from danling.tensors import NestedTensor
        >>> traced((NestedTensor([[1.0, 2.0]]),), {})
        False
    """
    if torch.compiler.is_dynamo_compiling():
        return True
    if not _is_compiling():
        return False
    nested = next((a for a in (*args, *kwargs.values()) if hasattr(a, "_layout") and hasattr(a, "_values")), None)
    return nested is None or is_fake(nested._values)


def _call(handler: Callable, args: tuple, kwargs: dict) -> Any:
    return handler(*args, **kwargs)


def _needs_grad(args: tuple, kwargs: dict) -> bool:
    return torch.is_grad_enabled() and any(isinstance(a, Tensor) and a.requires_grad for a in (*args, *kwargs.values()))


def call_while_compiling(func: Callable, handler: Callable, args: tuple, kwargs: dict) -> Any:
    r"""
    What ``__torch_function__`` does with a handler while ``torch.compile`` traces.

    When dynamo symbolically traces Python code that calls ``func`` (the body of a torch function
    whose call broke the graph), a compile-safe handler is traced as it is; an eager-only one, or
    one whose operands require grad (see ``check_compiled_autograd``), is called through
    ``torch._dynamo.disable``: a graph break, after which it runs eagerly. When the graph's ops run
    on fake values (dynamo's shape propagation, AOTAutograd), an eager-only handler raises
    ``NotImplementedError``, which dynamo reports as a graph break at that call (an error under
    ``fullgraph=True``).
    """
    if torch.compiler.is_dynamo_compiling():
        if func in COMPILE_SAFE and not _needs_grad(args, kwargs):
            return handler(*args, **kwargs)
        return torch._dynamo.disable(_call)(handler, args, kwargs)
    compile_unsupported(func, COMPILED_AUTOGRAD if _needs_grad(args, kwargs) else "handler is marked eager-only")


def continue_while_compiling(func: Callable, args: tuple, kwargs: dict) -> Any:
    """A call without a torch-level handler met while dynamo symbolically traces our code: run it eagerly."""
    return torch._dynamo.disable(_call)(continue_to_aten, (func, args, kwargs), {})


COMPILED_AUTOGRAD = (
    "a NestedTensor that requires grad cannot be compiled: its autograd lives on the packed values, which "
    "AOTAutograd does not differentiate through the wrapper; dynamo runs this part eagerly where it can break the "
    "graph here (gradients stay exact), otherwise (fullgraph=True, torch 2.6) this error stops it. Compile "
    "inference under torch.no_grad() or torch.inference_mode() to get one graph"
)


def check_compiled_autograd(values: Tensor, frame: bool = False) -> None:
    r"""
    Refuse to trace NestedTensor values that require grad: the graph would silently drop their gradients.

    Called where NestedTensors are built (``frame=False``) and flattened (``frame=True``). Under
    ``torch.compile`` with grad mode on, it warns once and raises: ``NotImplementedError`` for an op,
    which dynamo turns into a graph break (the op runs eagerly; an error under ``fullgraph=True``),
    and dynamo's ``SkipFrame`` for a frame that receives such a NestedTensor (the frame runs eagerly).
    """
    if torch.compiler.is_dynamo_compiling():
        return  # symbolic tracing: ``call_while_compiling`` already sends such calls to eager mode
    if values.requires_grad and torch.is_grad_enabled() and _is_compiling():
        warnings.warn(COMPILED_AUTOGRAD, stacklevel=2)
        if frame:
            raise torch._dynamo.exc.SkipFrame(COMPILED_AUTOGRAD)
        compile_unsupported("NestedTensor autograd", COMPILED_AUTOGRAD)


def check_slow_path(detail: object) -> None:
    r"""
    Call at the top of every per-element path: it raises inside ``forbid_slow_paths()`` and while compiling.

    Examples:
        >>> check_slow_path("an op on every element")  # eager, nothing forbidden: no effect
    """
    _guard.check_slow_path(detail)
    if _is_compiling():
        compile_unsupported(detail, "would fall back to per-element eager execution")


# ---------------------------------------------------------------------------- autograd on values

_AUTOGRAD_KEYS = (
    DispatchKey.AutogradFunctionality,
    DispatchKey.AutogradOther,
    DispatchKey.AutogradNestedTensor,
    DispatchKey.ADInplaceOrView,
)
_AUTOGRAD_KEYSET = torch._C.DispatchKeySet(_AUTOGRAD_KEYS[0])
for _key in _AUTOGRAD_KEYS[1:]:
    _AUTOGRAD_KEYSET = _AUTOGRAD_KEYSET.add(_key)


def below_autograd() -> contextlib.AbstractContextManager:
    r"""
    Skip the wrapper's autograd kernels: ``__torch_function__`` calls C++ inside this guard.

    A NestedTensor never takes part in C++ autograd (its values do), so the wrapper-level kernels
    must not run, not even when a dense operand requires grad. A side effect: composite ops reach
    ``__torch_dispatch__`` before they decompose (``aten.linear``, ``aten.softmax.int``), so handlers
    can implement them whole; ``resolve_aten`` decomposes the ones nobody registered.
    """
    return torch._C._ExcludeDispatchKeyGuard(_AUTOGRAD_KEYSET)


def continue_to_aten(func: Callable, args: tuple, kwargs: dict) -> Any:
    r"""
    Run a torch-level call as if it had no handler: into C++, below the wrapper's autograd, to ``ATEN_OPS``.

    ``NestedTensor.__torch_function__`` does this on a miss; a torch-level handler that wants the
    aten path for some inputs (say ``F.linear`` on a layout it does not specialise) calls it too.
    Never call ``func`` with only ``DisableTorchFunctionSubclass``: with a dense operand that requires
    grad, the wrapper's autograd kernel would record the op on the wrapper and cut the values' graph.
    """
    with torch._C.DisableTorchFunctionSubclass(), below_autograd():
        return func(*args, **kwargs)


def inner_autograd() -> contextlib.AbstractContextManager:
    r"""
    Re-enable autograd for a handler's computations on packed values inside ``__torch_dispatch__``.

    Autograd keys are excluded on the way in (by ``below_autograd`` or a wrapper kernel); handlers
    compute on ``_values``, which carry the graph, so the keys are restored around them (unless grad
    mode is off or inference mode is on, where they must stay excluded).
    """
    if not torch.is_grad_enabled() or torch.is_inference_mode_enabled():
        return contextlib.nullcontext()
    excluded = torch._C._dispatch_tls_local_exclude_set()
    restored = _restored_sets.get(excluded.raw_repr())
    if restored is None:
        restored = excluded
        for key in _AUTOGRAD_KEYS:
            restored = restored.remove(key)
        _restored_sets[excluded.raw_repr()] = restored
    return torch._C._ForceDispatchKeyGuard(torch._C._dispatch_tls_local_include_set(), restored)


_restored_sets: dict[int, torch._C.DispatchKeySet] = {}


def dispatch_aten(func: torch._ops.OpOverload, args: tuple, kwargs: dict) -> Any:
    """Body of ``NestedTensor.__torch_dispatch__``: run the handler resolved for ``func``."""
    handler = resolve_aten(func)
    if handler is decompose:  # its parts dispatch (and enable autograd) one by one
        return handler(func, args, kwargs)
    if func not in COMPILE_SAFE and traced(args, kwargs):
        if func in ATEN_OPS:
            compile_unsupported(func, "aten handler is marked eager-only")
        compile_unsupported(func, "would fall back to per-element eager execution")
    with inner_autograd():
        return handler(func, args, kwargs)
