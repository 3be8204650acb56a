"""End to end on the tiny digits recipe: the run directory holds what DESIGN.md promises."""

import json

import numpy as np
import pandas as pd

import dlforge


def test_run_directory_has_every_artifact(digits_run):
    for name in ("recipe.yaml", "model.json", "model.safetensors", "metrics.json", "history.csv", "report.html",
                 "checkpoint/state.pt", "plots/loss.svg", "plots/confusion.svg"):
        assert (digits_run / name).is_file(), name
    metrics = json.loads((digits_run / "metrics.json").read_text())
    assert set(metrics) >= {"val", "test", "train_seconds", "epochs_run"}
    assert metrics["epochs_run"] == 3
    assert metrics["test"]["accuracy"] > 0.8
    assert len(pd.read_csv(digits_run / "history.csv")) == 3


def test_predictor_round_trip_matches_training_metrics(digits_run):
    from dlforge.data.prepare import read_table, stratify_labels
    from dlforge.data.split import split_rows

    predictor = dlforge.load(digits_run)
    metrics = dlforge.evaluate(digits_run)
    stored = json.loads((digits_run / "metrics.json").read_text())["test"]
    assert abs(metrics["accuracy"] - stored["accuracy"]) < 1e-9
    # The loaded predictor's own labels on the test split give the accuracy training recorded.
    recipe, table = predictor.recipe, read_table(predictor.recipe)
    split = recipe.data.split
    rows = split_rows(table.n_rows, official=table.split, labels=stratify_labels(recipe, table), val=split.val,
                      test=split.test, seed=split.seed)["test"]
    test = table.take(rows)
    predicted = np.asarray(predictor.predict(test.columns["image"])).astype(str)
    assert len(predicted) == len(rows) > 0
    correct = int((predicted == test.columns["label"].astype(str)).sum())
    assert correct == round(stored["accuracy"] * len(rows))  # stored as float32: compare counts, not ratios
