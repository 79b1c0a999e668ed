import pytest
import torch

from danling.tensors import NestedTensor, forbid_slow_paths

from .strategies import assert_elements, padded


@pytest.fixture
def sequences():
    return [torch.tensor([1.0, 2.0, 3.0]), torch.tensor([4.0, 5.0])]


class TestConstruction:
    def test_every_argument_form_builds_the_same_batch(self, sequences):
        forms = [
            NestedTensor(sequences),
            NestedTensor(*sequences),
            NestedTensor(tuple(sequences)),
            NestedTensor([[1.0, 2.0, 3.0], [4.0, 5.0]]),
            NestedTensor(*[[1.0, 2.0, 3.0], [4.0, 5.0]]),
            NestedTensor(iter(sequences)),
        ]
        for nested in forms:
            assert_elements(nested, sequences)
            assert nested.shape == (2, 3) and len(nested) == 2

    def test_a_lone_tensor_is_a_batch_of_one(self):
        nested = NestedTensor(torch.ones(2, 3))
        assert len(nested) == 1 and nested.shape == (1, 2, 3)

    def test_dtype_device_and_promotion(self):
        assert NestedTensor([[1, 2], [3]]).dtype == torch.int64
        assert NestedTensor([[1, 2], [0.5]]).dtype == torch.float32
        assert NestedTensor([[1, 2], [3]], dtype=torch.float16).dtype == torch.float16
        meta = NestedTensor([[1, 2], [3]], device="meta")
        assert meta.device.type == "meta" and meta._offsets.device.type == "cpu"

    def test_empty_batches_and_rank_zero_elements(self):
        empty = NestedTensor([])
        assert len(empty) == 0 and empty.shape == (0,) and empty.tensor.shape == (0,)
        assert empty.dtype == torch.get_default_dtype() and repr(empty) == "NestedTensor()"
        assert NestedTensor().shape == (0,)
        scalars = NestedTensor([torch.tensor(1), torch.tensor(2), torch.tensor(3)])
        assert scalars.shape == (3,) and torch.equal(scalars.tensor, torch.tensor([1, 2, 3]))
        assert torch.equal(scalars.mask, torch.tensor([True, True, True]))
        assert scalars[1].shape == () and scalars.tolist() == [1, 2, 3]

    def test_elements_of_size_zero(self):
        nested = NestedTensor([torch.ones(0, 2), torch.ones(3, 2)])
        assert nested.shape == (2, 3, 2)
        assert torch.equal(nested.mask, torch.tensor([[False, False, False], [True, True, True]]))

    def test_errors(self):
        with pytest.raises(ValueError, match=r"tensors must be an Iterable, but got <class 'int'>\."):
            NestedTensor(5)
        with pytest.raises(ValueError, match="same number of dimensions, got ndim 1 and 2"):
            NestedTensor([torch.ones(2), torch.ones(2, 2)])
        with pytest.raises(ValueError, match="must be on the same device, but got cpu and meta"):
            NestedTensor([torch.ones(2), torch.ones(2, device="meta")])
        with pytest.raises(TypeError, match="batch_first must be a bool, got int"):
            NestedTensor([[1]], batch_first=1)
        with pytest.raises(TypeError, match="mask_value must be a bool, got str"):
            NestedTensor([[1]], mask_value="yes")
        with pytest.raises(TypeError, match="padding_value must be float-convertible, got NoneType"):
            NestedTensor([[1]], padding_value=None)

    def test_from_torch_nested(self):
        jagged = torch.nested.nested_tensor([torch.ones(2, 3), torch.zeros(4, 3)], layout=torch.jagged)
        nested = NestedTensor(jagged)
        assert nested._values.data_ptr() == jagged.values().data_ptr()
        assert_elements(nested, jagged.unbind())
        back = nested.to_torch_nested()
        assert back.layout == torch.jagged and back.values().data_ptr() == nested._values.data_ptr()

    @pytest.mark.skipif(not torch.cuda.is_available(), reason="pinning needs CUDA")
    def test_pin_memory(self, sequences):
        assert NestedTensor(sequences, pin_memory=True)._values.is_pinned()
        assert NestedTensor(sequences).pin_memory()._values.is_pinned()


class TestViews:
    def test_padded_views_follow_the_settings(self):
        nested = NestedTensor([torch.ones(3, 2), torch.ones(1, 2)], padding_value=-1.0)
        assert torch.equal(nested.tensor, padded(list(nested), -1.0))
        assert nested.mask.shape == (2, 3)  # static channels are left out of the mask
        nested.padding_value = 5
        assert nested.tensor[1, 2, 0] == 5.0
        nested.mask_value = True
        assert torch.equal(nested.mask, torch.tensor([[False, False, False], [False, True, True]]))
        nested.batch_first = False
        assert nested.shape == (3, 2, 2) and nested.tensor.shape == (3, 2, 2) and nested.mask.shape == (3, 2)
        assert torch.equal(nested.tensor[:, 1], padded(list(nested), 5.0)[1])
        tensor, mask = nested.tensor_mask
        assert torch.equal(tensor, nested.tensor) and torch.equal(mask, nested.mask)

    def test_padded_view_is_cached_and_invalidated_by_writes(self, sequences):
        nested = NestedTensor(sequences)
        first = nested.tensor
        assert nested.tensor is first
        nested.add_(1)  # in place on the packed values
        assert torch.equal(nested.tensor, torch.tensor([[2.0, 3.0, 4.0], [5.0, 6.0, 0.0]]))
        nested[0][1] = 10  # through an element view
        assert nested.tensor[0, 1] == 10
        nested[1] = torch.tensor([7.0, 8.0, 9.0, 10.0])  # replaces the element and its shape
        assert nested.shape == (2, 4) and nested.tensor[1, 3] == 10
        view = nested.tensor
        view.zero_()  # a write to the handed-out view is noticed too
        assert nested.tensor[0, 0] == 2.0
        nested.padding_value = -1.0
        assert nested.tensor[0, 3] == -1.0

    def test_concat_is_the_packed_buffer(self, sequences):
        nested = NestedTensor(sequences)
        assert nested.concat is nested._values
        assert torch.equal(nested.concat, torch.cat(sequences))
        values, shapes = nested.concatenate()
        assert values is nested._values and shapes == (torch.Size([3]), torch.Size([2]))

    def test_views_do_not_loop_over_elements(self):
        nested = NestedTensor([torch.ones(n, 4) for n in range(1, 30)])
        with forbid_slow_paths():
            assert nested.tensor.shape == (29, 29, 4)
            assert nested.mask.sum() == sum(range(1, 30))
            nested.nested_like(nested.tensor)
        with pytest.raises(RuntimeError, match="unexpectedly ran per element: iteration"), forbid_slow_paths():
            list(nested)

    def test_occupancy(self):
        assert NestedTensor([torch.ones(4), torch.ones(2)]).occupancy == 0.75
        assert NestedTensor([]).occupancy == 0.0


class TestProperties:
    def test_shape_counts_padding_but_numel_does_not(self, sequences):
        nested = NestedTensor(sequences)
        assert nested.shape == nested.size() == torch.Size([2, 3])
        assert nested.size(1) == nested.size(-1) == 3 and nested.dim() == nested.ndim == 2
        assert nested.numel() == 5 and len(nested) == 2

    def test_dtype_and_device_are_read_only(self, sequences):
        nested = NestedTensor(sequences)
        with pytest.raises(AttributeError, match=r"NestedTensor.dtype is read-only; use .to\(dtype=...\)"):
            nested.dtype = torch.int32
        with pytest.raises(AttributeError, match=r"NestedTensor.device is read-only; use .to\(device=...\)"):
            nested.device = torch.device("meta")

    def test_bool_is_ambiguous(self, sequences):
        with pytest.raises(RuntimeError, match="Boolean value of NestedTensor is ambiguous"):
            bool(NestedTensor(sequences[:1]))

    def test_transposes_keep_the_batch(self):
        nested = NestedTensor([torch.randn(2, 3, 4), torch.randn(5, 3, 1)])
        assert_elements(nested.T, [t.permute(2, 1, 0) for t in nested])
        assert_elements(nested.mT, [t.transpose(-1, -2) for t in nested])
        with pytest.raises(RuntimeError, match=r"only supported on matrices or batches of matrices\. Got 1-D tensor"):
            _ = NestedTensor([[1.0]]).mT
        flat = NestedTensor([[1.0, 2.0]])
        assert flat.T is flat

    def test_iteration_unbind_and_tolist(self, sequences):
        nested = NestedTensor(sequences)
        assert_elements(list(nested), sequences)
        assert_elements(nested.unbind(), sequences)
        assert_elements(torch.unbind(nested), sequences)
        assert nested.tolist() == [[1.0, 2.0, 3.0], [4.0, 5.0]]
        with pytest.raises(NotImplementedError, match="only supports unbinding along the batch dimension"):
            nested.unbind(1)

    def test_repr(self):
        nested = NestedTensor([torch.tensor([[1, 2], [3, 4]]), torch.tensor([[5, 6]])])
        assert repr(nested) == "NestedTensor([\n    [[1, 2],\n     [3, 4]],\n    [[5, 6]]\n])"
        half = NestedTensor([[1.0], [2.0]], dtype=torch.float16)
        assert "[1.], dtype=torch.float16," in repr(half)
        many = NestedTensor([[i] for i in range(12)])
        assert repr(many).splitlines()[-2:] == ["    ... (12 tensors)", "])"]
        assert repr(NestedTensor([[1.0]], requires_grad=True)).endswith("], requires_grad=True)")


class TestConversions:
    def test_from_concatenated_reverses_concatenate(self):
        nested = NestedTensor([torch.randn(9, 9, 8, 7), torch.randn(11, 11, 8, 6)])
        rebuilt = NestedTensor.from_concatenated(*nested.concatenate())
        assert_elements(rebuilt, nested)
        flat = NestedTensor.from_concatenated(torch.arange(5), [(3,), (2,)], batch_first=False)
        assert flat.tolist() == [[0, 1, 2], [3, 4]] and not flat.batch_first
        with pytest.raises(ValueError, match="Concatenated tensor has 4 elements but expected 5 based on shapes"):
            NestedTensor.from_concatenated(torch.arange(4), [(3,), (2,)])

    def test_from_tensor_mask_with_settings(self):
        padded_tensor = torch.tensor([[1, 2, 0], [3, 0, 0]])
        padding = torch.tensor([[False, False, True], [False, True, True]])
        nested = NestedTensor.from_tensor_mask(padded_tensor, padding, mask_value=True, padding_value=-1)
        assert nested.tolist() == [[1, 2], [3]] and nested.mask_value and nested.padding_value == -1.0
        columns = NestedTensor.from_tensor_mask(padded_tensor.T, ~padding.T, batch_first=False)
        assert columns.tolist() == [[1, 2], [3]] and columns.shape == (2, 2)

    def test_nested_like(self, sequences):
        nested = NestedTensor(sequences, batch_first=False)
        dense = torch.arange(6.0).view(3, 2)
        like = nested.nested_like(dense)
        assert like.tolist() == [[0.0, 2.0, 4.0], [1.0, 3.0]] and not like.batch_first
        assert nested.nested_like(torch.zeros(5, 2), strict=False).tolist() == [[0.0] * 3, [0.0] * 2]
        clipped = nested.nested_like(torch.zeros(1, 2), strict=False)
        assert clipped.tolist() == [[0.0], [0.0]]
        copied = nested.nested_like(nested)
        assert torch.equal(copied._values, nested._values) and copied._values is not nested._values

    def test_to_torch_nested_of_other_layouts(self):
        images = NestedTensor([torch.ones(2, 3), torch.ones(4, 5)])
        converted = images.to_torch_nested()
        assert converted.layout == torch.strided
        assert_elements(converted.unbind(), images)
        scalars = NestedTensor([torch.tensor(1.0), torch.tensor(2.0)]).to_torch_nested()
        assert [t.item() for t in scalars.unbind()] == [1.0, 2.0]

    def test_conversions_keep_the_layout(self, sequences):
        nested = NestedTensor(sequences)
        for converted, dtype in [
            (nested.half(), torch.float16),
            (nested.double(), torch.float64),
            (nested.int(), torch.int32),
        ]:
            assert converted.dtype == dtype and converted._layout is nested._layout
        assert nested.to("meta").device.type == "meta"
        assert nested.cpu() is nested


class TestAutograd:
    def test_gradients_reach_the_source_tensors(self):
        first = torch.randn(3, 2, requires_grad=True)
        second = torch.randn(1, 2, requires_grad=True)
        nested = NestedTensor(first, second)
        assert nested.requires_grad and not nested.is_leaf and nested.grad_fn is not None
        loss = (nested * 3).tensor.sum() + nested.concat.sum() + nested[0].sum()
        loss.backward()
        assert torch.equal(first.grad, torch.full((3, 2), 5.0))
        assert torch.equal(second.grad, torch.full((1, 2), 4.0))

    def test_a_leaf_nested_tensor_accumulates_grad(self):
        nested = NestedTensor([[1.0, 2.0], [3.0]], requires_grad=True)
        assert nested.is_leaf
        (nested * nested).sum().backward()
        assert nested.grad.tolist() == [[2.0, 4.0], [6.0]]
        nested.grad = None
        assert nested.grad is None
        with pytest.raises(RuntimeError, match="leaf Variable that requires grad"):
            nested.add_(1)

    def test_backward_from_a_nested_tensor_and_hooks(self):
        source = torch.ones(3, requires_grad=True)
        nested = NestedTensor(source, source[:2] * 2)
        seen = []
        nested.register_hook(lambda grad: seen.append(grad.tolist()))
        (nested * 1).backward(NestedTensor([[1.0, 1.0, 1.0], [1.0, 1.0]]))
        assert seen == [[[1.0, 1.0, 1.0], [1.0, 1.0]]]
        assert source.grad.tolist() == [3.0, 3.0, 1.0]

    def test_requires_grad_switches(self, sequences):
        nested = NestedTensor(sequences)
        assert nested.requires_grad_() is nested and nested.requires_grad
        nested.requires_grad = False
        assert not nested._values.requires_grad
        assert not NestedTensor([torch.ones(2, requires_grad=True)], requires_grad=False).requires_grad
        assert not nested.detach().requires_grad


class TestDevices:
    """``meta`` stands in for an accelerator: metadata stays on the CPU, index tensors are copied once."""

    def test_views_and_ops_on_another_device(self):
        cpu = NestedTensor([torch.randn(3, 4, 2), torch.randn(5, 1, 2)])
        meta = cpu.to("meta")
        assert meta._offsets.device.type == "cpu" and meta._layout is cpu._layout
        results = [meta.tensor, meta.mask, meta[[1, 0]], meta.sum(dim=1), meta.mean(dim=(0, 2)), meta + 1]
        expected = [cpu.tensor, cpu.mask, cpu[[1, 0]], cpu.sum(dim=1), cpu.mean(dim=(0, 2)), cpu + 1]
        for got, want in zip(results, expected):
            assert got.device.type == "meta" and got.shape == want.shape and got.dtype == want.dtype
        cached_devices = {device.type for _, device in cpu._layout._device_cache}
        assert cached_devices == {"cpu", "meta"}

    @pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
    def test_cuda_round_trip_matches_cpu(self):
        cpu = NestedTensor([torch.randn(3, 4), torch.randn(5, 4)], requires_grad=True)
        cuda = cpu.cuda()
        assert cuda.device.type == "cuda" and cuda._offsets.device.type == "cpu"
        torch.testing.assert_close(cuda.tensor.cpu(), cpu.tensor)
        torch.testing.assert_close(cuda.mask.cpu(), cpu.mask)
        torch.testing.assert_close(cuda.sum(dim=1).cpu(), cpu.sum(dim=1))
        torch.testing.assert_close(cuda[[1, 0]].tensor.cpu(), cpu[[1, 0]].tensor)
        (cuda * 2).tensor.sum().backward()
        assert torch.equal(cpu.grad.concat, torch.full((8, 4), 2.0))
