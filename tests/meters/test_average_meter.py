"""AverageMeter and AverageMeters: statistics, weights, scalar and tensor meters, errors, state."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from danling.metrics import AverageMeter, AverageMeters, RoundDict

finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False)


@given(st.lists(st.tuples(finite, st.integers(min_value=0, max_value=5)), min_size=1, max_size=20))
def test_running_statistics_match_a_direct_computation(updates):
    meter = AverageMeter()
    for value, n in updates:
        meter.update(value, n=n)
    total = sum(value * n for value, n in updates)
    count = sum(n for _, n in updates)
    assert meter.count == count
    assert meter.sum == pytest.approx(total, rel=1e-12, abs=1e-6)
    assert meter.n == updates[-1][1]
    if count == 0:
        assert math.isnan(meter.val) and math.isnan(meter.avg)
    else:
        assert meter.avg == pytest.approx(total / count, rel=1e-12, abs=1e-6)
        assert meter.val == updates[-1][0]


def test_values_come_back_as_python_numbers():
    meter = AverageMeter()
    meter.update(1)
    meter.update(True)
    meter.update(torch.tensor([[0.5]]))
    assert type(meter.val) is float and type(meter.avg) is float and type(meter.sum) is float
    assert type(meter.count) is int
    assert meter.avg == pytest.approx(2.5 / 3)


def test_zero_and_negative_weights_replace_val_but_not_the_totals():
    meter = AverageMeter()
    meter.update(2.0, n=0)
    assert math.isnan(meter.val), "val is NaN while nothing has been counted"
    meter.update(4.0, n=2)
    meter.update(100.0, n=0)
    meter.update(-7.0, n=-3)
    assert meter.val == -7.0 and meter.n == -3
    assert meter.sum == 8.0 and meter.count == 2 and meter.avg == 4.0


def test_scalar_meter_device_comes_from_the_first_tensor():
    meter = AverageMeter()
    assert meter.device is None
    meter.update(torch.tensor(1.0))
    assert meter.device == torch.device("cpu")
    meter.reset(device="meta")
    assert meter.device == torch.device("meta")
    assert AverageMeter(device="cpu").reset().device == torch.device("cpu")


def test_reset_returns_the_meter_and_clears_tensor_state():
    meter = AverageMeter()
    meter.update(torch.tensor([1.0, 2.0]))
    assert meter.reset() is meter
    assert repr(meter) == "AverageMeter(val=nan, avg=nan)"
    meter.update(3.0)  # a reset tensor meter accepts scalars again
    assert meter.avg == 3.0


def test_tensor_meter_averages_element_wise_in_float64():
    meter = AverageMeter()
    first = torch.tensor([1, 2], dtype=torch.int32)
    meter.update(first, n=2)
    meter.update(torch.tensor([3.0, 5.0], requires_grad=True), n=1)
    assert meter.val.dtype == torch.float64 and not meter.val.requires_grad
    torch.testing.assert_close(meter.sum, torch.tensor([5.0, 9.0], dtype=torch.float64))
    torch.testing.assert_close(meter.avg, torch.tensor([5 / 3, 3.0], dtype=torch.float64))
    assert meter.count == 3


def test_tensor_meter_copies_its_value():
    meter = AverageMeter()
    value = torch.tensor([1.0, 2.0], dtype=torch.float64)
    meter.update(value)
    value.add_(10)
    torch.testing.assert_close(meter.val, torch.tensor([1.0, 2.0], dtype=torch.float64))


def test_empty_tensor_is_a_tensor_value():
    meter = AverageMeter()
    meter.update(torch.empty(0))
    assert meter.count == 1
    assert meter.val.shape == (0,)


def test_empty_tensor_meter_reports_nan_of_its_shape():
    meter = AverageMeter()
    meter.update(torch.ones(2, 3), n=0)
    assert meter.val.shape == (2, 3) and meter.val.isnan().all()
    assert meter.avg.shape == (2, 3) and meter.avg.isnan().all()


def test_scalar_with_zero_weight_on_a_tensor_meter_sets_val_only():
    meter = AverageMeter()
    meter.update(torch.tensor([1.0, 3.0]))
    meter.update(7.0, n=0)
    torch.testing.assert_close(meter.val, torch.full((2,), 7.0, dtype=torch.float64))
    assert meter.count == 1 and meter.n == 0


def test_mixing_errors_name_the_problem():
    meter = AverageMeter()
    meter.update(1.0)
    with pytest.raises(ValueError, match=r"^AverageMeter cannot mix scalar and tensor values\.$"):
        meter.update(torch.ones(2))
    meter = AverageMeter()
    meter.update(torch.ones(2))
    with pytest.raises(ValueError, match=r"^AverageMeter cannot mix tensor and scalar values\.$"):
        meter.update(1.0)
    with pytest.raises(ValueError, match=r"but got \(1, 2\) after \(2,\)\."):
        meter.update(torch.ones(1, 2))
    with pytest.raises(ValueError, match="expects a number or a tensor, but got 'abc'"):
        AverageMeter().update("abc")
    with pytest.raises(ValueError, match=r"n must be an integer count, but got 2\.5"):
        AverageMeter().update(1.0, n=2.5)


def test_scalar_updates_with_zero_weight_do_not_lock_scalar_mode():
    meter = AverageMeter()
    meter.update(1.0, n=0)
    meter.update(torch.ones(2))
    assert meter.count == 1


def test_tensor_weight_on_cpu_is_read_as_an_int():
    meter = AverageMeter()
    meter.update(0.5, n=torch.tensor(4))
    assert meter.count == 4 and type(meter.n) is int
    with pytest.raises(ValueError, match="integer count"):
        meter.update(0.5, n=torch.tensor(1.5))


def test_device_accumulation_path_logic():
    """The path accelerator values take (lazy 0-d tensors and tensor weights), exercised on CPU tensors."""
    meter = AverageMeter()
    meter._update_scalar(torch.tensor(0.5, dtype=torch.float64), torch.tensor(4))
    meter._update_scalar(torch.tensor(float("nan"), dtype=torch.float64), torch.tensor(0))  # an empty batch
    meter.update(2.0)  # a float joins the tensor sum
    assert isinstance(meter._local_sum, torch.Tensor) and isinstance(meter._local_count, torch.Tensor)
    assert meter.count == 5 and meter.sum == 4.0 and meter.avg == 0.8
    assert meter.val == 2.0 and meter.n == 1
    state = meter.state_dict()
    assert state["count"] == 5 and state["n"] == 1


def test_format_and_repr():
    meter = AverageMeter()
    assert f"{meter}" == "nan (nan)"
    for value, n in [(0.7, 1), (0.9, 1), (0.5, 3)]:
        meter.update(value, n=n)
    assert f"{meter:.4f}" == "0.5000 (0.6200)"
    assert f"{meter}" == "0.5 (0.62)"
    assert repr(meter) == str(meter) == "AverageMeter(val=0.5, avg=0.62)"
    vector = AverageMeter()
    vector.update(torch.tensor([1.0, 2.0]))
    text = "tensor([1., 2.], dtype=torch.float64)"
    assert f"{vector:.2f}" == f"{text} ({text})"
    assert repr(vector) == f"AverageMeter(val={text}, avg={text})"


def test_state_dict_round_trip_through_a_file(tmp_path):
    scalar, vector = AverageMeter(), AverageMeter()
    scalar.update(0.25, n=4)
    scalar.update(1.0)
    vector.update(torch.tensor([1.0, 2.0]), n=2)
    path = tmp_path / "meters.pt"
    torch.save({"scalar": scalar.state_dict(), "vector": vector.state_dict()}, path)
    loaded = torch.load(path)
    restored_scalar, restored_vector = AverageMeter(), AverageMeter()
    restored_scalar.load_state_dict(loaded["scalar"])
    restored_vector.load_state_dict(loaded["vector"])
    assert (restored_scalar.val, restored_scalar.avg, restored_scalar.count) == (1.0, 0.4, 5)
    torch.testing.assert_close(restored_vector.avg, vector.avg)
    with pytest.raises(ValueError, match="cannot mix tensor and scalar"):
        restored_vector.update(1.0)
    restored_vector.update(torch.tensor([4.0, 5.0]))
    torch.testing.assert_close(restored_vector.avg, torch.tensor([2.0, 3.0], dtype=torch.float64))


def test_without_process_group_bat_is_val_and_avg_is_local():
    meter = AverageMeter()
    meter.update(1.0)
    meter.update(3.0)
    assert meter.bat == 3.0 and meter.avg == 2.0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_values_accumulate_on_the_device():
    meter = AverageMeter()
    value = torch.tensor(0.5, device="cuda")
    meter.update(value, n=torch.tensor(4, device="cuda"))
    meter.update(value)
    assert meter._local_sum.device.type == "cuda"
    assert meter.device.type == "cuda"
    assert meter.count == 5 and meter.avg == 0.5


# AverageMeters


def test_meters_create_missing_meters_on_access():
    meters = AverageMeters()
    meters.loss.update(1.0)
    meters["lr"].update(0.1)
    assert list(meters.keys()) == ["loss", "lr"]
    assert isinstance(meters.loss, AverageMeter)


def test_meters_update_with_mapping_and_keywords():
    meters = AverageMeters()
    values = {"loss": 1.0, "acc": 0.5}
    meters.update(values, acc=0.75)
    assert values == {"loss": 1.0, "acc": 0.5}, "the caller's mapping is untouched"
    assert meters.val.dict() == {"loss": 1.0, "acc": 0.75}
    with pytest.raises(ValueError, match="Expected only one positional argument"):
        meters.update({"a": 1.0}, {"b": 2.0})


def test_meters_reductions_return_round_dicts():
    meters = AverageMeters()
    meters.loss.update(2.0, n=2)
    meters.loss.update(4.0)
    meters.vec.update(torch.tensor([1.0, 3.0]))
    average = meters.avg
    assert isinstance(average, RoundDict)
    assert average.loss == pytest.approx(8 / 3)
    torch.testing.assert_close(average.vec, torch.tensor([1.0, 3.0], dtype=torch.float64))
    assert meters.bat.loss == 4.0
    assert meters.n.dict() == {"loss": 1, "vec": 1}
    assert meters.count.dict() == {"loss": 3, "vec": 1}


def test_meters_only_hold_average_meters():
    with pytest.raises(ValueError, match="Expected value to be an instance of AverageMeter, but got <class 'float'>"):
        AverageMeters(loss=1.0)
    meters = AverageMeters({"loss": AverageMeter()}, acc=AverageMeter())
    assert list(meters) == ["loss", "acc"]
    with pytest.raises(ValueError, match="instance of AverageMeter"):
        meters.acc = 0.5
    with pytest.raises(TypeError, match="at most one positional mapping"):
        AverageMeters({}, {})


def test_meter_named_like_a_property_is_reachable_by_item():
    meters = AverageMeters()
    meters["sum"].update(2.0)
    assert isinstance(meters.sum, RoundDict)
    assert meters["sum"].val == 2.0


def test_meters_format_reset_and_state(tmp_path):
    meters = AverageMeters()
    assert f"{meters:.2f}" == ""
    meters.update(loss=0.5, acc=0.25)
    assert f"{meters:.2f}" == "loss: 0.50 (0.50)\tacc: 0.25 (0.25)"
    path = tmp_path / "meters.pt"
    torch.save(meters.state_dict(), path)
    restored = AverageMeters()
    restored.load_state_dict(torch.load(path))
    assert restored.avg.dict() == {"loss": 0.5, "acc": 0.25}
    assert meters.reset() is meters
    assert all(math.isnan(value) for value in meters.avg.values())
