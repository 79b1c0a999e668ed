"""snapshot and StagingPool: host copies that later in-place updates cannot reach, recycled buffers."""

from __future__ import annotations

import random
from collections import OrderedDict, namedtuple

import torch

from danling.runners.checkpoints import StagingPool, snapshot


def test_snapshot_copies_tensors_and_keeps_structure():
    Pair = namedtuple("Pair", ["a", "b"])
    weights = OrderedDict(weight=torch.zeros(3))
    weights._metadata = {"": {"version": 2}}
    tree = {"model": weights, "buffers": [torch.ones(1)], "pair": Pair(torch.ones(1), 7), "name": "run"}
    copied = snapshot(tree)
    weights["weight"].add_(1)
    tree["buffers"][0].add_(1)
    assert torch.equal(copied["model"]["weight"], torch.zeros(3)) and torch.equal(copied["buffers"][0], torch.ones(1))
    assert type(copied["model"]) is OrderedDict and copied["model"]._metadata == {"": {"version": 2}}
    assert type(copied["pair"]) is Pair and copied["pair"].b == 7 and copied["name"] == "run"
    assert not copied["model"]["weight"].requires_grad


def test_snapshot_of_plain_sequences_and_shared_tensors():
    rng = random.getstate()
    history = [0.5, 0.25]
    weight = torch.nn.Parameter(torch.ones(2, 2))
    copied = snapshot({"rng": rng, "history": history, "model": {"embed": weight, "head": weight}})
    history.append(0.125)  # a list may change after the save: it is copied
    assert copied["rng"] == rng and copied["history"] == [0.5, 0.25]
    assert copied["model"]["embed"] is copied["model"]["head"]  # tied weights stay one tensor
    assert type(copied["model"]["embed"]) is torch.Tensor and copied["model"]["embed"].data_ptr() != weight.data_ptr()


def test_pool_recycles_the_buffers_of_a_written_snapshot():
    pool = StagingPool()
    weights = {"a": torch.arange(4.0), "b": torch.zeros(2, 3, dtype=torch.int64), "step": torch.tensor(3.0)}
    staged: list[torch.Tensor] = []
    first = snapshot(weights, pool, staged)
    assert len(staged) == 3
    pointers = {tensor.data_ptr() for tensor in staged}
    second = snapshot({"a": torch.ones(4), "b": torch.ones(2, 3, dtype=torch.int64)}, pool, [])
    assert second["a"].data_ptr() not in pointers  # the first snapshot is not released yet
    pool.release(staged)
    weights["a"].mul_(-1)
    third = snapshot(weights, pool, [])
    assert {tensor.data_ptr() for tensor in third.values()} == pointers  # same shapes and dtypes: reused
    assert torch.equal(third["a"], -torch.arange(4.0)) and torch.equal(third["step"], torch.tensor(3.0))
    assert first["a"].data_ptr() == third["a"].data_ptr()  # which is why released snapshots must not be read


def test_pool_keeps_only_the_last_released_snapshot():
    pool = StagingPool()
    old, new = [], []
    snapshot({"w": torch.ones(8)}, pool, old)
    snapshot({"w": torch.ones(2)}, pool, new)
    pool.release(old)
    pool.release(new)
    assert snapshot({"w": torch.ones(8)}, pool, [])["w"].data_ptr() != old[0].data_ptr()
    pool.release(new)
    assert snapshot({"w": torch.ones(2)}, pool, [])["w"].data_ptr() == new[0].data_ptr()


def test_snapshot_into_the_pool_does_not_track_gradients():
    pool, staged = StagingPool(), []
    weight = torch.nn.Parameter(torch.ones(3))
    snapshot({"w": weight}, pool, staged)
    pool.release(staged)
    copied = snapshot({"w": weight * 2}, pool, [])["w"]
    assert copied is staged[0] and not copied.requires_grad and copied.grad_fn is None


def test_tensors_that_do_not_fit_a_buffer_are_copied_anyway():
    pool = StagingPool()
    sparse = torch.eye(3).to_sparse()
    staged: list[torch.Tensor] = []
    copied = snapshot({"sparse": sparse, "dense": torch.ones(3)}, pool, staged)
    assert copied["sparse"].layout == torch.sparse_coo and torch.equal(copied["sparse"].to_dense(), torch.eye(3))
    assert len(staged) == 1 and staged[0] is copied["dense"]


def test_pooled_copies_of_mixed_dtypes_and_strided_sources_are_exact():
    # The host copies of one snapshot are done together (one foreach call): each must still land
    # in its own buffer with its own dtype, whatever the source's strides.
    pool = StagingPool()
    sources = {
        "transposed": torch.arange(6.0).reshape(2, 3).t(),
        "half": torch.linspace(0, 1, 5, dtype=torch.float16),
        "ids": torch.arange(7, dtype=torch.int32)[::2],
        "flag": torch.tensor(True),
    }
    staged: list[torch.Tensor] = []
    copied = snapshot(sources, pool, staged)
    for source in sources.values():
        source.zero_() if source.dtype != torch.bool else source.logical_not_()
    assert torch.equal(copied["transposed"], torch.arange(6.0).reshape(2, 3).t())
    assert copied["half"].dtype == torch.float16 and torch.equal(copied["half"], torch.linspace(0, 1, 5).half())
    assert torch.equal(copied["ids"], torch.tensor([0, 2, 4, 6], dtype=torch.int32)) and bool(copied["flag"])
    assert len(staged) == 4


def test_fresh_entries_are_kept_as_they_are_and_the_rest_is_copied():
    config, weight = {"lr": 0.1, "groups": [1, 2]}, torch.ones(2)
    copied = snapshot({"runner": config, "model": {"weight": weight}}, fresh=("runner",))
    assert copied["runner"] is config  # declared fresh: not walked again
    weight.add_(1)
    assert torch.equal(copied["model"]["weight"], torch.ones(2))


def test_fresh_entries_are_declared_per_state_dict_method():
    from danling.runners import TorchRunner
    from danling.runners.checkpoints import declared_fresh_entries

    class Overriding(TorchRunner):
        def state_dict(self):  # may put live objects anywhere: declares nothing
            return super().state_dict()

    runner = TorchRunner.__new__(TorchRunner)
    assert set(declared_fresh_entries(runner)) == {"runner", "state", "loop", "results"}
    assert declared_fresh_entries(Overriding.__new__(Overriding)) == ()
