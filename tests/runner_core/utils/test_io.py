"""load / save / load_pandas / is_json_serializable: real files written and read back."""

from __future__ import annotations

import json
import sys
import types

import pytest
import torch
import yaml
from chanfig import FlatDict, NestedDict

from danling.utils import io, is_json_serializable, load, load_pandas, save


@pytest.mark.parametrize("extension", ["pt", "pth", "PTH"])
def test_torch_round_trip(tmp_path, extension):
    obj = {"weight": torch.arange(6.0).view(2, 3), "step": 4}
    path = str(tmp_path / f"state.{extension}")
    assert save(obj, path) == path
    loaded = load(path, weights_only=True)
    assert torch.equal(loaded["weight"], obj["weight"]) and loaded["step"] == 4


@pytest.mark.parametrize("extension", ["json", "yaml", "yml", "pkl", "pickle"])
def test_text_and_pickle_round_trip(tmp_path, extension):
    obj = {"name": "run", "scores": [0.5, 0.75], "nested": {"lr": 0.001}}
    path = tmp_path / f"data.{extension}"
    returned = save(obj, path)
    assert returned is path
    assert load(path) == obj


def test_json_kwargs_and_flatdict(tmp_path):
    path = tmp_path / "results.json"
    save(NestedDict({"a.b": 1}), path, indent=4)
    text = path.read_text()
    assert json.loads(text) == {"a": {"b": 1}}
    assert '\n    "a"' in text  # indent=4 honoured for chanfig objects too


def test_yaml_flatdict_and_loader_override(tmp_path):
    path = tmp_path / "config.yaml"
    save(FlatDict(lr=0.1, layers=[1, 2]), path)
    assert load(path) == {"lr": 0.1, "layers": [1, 2]}
    assert load(path, Loader=yaml.SafeLoader) == {"lr": 0.1, "layers": [1, 2]}


def test_numpy_formats_write_exactly_the_named_file(tmp_path):
    numpy = pytest.importorskip("numpy")
    array = numpy.arange(5)
    for name in ("a.npy", "a.numpy"):
        save(array, tmp_path / name)
        assert numpy.array_equal(load(tmp_path / name), array)
    save({"x": array, "y": array * 2}, tmp_path / "b.npz")
    with load(tmp_path / "b.npz") as archive:
        assert numpy.array_equal(archive["y"], array * 2)
    save(array, tmp_path / "c.npz")
    with load(tmp_path / "c.npz") as archive:
        assert numpy.array_equal(archive["arr_0"], array)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.npy", "a.numpy", "b.npz", "c.npz"]


def test_load_missing_file_and_directory(tmp_path):
    with pytest.raises(ValueError, match="but it is not a file"):
        load(tmp_path / "missing.pth")
    with pytest.raises(ValueError, match="but it is not a file"):
        load(tmp_path)


def test_unsupported_extensions(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ValueError, match=r"unsupported extension='txt'"):
        load(tmp_path / "notes.txt")
    with pytest.raises(ValueError, match=r"unsupported extension='h5'"):
        save({"a": 1}, tmp_path / "data.h5")
    assert not (tmp_path / "data.h5").exists()


def test_table_formats_need_a_dataframe(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pandas", None)  # as if pandas were not installed
    with pytest.raises(NotImplementedError, match="only DataFrames"):
        save([[1, 2]], tmp_path / "table.csv")
    with pytest.raises(ImportError, match="pyarrow is not installed"):
        monkeypatch.setitem(sys.modules, "pyarrow", None)
        save([[1, 2]], tmp_path / "table.parquet")


def test_load_pandas_without_pandas_names_the_package(tmp_path, monkeypatch):
    (tmp_path / "table.csv").write_text("a,b\n1,2\n")
    monkeypatch.setitem(sys.modules, "pandas", None)
    with pytest.raises(ImportError, match="pandas is not installed"):
        load_pandas(tmp_path / "table.csv")
    with pytest.raises(ImportError, match="pandas is not installed"):
        load(tmp_path / "table.csv")
    with pytest.raises(ImportError, match="pandas is not installed"):
        save(object(), tmp_path / "frame.pd")


def test_load_pandas_dispatches_by_extension(tmp_path, monkeypatch):
    # Which pandas reader a file goes to is pure dispatch logic: record the calls.
    calls = []

    def reader(name):
        return lambda file, *args, **kwargs: calls.append((name, str(file), kwargs)) or name

    fake = types.SimpleNamespace(**{name: reader(name) for _, name in io._PANDAS_READERS})
    monkeypatch.setitem(sys.modules, "pandas", fake)
    expected = {
        "csv": "read_csv",
        "tsv": "read_csv",
        "parquet": "read_parquet",
        "pq": "read_parquet",
        "h5": "read_hdf",
        "xlsx": "read_excel",
        "xml": "read_xml",
        "sql": "read_sql",
        "pkl": "read_pickle",
        "pd": "read_pickle",
        "json": "read_json",
    }
    for extension, name in expected.items():
        path = tmp_path / f"table.{extension}"
        path.write_text("x")
        assert load_pandas(path) == name
    assert calls[1] == ("read_csv", str(tmp_path / "table.tsv"), {"sep": "\t"})
    (tmp_path / "table.yaml").write_text("a: 1")
    with pytest.raises(ValueError, match="unsupported extension='yaml'"):
        load_pandas(tmp_path / "table.yaml")
    with pytest.raises(ValueError, match="not a file"):
        load_pandas(tmp_path / "missing.csv")


@pytest.mark.parametrize(
    ("obj", "expected"),
    [({"a": 1}, True), ({1: 2}, True), ((1, 2), True), (float("nan"), True), (set(), False), (b"x", False)],
)
def test_is_json_serializable(obj, expected):
    assert is_json_serializable(obj) is expected


def test_is_json_serializable_never_raises():
    circular: list = []
    circular.append(circular)
    assert is_json_serializable(circular) is False
    assert is_json_serializable({(1, 2): 3}) is False
