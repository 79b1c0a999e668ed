import pytest
import torch

from danling.tensors import NestedTensor
from danling.tensors._guard import check_padding, check_slow_path, forbid_slow_paths


def test_per_element_guard_nests_and_resets():
    check_slow_path("outside")
    with forbid_slow_paths():
        with pytest.raises(RuntimeError, match="unexpectedly ran per element: inside"):
            check_slow_path("inside")
        with forbid_slow_paths():
            pass
        with pytest.raises(RuntimeError):
            check_slow_path("still forbidden")
        check_padding("padding stays allowed")
    check_slow_path("outside again")


def test_padding_guard_catches_padded_copies_only():
    nested = NestedTensor([torch.ones(3, 2), torch.ones(1, 2)])
    with forbid_slow_paths(padding=True):
        assert nested.sum(dim=1).shape == (2, 2)  # reduced on the packed values
        assert nested.mask.shape == (2, 3)  # a mask is not a padded copy of the data
        with pytest.raises(RuntimeError, match="unexpectedly materialized padding: padded view"):
            _ = nested.tensor
        assert nested.sum(dim=(0, 1)).shape == (2,)  # batch and a ragged dim: positions reduced without padding
        # an inner block without padding=True keeps the outer setting
        with forbid_slow_paths(), pytest.raises(RuntimeError, match="materialized padding"):
            check_padding("inner")
    assert nested.tensor.shape == (2, 3, 2)
