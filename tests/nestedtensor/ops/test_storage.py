import pytest
import torch
import torch.multiprocessing as mp

from danling.tensors import NestedTensor

from ..strategies import assert_elements, padded


def _add_one_in_child(queue, done):
    nested = queue.get()
    nested.add_(1)
    done.put(nested.is_shared())


def test_share_memory_lets_another_process_write_the_values():
    nested = NestedTensor([torch.zeros(3), torch.zeros(2)])
    assert nested.share_memory_() is nested and nested.is_shared()
    context = mp.get_context("spawn")
    queue, done = context.Queue(), context.Queue()
    child = context.Process(target=_add_one_in_child, args=(queue, done))
    child.start()
    queue.put(nested)
    assert done.get(timeout=60) is True
    child.join(timeout=60)
    assert child.exitcode == 0
    assert nested.tolist() == [[1.0, 1.0, 1.0], [1.0, 1.0]]


@pytest.mark.filterwarnings("ignore:TypedStorage is deprecated")
def test_memory_questions_answer_for_the_packed_values():
    tensors = [torch.randn(3, 2), torch.randn(5, 2)]
    nested = NestedTensor(tensors)
    values = nested._values
    assert nested.data_ptr() == torch.Tensor.data_ptr(nested) == values.data_ptr()
    assert nested.untyped_storage().data_ptr() == values.untyped_storage().data_ptr()
    assert torch.Tensor.storage(nested).data_ptr() == values.data_ptr()
    assert nested.is_pinned() is False
    assert torch.numel(nested) == nested.nelement() == torch.Tensor.numel(nested) == 16
    assert nested.nbytes == 16 * 4
    assert nested.__dlpack_device__() == values.__dlpack_device__()


def test_exports_out_of_torch():
    tensors = [torch.tensor([[1, 2], [3, 4]]), torch.tensor([[5, 6]])]
    nested = NestedTensor(tensors)
    assert torch.Tensor.tolist(nested) == [[[1, 2], [3, 4]], [[5, 6]]]
    array = nested.numpy()
    assert array.shape == (2, 2, 2) and (array == padded(tensors).numpy()).all()
    numpy = pytest.importorskip("numpy")
    assert (numpy.asarray(nested, dtype=numpy.float64) == padded(tensors).double().numpy()).all()
    assert torch.Tensor.__repr__(nested) == repr(nested)
    with pytest.raises(TypeError, match="no DLPack form"):
        nested.__dlpack__()


def test_calls_that_cannot_apply_raise_clearly():
    nested = NestedTensor([torch.randn(3), torch.randn(2)])
    with pytest.raises(NotImplementedError, match="has no storage of its own"):
        nested.set_()
    with pytest.raises(NotImplementedError, match="no sparse or MKL-DNN form"):
        nested.to_sparse()
    with pytest.raises(NotImplementedError, match="FBGEMM weight packing"):
        torch.fbgemm_pack_gemm_matrix_fp16(nested)


def test_detach_in_place_and_conjugate_views():
    source = torch.randn(5, requires_grad=True)
    nested = NestedTensor([source[:3], source[3:]])
    assert nested.requires_grad and nested.detach_() is nested and not nested.requires_grad
    complex_elements = [torch.randn(3, dtype=torch.complex64), torch.randn(2, dtype=torch.complex64)]
    conjugated = NestedTensor(complex_elements).conj()
    assert not conjugated._values.is_conj()  # materialised: per-element paths never see a lazy view
    assert_elements(conjugated, [t.conj().resolve_conj() for t in complex_elements])
    assert_elements(conjugated.imag, [t.conj().imag for t in complex_elements])
    assert_elements(
        torch.fft.ifft(NestedTensor([torch.randn(4), torch.randn(3)])).imag.abs() >= 0,
        [torch.ones(4, dtype=torch.bool), torch.ones(3, dtype=torch.bool)],
    )
