"""Figures over seeds: benchmarks/recipes.py resumes, checks floors on the minimum, regenerates the README table;
every shipped recipe loads and is in its table; the default recipe wins the demo on seeds other than 0."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

import dlforge
from dlforge.recipe.io import load_recipe

REPO = Path(__file__).resolve().parents[1]


def _bench():
    spec = importlib.util.spec_from_file_location("bench_recipes", REPO / "benchmarks" / "recipes.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


def _row(bench, name: str, seed: int, accuracy: float, **extra) -> dict:
    entry = bench.BY_NAME[name]
    return {"recipe": name, "recipe_hash": bench.recipe_hash(entry), "seed": seed, "overrides": [], "threads": 1,
            "cpu": "Test CPU", "cores": 2, "capability": "AVX2", "bf16": False, "torch": "2.x",
            "date": "2026-01-01T00:00:00+00:00", "load_start": 1.0, "load_end": 2.0, "test": {"accuracy": accuracy},
            "train_seconds": 1.5, "epochs_run": 3, "best_epoch": 2, "wall_seconds": 2.0, "cpu_seconds": 1.8, **extra}


def test_every_shipped_recipe_loads_and_is_in_the_figures_table():
    bench = _bench()
    shipped = {p.resolve() for p in (REPO / "recipes").glob("*.yaml")}
    listed = {(REPO / e.path).resolve() for e in bench.RECIPES}
    assert shipped <= listed, f"recipes missing from benchmarks/recipes.py: {sorted(p.name for p in shipped - listed)}"
    for entry in bench.RECIPES:
        recipe = load_recipe(REPO / entry.path)
        assert recipe.training.seed == 0, entry.name


def test_sweep_resumes_and_skips_what_is_done(tmp_path, monkeypatch):
    bench = _bench()
    results = tmp_path / "r.jsonl"
    results.write_text(json.dumps(_row(bench, "digits", 0, 0.98)) + "\n" + '{"cut by an interr')  # a torn last line
    trained = []

    def fake_train(entry, seed, overrides, threads, info):
        trained.append((entry.name, seed, tuple(overrides)))
        return _row(bench, entry.name, seed, 0.97, overrides=overrides)

    monkeypatch.setattr(bench, "train_one", fake_train)
    monkeypatch.setattr(bench, "machine", lambda: {"cpu": "Test CPU", "capability": "AVX2"})
    bench.sweep(["digits"], [0, 1, 2], [], None, results)
    assert trained == [("digits", 1, ()), ("digits", 2, ())]  # seed 0 was in the file
    bench.sweep(["digits"], [0, 1, 2], [], None, results)  # nothing left to do
    bench.sweep(["digits"], [0], ["training.epochs=1"], None, results)  # a variant is another key
    assert trained == [("digits", 1, ()), ("digits", 2, ()), ("digits", 0, ("training.epochs=1",))]
    monkeypatch.setattr(bench, "machine", lambda: {"cpu": "Test CPU", "capability": "AVX512"})
    bench.sweep(["digits"], [0], [], None, results)  # other kernels: another run
    assert trained[-1] == ("digits", 0, ())
    assert [r["seed"] for r in bench.read_results(results)] == [0, 1, 2, 0, 0]


def test_a_scratch_results_file_leaves_the_shipped_tables_alone(tmp_path, monkeypatch):
    """`--results` elsewhere (a helper's trial sweep) must not rewrite README.md or recipes.md from that file."""
    bench = _bench()
    monkeypatch.setattr(bench, "sweep", lambda *args: None)
    written = []
    monkeypatch.setattr(bench, "write_tables", lambda rows, *a, **k: written.append(rows))
    bench.main(["--recipes", "digits", "--seeds", "0", "--results", str(tmp_path / "scratch.jsonl")])
    assert written == []
    bench.main(["--report-only"])  # the shipped file: the tables are made from it
    assert len(written) == 1 and written[0] == bench.read_results(bench.RESULTS)


def test_floor_is_checked_on_the_minimum_and_the_readme_block_is_replaced(tmp_path):
    bench = _bench()
    rows = [_row(bench, "digits", s, a) for s, a in enumerate([0.99, 0.965, 0.98])]
    rows.append(_row(bench, "adult", 0, 0.86, test={"accuracy": 0.86, "roc_auc": 0.91}))  # one seed: older figure
    rows.append(dict(_row(bench, "gunpoint", 0, 1.0), recipe_hash="0" * 12))  # an edited recipe: stale
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{bench.BEGIN}\nold table\n{bench.END}\n\n## Next\n")
    report = tmp_path / "recipes.md"
    bench.write_tables(rows, report=report, readme=readme)

    md = report.read_text()
    digits = next(line for line in md.splitlines() if line.startswith("| `digits`"))
    assert "min **96.50%**, mean 97.83%, max 99.00%" in digits and "**missed** on the minimum" in digits
    assert "Test CPU (AVX2, torch 2.x)" in md
    assert "1 result(s) of recipe files that have changed since (stale)" in md
    assert "`adult`: 85.42%" in md and "seeds 0" in md  # too few seeds: the older figure, and what there is

    text = readme.read_text()
    assert text.startswith("intro\n") and text.endswith(f"{bench.END}\n\n## Next\n") and "old table" not in text
    assert "| `digits.yaml` | " in text and "(3 seeds)" in text
    assert "| `adult.yaml` † |" in text and "| `gunpoint.yaml` † |" in text
    adult = next(line for line in text.splitlines() if line.startswith("| `adult.yaml` †"))
    assert "85.42%" in adult and "measured here, seed 0: 86.00%; roc_auc 0.910" in adult  # the older and the new


def test_seeds_parse_ranges_and_lists():
    bench = _bench()
    assert bench.parse_seeds("0-3,7") == [0, 1, 2, 3, 7]
    with pytest.raises(SystemExit, match="'x' is not a seed"):
        bench.parse_seeds("0,x")


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 3])
def test_default_recipe_reaches_97_percent_on_other_seeds(tmp_path, seed):
    # Seeds 1 and 3 were the weak ones while the best epoch was picked on val.accuracy (96.66%, 97.77%).
    run = dlforge.train(None, out=tmp_path / "run", overrides=[f"training.seed={seed}"], progress=False)
    assert run.metrics["test"]["accuracy"] >= 0.97
