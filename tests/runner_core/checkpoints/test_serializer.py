"""What the serializer process receives: staged tensors by reference, other plain tensors by value."""

from __future__ import annotations

import pickle

import pytest
import torch

from danling.runners.checkpoints.serializer import SerializerProcess, encode_payload
from danling.runners.checkpoints.shared_buffers import SharedBuffers

pytestmark = pytest.mark.skipif(not SerializerProcess.supported(), reason="no shared-memory file system (/dev/shm)")


@pytest.fixture(scope="module")
def serializer():
    process = SerializerProcess()
    yield process
    process.close()


def _staged(buffers: SharedBuffers, values: torch.Tensor) -> torch.Tensor:
    staged = buffers.empty(values.shape, values.dtype)
    return staged.copy_(values)


def _by_value() -> dict[str, torch.Tensor]:
    """Tensors a payload holds outside the staging buffers, as the runner's random generator states."""
    generator = torch.Generator().manual_seed(3)
    return {
        "torch_rng": torch.get_rng_state(),
        "python_words": torch.randint(-(2**40), 2**40, (625,), generator=generator),
        "scalar": torch.tensor(0.25),
        "half_precision": torch.randn(3, 2, generator=generator).to(torch.bfloat16),
        "flags": torch.tensor([True, False, True]),
        "complex": torch.randn(2, generator=generator, dtype=torch.complex64),
        "empty": torch.empty(0, 4),
    }


def _torch_pickled() -> dict[str, torch.Tensor]:
    """Tensors that keep torch's own pickling: their bytes alone would lose something."""
    generator = torch.Generator().manual_seed(4)
    return {
        "transposed": torch.randn(3, 4, generator=generator).t(),
        "leaf": torch.randn(2, generator=generator).requires_grad_(),
    }


def test_every_tensor_reaches_the_file_as_it_was(serializer, tmp_path):
    buffers = SharedBuffers()
    weight = _staged(buffers, torch.randn(4, 6, generator=torch.Generator().manual_seed(0)))
    steps = _staged(buffers, torch.tensor(7.0))
    payload = {
        "model": {"weight": weight, "row": weight[1], "column": weight[:, 2], "tail": weight[2:]},
        "optimizer": {"state": {0: {"step": steps}}},
        "state": {"rng": _by_value(), "progress": (3, "epoch", None)},
        "odd": _torch_pickled(),
    }
    path = tmp_path / "state.pth"
    serializer.save(payload, str(path), buffers)
    loaded = torch.load(path, weights_only=True)

    assert loaded["state"]["progress"] == (3, "epoch", None)
    assert torch.equal(loaded["optimizer"]["state"][0]["step"], steps)
    for name, tensor in payload["model"].items():
        assert torch.equal(loaded["model"][name], tensor), name
    for group in ("state", "odd"):
        expected = payload[group]["rng"] if group == "state" else payload[group]
        received = loaded[group]["rng"] if group == "state" else loaded[group]
        for name, tensor in expected.items():
            assert received[name].dtype == tensor.dtype and received[name].shape == tensor.shape, name
            assert torch.equal(received[name], tensor.detach()), name
    assert loaded["odd"]["leaf"].requires_grad
    assert loaded["odd"]["transposed"].stride() == payload["odd"]["transposed"].stride()


def test_plain_tensors_are_encoded_without_torch_pickling(monkeypatch):
    # torch pickles a tensor's storage with a torch.save of its own, and Python for every argument:
    # on the writer thread that held the GIL the training loop needs
    buffers = SharedBuffers()
    payload = {"model": {"weight": _staged(buffers, torch.ones(3, 3))}, "rng": _by_value()}

    def refuse(self, protocol):
        raise AssertionError(f"torch pickled a tensor of shape {tuple(self.shape)} itself")

    monkeypatch.setattr(torch.Tensor, "__reduce_ex__", refuse)
    encoded = encode_payload(payload, buffers)
    monkeypatch.undo()

    decoded = pickle.loads(encoded)
    assert torch.equal(decoded["model"]["weight"], torch.ones(3, 3))
    for name, tensor in payload["rng"].items():
        assert decoded["rng"][name].dtype == tensor.dtype and torch.equal(decoded["rng"][name], tensor), name
    # staged tensors travel as a file name and a geometry, not as data
    assert len(encoded) < sum(tensor.nbytes for tensor in payload["rng"].values()) + 2048
