"""DataLoaderDict saves and restores each split's position."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader
from torchdata.stateful_dataloader import StatefulDataLoader

from danling.data import DataLoaderDict


def _loaders(shuffle: bool = False) -> DataLoaderDict:
    generator = torch.Generator().manual_seed(0)
    return DataLoaderDict(
        train=StatefulDataLoader(list(range(12)), batch_size=2, shuffle=shuffle, generator=generator),
        val=StatefulDataLoader(list(range(6)), batch_size=3),
        plain=DataLoader(list(range(4)), batch_size=2),
    )


def test_state_dict_skips_loaders_without_state():
    assert sorted(_loaders().state_dict()) == ["train", "val"]


@pytest.mark.parametrize("shuffle", [False, True])
def test_resume_continues_mid_epoch(shuffle):
    original = _loaders(shuffle)
    iterator = iter(original.train)
    consumed = [next(iterator).tolist() for _ in range(2)]
    state = original.state_dict()
    expected = [batch.tolist() for batch in iterator]

    resumed = _loaders(shuffle)
    resumed.load_state_dict(state)
    assert [batch.tolist() for batch in resumed.train] == expected
    assert sorted(value for batch in consumed + expected for value in batch) == list(
        range(12)
    )  # nothing skipped or repeated


def test_load_ignores_unknown_and_missing_splits():
    loaders = _loaders()
    state = loaders.state_dict()
    state["gone"] = {"anything": 1}
    del state["val"]
    loaders.load_state_dict(state)
    assert [batch.tolist() for batch in loaders.val] == [[0, 1, 2], [3, 4, 5]]


def test_load_rejects_non_mapping():
    with pytest.raises(TypeError, match="expects a mapping"):
        _loaders().load_state_dict([1, 2])
