"""``PNTensor`` ("potential NestedTensor"): a sample tensor that DataLoader collates into a NestedTensor.

Importing ``danling.tensors`` adds ``PNTensor`` to ``torch.utils.data``'s ``default_collate_fn_map``,
so ``default_collate`` (used by ``DataLoader`` and torchdata's ``StatefulDataLoader``, also inside
worker processes and for PNTensors inside dicts, lists and tuples) returns a NestedTensor for a batch
of PNTensors of different lengths.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.utils.data._utils.collate import default_collate_fn_map

from .nested_tensor import NestedTensor


class PNTensor(Tensor):
    r"""
    A tensor that DataLoader collates into a [`NestedTensor`][danling.tensors.NestedTensor].

    Return PNTensors from a dataset's ``__getitem__`` and batches of different lengths come out as
    NestedTensors. Otherwise it is an ordinary tensor; ``.tensor``, ``.mask`` and ``.concat`` mirror
    the NestedTensor views so code can treat a sample and a batch alike. ``PNTensor(data)`` follows
    the legacy ``torch.Tensor(data)`` constructor (float32); use [`tensor`][danling.tensors.tensor] to
    keep the dtype of ``data``.

    Examples:
        A dataset returns one PNTensor per sample; the DataLoader's default collation then packs
        samples of different lengths into a NestedTensor instead of failing to stack them:

        >>> from torch.utils.data import DataLoader
        >>> samples = [PNTensor([0.5, 1.5]), PNTensor([2.5]), PNTensor([3.5, 4.5, 5.5])]
        >>> next(iter(DataLoader(samples, batch_size=3)))
        NestedTensor([
            [0.5000, 1.5000],
            [2.5000],
            [3.5000, 4.5000, 5.5000]
        ])

        On its own it is a tensor whose views match a NestedTensor's:

        >>> sample = PNTensor([1, 2])
        >>> sample, sample.mask
        (PNTensor([1., 2.]), PNTensor([True, True]))
    """

    @property
    def tensor(self) -> Tensor:
        r"""
        The tensor itself (a sample has no padding).

        Examples:
            >>> tensor = torch.tensor([1, 2, 3])
            >>> pn_tensor = PNTensor([1, 2, 3])
            >>> bool((tensor == pn_tensor).all())
            True
            >>> bool((tensor == pn_tensor.tensor).all())
            True
        """
        return self

    @property
    def mask(self) -> Tensor:
        r"""
        All-True mask of the tensor's shape, a stride-0 view of one scalar (no allocation).

        Examples:
            >>> tensor = torch.tensor([1, 2, 3])
            >>> pn_tensor = PNTensor([1, 2, 3])
            >>> bool((pn_tensor.mask == torch.ones_like(pn_tensor)).all().item())
            True
        """
        return torch.ones((), dtype=torch.bool, device=self.device).expand_as(self)

    @property
    def concat(self) -> Tensor:
        r"""
        The tensor itself (a sample is already "concatenated").

        Examples:
            >>> pn_tensor = PNTensor([1, 2, 3])
            >>> bool((pn_tensor == pn_tensor.concat).all())
            True
        """
        return self

    def new_empty(self, *args: Any, **kwargs: Any) -> PNTensor:  # type: ignore[override]
        """An uninitialised PNTensor (``Tensor.new_empty`` keeping the subclass)."""
        return super().new_empty(*args, **kwargs).as_subclass(PNTensor)


def tensor(
    data: Any,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    requires_grad: bool = False,
    pin_memory: bool = False,
) -> PNTensor:
    r"""
    ``torch.tensor`` that returns a [`PNTensor`][danling.tensors.PNTensor], keeping the dtype of ``data``.

    Args:
        data: List, tuple, NumPy array, scalar, ... as accepted by ``torch.tensor``.
        dtype: Data type of the result (inferred from ``data`` by default).
        device: Device of the result.
        requires_grad: Whether autograd records operations on the result.
        pin_memory: Allocate the result in pinned memory (CPU only).

    Examples:
        >>> from danling.tensors import tensor
        >>> t = tensor([1, 2, 3])
        >>> t
        PNTensor([1, 2, 3])
    """
    data = torch.tensor(data, dtype=dtype, device=device, pin_memory=pin_memory)
    return data.as_subclass(PNTensor).requires_grad_(requires_grad)


def collate_pn_tensors(batch: list[PNTensor], *, collate_fn_map: dict | None = None) -> NestedTensor:
    r"""
    Collate a batch of PNTensors into a NestedTensor (the ``default_collate`` entry for PNTensor).

    Examples:
        >>> from torch.utils.data import default_collate
        >>> default_collate([{"x": tensor([1, 2])}, {"x": tensor([3])}])["x"]
        NestedTensor([
            [1, 2],
            [3]
        ])
    """
    return NestedTensor(batch)


def register_pn_tensor_collate(collate_fn_map: dict | None = None) -> None:
    """Make ``default_collate`` (or the collate using ``collate_fn_map``) collate PNTensors into NestedTensors."""
    (default_collate_fn_map if collate_fn_map is None else collate_fn_map)[PNTensor] = collate_pn_tensors


def unregister_pn_tensor_collate(collate_fn_map: dict | None = None) -> None:
    """Undo [`register_pn_tensor_collate`][danling.tensors.pn_tensor.register_pn_tensor_collate]."""
    (default_collate_fn_map if collate_fn_map is None else collate_fn_map).pop(PNTensor, None)


register_pn_tensor_collate()
