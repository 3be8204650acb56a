"""Recipe loading: every problem at once, with field path, YAML line and a suggestion; typed --set overrides."""

import json

import pytest
import yaml

from dlforge import RecipeError, load_recipe
from dlforge.recipe import METRICS_BY_OUTPUT_TYPE, Recipe
from dlforge.recipe.io import dump_recipe
from conftest import digits_recipe

BAD = """\
name: x
data:
  source: builtin:digits
  splitt: {val: 0.1}
inputs:
  - name: image
    type: imag
outputs:
  - {name: label, type: category}
training:
  epochs: -1
  optimizer: {name: adma, lr: 0.1}
  precision: fp64
"""


def write(tmp_path, text, name="r.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_every_problem_is_reported_with_line_and_suggestion(tmp_path):
    with pytest.raises(RecipeError) as info:
        load_recipe(write(tmp_path, BAD))
    problems = info.value.problems
    assert len(problems) == 5
    text = "\n".join(problems)
    assert "data.splitt (line 4): unknown key 'splitt' — did you mean 'split'?" in text
    assert "inputs.0.type (line 7): 'imag' is not one of number, category, binary, image" in text
    assert "training.epochs (line 11)" in text and "got -1" in text
    assert ("training.optimizer.name (line 12): 'adma' is not one of sgd, adam, adamw, adagrad, rmsprop"
            " — did you mean 'adam'?") in text
    assert "training.precision (line 13): 'fp64'" in text


def test_unknown_encoder_option_is_rejected_not_dropped(tmp_path):
    recipe = digits_recipe()
    recipe["inputs"][0]["encoder"]["chanels"] = [4]
    with pytest.raises(RecipeError, match=r"inputs\.0\.encoder\.chanels: unknown key 'chanels' — did you mean 'channels'"):
        load_recipe(recipe)


def test_option_of_another_optimizer_is_rejected():
    with pytest.raises(RecipeError, match="training.optimizer.momentum: unknown key"):
        load_recipe(digits_recipe(optimizer={"name": "adam", "momentum": 0.9}))


def test_wrong_type_names_field_and_value():
    with pytest.raises(RecipeError, match=r"training.batch_size.*got 'big'"):
        load_recipe(digits_recipe(batch_size="big"))


def test_set_overrides_are_typed(tmp_path):
    path = write(tmp_path, yaml.safe_dump(digits_recipe()))
    recipe = load_recipe(path, ["training.epochs=7", "training.optimizer.lr=1e-4", "training.batch_size=full",
                                "inputs.0.encoder.channels=[4, 8]", "training.early_stopping={metric: val.f1}"])
    assert recipe.training.epochs == 7
    assert recipe.training.optimizer.lr == pytest.approx(1e-4)
    assert recipe.training.batch_size == "full"
    assert recipe.inputs[0].encoder.channels == [4, 8]
    # digits' label is a category: the old, unlabelled name of its macro F1 reads as the new one (issue #12).
    assert recipe.training.early_stopping.metric == "val.macro_f1"


def test_bad_set_syntax_is_explained(tmp_path):
    with pytest.raises(RecipeError, match="expected KEY=VALUE"):
        load_recipe(digits_recipe(), ["training.epochs"])
    with pytest.raises(RecipeError, match="not an index"):
        load_recipe(digits_recipe(), ["inputs.5.name=x"])


def test_early_stopping_on_unlogged_metric_fails_at_load_before_data():
    recipe = digits_recipe(early_stopping={"metric": "val.acc"})
    recipe["data"]["source"] = "/does/not/exist.csv"  # would fail later if data were read first
    with pytest.raises(RecipeError, match="'val.acc' is not a logged metric — did you mean 'val.accuracy'"):
        load_recipe(recipe)


def test_cross_checks_report_all_problems():
    recipe = digits_recipe(optimizer={"name": "sgd", "momentum": 0.0, "nesterov": True},
                           schedule={"name": "plateau", "metric": "val.roc_auc"})
    with pytest.raises(RecipeError) as info:
        load_recipe(recipe)
    assert len(info.value.problems) == 2


def test_duplicate_columns_rejected():
    recipe = digits_recipe()
    recipe["outputs"] = [{"name": "image", "type": "category"}]
    with pytest.raises(RecipeError, match="column 'image' is used more than once"):
        load_recipe(recipe)


def test_invalid_yaml_names_the_line(tmp_path):
    with pytest.raises(RecipeError, match=r"r.yaml line \d+: not valid YAML"):
        load_recipe(write(tmp_path, "name: x\ndata: [unclosed\n"))


def test_default_recipe_resolves_and_round_trips():
    recipe = load_recipe(None)
    assert recipe.data.source == "builtin:digits"
    again = load_recipe(yaml.safe_load(dump_recipe(recipe)))
    assert again.model_dump() == recipe.model_dump()


def test_logged_metrics_follow_outputs():
    recipe = load_recipe(digits_recipe())
    assert "val.accuracy" in recipe.logged_metrics()
    two = digits_recipe()
    two["outputs"].append({"name": "other", "type": "number"})
    names = load_recipe(two).logged_metrics()
    assert "val.label.accuracy" in names and "val.other.rmse" in names


def test_schema_documents_every_field():
    schema = Recipe.model_json_schema()
    missing = []
    for name, definition in schema.get("$defs", {}).items():
        for field, spec in definition.get("properties", {}).items():
            if field not in ("name", "type") and not spec.get("description"):
                missing.append(f"{name}.{field}")
    assert not missing, missing
    json.dumps(schema)


def test_metric_names_match_evaluation():
    import torch

    from dlforge.evaluation.metrics import metric_sets

    sigs = {"category": {"size": 3, "labels": ["a", "b", "c"]}, "binary": {"size": 1, "labels": ["n", "y"]},
            "number": {"size": 1}, "multilabel": {"size": 3, "labels": ["a", "b", "c"], "thresholds": [0.5] * 3},
            "interaction": {"size": 1, "n_items": 60}}
    # A recommender's evaluation logits: the pair's score, the held-out item's rank, the top-50 item indices.
    ranked = torch.cat([torch.randn(8, 1), torch.randint(0, 60, (8, 1)).float(),
                        torch.stack([torch.randperm(59)[:50] + 1 for _ in range(8)]).float()], 1)
    logits = {"category": torch.randn(8, 3), "binary": torch.randn(8, 1), "number": torch.randn(8, 1),
              "multilabel": torch.randn(8, 3), "interaction": ranked}
    targets = {"category": torch.arange(8) % 3, "binary": (torch.arange(8) % 2).float(), "number": torch.randn(8),
               "multilabel": (torch.rand(8, 3) > 0.5).float(), "interaction": torch.ones(8)}
    for kind, names in METRICS_BY_OUTPUT_TYPE.items():
        computed = metric_sets.get(kind)(logits[kind], targets[kind], sigs[kind])
        assert set(computed) == set(names) - {"loss"}, kind
