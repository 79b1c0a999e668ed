"""Dataloaders: per-split arguments, samplers, and resumable positions."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DistributedSampler, SequentialSampler
from torchdata.stateful_dataloader.sampler import RandomSampler

from danling.runners.dataloaders import (
    RandomBatchSampler,
    build_dataloader,
    build_sampler,
    loader_kwargs,
    loader_length,
    set_sampler_epoch,
)


def test_loader_kwargs_merge_defaults_global_and_split_overrides():
    config = {
        "batch_size": 8,
        "num_workers": 0,
        "drop_last": None,
        "train": {"shuffle": False},
        "val": {"batch_size": 2},
    }
    splits = {"train", "val"}
    assert loader_kwargs(config, "train", is_train=True, splits=splits) == {
        "shuffle": False,
        "drop_last": True,
        "batch_size": 8,
        "num_workers": 0,
    }
    assert loader_kwargs(config, "val", is_train=False, splits=splits)["batch_size"] == 2
    assert loader_kwargs({"batch_size": None}, "train", is_train=True, splits=splits) == {
        "shuffle": True,
        "drop_last": False,
        "batch_size": None,
    }
    with pytest.raises(ValueError, match=r"dataloader\.val must be a mapping"):
        loader_kwargs({"val": 3}, "val", is_train=False, splits=splits)


def test_samplers_by_shuffle_and_world_size():
    data = list(range(10))
    assert isinstance(build_sampler(data, shuffle=False), SequentialSampler)
    assert isinstance(build_sampler(data, shuffle=True), RandomSampler)
    sharded = build_sampler(data, shuffle=True, world_size=2, rank=1, seed=3)
    assert isinstance(sharded, DistributedSampler) and len(list(sharded)) == 5
    first = list(sharded)
    set_sampler_epoch(type("Loader", (), {"sampler": sharded, "batch_sampler": None})(), 1)
    assert list(sharded) != first


def test_shuffled_loader_resumes_mid_pass_with_the_same_order():
    torch.manual_seed(0)
    loader = build_dataloader(list(range(12)), {"batch_size": 3, "shuffle": True, "drop_last": True})
    iterator = iter(loader)
    seen = [next(iterator).tolist(), next(iterator).tolist()]
    state = loader.state_dict()
    rest = [batch.tolist() for batch in iterator]
    resumed = build_dataloader(list(range(12)), {"batch_size": 3, "shuffle": True, "drop_last": True})
    resumed.load_state_dict(state)
    assert [batch.tolist() for batch in resumed] == rest
    assert sorted(value for batch in seen + rest for value in batch) == list(range(12))
    next_pass = [batch.tolist() for batch in loader]
    assert [batch.tolist() for batch in resumed] == next_pass  # the following pass matches too


def test_building_an_iterator_does_not_draw_from_the_global_generator():
    loader = build_dataloader(list(range(6)), {"batch_size": 2, "shuffle": True})
    state = torch.get_rng_state()
    iter(loader)
    assert torch.equal(state, torch.get_rng_state())


def test_unbatched_loader_yields_items_unchanged():
    items = [(torch.ones(2), torch.zeros(2)), (torch.ones(3), torch.zeros(3))]
    loader = build_dataloader(
        items,
        loader_kwargs({"batch_size": None}, "train", is_train=False, splits={"train"}),
        collate_fn=torch.utils.data.dataloader.default_collate,
    )
    assert [tuple(item[0].shape) for item in loader] == [(2,), (3,)]
    assert loader_length(loader) == 2 and loader_length(iter(items)) is None


def shuffled_loader(seed: int = 0, **kwargs):
    torch.manual_seed(seed)
    return build_dataloader(list(range(10)), {"batch_size": 4, "shuffle": True, "drop_last": False, **kwargs})


def test_shuffled_single_process_loaders_use_the_batch_sampler():
    loader = shuffled_loader()
    assert isinstance(loader.batch_sampler, RandomBatchSampler) and len(loader) == 3
    workers = shuffled_loader(num_workers=1)
    assert isinstance(workers.sampler, RandomSampler)  # prefetching workers: torchdata's per-index sampler


@pytest.mark.parametrize("consumed", [0, 1, 3])
def test_batch_sampler_resumes_at_any_point_of_a_pass(consumed):
    original = shuffled_loader()
    iterator = iter(original)
    seen = [next(iterator).tolist() for _ in range(consumed)]
    state = original.state_dict()
    rest = [batch.tolist() for batch in iterator] + [batch.tolist() for batch in original]  # this pass, then the next
    resumed = shuffled_loader(seed=1)  # a different global seed: the state alone decides the order
    resumed.load_state_dict(state)
    assert [batch.tolist() for batch in resumed] + [batch.tolist() for batch in resumed] == rest
    first_pass = seen + rest[: 3 - consumed]
    assert sorted(index for batch in first_pass for index in batch) == list(range(10))


def test_batch_sampler_resumes_after_a_finished_pass():
    original = shuffled_loader()
    first = [batch.tolist() for batch in original]
    state = original.state_dict()
    second = [batch.tolist() for batch in original]
    resumed = shuffled_loader(seed=1)
    resumed.load_state_dict(state)
    assert [batch.tolist() for batch in resumed] == second and second != first
