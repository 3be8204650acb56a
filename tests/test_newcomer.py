"""The newcomer's path (issue #12 items 5-6): what `train DATA --target` and `init` hold out and say, `--test FILE`,
a forgotten --target, named metric averages, regression plots, timings, and init's per-column comments, text
encoder choice and ordered number columns read as one signal."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

import dlforge
from dlforge.core.errors import RecipeError
from dlforge.recipe.io import dump_recipe, load_recipe
from dlforge.workflows.init import infer_recipe, init
from conftest import digits_recipe


@pytest.fixture
def shop(tmp_path) -> Path:
    """A 3-class table with a skewed number, a category holding the string 'None', missing cells and imbalance."""
    rng = np.random.default_rng(0)
    n = 240
    y = rng.choice(["low", "mid", "high"], n, p=[0.15, 0.35, 0.5])
    frame = pd.DataFrame({"price": np.round(np.exp(rng.normal(size=n)) * 100 + (y == "high") * 80, 2),
                          "city": rng.choice(["Oslo", "Rome", "None"], n), "score": rng.normal(size=n),
                          "label": y})
    frame.loc[:23, "score"] = np.nan  # 10% empty cells
    frame.to_csv(tmp_path / "shop.csv", index=False)
    frame.iloc[:50].to_csv(tmp_path / "shop_test.csv", index=False)
    return tmp_path / "shop.csv"


def test_forgotten_target_says_so_and_lists_the_columns(shop, cli):
    code, _, err = cli("recipe", "check", shop)
    assert code == 2 and "this is data, not a recipe" in err and f"dlforge train {shop} --target" in err
    for argv in (["train", str(shop)], ["init", str(shop)]):
        code, _, err = cli(*argv)
        assert code == 2, argv
        assert "--target" in err and "price, city, score, label" in err and "Traceback" not in err
        assert f"dlforge train {shop} --target label" in err  # how to fix it, with a real column


def test_init_says_what_it_holds_out_and_why(shop):
    text = init(str(shop), "label")
    split = next(line for line in text.splitlines() if line.startswith("  split:"))
    assert "test: 0.2" in split and "held out (20% of the data, stratified by 'label'" in split
    assert "no test split of its own" in split and "--test FILE" in split


def test_test_file_is_the_test_split_and_all_data_trains(shop, tmp_path, cli):
    code, _, err = cli("train", shop, "--target", "label", "--test", shop.with_name("shop_test.csv"),
                       "--out", tmp_path / "run", "--no-pretrained", "--set", "training.epochs=2")
    assert code == 0, err
    rows = yaml.safe_load((tmp_path / "run" / "metrics.json").read_text())["data"]["rows"]
    assert rows["test"] == 50 and rows["train"] + rows["val"] == 240  # every row of DATA trains or validates
    assert "from " + str(shop.with_name("shop_test.csv")) in err
    recipe = yaml.safe_load((tmp_path / "run" / "recipe.yaml").read_text())
    assert recipe["data"]["test_source"].endswith("shop_test.csv")
    # evaluate re-derives the same split from the saved recipe: the test file's rows
    assert dlforge.evaluate(tmp_path / "run")["accuracy"] == pytest.approx(
        yaml.safe_load((tmp_path / "run" / "metrics.json").read_text())["test"]["accuracy"])


def test_test_file_and_a_test_fraction_conflict(shop):
    with pytest.raises(RecipeError, match="data.split.test.*test_source"):
        load_recipe({"data": {"source": str(shop), "test_source": "x.csv", "split": {"test": 0.2}},
                     "inputs": [{"name": "price", "type": "number"}], "outputs": [{"name": "label", "type": "category"}]})


def test_category_metrics_name_their_average_and_old_names_still_read():
    recipe = load_recipe(digits_recipe(early_stopping={"metric": "val.f1"}))
    assert recipe.training.early_stopping.metric == "val.macro_f1"
    logged = recipe.logged_metrics()
    assert {"val.macro_f1", "val.macro_precision", "val.macro_recall", "val.weighted_f1"} <= set(logged)
    assert "val.f1" not in logged
    with pytest.raises(RecipeError, match="did you mean 'val.macro_f1'"):
        load_recipe(digits_recipe(early_stopping={"metric": "val.macro_f"}))
    # A binary output's f1 is the positive class's, not an average: its name stays.
    binary = digits_recipe(early_stopping={"metric": "val.f1"})
    binary["outputs"] = [{"name": "label", "type": "binary"}]
    assert load_recipe(binary).training.early_stopping.metric == "val.f1"


def test_shipped_recipes_still_validate():
    paths = sorted(Path(__file__).resolve().parents[1].joinpath("recipes").glob("*.yaml"))
    assert len(paths) >= 17
    for path in paths:
        recipe = load_recipe(path)
        stopping = recipe.training.early_stopping
        if stopping is not None:  # an old metric name in a shipped recipe resolves to a name training logs
            assert stopping.metric.rsplit(".", 1)[-1] not in {"f1", "precision", "recall"} or \
                recipe.outputs[0].type == "binary", (path.name, stopping.metric)


@pytest.fixture
def prices(tmp_path) -> Path:
    rng = np.random.default_rng(1)
    n = 200
    x = rng.normal(size=n)
    pd.DataFrame({"x": x, "z": rng.normal(size=n), "price": 1000 + 300 * x + rng.normal(size=n) * 20}).to_csv(
        tmp_path / "prices.csv", index=False)
    return tmp_path / "prices.csv"


def test_regression_run_plots_and_resolved_recipe(prices, tmp_path, monkeypatch):
    import time

    import dlforge.workflows.train as train_module
    from dlforge.training.trainer import Trainer

    events = []
    fit = Trainer.fit

    def slow_backend():  # a one-time import that takes a second: it must count as preparation, not training
        time.sleep(1.0)
        events.append("backend")

    def timed_fit(self, *args, **kwargs):
        started = time.perf_counter()
        try:
            return fit(self, *args, **kwargs)
        finally:
            events.append(("fit", time.perf_counter() - started))

    monkeypatch.setattr(train_module, "load_metric_backend", slow_backend)
    monkeypatch.setattr(Trainer, "fit", timed_fit)
    recipe = yaml.safe_load(init(str(prices), "price"))
    recipe["training"]["epochs"] = 3
    result = dlforge.train(recipe, out=tmp_path / "run", progress=False)
    assert events[0] == "backend" and events[1][0] == "fit"  # the import happens before the loop
    assert result.metrics["prepare_seconds"] >= 1.0
    # The loop only: a small table is a cross-fit ensemble (training.cross_fit), one fit per member.
    fits = [seconds for kind, seconds in events[1:]]
    assert len(fits) == result.metrics["cross_fit"]["folds"] == recipe["training"]["cross_fit"]
    assert result.metrics["train_seconds"] <= sum(fits) + 1e-3
    plots = tmp_path / "run" / "plots"
    scatter = (plots / "predicted_vs_actual.svg").read_text()
    assert scatter.startswith("<svg") and scatter.count("<circle") == result.metrics["data"]["rows"]["test"]
    assert (plots / "residuals.svg").read_text().count("<circle") == result.metrics["data"]["rows"]["test"]
    assert "val.r2" in (plots / "val.r2.svg").read_text()  # r² on its own axis
    assert "val.r2" not in (plots / "errors.svg").read_text()  # not beside the errors in dollars
    assert "predicted_vs_actual.svg" in (tmp_path / "run" / "report.html").read_text()
    assert yaml.safe_load(dump_recipe(load_recipe(recipe)))["data"]["split"]["stratify"] is False
    assert "stratify: false" in init(str(prices), "price")


def test_train_target_summarises_and_saves_the_inferred_recipe(shop, tmp_path, cli):
    argv = ["train", str(shop), "--target", "label", "--out", str(tmp_path / "run"), "-q", "--no-pretrained",
            "--set", "training.epochs=1"]
    code, out, err = cli(*argv)
    assert code == 0, err
    assert "inferred recipe: predict 'label' as category" in err and "2 number: price, score" in err
    assert "{name: price" not in err  # a summary, not the whole recipe
    saved = (tmp_path / "run" / "inferred_recipe.yaml").read_text()
    assert saved.startswith("# Written by `dlforge init") and "inferred_recipe.yaml" in out
    code, _, err = cli(*[*argv[:-2], "--overwrite", "-v", "--set", "training.epochs=1"])
    assert code == 0 and "- {name: price, type: number" in err  # -v: all of it


@pytest.mark.slow
def test_no_recipe_text_trains_the_cross_fitted_bag_it_describes(tmp_path, cli):
    """`train DATA --target` on free text (no pretrained): the recipe it writes, the run it trains (5 bags, one per
    fold, averaged) and the summary agree, and the bags learn the keywords."""
    rng = np.random.default_rng(0)
    good, bad, filler = ["great", "superb", "loved"], ["awful", "dull", "hated"], ["the", "film", "was", "a", "plot"]
    label = rng.choice(["pos", "neg"], 150)
    texts = [" ".join(rng.permutation([*rng.choice(good if y == "pos" else bad, 2), *rng.choice(filler, 4)]))
             for y in label]
    pd.DataFrame({"review": texts, "label": label}).to_csv(tmp_path / "reviews.csv", index=False)
    code, _, err = cli("train", tmp_path / "reviews.csv", "--target", "label", "--out", tmp_path / "run",
                       "-q", "--no-pretrained", "--set", "training.epochs=6",
                       "--set", "training.optimizer.lr=0.02")  # 150 rows: 3 steps an epoch a bag
    assert code == 0, err
    assert "text 'review': encoder ngram" in err and "cross-fit: 900 words of text: 5 bags" in err
    run = tmp_path / "run"
    recipe = yaml.safe_load((run / "recipe.yaml").read_text())
    assert recipe["inputs"][0]["encoder"]["name"] == "ngram" and recipe["training"]["cross_fit"] == 5
    metrics = __import__("json").loads((run / "metrics.json").read_text())
    assert metrics["cross_fit"]["folds"] == 5 and metrics["test"]["accuracy"] >= 0.85 and metrics["test"]["roc_auc"] >= 0.95
    predictor = dlforge.load(run)
    assert list(predictor.predict(["superb film, loved it", "dull and awful plot"])) == ["pos", "neg"]


def test_init_comments_say_what_each_column_looked_like(shop):
    text = init(str(shop), "label")
    line = {c: next(x for x in text.splitlines() if f"{{name: {c}," in x) for c in ("price", "score", "city", "label")}
    assert "none missing" in line["price"] and "long right tail" in line["price"]
    assert "10% missing" in line["score"]
    assert "distinct" in line["city"] and "most common" in line["city"]
    assert "rarest class 'low'" in line["label"]
    assert "# missing: 24 empty cell(s)" in text
    none = next(x for x in text.splitlines() if "'None' x" in x)  # the string 'None': listed with its count
    assert f"'None' x{int((pd.read_csv(shop, keep_default_na=False)['city'] == 'None').sum())}" in none


def test_ordered_same_scale_columns_become_one_sequence_input():
    rng = np.random.default_rng(0)
    n = 60
    level = rng.normal(size=(n, 1))  # one signal: neighbouring readings move together
    wave = level + 0.5 * rng.normal(size=(n, 12)).cumsum(1) / 3
    columns = {f"x{i}": wave[:, i] for i in range(12)}
    columns |= {"t_1": wave[:, 0] + 1, "t_2": wave[:, 1] + 1,  # too short a run: stays numbers
                **{f"m{i}": (level[:, 0] + rng.normal(size=n)) * (1000 if i == 3 else 1) for i in range(10)},  # off scale
                **{f"pc{i}": rng.normal(size=n) for i in range(10)},  # same scale, unrelated (principal components)
                "y": rng.choice(["a", "b"], n)}
    from dlforge.data.table import Table

    text = infer_recipe(Table({k: np.asarray(v) for k, v in columns.items()}, "wide.csv"), "wide.csv", "y")
    recipe = yaml.safe_load(text)
    sequences = [i for i in recipe["inputs"] if i["type"] == "sequence"]
    assert len(sequences) == 1 and sequences[0]["name"] == "x" and sequences[0]["columns"] == [f"x{i}" for i in range(12)]
    assert sequences[0]["encoder"]["name"] == "cnn"
    assert "read as one signal by a 1-D CNN" in next(x for x in text.splitlines() if "name: x," in x)
    numbers = {i["name"] for i in recipe["inputs"] if i["type"] == "number"}
    assert {"t_1", "t_2", "m0", "m3", "pc0", "pc9"} <= numbers


def _text_line(text: str, column: str) -> str:
    return next(x for x in text.splitlines() if f"name: {column}," in x)


def test_text_columns_get_a_named_encoder_and_a_reason(tmp_path, monkeypatch):
    """MiniLM (fine-tuned, by-length batches) when installed and affordable, else the n-gram bag, each with why; the
    availability check and the GPU are patched, so no weights are read."""
    import torch

    from dlforge.workflows import init_text
    from dlforge.workflows.init import summarize_inferred

    rng = np.random.default_rng(0)
    words = ["good", "bad", "film", "plot", "actor", "scene", "long", "short"]
    frame = pd.DataFrame({"review": [" ".join(rng.choice(words, 8)) for _ in range(80)], "y": rng.choice(["p", "n"], 80)})
    frame.to_csv(tmp_path / "r.csv", index=False)
    data = str(tmp_path / "r.csv")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)

    monkeypatch.setattr(init_text, "pretrained_text_installed", lambda: True)
    auto = init(data, "y")  # the no-recipe default: installed and cheap here (80 short texts) -> MiniLM
    line = _text_line(auto, "review")
    assert "encoder: {name: minilm, freeze: none, backbone_lr_mult: 0.1" in line
    assert "pretrained, installed" in line and "fine-tuned" in line and "by-length batches" in line
    assert "under a minute per epoch (3 at most) on this CPU" in line  # what it costs here
    assert "sampling: auto" in auto and "name: cosine" in auto and "epochs: 3" in auto
    assert "metric: val.loss" in auto
    summary = "\n".join(summarize_inferred(auto))  # `train DATA --target` says which encoder and why
    assert "1 text (minilm): review" in summary and "text 'review': encoder minilm (pretrained, installed)" in summary
    assert "saw " not in summary

    # A table too large to fine-tune on this CPU within the budget: the n-gram bag, saying how long MiniLM would take
    # (80 texts of ~13 pieces at the measured 1,000 pieces/s, 3 epochs: about 3 s, over a budget of 1 s).
    monkeypatch.setattr(init_text, "MINILM_CPU_MINUTES", 1 / 60)
    slow = init(data, "y")
    line = _text_line(slow, "review")
    assert "encoder: {name: ngram" in line
    assert "minilm is installed, but fine-tuning it on 80 texts would take under a minute (3 epochs of under a minute) on this CPU" in line
    assert "name: minilm" in _text_line(init(data, "y", pretrained=True), "review")  # asked for: MiniLM all the same
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert "name: minilm" in _text_line(init(data, "y"), "review") and "on the GPU" in _text_line(init(data, "y"), "review")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)

    plain = init(data, "y", pretrained=False)  # --no-pretrained
    line = _text_line(plain, "review")
    assert "encoder: {name: ngram" in line and "bag of words and word pairs" in line and "as --no-pretrained asks" in line
    summary = "\n".join(summarize_inferred(plain))
    assert "text 'review': encoder ngram" in summary and "cross-fit: 640 words of text: 5 bags" in summary
    ngram = yaml.safe_load(plain)  # the bag's training: a small rate, weight decay, cosine decay, stop on the loss
    assert ngram["inputs"][0]["encoder"] == {"name": "ngram", "dim": 32, "buckets": 50000, "ngrams": 2, "dropout": 0.2}
    assert ngram["training"]["optimizer"] == {"name": "adamw", "lr": 0.001, "weight_decay": 0.1}
    assert ngram["training"]["schedule"] == {"name": "cosine"} and ngram["training"]["early_stopping"]["metric"] == "val.loss"
    assert ngram["training"]["epochs"] == 15
    # 80 texts of 8 words: cross-fitted (5 bags, each stopped on its own fifth, averaged), and the comment says why
    assert ngram["training"]["cross_fit"] == 5
    assert "cross_fit: 5  # 640 words of text: 5 bags, each early-stopped on its own fifth" in plain
    monkeypatch.setattr(init_text, "CROSS_FIT_WORDS", 639)  # more text than the budget: one bag, saying why
    big = init(data, "y", pretrained=False)
    assert "cross_fit" not in yaml.safe_load(big)["training"] and "# one bag: 640 words of text, over the 639" in big

    monkeypatch.setattr(init_text, "pretrained_text_installed", lambda: False)
    line = _text_line(init(data, "y"), "review")  # not installed: the bag, and how to get the better one
    assert "encoder: {name: ngram" in line and "pip install 'dlforge[pretrained]'" in line
