"""``danling.tensors``: NestedTensor (packed ragged batches) and PNTensor (collation into NestedTensor).

Importing this package registers the NestedTensor op handlers and the DataLoader collate function of
PNTensor.
"""

from .nested_tensor import NestedTensor
from .ops import ATEN_OPS, TORCH_FUNCTIONS, forbid_slow_paths, implements, implements_aten
from .pn_tensor import PNTensor, collate_pn_tensors, register_pn_tensor_collate, tensor, unregister_pn_tensor_collate

__all__ = [
    "ATEN_OPS",
    "TORCH_FUNCTIONS",
    "NestedTensor",
    "PNTensor",
    "collate_pn_tensors",
    "forbid_slow_paths",
    "implements",
    "implements_aten",
    "register_pn_tensor_collate",
    "tensor",
    "unregister_pn_tensor_collate",
]
