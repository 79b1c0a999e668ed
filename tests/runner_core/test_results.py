"""Scores, best results and the results files."""

from __future__ import annotations

import json
import math
import os

import torch

from danling.runners.results import (
    best_index,
    collect_scores,
    flatten_result,
    is_best,
    rows_since_best,
    save_results,
)


def test_scores_skip_rows_without_a_numeric_score():
    results = {
        0: {"val": {"acc": torch.tensor(0.5)}},
        1: {"val": {"acc": torch.tensor([0.1, 0.2])}},
        2: {"val": {}},
        3: {"val": {"acc": 0.7}},
    }
    assert collect_scores(results, "val", "acc") == {0: 0.5, 3: 0.7}
    assert collect_scores(results, None, "acc") == {}


def test_best_tracking_and_patience_counter():
    scores = {0: 1.0, 1: 0.5, 2: 0.5 + 1e-8, 3: 0.9}
    assert best_index(scores, "loss") == 1  # only exact ties go to the latest index
    assert best_index({0: 0.5, 1: 0.5}, "loss") == 1
    assert rows_since_best(scores, "loss") == 2
    assert is_best({3: {}}, {0: 1.0, 3: 1.0 + 1e-9}, "loss")


def test_flatten_result_expands_meters_tensors_and_sequences():
    class Meter:
        avg = 2.5

    flat = flatten_result({"loss": Meter(), "per_class": torch.tensor([0.25, 0.75]), "pair": (1, 2), "name": "x"})
    assert flat == {"loss": 2.5, "per_class/0": 0.25, "per_class/1": 0.75, "pair/0": 1.0, "pair/1": 2.0}


def test_results_files_are_valid_json_with_non_finite_values_as_null(tmp_path):
    results = {0: {"val": {"loss": math.nan, "acc": torch.tensor(0.5)}}, 1: {"val": {"loss": 0.25}}}
    save_results(str(tmp_path), results, header={"name": "n", "id": "i"}, latest={**results[1], "index": 1}, best=False)
    assert sorted(os.listdir(tmp_path)) == ["latest.json", "results.json"]
    with open(tmp_path / "results.json") as file:
        content = json.load(file)
    assert content["results"]["0"]["val"] == {"loss": None, "acc": 0.5}
    with open(tmp_path / "latest.json") as file:
        assert json.load(file) == {"name": "n", "id": "i", "val": {"loss": 0.25}, "index": 1}
