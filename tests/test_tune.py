"""`dlforge tune` (#16 item 4): the space validated like every recipe field, a study's outputs, pruning of a planted
bad trial, workers sharing one journal, resume, and bad input. Tiny table, 3 epochs: seconds per trial."""

from __future__ import annotations

import csv
import json
import os
import socket
import threading

import pytest
import yaml

from conftest import tabular_recipe
from dlforge.cli import main
from dlforge.core.errors import RecipeError
from dlforge.core.files import write_json
from dlforge.recipe.io import load_recipe

optuna = pytest.importorskip("optuna")

from dlforge.workflows import tune as tune_mod  # noqa: E402  (after the importorskip)
from dlforge.workflows import tune_study  # noqa: E402


def searched(csv_path, space=None, **tune):
    recipe = tabular_recipe(csv_path)
    recipe["training"]["baseline"] = False
    recipe["tune"] = {"space": space or {"training.optimizer.lr": "loguniform(1e-3, 1e-1)",
                                         "combiner.layers": "choice([8], [16, 8])"},
                      "metric": "val.loss", "pruner": "none", **tune}
    return recipe


def rows(out):
    with (out / "trials.csv").open() as handle:
        return list(csv.DictReader(handle))


def problems_of(recipe) -> str:
    with pytest.raises(RecipeError) as info:
        load_recipe(recipe)
    return "\n".join(info.value.problems)


def test_space_errors_name_the_field_and_suggest(tiny_csv):
    ok = load_recipe(searched(tiny_csv, {"training.optimizer.lr": "loguniform(1e-4, 1e-2)",
                                         "training.batch_size": "choice(16, 32)",
                                         "combiner.layers": "choice([8], [16, 8])",
                                         "training.epochs": "int(1, 4, step=1)",
                                         "training.regularization.dropout": "uniform(0, 0.5)"}))
    dists = ok.tune.distributions()
    assert dists["training.optimizer.lr"].log and dists["training.optimizer.lr"].low == 1e-4  # 1e-4: a number
    assert dists["combiner.layers"].choices == ((8,), (16, 8))
    assert ok.tune.maximize() is False  # val.loss: minimize

    text = problems_of(searched(tiny_csv, {"training.optimizer.lrr": "loguniform(1e-4, 1e-2)"}))
    assert "tune.space.training.optimizer.lrr" in text and "did you mean 'lr'" in text
    text = problems_of(searched(tiny_csv, {"training.optimizer.lr": "logunifrom(1e-4, 1e-2)"}))
    assert "unknown distribution 'logunifrom'" in text and "did you mean 'loguniform'" in text
    text = problems_of(searched(tiny_csv, {"training.optimizer.lr": "loguniform(0, 1e-2)"}))
    assert "must be > 0" in text
    text = problems_of(searched(tiny_csv, {"training.optimizer.lr": "uniform(0.1, 0.01)"}))
    assert "low must be below high" in text
    text = problems_of(searched(tiny_csv, {"training.batch_size": "loguniform(16, 256)"}))
    assert "whole numbers" in text and "use int(16, 256, log=true)" in text  # wrong type for the field
    text = problems_of(searched(tiny_csv, {"training.regularization.dropout": "uniform(0.0, 1.5)"}))
    assert "can give 1.5, which the recipe refuses" in text  # every value must be valid there
    text = problems_of(searched(tiny_csv, {"training.optimizer.name": "choice(adam, sgdd)"}))
    assert "'sgdd'" in text and "did you mean 'sgd'" in text
    text = problems_of(searched(tiny_csv, {"training.early_stopping.patience": "int(1, 3)"}))
    assert "null (not set)" in text  # a section that is off cannot be tuned
    text = problems_of(searched(tiny_csv, {"training.epochs": "int(1, 3, lg=true)"}))
    assert "no option 'lg'" in text and "did you mean 'log'" in text
    text = problems_of(dict(searched(tiny_csv), tune={**searched(tiny_csv)["tune"], "metric": "val.acuracy"}))
    assert "did you mean 'val.accuracy'" in text


def test_cli_bad_space_and_resume_without_study_exit_2(tiny_csv, tmp_path, capsys):
    bad = searched(tiny_csv, {"training.optimizer.lrr": "loguniform(1e-4, 1e-2)"})
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(bad))
    for args, message in ((["tune", str(path), "--out", str(tmp_path / "o")], "did you mean 'lr'"),
                          (["tune", "--resume", str(tmp_path)], "holds no tune study"),
                          (["tune", "--resume", str(tmp_path / "missing")], "no such folder"),
                          (["tune", str(path), "--timeout", "ten"], "not a duration")):
        with pytest.raises(SystemExit) as info:
            main(args)
        err = capsys.readouterr().err
        assert info.value.code == 2, err
        assert message in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()  # nothing written for a refused recipe


def test_a_three_trial_study_writes_its_outputs_and_best_yaml_trains(tiny_csv, tmp_path, capsys):
    out = tmp_path / "study"
    assert main(["tune", str(_write(tmp_path, searched(tiny_csv, trials=3))), "--out", str(out)]) is None
    printed = capsys.readouterr()
    table = rows(out)
    assert [r["number"] for r in table] == ["0", "1", "2"] and {r["state"] for r in table} == {"COMPLETE"}
    assert all(float(r["value"]) > 0 and float(r["duration_s"]) > 0 and r["epochs_run"] == "3" for r in table)
    assert {"param:training.optimizer.lr", "param:combiner.layers"} <= set(table[0])
    for number in range(3):  # each trial a normal, complete run directory
        assert (out / "trials" / f"{number:04d}" / "model.safetensors").is_file()
    best = min(table, key=lambda r: float(r["value"]))
    assert f"best: trial {best['number']}" in printed.out and str(out / "best.yaml") in printed.out
    for plot in ("history.svg", "importance.svg"):
        assert (out / "plots" / plot).read_text().startswith("<svg")
    summary = (out / "tune.md").read_text()
    assert f"Best: trial {best['number']}" in summary and "plots/history.svg" in summary
    best_recipe = load_recipe(out / "best.yaml")
    assert best_recipe.tune is None and best_recipe.training.optimizer.lr == pytest.approx(
        float(best["param:training.optimizer.lr"]))
    assert best_recipe.combiner.layers == json.loads(best["param:combiner.layers"])
    import dlforge

    run = dlforge.train(out / "best.yaml", out=tmp_path / "again", progress=False)  # trains from anywhere
    assert run.metrics["val"]["loss"] == pytest.approx(float(best["value"]), rel=1e-4)  # the same run again


def test_pruning_stops_a_planted_bad_trial(tiny_csv, tmp_path):
    recipe = searched(tiny_csv, {"training.optimizer.lr": "choice(0.05, 0.000001)"}, pruner="median",
                      warmup_trials=1)
    recipe["training"]["epochs"] = 4
    result = tune_mod.tune(recipe, out=tmp_path / "s", trials=2, say=lambda _: None,
                           enqueue=[{"training.optimizer.lr": 0.05}, {"training.optimizer.lr": 0.000001}])
    good, bad = rows(tmp_path / "s")
    assert good["state"] == "COMPLETE" and good["epochs_run"] == "4"
    assert bad["state"] == "PRUNED" and int(bad["epochs_run"]) < 4  # stopped at its first prunable epoch
    assert result.counts == {"COMPLETE": 1, "PRUNED": 1} and result.best["number"] == 0


def test_two_workers_share_one_journal(tiny_csv, tmp_path):
    out = tmp_path / "s"
    tune_mod.tune(searched(tiny_csv, pruner="hyperband"), out=out, trials=1, say=lambda _: None)
    settings = tune_mod.read_settings(out)
    write_json(out / tune_mod.SETTINGS, {**settings, "trials": 5, "workers": 2})
    done, errors = {}, []

    def work(i):
        try:
            done[i] = tune_mod.run_worker(out, i, threads=1)
        except Exception as exc:  # noqa: BLE001 - reported by the assert below
            errors.append(exc)

    workers = [threading.Thread(target=work, args=(i,)) for i in (0, 1)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert not errors
    study = optuna.load_study(study_name=settings["study_name"], storage=tune_study.journal_storage(settings, out))
    numbers = [t.number for t in study.trials]
    assert sorted(numbers) == [0, 1, 2, 3, 4]  # distinct numbers, exactly the budget: no overshoot
    assert sum(sum(d.values()) for d in done.values()) == 4
    assert len({json.dumps(t.params, sort_keys=True) for t in study.trials}) == 5  # each worker its own stream


@pytest.mark.slow
def test_two_worker_processes_from_the_cli(tiny_csv, tmp_path, capsys):
    out = tmp_path / "s"
    main(["tune", str(_write(tmp_path, searched(tiny_csv))), "--trials", "4", "--workers", "2", "--out", str(out)])
    err = capsys.readouterr().err
    assert "2 worker(s) x 1 thread(s)" in err or "2 worker(s) x" in err
    assert sorted(int(r["number"]) for r in rows(out)) == [0, 1, 2, 3]
    assert {r["state"] for r in rows(out)} == {"COMPLETE"}


def test_resume_reruns_an_interrupted_trial_and_continues(tiny_csv, tmp_path, capsys):
    out = tmp_path / "s"
    tune_mod.tune(searched(tiny_csv), out=out, trials=2, say=lambda _: None)
    settings = tune_mod.read_settings(out)
    study = optuna.load_study(study_name=settings["study_name"], storage=tune_study.journal_storage(settings, out))
    killed = study.ask({"training.optimizer.lr": optuna.distributions.FloatDistribution(1e-3, 1e-1, log=True),
                        "combiner.layers": optuna.distributions.CategoricalDistribution(["[8]", "[16, 8]"])})
    killed.set_user_attr("host", socket.gethostname())
    killed.set_user_attr("pid", _dead_pid())  # a worker killed mid-trial: RUNNING for ever
    lr = killed.params["training.optimizer.lr"]

    main(["tune", "--resume", str(out), "--trials", "3"])
    err = capsys.readouterr().err
    assert "1 interrupted trial(s) marked failed and queued to run again" in err
    table = rows(out)
    assert [r["state"] for r in table] == ["COMPLETE", "COMPLETE", "INTERRUPTED", "COMPLETE"]
    assert float(table[3]["param:training.optimizer.lr"]) == pytest.approx(lr)  # the same point, run again
    assert table[0]["value"] == rows(out)[0]["value"]  # finished trials kept

    main(["tune", "--resume", str(out)])  # the budget is spent: nothing runs
    assert "nothing to run" in capsys.readouterr().err and len(rows(out)) == 4


def test_a_crashing_trial_is_recorded_and_the_study_goes_on(tiny_csv, tmp_path, monkeypatch):
    from dlforge.training.callbacks import Callback, callbacks

    class Boom(Callback):
        def on_epoch_end(self, trainer, epoch, metrics):
            raise RuntimeError("planted crash")

    monkeypatch.setitem(callbacks._items, "tune_test_boom", Boom)  # registered for this test only
    recipe = searched(tiny_csv, {"training.callbacks": "choice([], [tune_test_boom])"})
    said = []
    result = tune_mod.tune(recipe, out=tmp_path / "s", trials=2, say=said.append,
                           enqueue=[{"training.callbacks": ["tune_test_boom"]}, {"training.callbacks": []}])
    crashed, fine = rows(tmp_path / "s")
    assert crashed["state"] == "FAIL" and "RuntimeError: planted crash" in crashed["error"]
    assert fine["state"] == "COMPLETE" and result.best["number"] == 1
    assert "planted crash" in (tmp_path / "s" / "tune.md").read_text()


def test_more_workers_than_cores_warns(tiny_csv, tmp_path, monkeypatch):
    out = tmp_path / "s"
    tune_mod.tune(searched(tiny_csv), out=out, trials=1, say=lambda _: None)
    monkeypatch.setattr(tune_mod, "cores", lambda: 2)
    said = []
    tune_mod.tune(out=out, resume=True, workers=3, say=said.append)  # nothing left to run: no process starts
    assert any("3 workers on 2 core(s)" in line and "--workers 2" in line for line in said)


def _write(tmp_path, recipe):
    path = tmp_path / "search.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def _dead_pid() -> int:
    pid = 4_000_000
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return pid
        except PermissionError:
            pass
        pid -= 1


def test_an_rdb_url_holds_the_study_and_its_password_is_not_printed(tiny_csv, tmp_path):
    pytest.importorskip("sqlalchemy")
    url = f"sqlite:///{tmp_path / 'study.db'}"
    said = []
    tune_mod.tune(searched(tiny_csv), out=tmp_path / "s", trials=1, storage=url, study_name="shared", say=said.append)
    assert not (tmp_path / "s" / tune_mod.JOURNAL).exists()
    assert [t.state.name for t in optuna.load_study(study_name="shared", storage=url).trials] == ["COMPLETE"]
    assert tune_mod.masked("postgresql://me:secret@db:5432/optuna") == "postgresql://me:***@db:5432/optuna"


class _StopAfter:
    """A stop request that turns on after `n` checks: Ctrl-C in the middle of a trial."""

    def __init__(self, n):
        self.n = n

    def is_set(self):
        self.n -= 1
        return self.n < 0


def test_ctrl_c_marks_the_trial_interrupted_and_resume_runs_it_again(tiny_csv, tmp_path):
    recipe = searched(tiny_csv)
    recipe["training"]["epochs"] = 5
    out = tmp_path / "s"
    with pytest.raises(tune_mod.TuneInterrupted) as info:  # 5 steps an epoch: stopped in the second epoch
        tune_mod.tune(recipe, out=out, trials=2, say=lambda _: None, stop=_StopAfter(8))
    assert info.value.exit_code == 130 and "--resume" in info.value.hint
    (stopped,) = rows(out)  # trials.csv is written before the command exits
    assert stopped["state"] == "INTERRUPTED"
    tune_mod.tune(out=out, resume=True, say=lambda _: None)
    table = rows(out)
    assert [r["state"] for r in table] == ["INTERRUPTED", "COMPLETE", "COMPLETE"]
    assert table[1]["retry_of"] == "0" and table[1]["param:training.optimizer.lr"] == stopped["param:training.optimizer.lr"]


def test_a_recipe_without_tune_section_gets_a_default_space(tiny_csv):
    recipe = load_recipe(tabular_recipe(tiny_csv, training={"epochs": 3, "batch_size": 32,
                                                            "optimizer": {"name": "adam", "lr": 0.01},
                                                            "early_stopping": {"metric": "val.accuracy"}}))
    space = tune_mod.with_default_space(recipe).tune
    assert space.space["training.optimizer.lr"] == "loguniform(0.001, 0.1)"
    assert space.space["training.batch_size"] == "choice(16, 32, 64)"
    assert space.metric == "val.accuracy" and space.maximize()
