"""Pruning (structured and unstructured, save/reload, iterative), distillation, and the budgeted search of
`dlforge compress`, on the tiny digits CNN (seconds each)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import digits_recipe, main_ok

pytest.importorskip("torch_pruning")


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A digits CNN of its own (the tests add variants to it; the session's shared run stays untouched)."""
    import dlforge

    out = tmp_path_factory.mktemp("compress") / "digits"
    recipe = digits_recipe(epochs=6)
    recipe["inputs"][0]["encoder"].update(channels=[8, 16], dense=[32])
    dlforge.train(recipe, out=out, progress=False)
    return out


def _shapes(run_dir: Path) -> dict[str, tuple]:
    from safetensors.torch import load_file

    return {k: tuple(v.shape) for k, v in load_file(str(run_dir / "model.safetensors")).items()}


def test_structured_pruning_shrinks_layers_and_the_variant_reloads(run, capsys):
    import dlforge

    assert main_ok(["prune", str(run), "--channels", "0.5", "--finetune", "1", "-q"])
    printed = capsys.readouterr().out
    variant = run / "variants" / "pruned_0.50"
    before, after = _shapes(run), _shapes(variant)
    conv = "encoders.image.features.0.weight"
    assert before[conv][0] == 8 and after[conv][0] == 4  # half the output channels are gone
    assert after["encoders.image.dense.0.weight"][0] == 16
    assert after["heads.label.linear.weight"] == (10, 16)  # the classifier keeps its 10 classes, reads 16 units
    meta = json.loads((variant / "model.json").read_text())
    assert meta["architectures"]["__resized__"]["encoders.image.features.0"]["attributes"]["out_channels"] == 4
    # Reloads (strict shapes) and scores as the pass measured it; listed in the parent's run.json.
    predictor = dlforge.load(variant)
    assert predictor.model.encoders["image"].features[0].out_channels == 4
    stored = json.loads((variant / "metrics.json").read_text())["test"]["accuracy"]
    assert dlforge.evaluate(variant)["accuracy"] == pytest.approx(stored)
    assert stored > 0.5  # digits chance is 0.1: the fine-tuned pruned model still works
    assert any(v["name"] == "pruned_0.50" for v in json.loads((run / "run.json").read_text())["variants"])
    details = json.loads((variant / "compress.json").read_text())
    assert details["after"]["parameters"] < details["before"]["parameters"] / 2
    assert details["after"]["macs"] < details["before"]["macs"] / 2
    assert "parameters" in printed and "variant:" in printed
    assert main_ok(["evaluate", str(variant)])


def test_a_pruned_variant_serves(run):
    import dlforge
    from serve.conftest import app_client

    variant = run / "variants" / "pruned_0.50"
    if not variant.is_dir():
        pytest.skip("needs the structured pruning test's variant")
    images = np.random.default_rng(0).integers(0, 17, size=(2, 8, 8)).astype(np.float32)
    with app_client(variant) as client:
        response = client.post("/v1/predict", json={"records": [{"image": image.tolist()} for image in images]})
    assert response.status_code == 200, response.text
    expected = dlforge.load(variant).predict(images)
    assert [p["label"] for p in response.json()["predictions"]] == [str(v) for v in expected]


@pytest.mark.slow  # two prune steps and two fine-tunes: about 8 s on an idle 2-core machine
def test_iterative_schedule_fine_tunes_after_each_step(run):
    from dlforge.compress.prune import prune_run

    said = []
    details = prune_run(run, channels=0.5, steps=2, finetune_epochs=1, name="iter", say=said.append)
    assert [s.split(":")[0].strip() for s in said] == ["step 1/2", "step 2/2"]
    assert _shapes(Path(details["variant"]))["encoders.image.features.0.weight"][0] == 4  # the same target width
    assert json.loads((Path(details["variant"]) / "compress.json").read_text())["steps"] == 2


def test_unstructured_pruning_zeroes_weights_and_says_it_does_not_speed_up(run, capsys):
    import dlforge

    assert main_ok(["prune", str(run), "--unstructured", "0.8", "--finetune", "1", "-q"])
    printed = capsys.readouterr().out
    variant = run / "variants" / "sparse_0.80"
    assert _shapes(variant) == _shapes(run)  # same shapes: nothing shrinks
    model = dlforge.load(variant).model
    weights = torch.cat([m.weight.flatten() for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))])
    assert float((weights == 0).float().mean()) == pytest.approx(0.8, abs=0.01)  # the mask survived the fine-tune
    assert "dense kernels do the same work" in printed and "gzipped" in printed


def test_bad_prune_inputs_exit_2(run, tmp_path, capsys):
    broken = tmp_path / "noweights"
    shutil.copytree(run, broken, ignore=shutil.ignore_patterns("variants"))
    (broken / "model.safetensors").unlink()
    assert not main_ok(["prune", str(broken), "--channels", "0.5"])
    assert "missing model.safetensors" in capsys.readouterr().err
    assert not main_ok(["prune", str(run), "--channels", "1.5"])
    assert "between 0 and 1" in capsys.readouterr().err
    assert not main_ok(["prune", str(run)])
    assert "--channels" in capsys.readouterr().err


def test_a_damaged_resize_record_is_a_clear_error():
    from dlforge.core.errors import ModelError
    from dlforge.models.resize import apply_resized

    model = torch.nn.Sequential(torch.nn.Linear(4, 4))
    with pytest.raises(ModelError, match="does not have"):
        apply_resized(model, {"9": {"class": "Linear", "shapes": {"weight": [2, 4]}}})
    with pytest.raises(ModelError, match="bad tensor"):
        apply_resized(model, {"0": {"class": "Linear", "shapes": {"weight": [-2, 4]}}})


def _agreement(student_dir: Path, teacher_dir: Path) -> float:
    import dlforge
    from dlforge.compress.variant import RunData

    table = RunData.load(teacher_dir).test_table()
    rows = {"image": np.asarray(table.columns["image"])}
    return float(np.mean(dlforge.load(student_dir).predict(rows) == dlforge.load(teacher_dir).predict(rows)))


@pytest.fixture(scope="module")
def shifted_teacher(run, tmp_path_factory) -> Path:
    """The digits run with its head's rows rolled by one: it answers digit k+1 for a k (a teacher whose answers
    differ from the labels, so a student that learns from it is told apart from one that learns the labels)."""
    from dlforge.artifact.format import save_model
    from dlforge.artifact.predictor import Predictor

    out = tmp_path_factory.mktemp("teacher") / "shifted"
    shutil.copytree(run, out, ignore=shutil.ignore_patterns("variants", "compress"))
    predictor = Predictor(out)
    head = predictor.model.heads["label"].linear
    with torch.no_grad():
        head.weight.copy_(head.weight.roll(1, 0))
        head.bias.copy_(head.bias.roll(1, 0))
    save_model(out, predictor.recipe, predictor.inputs, predictor.outputs, predictor.model)
    return out


def test_distillation_learns_the_teachers_answers_and_caches_its_logits(shifted_teacher, tmp_path, monkeypatch):
    from dlforge.compress.distill import distill

    monkeypatch.setenv("DLFORGE_CACHE", str(tmp_path / "cache"))
    common = dict(temperature=1.0, overrides=["training.epochs=3"])
    plain = distill(shifted_teacher, "mlp", alpha=0.0, name="plain", **common)
    assert plain["teacher_logits_cached"] is False
    assert list((tmp_path / "cache" / "teacher_logits").glob("*.safetensors"))  # cached beside the feature cache
    taught = distill(shifted_teacher, "mlp", alpha=1.0, name="taught", **common)
    assert taught["teacher_logits_cached"] is True  # the second student costs no teacher pass
    # Labels only: the student learns the digits. Soft targets only: it learns the teacher's (shifted) answers.
    assert plain["student_score"] > 0.6 and taught["student_score"] < 0.3
    assert _agreement(Path(taught["variant"]), shifted_teacher) > 0.6 > _agreement(Path(plain["variant"]), shifted_teacher)


def test_a_text_teacher_reads_its_own_tokens_not_the_students(tmp_path, monkeypatch):
    """A text teacher and a student with other tokenizers, casing and lengths (as MiniLM's word pieces and a
    from-scratch BPE): the cached teacher logits are the saved teacher's answers on the raw training texts."""
    import pandas as pd
    from safetensors.torch import load_file

    import dlforge
    from dlforge.compress.distill import distill
    from dlforge.compress.variant import RunData

    monkeypatch.setenv("DLFORGE_CACHE", str(tmp_path / "cache"))
    words = ["Good fine film", "bad Awful plot", "fine good day out", "awful bad night in", "a fine cast",
             "a bad script"] * 8
    pd.DataFrame({"text": words, "label": ["pos", "neg"] * 24}).to_csv(tmp_path / "t.csv", index=False)

    def text_recipe(tokenizer: str, length: int, lowercase: bool) -> dict:
        return {"name": f"text-{tokenizer}", "data": {"source": str(tmp_path / "t.csv"),
                                                      "split": {"val": 0.2, "test": 0.2, "seed": 0}},
                "inputs": [{"name": "text", "type": "text", "encoder": {"name": "cnn", "dim": 8, "filters": 8},
                            "preprocessing": {"tokenizer": tokenizer, "vocab_size": 100, "min_frequency": 1,
                                              "max_length": length,
                                              "lowercase": lowercase}}],
                "outputs": [{"name": "label", "type": "binary"}], "training": {"epochs": 2, "batch_size": 8}}

    dlforge.train(text_recipe("wordpiece", 12, True), out=tmp_path / "teacher", progress=False)
    import yaml

    (tmp_path / "student.yaml").write_text(yaml.safe_dump(text_recipe("bpe", 3, False)))
    done = distill(tmp_path / "teacher", str(tmp_path / "student.yaml"), temperature=2.0, alpha=0.5,
                   overrides=["training.epochs=1"])
    assert done["teacher_logits_cached"] is False
    cached = load_file(str(next((tmp_path / "cache" / "teacher_logits").glob("*.safetensors"))))["label"]
    teacher = dlforge.load(tmp_path / "teacher")
    train = RunData.load(tmp_path / "teacher").part_table("train")
    expected = teacher.logits(teacher.encode_inputs({"text": np.asarray(train.columns["text"])}))["label"]
    assert torch.allclose(cached.reshape(-1), expected.reshape(-1), atol=1e-5)
    assert Path(done["variant"], "model.safetensors").is_file()


def test_a_student_that_does_not_match_the_teacher_exits_2(run, tmp_path, capsys):
    import yaml

    recipe = digits_recipe(epochs=1)
    recipe["outputs"] = [{"name": "digit", "type": "category"}]
    recipe["data"]["source"] = "builtin:digits"
    path = tmp_path / "student.yaml"
    path.write_text(yaml.safe_dump(recipe))
    assert not main_ok(["distill", str(run), "--student", str(path)])
    err = capsys.readouterr().err
    assert "does not match the teacher" in err and "digit" in err
    assert not main_ok(["distill", str(run), "--student", "mlp", "--alpha", "2"])
    assert "--alpha" in capsys.readouterr().err


# ---------------------------------------------------------------- the budgeted search, on fake cheap passes


def _copy_pass(tag: str, *, lossy: bool = False, small: bool = False):
    """A fake pass: the source run copied (weights zeroed when `lossy`), its "model file" 100 bytes when `small`."""
    from dlforge.compress.passes import Candidate

    def apply(source, *, work_dir: Path, **options):
        target = Path(work_dir) / tag
        shutil.copytree(source.run_dir, target, ignore=shutil.ignore_patterns("variants", "compress", "checkpoint"))
        notes = {"applied": options.get("ratio")}
        if lossy:
            from safetensors.torch import load_file

            from dlforge.artifact.format import save_model
            from dlforge.artifact.predictor import Predictor

            predictor = Predictor(target)
            predictor.model.load_state_dict({k: torch.zeros_like(v) for k, v in load_file(str(target / "model.safetensors")).items()})
            save_model(target, predictor.recipe, predictor.inputs, predictor.outputs, predictor.model)
        if small:
            (target / "small.bin").write_bytes(b"x" * 100)
            notes["model_file"] = "small.bin"
        return [Candidate(f"{source.name}+{tag}", target, "torch", notes=notes)]

    return apply


def _registry(**fakes):
    from dlforge.core.registry import Registry

    registry = Registry("compression pass")
    for name, fn in fakes.items():
        registry.register(name)(fn)
    return registry


def test_search_keeps_the_best_candidate_and_exits_early(run):
    from dlforge.compress.search import Budgets, compress

    registry = _registry(small=_copy_pass("small", small=True), lossy=_copy_pass("lossy", lossy=True),
                         prune=_copy_pass("pruned"))
    result = compress(run, Budgets(max_accuracy_drop=0.01, max_size_mb=0.001), registry=registry, seconds=0.02)
    names = [e.candidate.name for e in result.entries]
    # Depth first in registry order: fp32 -> small -> small+lossy, then fp32 -> lossy, which is over the accuracy
    # budget and so is not chained further (no fp32+lossy+small); then the early exit skips pruning.
    assert names == ["fp32", "fp32+small", "fp32+small+lossy", "fp32+lossy"]
    assert result.stopped_early and not any("pruned" in n for n in names)
    assert result.best.candidate.name == "fp32+small"
    assert result.kept == run / "variants" / "compressed_fp32_small" and (result.kept / "model.json").is_file()
    out = run / "compress"
    rows = (out / "candidates.csv").read_text().splitlines()
    assert rows[0].startswith("name,runtime,chain") and len(rows) == 5
    assert "<svg" in (out / "pareto.svg").read_text()
    png = (out / "pareto.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and png[12:16] == b"IHDR"  # a PNG file, header chunk first
    width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
    assert width >= 400 and height >= 300
    report = (out / "report.md").read_text()
    assert "fp32+small" in report and "How the search works" in report
    assert "![Pareto plot](pareto.png)" in report and "(pareto.svg)" in report
    assert not (out / "work").exists()


def test_without_matplotlib_the_report_links_the_svg_and_says_why(run, monkeypatch):
    import sys

    from dlforge.compress.search import Budgets, compress

    out = run / "compress"
    out.mkdir(parents=True, exist_ok=True)
    (out / "pareto.png").write_bytes(b"\x89PNG stale")  # an earlier search's plot must not stand for this one
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # importing it now raises ImportError
    compress(run, Budgets(max_accuracy_drop=0.01), registry=_registry(small=_copy_pass("small", small=True)),
             seconds=0.02)
    report = (out / "report.md").read_text()
    assert "![Pareto plot](pareto.svg)" in report and "matplotlib is not installed" in report
    assert not (out / "pareto.png").exists() and "<svg" in (out / "pareto.svg").read_text()


def test_search_bisects_the_prune_ratio_against_the_accuracy_budget(run):
    from dlforge.compress.search import Budgets, compress

    asked = []

    def prune(source, *, work_dir, ratio, **options):
        asked.append(ratio)
        return _copy_pass(f"pruned_{ratio}", lossy=ratio > 0.6, small=True)(source, work_dir=work_dir, ratio=ratio)

    from dlforge.compress.search import BudgetNotMet

    with pytest.raises(BudgetNotMet) as caught:
        compress(run, Budgets(max_accuracy_drop=0.05, max_latency_ms=1e-6), registry=_registry(prune=prune),
                 prune_trials=3, seconds=0.02)
    assert asked == [0.5, 0.7, 0.6]  # within, over, within: halfway up, then halfway down
    assert "p50 latency" in caught.value.message and "over by" in caught.value.message
    # The pruned copies within budget are smaller than the run itself: at least one is on the Pareto front, kept runnable.
    kept = {p.name for p in (run / "compress" / "pareto").iterdir()}
    assert kept & {"fp32_pruned_0.5", "fp32_pruned_0.6"} and (run / "compress" / "report.md").is_file()
    assert all((run / "compress" / "pareto" / name / "model.json").is_file() for name in kept)


def test_a_budget_nobody_meets_exits_2_naming_the_closest_candidate(run, capsys):
    # --skip onnx: the export (and so int8) would add ~30 s here; the closest candidate is what is tested
    assert not main_ok(["compress", str(run), "--max-size-mb", "0.000001", "--prune-trials", "0", "--skip", "onnx"])
    err = capsys.readouterr().err
    assert "no candidate meets every budget" in err and "fp32" in err and "size" in err and "over by" in err
    assert (run / "compress" / "candidates.csv").is_file()


def _described(fn, **about):
    from dlforge.compress.passes import describe_pass

    return describe_pass(fn, **about)


def _graph_runtime():
    """A runtime named "test-graph" (torch underneath): what the fake export pass below hands its candidates."""
    from dlforge.artifact.runtimes import TorchRuntime, runtimes

    if "test-graph" not in runtimes:
        runtimes.register("test-graph")(lambda *, model, run_dir, batch_size, threads=None:
                                        TorchRuntime(model, batch_size=batch_size))


def test_passes_chain_where_they_apply_and_qat_is_a_last_resort(run):
    """int8-like passes take the export, not the torch model; one of a group per chain; the last-resort pass (QAT)
    runs only where the group's other passes all lost more than the accuracy budget."""
    from dlforge.compress.search import Budgets, BudgetNotMet, compress

    _graph_runtime()

    def export(source, *, work_dir, **options):
        (made,) = _copy_pass("onnx")(source, work_dir=work_dir)
        return [type(made)(made.name, made.run_dir, "test-graph", made.notes)]

    def int8(tag, lossy):
        def apply(source, *, work_dir, **options):
            (made,) = _copy_pass(tag, lossy=lossy)(source, work_dir=work_dir)
            notes = {**made.notes, "max_drop": options.get("max_drop")}
            return [type(made)(made.name, made.run_dir, "test-graph", notes)]
        return apply

    asked = []

    def qat(source, *, work_dir, **options):
        asked.append(source.name)
        return int8("qat", lossy=False)(source, work_dir=work_dir, **options)

    registry = _registry(onnx=_described(export, accepts=("torch",)),
                         int8_static=_described(int8("static", lossy=True), accepts=("test-graph",), group="int8"),
                         int8_dynamic=_described(int8("dynamic", lossy=True), accepts=("test-graph",), group="int8"),
                         int8_qat=_described(qat, accepts=("test-graph",), group="int8", last_resort=True))
    with pytest.raises(BudgetNotMet):
        compress(run, Budgets(max_accuracy_drop=0.02, max_latency_ms=1e-6), registry=registry, prune_trials=0,
                 seconds=0.02)
    rows = (run / "compress" / "candidates.csv").read_text().splitlines()
    names = [row.split(",")[0] for row in rows[1:]]
    # No int8 on the torch model itself, no int8 of an int8 graph, no re-export of an export; QAT after both lost.
    assert names == ["fp32", "fp32+onnx", "fp32+onnx+static", "fp32+onnx+dynamic", "fp32+onnx+qat"]
    assert asked == ["fp32+onnx"]

    asked.clear()
    registry = _registry(onnx=_described(export, accepts=("torch",)),
                         int8_static=_described(int8("static", lossy=False), accepts=("test-graph",), group="int8"),
                         int8_qat=_described(qat, accepts=("test-graph",), group="int8", last_resort=True))
    result = compress(run, Budgets(max_accuracy_drop=0.02), registry=registry, prune_trials=0, seconds=0.02)
    assert [e.candidate.name for e in result.entries] == ["fp32", "fp32+onnx", "fp32+onnx+static"] and asked == []
    # The int8 pass's fallback threshold is what is left of the accuracy budget (nothing spent by the export).
    static = result.entries[2]
    assert static.candidate.notes["max_drop"] == pytest.approx(0.02 - max(result.reference - result.entries[1]
                                                                          .measurement.metric, 0))


@pytest.mark.slow  # two dynamo exports, two static quantizations and a pruning fine-tune: ~30 s on 2 busy cores
def test_pruned_then_int8_is_a_measured_candidate_of_the_real_search(run):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    import dlforge
    from dlforge.compress.passes import passes
    from dlforge.compress.search import Budgets, BudgetNotMet, compress

    registry = _registry(**{name: passes.get(name) for name in ("onnx", "int8_static", "prune")})
    # Nothing is that fast, so every stage runs (the accuracy budget is wide: half of this tiny CNN's channels cost
    # it ~0.3 after one fine-tune epoch; what is tested is the chain), and the Pareto set is kept.
    with pytest.raises(BudgetNotMet):
        compress(run, Budgets(max_accuracy_drop=0.6, max_latency_ms=1e-6), registry=registry, prune_trials=1,
                 finetune=1, seconds=0.05)
    import csv

    rows = {r["name"]: r for r in csv.DictReader((run / "compress" / "candidates.csv").open())}
    assert list(rows) == ["fp32", "onnx_fp32", "int8_static", "pruned_0.50", "pruned_0.50+onnx",
                          "pruned_0.50+onnx+int8_static"]
    chained = rows["pruned_0.50+onnx+int8_static"]
    assert chained["chain"] == "prune+onnx+int8_static" and chained["runtime"] == "onnx"
    assert float(chained["p50_ms"]) > 0 and float(chained["rows_per_s_b64"]) > 0 and float(chained["metric"]) > 0.3
    # Half the channels, then int8: smaller than int8 alone (on so tiny a CNN the QDQ nodes weigh about as much as
    # the int8 saves over the pruned fp32 graph, so that comparison is not asserted).
    sizes = {name: int(r["size_bytes"]) for name, r in rows.items()}
    assert sizes["pruned_0.50+onnx+int8_static"] < sizes["int8_static"] < sizes["onnx_fp32"]
    report = (run / "compress" / "report.md").read_text()
    what = {line.split("`")[1]: line for line in report.splitlines() if line.startswith("- `")}
    assert "50% of channels pruned in 1 step(s)" in what["pruned_0.50"]
    assert "int8 static: " in what["int8_static"] and "input layer at batch 1: " in what["int8_static"]
    assert "50% of channels pruned" in what["pruned_0.50+onnx+int8_static"] and "int8 static" in what[
        "pruned_0.50+onnx+int8_static"] and what["fp32"].endswith("the run itself")
    if chained["pareto"] == "True":  # kept runnable beside the report
        kept = run / "compress" / "pareto" / "pruned_0.50_onnx_int8_static"
        assert dlforge.load(kept).runtime.name == "onnx"


def test_the_report_says_which_layers_stayed_fp32_and_why():
    from dlforge.compress.report import describe_candidate

    notes = {"quantization": {"mode": "static", "int8_layers": 5, "fp32_layers": 3,
                              "fallback": [{"node": "fc2", "op": "Gemm"}],
                              "unsupported": [{"node": "lstm1", "op": "LSTM", "reason": "no int8 LSTM: kept fp32"},
                                              {"node": "lstm2", "op": "LSTM", "reason": "no int8 LSTM: kept fp32"}],
                              "input_layer": {"nodes": ["conv1", "relu1"], "fp32": True,
                                              "ms_batch1": {"all_int8": 0.084, "input_fp32": 0.066}}}}
    assert describe_candidate(notes) == (
        "int8 static: 5 layer(s) int8, 3 fp32 (fc2 (Gemm) lost too much; lstm1 (LSTM), lstm2 (LSTM): no int8 LSTM; "
        "conv1 (input layer) faster in fp32); input layer at batch 1: 0.066 ms fp32 against 0.084 ms int8")
    assert describe_candidate({}) == "the run itself"


def test_compress_of_a_run_without_weights_exits_2(run, tmp_path, capsys):
    target = tmp_path / "no_weights"
    shutil.copytree(run, target, ignore=shutil.ignore_patterns("variants", "compress", "checkpoint"))
    (target / "model.safetensors").unlink()
    assert not main_ok(["compress", str(target), "--prune-trials", "0"])
    err = capsys.readouterr().err
    assert "model.safetensors" in err and "Traceback" not in err
    assert not (target / "compress").exists()


def test_compress_names_the_operator_the_exporter_cannot_take_and_goes_on(tmp_path, capsys):
    """An LSTM text model: the export pass is skipped naming aten::_pack_padded_sequence (so no int8 either), the
    search goes on, and the report says so."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    import pandas as pd

    import dlforge

    words = ["good fine", "bad awful", "fine good day", "awful bad night"] * 10
    pd.DataFrame({"text": words, "label": ["pos", "neg"] * 20}).to_csv(tmp_path / "t.csv", index=False)
    recipe = {"name": "lstm", "data": {"source": str(tmp_path / "t.csv"), "split": {"val": 0.2, "test": 0.2, "seed": 0}},
              "inputs": [{"name": "text", "type": "text", "encoder": {"name": "lstm", "dim": 8, "hidden": 8},
                          "preprocessing": {"vocab_size": 100, "min_frequency": 1, "max_length": 8}}],
              "outputs": [{"name": "label", "type": "binary"}], "training": {"epochs": 1, "batch_size": 8}}
    dlforge.train(recipe, out=tmp_path / "run", progress=False)
    assert main_ok(["compress", str(tmp_path / "run"), "--prune-trials", "0", "--measure-seconds", "0.02"])
    captured = capsys.readouterr()
    assert "onnx on fp32: skipped" in captured.err and "aten::_pack_padded_sequence" in captured.err
    report = (tmp_path / "run" / "compress" / "report.md").read_text()
    assert "aten::_pack_padded_sequence" in report
    names = [line.split(",")[0] for line in (tmp_path / "run" / "compress" / "candidates.csv").read_text().splitlines()]
    assert names == ["name", "fp32"]  # no int8 candidate: int8 takes the export, which could not be made


def test_skip_leaves_a_pass_out_and_an_unknown_one_is_refused(run, capsys):
    from dlforge.compress.search import Budgets, compress

    from dlforge.compress.search import BudgetNotMet

    registry = _registry(small=_copy_pass("small", small=True), prune=_copy_pass("pruned"))
    with pytest.raises(BudgetNotMet):
        compress(run, Budgets(max_accuracy_drop=0.01, max_size_mb=1e-9), registry=registry, seconds=0.02,
                 skip=["small", "prune"])
    names = [line.split(",")[0] for line in (run / "compress" / "candidates.csv").read_text().splitlines()[1:]]
    assert names == ["fp32"]
    assert not main_ok(["compress", str(run), "--skip", "int9"])
    err = capsys.readouterr().err
    assert "--skip names no pass: int9" in err and "int8_static" in err
