"""End to end on the tiny digits recipe: the run directory holds what DESIGN.md promises."""

import json

import pandas as pd

import dlforge


def test_run_directory_has_every_artifact(digits_run):
    for name in ("recipe.yaml", "model.json", "model.safetensors", "metrics.json", "history.csv", "report.html",
                 "checkpoint/state.pt", "plots/loss.png", "plots/confusion.png"):
        assert (digits_run / name).is_file(), name
    metrics = json.loads((digits_run / "metrics.json").read_text())
    assert set(metrics) >= {"val", "test", "train_seconds", "epochs_run"}
    assert metrics["epochs_run"] == 3
    assert metrics["test"]["accuracy"] > 0.8
    assert len(pd.read_csv(digits_run / "history.csv")) == 3


def test_predictor_round_trip_matches_training_metrics(digits_run):
    metrics = dlforge.evaluate(digits_run)
    stored = json.loads((digits_run / "metrics.json").read_text())["test"]
    assert abs(metrics["accuracy"] - stored["accuracy"]) < 1e-9
