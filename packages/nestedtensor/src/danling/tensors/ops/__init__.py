"""Op handlers of NestedTensor, one module per family; importing this package registers them all.

``_registry.py`` explains how a call reaches a handler and how to write one; ``_packed.py`` holds the
helpers handlers use; ``_fallback.py`` the per-element path that makes every other op work.
"""

from . import (
    attention,
    conv,
    creation,
    elementwise,
    indexing,
    joining,
    loss,
    matmul,
    nn_functional,
    normalization,
    order_statistics,
    pool,
    reduction,
    reorder,
    repeat,
    reshape,
    shape,
    slicing,
    softmax,
    sorting,
    storage,
)
from ._fallback import per_element_fallback
from ._registry import (
    ATEN_OPS,
    TORCH_FUNCTIONS,
    aten_rule,
    check_slow_path,
    forbid_slow_paths,
    implements,
    implements_aten,
)

__all__ = [
    "ATEN_OPS",
    "TORCH_FUNCTIONS",
    "aten_rule",
    "attention",
    "check_slow_path",
    "conv",
    "creation",
    "elementwise",
    "forbid_slow_paths",
    "implements",
    "implements_aten",
    "indexing",
    "joining",
    "loss",
    "matmul",
    "nn_functional",
    "normalization",
    "order_statistics",
    "per_element_fallback",
    "pool",
    "reduction",
    "reorder",
    "repeat",
    "reshape",
    "shape",
    "slicing",
    "softmax",
    "sorting",
    "storage",
]
