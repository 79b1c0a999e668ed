"""Read and write files by extension: ``load``, ``save``, ``load_pandas``, ``is_json_serializable``.

The extension (case-insensitive, without the dot) picks the format:

| formats | extensions | load | save |
| --- | --- | --- | --- |
| PyTorch | ``pt``, ``pth`` | ``torch.load`` | ``torch.save`` |
| NumPy | ``npy``, ``numpy``, ``npz`` | ``numpy.load`` | ``numpy.save`` (``npz``: ``numpy.savez``) |
| JSON | ``json`` | ``json.load`` | ``json.dump`` (``FlatDict.json``) |
| YAML | ``yaml``, ``yml`` | ``yaml.load`` (``FullLoader``) | ``yaml.dump`` (``FlatDict.yaml``) |
| pickle | ``pkl``, ``pickle`` | ``pickle.load`` | ``pickle.dump`` |
| pandas | ``pandas``, ``pd`` | ``pandas.read_pickle`` | ``pandas.to_pickle`` |
| tables | ``csv``, ``tsv``, ``parquet``, ``pq``, ``h5``, ``hdf5``, ``xlsx``, ``xls``, ``xml``, ``sql`` | pandas readers | ``csv``/``tsv``/``parquet`` only |

torch, numpy, pandas and pyarrow are imported only when a file needs them; a missing one gives
an ``ImportError`` naming it.

Differences from the reference implementation: ``save(x, "a.npz")`` writes an ``.npz`` archive
(not ``a.npz.npy``), ``save(x, "a.numpy")`` writes exactly that file, ``.tsv`` files are read
and written tab-separated, saving a table without pandas raises ``ImportError`` (not
``NameError``), and ``is_json_serializable`` returns ``False`` for circular structures.
"""

from __future__ import annotations

import json
import os
import pickle
import sys
from collections.abc import Mapping
from importlib import import_module
from typing import IO, Any

import yaml
from chanfig import FlatDict

#: A path as ``open`` accepts it.
PathStr = str | bytes | os.PathLike
#: A path or an open file object.
File = PathStr | IO

PYTORCH = frozenset({"pt", "pth"})
NUMPY = frozenset({"numpy", "npy", "npz"})
JSON = frozenset({"json"})
YAML = frozenset({"yaml", "yml"})
CSV = frozenset({"csv", "tsv"})
PANDAS = frozenset({"pandas", "pd"})
PARQUET = frozenset({"parquet", "pq"})
PICKLE = frozenset({"pickle", "pkl"})
H5 = frozenset({"h5", "hdf5"})
EXCEL = frozenset({"xlsx", "xls"})
XML = frozenset({"xml"})
SQL = frozenset({"sql"})
#: Extensions ``load_pandas`` reads.
PANDAS_SUPPORTED = JSON | YAML | CSV | PANDAS | PARQUET | PICKLE | H5 | EXCEL | XML | SQL

_PANDAS_READERS: tuple[tuple[frozenset[str], str], ...] = (
    (PANDAS | PICKLE, "read_pickle"),
    (PARQUET, "read_parquet"),
    (H5, "read_hdf"),
    (CSV, "read_csv"),
    (JSON, "read_json"),
    (EXCEL, "read_excel"),
    (XML, "read_xml"),
    (SQL, "read_sql"),
)


def _extension(file: PathStr) -> str:
    return os.path.splitext(os.fsdecode(file))[1].lower()[1:]


def _require(module: str, purpose: str) -> Any:
    """Import ``module`` or explain which package ``purpose`` needs."""
    try:
        return import_module(module)
    except ImportError as error:
        package = module.split(".")[0]
        raise ImportError(
            f"{purpose} but {package} is not installed. Install it with: pip install {package}"
        ) from error


def _is_dataframe(obj: Any) -> bool:
    # Only a DataFrame if pandas is already imported: no import just to answer "no".
    pandas = sys.modules.get("pandas")
    return pandas is not None and isinstance(obj, pandas.DataFrame)


def is_json_serializable(obj: Any) -> bool:
    r"""
    Whether ``json.dumps`` accepts ``obj``.

    Returns ``False`` instead of raising for unsupported types, overflowing numbers, circular
    structures and integers too long to print.

    Examples:
        >>> is_json_serializable({"a": [1, 2.5, None]})
        True
        >>> is_json_serializable({1, 2})
        False
    """
    try:
        json.dumps(obj)
    except (TypeError, OverflowError, ValueError):
        return False
    return True


def load(file: PathStr, *args: Any, **kwargs: Any) -> Any:
    r"""
    Load ``file`` with the reader its extension names; extra arguments go to that reader.

    Raises:
        ValueError: ``file`` is not an existing file, or its extension is not supported.
        ImportError: the reader's package (torch, numpy, pandas) is not installed.

    Examples:
        >>> import tempfile
        >>> path = os.path.join(tempfile.mkdtemp(), "config.yaml")
        >>> save({"lr": 0.1, "layers": [64, 64]}, path)  # doctest: +ELLIPSIS
        '.../config.yaml'
        >>> load(path)
        {'layers': [64, 64], 'lr': 0.1}
    """
    if not os.path.isfile(file):
        raise ValueError(f"Trying to load {file!r} but it is not a file.")
    extension = _extension(file)
    if extension in PYTORCH:
        torch = _require("torch", f"Trying to load {file!r}")
        return torch.load(file, *args, **kwargs)
    if extension in NUMPY:
        numpy = _require("numpy", f"Trying to load {file!r}")
        return numpy.load(file, *args, **kwargs)
    if extension in JSON:
        with open(file) as fp:
            return json.load(fp, *args, **kwargs)
    if extension in YAML:
        kwargs.setdefault("Loader", yaml.FullLoader)
        with open(file) as fp:
            return yaml.load(fp, *args, **kwargs)
    if extension in PICKLE:
        with open(file, "rb") as fp:
            return pickle.load(fp, *args, **kwargs)
    if extension in PANDAS_SUPPORTED:
        return load_pandas(file, *args, **kwargs)
    raise ValueError(f"Trying to load {file!r} with unsupported extension={extension!r}")


def load_pandas(file: PathStr, *args: Any, **kwargs: Any) -> Any:
    r"""
    Load a table (or pickled pandas object) from ``file`` with the pandas reader for its extension.

    pandas is imported here, only when called; it is not a dependency of this package.
    ``.tsv`` files are read with ``sep="\t"`` unless ``sep`` is given.

    Raises:
        ImportError: pandas is not installed.
        ValueError: ``file`` is not an existing file, or pandas has no reader for its extension.
    """
    pandas = _require("pandas", f"Trying to load {file!r}")
    if not os.path.isfile(file):
        raise ValueError(f"Trying to load {file!r} but it is not a file.")
    extension = _extension(file)
    if extension == "tsv":
        kwargs.setdefault("sep", "\t")
    for extensions, reader in _PANDAS_READERS:
        if extension in extensions:
            return getattr(pandas, reader)(file, *args, **kwargs)
    raise ValueError(f"Trying to load {file!r} with unsupported extension={extension!r}")


def save(obj: Any, file: PathStr, *args: Any, **kwargs: Any) -> PathStr:
    r"""
    Save ``obj`` to ``file`` in the format its extension names and return ``file``.

    Extra arguments go to the writer (``indent=4`` to ``json.dump``, ...).

    Raises:
        ValueError: the extension is not supported for writing (``h5``, ``xlsx``, ``txt``, ...).
        ImportError: the writer's package is not installed.
        NotImplementedError: a table format (``csv``) for an object that is not a DataFrame.

    Examples:
        >>> import tempfile
        >>> path = os.path.join(tempfile.mkdtemp(), "scores.json")
        >>> save({"acc": 0.9}, path, indent=2) == path
        True
        >>> load(path)
        {'acc': 0.9}
    """
    extension = _extension(file)
    if extension in PYTORCH:
        torch = _require("torch", f"Trying to save to {file!r}")
        torch.save(obj, file, *args, **kwargs)
    elif extension in NUMPY:
        _save_numpy(obj, file, extension, *args, **kwargs)
    elif extension in PANDAS:
        pandas = _require("pandas", f"Trying to save to {file!r}")
        pandas.to_pickle(obj, file, *args, **kwargs)
    elif extension in PARQUET:
        _save_parquet(obj, file, *args, **kwargs)
    elif extension in CSV:
        if not _is_dataframe(obj):
            raise NotImplementedError(
                f"Trying to save {type(obj).__name__} to {file!r}: only DataFrames can be saved as {extension}"
            )
        if extension == "tsv":
            kwargs.setdefault("sep", "\t")
        obj.to_csv(file, *args, **kwargs)
    elif extension in JSON:
        if isinstance(obj, FlatDict):
            obj = obj.dict()
        with open(file, "w") as fp:
            json.dump(obj, fp, *args, **kwargs)
    elif extension in YAML:
        if isinstance(obj, FlatDict):
            obj = obj.dict()
        with open(file, "w") as fp:
            yaml.dump(obj, fp, *args, **kwargs)
    elif extension in PICKLE:
        with open(file, "wb") as fp:
            pickle.dump(obj, fp, *args, **kwargs)
    else:
        raise ValueError(f"Trying to save {type(obj).__name__} to {file!r} with unsupported extension={extension!r}")
    return file


def _save_numpy(obj: Any, file: PathStr, extension: str, *args: Any, **kwargs: Any) -> None:
    numpy = _require("numpy", f"Trying to save to {file!r}")
    if extension == "npz":
        arrays = dict(obj) if isinstance(obj, Mapping) else {"arr_0": obj}
        with open(file, "wb") as fp:  # a file object keeps numpy from appending a suffix
            numpy.savez(fp, **arrays)
        return
    with open(file, "wb") as fp:
        numpy.save(fp, obj, *args, **kwargs)


def _save_parquet(obj: Any, file: PathStr, *args: Any, **kwargs: Any) -> None:
    if _is_dataframe(obj):
        obj.to_parquet(file, *args, **kwargs)
        return
    parquet = _require("pyarrow.parquet", f"Trying to save {type(obj).__name__} to {file!r}")
    parquet.write_table(obj, file, *args, **kwargs)
