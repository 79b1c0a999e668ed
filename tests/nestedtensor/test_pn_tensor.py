import pytest
import torch
from torch.utils.data import DataLoader, Dataset, default_collate
from torch.utils.data._utils.collate import default_collate_fn_map

from danling.tensors import (
    NestedTensor,
    PNTensor,
    collate_pn_tensors,
    register_pn_tensor_collate,
    tensor,
    unregister_pn_tensor_collate,
)


class Samples(Dataset):
    """Sample ``i`` is a sequence of ``i % 4 + 1`` tokens, a label and a ragged 2-D feature map."""

    def __len__(self) -> int:
        return 10

    def __getitem__(self, index: int) -> dict:
        tokens = tensor([index] * (index % 4 + 1))
        features = PNTensor(torch.full((index % 3 + 1, 2), float(index)))
        return {"tokens": tokens, "pair": (features, index)}


def check_batch(batch: dict, indices: list[int]) -> None:
    tokens = batch["tokens"]
    assert isinstance(tokens, NestedTensor) and tokens.dtype == torch.int64
    assert tokens.tolist() == [[i] * (i % 4 + 1) for i in indices]
    features, labels = batch["pair"]
    assert isinstance(features, NestedTensor) and features.shape[-1] == 2
    assert [f.shape[0] for f in features] == [i % 3 + 1 for i in indices]
    assert labels.tolist() == indices


def test_pn_tensor_views():
    sample = PNTensor([1, 2, 3])
    assert sample.dtype == torch.float32 and type(sample) is PNTensor
    assert sample.tensor is sample and sample.concat is sample
    mask = sample.mask
    assert mask.dtype == torch.bool and mask.all() and mask.stride() == (0,)
    assert type(sample.new_empty(2)) is PNTensor


def test_tensor_factory_keeps_dtype_and_grad():
    made = tensor([1, 2, 3])
    assert type(made) is PNTensor and made.dtype == torch.int64
    leaf = tensor([1.0, 2.0], requires_grad=True)
    assert leaf.requires_grad and leaf.is_leaf
    assert tensor([1, 2], dtype=torch.float16).dtype == torch.float16


def test_default_collate_nests_pn_tensors_in_containers():
    check_batch(default_collate([Samples()[i] for i in range(4)]), [0, 1, 2, 3])


def test_gradients_flow_through_collation():
    samples = [tensor([1.0, 2.0], requires_grad=True), tensor([3.0], requires_grad=True)]
    batch = collate_pn_tensors(samples)
    (batch * batch).sum().backward()
    assert samples[0].grad.tolist() == [2.0, 4.0] and samples[1].grad.tolist() == [6.0]


@pytest.mark.parametrize("num_workers", [0, 2])
def test_dataloader_workers(num_workers):
    loader = DataLoader(Samples(), batch_size=4, num_workers=num_workers)
    batches = list(loader)
    for batch, start in zip(batches, range(0, 10, 4)):
        check_batch(batch, list(range(start, min(start + 4, 10))))


def test_stateful_dataloader_resumes_with_workers():
    stateful = pytest.importorskip("torchdata.stateful_dataloader")
    loader = stateful.StatefulDataLoader(Samples(), batch_size=3, num_workers=2)
    iterator = iter(loader)
    check_batch(next(iterator), [0, 1, 2])
    state = loader.state_dict()
    resumed = stateful.StatefulDataLoader(Samples(), batch_size=3, num_workers=2)
    resumed.load_state_dict(state)
    remaining = list(resumed)
    check_batch(remaining[0], [3, 4, 5])
    assert len(remaining) == 3


def test_register_and_unregister_collate():
    custom: dict = {}
    register_pn_tensor_collate(custom)
    assert custom[PNTensor] is collate_pn_tensors
    unregister_pn_tensor_collate(custom)
    assert PNTensor not in custom
    assert default_collate_fn_map[PNTensor] is collate_pn_tensors
