"""Result rows, scores and the best one: what the runner tracks to pick its best checkpoint.

A run's ``results`` map an *index* (the epoch in epoch mode, the global step in step mode) to a
row ``{split: {metric: value}}``.  The *score* of a row is ``row[score_split][score_name]``;
the best row has the lowest score when ``score_name == "loss"`` and the highest otherwise, and
the latest of equal scores wins.  ``save_results`` writes them as JSON next to the checkpoints:

- ``results.json``: every row, keyed by index;
- ``latest.json``: the newest row with its index;
- ``best.json``: the best row so far (rewritten when the newest row is the best).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch

from danling.metrics import RoundDict
from danling.utils import atomic_write

#: Two scores closer than this are equal.
SCORE_TOLERANCE = 1e-7


def resolve_score_split(evaluate_splits: Sequence[str], configured: str | None = None) -> str | None:
    r"""
    The split whose metric selects the best result: ``configured``, else the first evaluation
    split whose name starts with ``val`` (any case), else the first evaluation split.

    Examples:
        >>> resolve_score_split(["test", "validation"]), resolve_score_split(["test"]), resolve_score_split([])
        ('validation', 'test', None)
    """
    if configured is not None:
        return configured
    for split in evaluate_splits:
        if split.lower().startswith("val"):
            return split
    return evaluate_splits[0] if evaluate_splits else None


def _number(value: Any) -> float | None:
    if isinstance(value, torch.Tensor):
        return float(value.item()) if value.numel() == 1 else None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return None


def collect_scores(results: Mapping[int, Mapping[str, Any]], split: str | None, name: str) -> dict[int, float]:
    r"""
    ``{index: score}`` for every row that has a numeric ``row[split][name]``.

    Examples:
        >>> collect_scores({0: {"val": {"loss": 2.0}}, 1: {"train": {"loss": 1.0}}, 2: {"val": {"loss": 1.5}}}, "val", "loss")
        {0: 2.0, 2: 1.5}
    """
    if split is None:
        return {}
    scores = {}
    for index, row in results.items():
        section = row.get(split) if isinstance(row, Mapping) else None
        if isinstance(section, Mapping) and name in section:
            score = _number(section[name])
            if score is not None:
                scores[index] = score
    return scores


def lower_is_better(score_name: str) -> bool:
    """Whether smaller scores are better: only for ``"loss"``."""
    return score_name == "loss"


def best_index(scores: Mapping[int, float], score_name: str) -> int | None:
    r"""
    Index of the best score (the latest one among equals), or ``None`` without scores.

    Examples:
        >>> best_index({0: 0.5, 1: 0.9, 2: 0.9}, "acc"), best_index({0: 0.5, 1: 0.9}, "loss"), best_index({}, "loss")
        (2, 0, None)
    """
    if not scores:
        return None
    pick = min if lower_is_better(score_name) else max
    return pick(reversed(list(scores)), key=scores.__getitem__)


def is_best(results: Mapping[int, Any], scores: Mapping[int, float], score_name: str) -> bool:
    r"""
    Whether the newest scored row is the best: ``True`` before any result, ``False`` when the
    rows have no score (so nothing is promoted to ``best`` by accident).

    Examples:
        >>> is_best({}, {}, "loss"), is_best({0: {}}, {}, "loss"), is_best({0: {}, 1: {}}, {0: 1.0, 1: 0.5}, "loss")
        (True, False, True)
    """
    if not results:
        return True
    if not scores:
        return False
    latest = scores[next(reversed(list(scores)))]
    return abs(latest - scores[best_index(scores, score_name)]) < SCORE_TOLERANCE


def rows_since_best(scores: Mapping[int, float], score_name: str) -> int:
    r"""
    How many scored rows came after the best one (the early-stopping counter).

    Examples:
        >>> rows_since_best({0: 1.0, 1: 0.5, 2: 0.7, 3: 0.6}, "loss"), rows_since_best({}, "loss")
        (2, 0)
    """
    best = best_index(scores, score_name)
    if best is None:
        return 0
    indices = list(scores)
    return len(indices) - 1 - indices.index(best)


def indexed_row(results: Mapping[int, Any], index: int | None) -> RoundDict | None:
    """A copy of row ``index`` with an ``"index"`` entry, or ``None`` when there is no such row."""
    if index is None or index not in results:
        return None
    row = RoundDict(results[index])
    row["index"] = index
    return row


def merge_result(results: RoundDict, result: Mapping[str, Any], index: int) -> None:
    """Add ``result`` as row ``index``, merging into the row if it exists."""
    if index in results:
        results[index].merge(RoundDict(result))
    else:
        results[index] = RoundDict(result)


def flatten_result(result: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    r"""
    ``{"a/b/c": number}`` of every numeric leaf, for scalar writers (TensorBoard, W&B).

    Meters contribute their average; sequences and multi-element tensors expand to ``name/0``,
    ``name/1`` ...; other leaves are left out.

    Examples:
        >>> flatten_result({"loss": 4.0, "metrics": {"acc": 0.5, "per_class": [0.1, 0.2]}, "name": "x"})
        {'loss': 4.0, 'metrics/acc': 0.5, 'metrics/per_class/0': 0.1, 'metrics/per_class/1': 0.2}
    """
    flat: dict[str, float] = {}
    for key, value in result.items():
        name = f"{prefix}{key}"
        if hasattr(value, "avg") and not isinstance(value, Mapping):
            value = value.avg
        if isinstance(value, Mapping):
            flat.update(flatten_result(value, f"{name}/"))
        elif isinstance(value, torch.Tensor) and value.numel() > 1:
            flat.update({f"{name}/{i}": float(item) for i, item in enumerate(value.flatten().tolist())})
        elif isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
            flat.update(flatten_result(dict(enumerate(value)), f"{name}/"))
        else:
            number = _number(value)
            if number is not None:
                flat[name] = number
    return flat


def _plain(value: Any, ndigits: int) -> Any:
    """``value`` as JSON data: tensors to numbers or lists, floats rounded, non-finite floats to ``None``."""
    if isinstance(value, Mapping):
        return {str(key): _plain(item, ndigits) for key, item in value.items()}
    if isinstance(value, torch.Tensor):
        value = value.item() if value.numel() == 1 else value.tolist()
    if isinstance(value, (list, tuple)):
        return [_plain(item, ndigits) for item in value]
    if isinstance(value, float):
        return round(value, ndigits) if math.isfinite(value) else None
    return value


def _write_json(path: str, content: Any) -> None:
    with atomic_write(path, fsync=False) as file:
        file.write(json.dumps(content, indent=4).encode())


def save_results(
    directory: str,
    results: Mapping[int, Any],
    *,
    header: Mapping[str, Any],
    latest: Mapping[str, Any] | None,
    best: bool,
    ndigits: int = 8,
) -> list[str]:
    r"""
    Write ``results.json``, ``latest.json`` and (when ``best``) ``best.json`` into ``directory``.

    Each file starts with ``header`` (run name, id, timestamp); numbers are rounded to
    ``ndigits`` and non-finite ones written as ``null``.  Files are replaced atomically.
    Returns the paths written.

    Examples:
        >>> import tempfile
        >>> directory = tempfile.mkdtemp()
        >>> paths = save_results(directory, {0: {"val": {"loss": 0.123456789}}}, header={"name": "demo"},
        ...                      latest={"val": {"loss": 0.123456789}, "index": 0}, best=True)
        >>> [os.path.basename(path) for path in paths]
        ['results.json', 'latest.json', 'best.json']
        >>> json.load(open(os.path.join(directory, "results.json")))
        {'name': 'demo', 'results': {'0': {'val': {'loss': 0.12345679}}}}
    """
    written = []
    files: Iterable[tuple[str, Any]] = [("results.json", {**header, "results": _plain(results, ndigits)})]
    if latest is not None:
        row = {**header, **_plain(latest, ndigits)}
        files = [*files, ("latest.json", row)] + ([("best.json", row)] if best else [])
    for filename, content in files:
        path = os.path.join(directory, filename)
        _write_json(path, content)
        written.append(path)
    return written
