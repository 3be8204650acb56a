"""ONNX export with parity, the onnx runtime behind the seam (Predictor, predict, evaluate, serve, load), int8
quantization (static QDQ with calibration, dynamic, per-layer fp32 fallback) as variant run directories, the
compression passes, and every bad input of those: no model.onnx, a damaged one, a planted mismatch."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

import dlforge  # noqa: E402
from dlforge.core.errors import ArtifactError, DlforgeError  # noqa: E402

from conftest import main_ok  # noqa: E402

IGNORE = shutil.ignore_patterns("checkpoint", "plots", "model.onnx", "export.json", "variants", "report.html")


def _copy(run, folder):
    shutil.copytree(run, folder, ignore=IGNORE)
    return folder


@pytest.fixture(scope="module")
def exported(digits_run, tmp_path_factory):
    """A copy of the session's digits CNN run, exported to ONNX (the dynamo exporter: ~5-10 s here)."""
    from dlforge.compress.onnx_export import export_onnx

    run = _copy(digits_run, tmp_path_factory.mktemp("onnx") / "run")
    record = export_onnx(run, rows=400)
    return run, record


@pytest.fixture(scope="module")
def static_variant(exported):
    from dlforge.compress.quantize import quantize_run

    run, _ = exported
    # the input layer int8 by choice: "auto" decides by timing (test_the_input_layer_stays_fp32_only_when_faster)
    return quantize_run(run, mode="static", calibration="minmax", calibration_rows=128, parity_rows=400,
                        input_layer="int8")


def _images(n=6):
    return (np.random.default_rng(3).random((n, 8, 8)) * 16).astype(np.uint8)


# ---------------------------------------------------------------- export with parity
def test_export_writes_model_onnx_and_export_json_with_parity(exported):
    run, record = exported
    stored = json.loads((run / "export.json").read_text())
    assert stored == json.loads(json.dumps(record))
    assert stored["exporter"] == "dynamo" and stored["opset"] == 20 and "fallback" not in stored
    assert stored["scaled_in_graph"] == ["image"]  # pixel scaling lives in the graph
    assert stored["inputs"] == [{"name": "image", "dtype": "float32", "shape": ["batch", 1, 8, 8],
                                 "dynamic_axes": {"0": "batch"}}]
    parity = stored["parity"]
    assert parity["split"] == "test" and parity["rows"] == 359 and parity["passed"]
    assert parity["max_abs_diff"] < 1e-4 and parity["top1_agreement"] == 1.0
    assert parity["metric"] == "accuracy" and parity["metric_torch"] == parity["metric_onnx"] > 0.5
    assert stored["session"]["graph_optimization"] == "ORT_ENABLE_ALL" and stored["session"]["inter_op_threads"] == 1
    data = (run / "model.onnx").read_bytes()
    assert stored["onnx"]["bytes"] == len(data)


def test_graph_takes_pixels_and_any_batch_size(exported):
    import onnxruntime as ort
    import torch

    run, _ = exported
    torch_predictor = dlforge.load(run, runtime="torch")
    session = ort.InferenceSession(str(run / "model.onnx"), providers=["CPUExecutionProvider"])
    for n in (1, 7):
        pixels = torch.from_numpy(_images(n)).float().unsqueeze(1)  # raw 0..255 values, no scaling
        (logits,) = session.run(None, {"image": pixels.numpy()})
        expected = torch_predictor.model({"image": torch_predictor.inputs["image"].scale(pixels)})["label"]
        assert logits.shape == (n, 10) and np.abs(logits - expected.detach().numpy()).max() < 1e-4


def test_planted_mismatch_is_refused_with_the_numbers_and_nothing_written(exported, tmp_path, monkeypatch):
    import onnx
    from onnx import numpy_helper

    from dlforge.compress import onnx_export

    run, _ = exported
    planted = onnx.load(str(run / "model.onnx"))
    bias = next(i for i in planted.graph.initializer if numpy_helper.to_array(i).shape == (10,))
    values = numpy_helper.to_array(bias).copy()
    values[3] += 25.0  # class 3 wins almost everywhere: a wrong graph that still runs
    bias.CopyFrom(numpy_helper.from_array(values, bias.name))
    monkeypatch.setattr(onnx_export, "to_onnx", lambda *a, **k: (planted.SerializeToString(), {"exporter": "dynamo",
                                                                                               "opset": 20}))
    target = _copy(run, tmp_path / "run")
    with pytest.raises(onnx_export.ExportError) as caught:
        onnx_export.export_onnx(target, rows=200)
    message = caught.value.message
    assert "does not match the torch model" in message and "max abs diff" in message
    assert "top-1 agreement" in message and "accuracy torch" in message and "nothing was written" in message
    assert not (target / "model.onnx").exists() and not (target / "export.json").exists()


def test_export_cli_prints_parity_and_refuses_to_overwrite(exported, capsys):
    run, _ = exported
    assert not main_ok(["export", str(run)])
    assert "model.onnx exists already" in capsys.readouterr().err
    assert not main_ok(["export", str(run), "--format", "tflite"])
    assert "unknown export format 'tflite'" in capsys.readouterr().err


def test_export_of_a_run_without_weights_says_so(exported, tmp_path, capsys):
    run = _copy(exported[0], tmp_path / "run")
    (run / "model.safetensors").unlink()
    assert not main_ok(["export", str(run)])
    assert "missing model.safetensors" in capsys.readouterr().err


def test_tabular_model_exports_with_parity(tiny_csv, tmp_path):
    from conftest import tabular_recipe

    from dlforge.compress.onnx_export import export_onnx

    run = tmp_path / "tab"
    dlforge.train(tabular_recipe(tiny_csv, training={"epochs": 2, "batch_size": 32}), out=run, progress=False)
    record = export_onnx(run)
    assert [i["name"] for i in record["inputs"]] == ["x1", "x2", "color", "flag"]
    assert record["parity"]["passed"] and record["parity"]["max_abs_diff"] < 1e-4
    frame = {"x1": [0.5, -1.0], "x2": [None, 2.0], "color": ["red", "blue"], "flag": ["yes", "no"]}
    onnx_p, torch_p = dlforge.load(run, runtime="onnx"), dlforge.load(run)
    assert np.abs(onnx_p.predict_proba(frame) - torch_p.predict_proba(frame)).max() < 1e-5
    # The search's static int8 pass takes conv nets only (as --mode auto): this MLP's MatMuls go dynamic.
    from dlforge.compress.passes import Candidate, passes
    from dlforge.compress.quantize import QuantizeError

    with pytest.raises(QuantizeError, match="no convolution"):
        passes.get("int8_static")(Candidate("onnx_fp32", run, "onnx"), work_dir=tmp_path / "work")
    assert not (tmp_path / "work").exists() or not any((tmp_path / "work").iterdir())


# ---------------------------------------------------------------- the runtime seam
def test_onnx_runtime_through_predictor_predict_and_evaluate(exported, tmp_path, capsys):
    run, _ = exported
    onnx_p, torch_p = dlforge.load(run, runtime="onnx"), dlforge.load(run, runtime="torch")
    assert onnx_p.runtime.name == "onnx" and onnx_p.runtime.settings["intra_op_threads"] >= 1
    assert dlforge.load(run).runtime.name == "torch"  # an exported run still defaults to torch
    images = _images()
    assert list(onnx_p.predict(images)) == list(torch_p.predict(images))
    assert np.abs(onnx_p.predict_proba(images) - torch_p.predict_proba(images)).max() < 1e-5
    assert dlforge.evaluate(run, runtime="onnx")["accuracy"] == dlforge.evaluate(run)["accuracy"]
    files = []
    for i, image in enumerate(images[:3]):
        Image.fromarray(image * 16).save(tmp_path / f"{i}.png")
        files.append(str(tmp_path / f"{i}.png"))
    capsys.readouterr()
    assert main_ok(["predict", str(run), *files, "--runtime", "onnx"])
    out = capsys.readouterr()
    assert "runtime onnx: onnxruntime" in out.err and "ORT_ENABLE_ALL" in out.err
    assert main_ok(["predict", str(run), *files])
    assert capsys.readouterr().out == out.out


def test_server_defaults_to_onnx_when_exported_and_answers_the_same(exported):
    from serve.conftest import app_client

    run, _ = exported
    record = {"records": [{"image": _images(1)[0].tolist()}]}
    answers = {}
    for runtime in (None, "torch"):
        with app_client(run, runtime=runtime) as client:
            served = client.get("/v1/model").json()["serving"]["runtime"]
            assert served["name"] == (runtime or "onnx")
            answers[served["name"]] = client.post("/v1/predict", json=record).json()["predictions"][0]
    assert answers["onnx"]["label"] == answers["torch"]["label"]
    assert abs(answers["onnx"]["probability"] - answers["torch"]["probability"]) < 1e-5


# ---------------------------------------------------------------- bad inputs at load
def test_runtime_onnx_without_an_export_names_dlforge_export(digits_run, capsys):
    with pytest.raises(ArtifactError, match="no model.onnx") as caught:
        dlforge.load(digits_run, runtime="onnx")
    assert f"dlforge export {digits_run}" in caught.value.hint
    assert not main_ok(["evaluate", str(digits_run), "--runtime", "onnx"])
    err = capsys.readouterr().err
    assert "dlforge export" in err and "Traceback" not in err


@pytest.mark.parametrize("damage", ["truncated", "garbage-recorded"])
def test_a_damaged_model_onnx_is_a_clear_error(exported, tmp_path, damage):
    import hashlib

    run = _copy(exported[0], tmp_path / "run")
    shutil.copy(exported[0] / "export.json", run / "export.json")
    data = (exported[0] / "model.onnx").read_bytes()
    if damage == "truncated":
        (run / "model.onnx").write_bytes(data[: len(data) // 2])
        match = "truncated"
    else:  # damage that export.json agrees with (both replaced): onnxruntime itself refuses it
        bad = data[:100] + bytes(range(256)) * 8
        (run / "model.onnx").write_bytes(bad)
        record = json.loads((run / "export.json").read_text())
        record["onnx"] = {"bytes": len(bad), "sha256": hashlib.sha256(bad).hexdigest()}
        (run / "export.json").write_text(json.dumps(record))
        match = "onnxruntime cannot load model.onnx"
    with pytest.raises(ArtifactError, match=match):
        dlforge.load(run, runtime="onnx")
    # the server: an explicit --runtime onnx fails to load with that message; left to choose, it serves on torch
    from fastapi.testclient import TestClient

    from dlforge.serve import ServeConfig, create_app
    from serve.conftest import app_client, wait_ready

    errors = []
    app = create_app(ServeConfig(run_dir=str(run), threads=1, runtime="onnx"), on_fatal=errors.append)
    with TestClient(app) as client:
        import time

        deadline = time.monotonic() + 30
        while not errors:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert client.get("/healthz").status_code == 503
    assert isinstance(errors[0], DlforgeError) and "model.onnx" in errors[0].message
    with app_client(run) as client:
        wait_ready(client)
        assert client.get("/v1/model").json()["serving"]["runtime"]["name"] == "torch"


# ---------------------------------------------------------------- quantization
def test_static_int8_variant_is_a_complete_run_directory(exported, static_variant, capsys):
    run, fp32 = exported
    variant = run / "variants" / "int8_static"
    assert static_variant["variant_dir"] == str(variant)
    q = static_variant["quantization"]
    calibration = q["calibration"]
    assert q["mode"] == "static" and q["format"] == "QDQ"
    assert {k: calibration[k] for k in ("method", "rows", "from")} == {"method": "minmax", "rows": 128, "from": "training"}
    assert calibration["settings"] == {"symmetric": False} and calibration["clipped_tensors"] == 0
    assert q["int8_layers"] == 3 and q["fp32_layers"] == 0 and q["fallback"] == [] and q["unsupported"] == []
    assert q["int8_bytes"] < 0.6 * fp32["onnx"]["bytes"]  # tiny model: QDQ scales and nodes weigh; MNIST: 3.8x
    import onnx

    ops = {n.op_type for n in onnx.load(str(variant / "model.onnx")).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops
    # the graph's input scaling went into the first conv's weights: no Mul left to run in int8 (graph_fold.py)
    assert "Mul" not in ops and any("folded into Conv" in note for note in q["notes"])
    # per-channel weights: the conv's weight scale has one value per output channel (8)
    model = onnx.load(str(variant / "model.onnx"))
    scales = [i for i in model.graph.initializer if "weight" in i.name and i.name.endswith("_scale")]
    assert any(list(s.dims) == [8] for s in scales)
    parity = static_variant["parity"]
    assert parity["top1_agreement"] > 0.95 and abs(parity["metric_change"]) < 0.03
    # the variant runs everywhere a run does, on onnx by default
    assert json.loads((variant / "variant.json").read_text())["runtime"] == "onnx"
    assert dlforge.load(variant).runtime.name == "onnx"
    assert abs(dlforge.evaluate(variant)["accuracy"] - parity["metric_onnx"]) < 0.03
    assert main_ok(["predict", str(variant), "--data", str(_csv_of_images(variant.parent))])
    from dlforge.serve.runtime import weights_version

    assert weights_version(variant) != weights_version(run)  # clients can tell the int8 variant from its source
    listed = json.loads((run / "run.json").read_text())["variants"]
    assert {"name": "int8_static", "path": "variants/int8_static", "pass": "int8_static", "runtime": "onnx"} in listed


def _csv_of_images(folder):
    import pandas as pd

    paths = []
    for i, image in enumerate(_images(3)):
        Image.fromarray(image * 16).save(folder / f"img{i}.png")
        paths.append(f"img{i}.png")
    pd.DataFrame({"image": paths}).to_csv(folder / "images.csv", index=False)
    return folder / "images.csv"


def test_dynamic_int8_keeps_convs_fp32_and_names_them(exported, capsys):
    run, _ = exported
    assert main_ok(["quantize", str(run), "--mode", "dynamic"])
    out = capsys.readouterr().out
    assert "layers: 2 int8, 1 fp32" in out and "node_conv2d (Conv)" in out and "#12854" in out
    record = json.loads((run / "variants" / "int8_dynamic" / "export.json").read_text())
    assert record["quantization"]["unsupported"][0]["op"] == "Conv"
    assert "MatMulInteger" in {n.op_type for n in __import__("onnx").load(
        str(run / "variants" / "int8_dynamic" / "model.onnx")).graph.node}


def test_a_small_run_without_validation_rows_decides_on_its_training_rows(exported, monkeypatch):
    """141 training photos and no validation split (recipes/transfer_effnet.yaml): calibration takes every row, and
    the fallback's decision rows are then all the training rows (it crashed on an empty set before)."""
    from dlforge.compress import quantize

    run, _ = exported
    real = quantize.run_splits

    def small(predictor):
        table, rows = real(predictor)
        return table, {"train": np.asarray(rows["train"])[:60], "test": rows["test"]}

    monkeypatch.setattr(quantize, "run_splits", small)
    record = quantize.quantize_run(run, mode="static", calibration_rows=256, name="small", parity_rows=100,
                                   input_layer="int8")
    q = record["quantization"]
    assert q["calibration"]["rows"] == 60
    assert q["decision_rows"] == {"part": "training (calibration rows included)", "rows": 60}
    assert any("fallback decides on all 60 training rows" in note for note in q["notes"])


def test_a_layer_that_loses_too_much_falls_back_to_fp32(exported, monkeypatch):
    """The planted loss: any graph whose last layer is int8 'loses' 10 points; only that layer goes back to fp32."""
    from dlforge.compress import quantize

    run, _ = exported
    real = quantize.Quantizer.measure
    planted = []

    def measure(self, data):
        drop, error = real(self, data)
        model = __import__("onnx").load_from_string(data)
        last = self.layers[-1]
        planted[:] = [last["node"]]
        if last["node"] not in quantize.still_float(model, [last]):
            return drop + 0.10, error + 10.0
        return drop, error

    monkeypatch.setattr(quantize.Quantizer, "measure", measure)
    record = quantize.quantize_run(run, mode="static", calibration="percentile", calibration_rows=64,
                                   max_drop=0.02, name="fallback", parity_rows=100, input_layer="int8")
    q = record["quantization"]
    assert [f["node"] for f in q["fallback"]] == planted
    assert len(q["fallback"]) == 1 and q["fp32_layers"] == 1 and q["int8_layers"] == 2
    assert "kept fp32" in q["fallback"][0]["reason"] and q["metric_drop_on_decision_rows"] <= 0.02


def _activation_scales(path):
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    return {n.input[0]: float(inits[n.input[1]]) for n in model.graph.node if n.op_type == "QuantizeLinear"}


def test_entropy_calibration_is_its_own_and_the_variant_stays_close(exported, static_variant, capsys):
    """--calibration entropy used to give the minmax ranges (onnxruntime's 128-bin default); now a 2048-bin KL
    search clips some activations: their scales shrink, none grows, and the variant still agrees with fp32."""
    run, _ = exported
    # --max-drop 1: no layer falls back to fp32, so both graphs quantize the same tensors
    assert main_ok(["quantize", str(run), "--mode", "static", "--input-layer", "int8", "--calibration", "entropy", "--calibration-rows", "128",
                    "--max-drop", "1"])
    out = capsys.readouterr().out
    assert "calibration entropy on 128 training rows" in out and "KL threshold over 2048 histogram bins" in out
    variant = run / "variants" / "int8_static_entropy"
    record = json.loads((variant / "export.json").read_text())
    calibration = record["quantization"]["calibration"]
    assert calibration["method"] == "entropy" and calibration["settings"]["num_quantized_bins"] == 128
    assert calibration["clipped_tensors"] > 0 and 0 < calibration["median_kept_fraction_of_range"] < 1
    entropy = _activation_scales(variant / "model.onnx")
    minmax = _activation_scales(run / "variants" / "int8_static" / "model.onnx")
    assert entropy.keys() == minmax.keys()
    assert all(entropy[k] <= minmax[k] * (1 + 1e-6) for k in entropy)
    assert sum(entropy[k] < 0.99 * minmax[k] for k in entropy) >= 1
    assert record["parity"]["top1_agreement"] > 0.95 and abs(record["parity"]["metric_change"]) < 0.03


def test_bias_correction_is_on_by_default_in_static_mode_and_says_so(exported, static_variant, capsys):
    """Every int8 layer's bias takes off the mean shift its int8 weights cause on the calibration rows (the static
    variant of the fixture had it by default); --no-bias-correction leaves the biases as trained."""
    run, _ = exported
    q = static_variant["quantization"]
    assert q["bias_correction"]["layers"] == 3 and q["bias_correction"]["rows"] == 128
    assert q["bias_correction"]["largest_shift"] > 0
    assert any(note.startswith("bias correction:") for note in q["notes"])
    assert main_ok(["quantize", str(run), "--mode", "static", "--input-layer", "int8", "--no-bias-correction", "--calibration-rows", "128",
                    "--name", "plain"])
    assert "bias correction" not in capsys.readouterr().out
    plain = json.loads((run / "variants" / "plain" / "export.json").read_text())
    assert plain["quantization"]["bias_correction"] is None
    assert plain["parity"]["top1_agreement"] > 0.95
    # same int8 weights, different int32 biases
    import onnx
    from onnx import numpy_helper

    def tensors(path, dtype):
        model = onnx.load(str(path))
        return {i.name: numpy_helper.to_array(i) for i in model.graph.initializer if i.data_type == dtype}

    corrected_path, plain_path = run / "variants" / "int8_static" / "model.onnx", run / "variants" / "plain" / "model.onnx"
    int8 = onnx.TensorProto.INT8
    assert all(np.array_equal(w, tensors(plain_path, int8)[name]) for name, w in tensors(corrected_path, int8).items())
    int32_a, int32_b = tensors(corrected_path, onnx.TensorProto.INT32), tensors(plain_path, onnx.TensorProto.INT32)
    assert sorted(map(np.size, int32_a.values())) == sorted(map(np.size, int32_b.values()))
    assert sorted(np.concatenate([v.ravel() for v in int32_a.values()]).tolist()) != sorted(
        np.concatenate([v.ravel() for v in int32_b.values()]).tolist())
    assert not main_ok(["quantize", str(run), "--mode", "dynamic", "--bias-correction", "--name", "nope"])
    assert "--bias-correction corrects calibrated static int8" in capsys.readouterr().err


def test_reduce_range_keeps_weights_in_7_bits_and_the_cpu_note_reads_vnni(exported, capsys):
    """x86 CPUs without VNNI add u8 x s8 products in pairs in int16 (saturating): the report says so, and
    --reduce-range keeps every int8 weight within +-64 (onnxruntime's 7-bit range)."""
    import onnx
    from onnx import numpy_helper

    from dlforge.compress.quantize import no_vnni_note

    assert no_vnni_note("flags\t\t: fpu sse2 avx avx2 fma\n") is not None
    assert no_vnni_note("flags\t\t: fpu avx2 avx512f avx512_vnni\n") is None
    assert no_vnni_note("flags\t\t: fpu avx2 avx_vnni\n") is None
    run, _ = exported
    assert main_ok(["quantize", str(run), "--mode", "static", "--input-layer", "int8", "--reduce-range", "--calibration-rows", "64",
                    "--name", "seven"])
    assert "int8 in a 7-bit range (reduce range)" in capsys.readouterr().out
    model = onnx.load(str(run / "variants" / "seven" / "model.onnx"))
    weights = [numpy_helper.to_array(i) for i in model.graph.initializer if i.data_type == onnx.TensorProto.INT8]
    assert weights and max(int(np.abs(w.astype(np.int32)).max()) for w in weights) <= 64
    record = json.loads((run / "variants" / "seven" / "export.json").read_text())
    assert not any("no VNNI" in note for note in record["quantization"]["notes"])  # asked for already
    assert not main_ok(["quantize", str(run), "--mode", "dynamic", "--reduce-range", "--name", "nope"])
    assert "--reduce-range is for --mode static" in capsys.readouterr().err


@pytest.mark.parametrize("vnni", [True, False])
def test_reduce_range_defaults_on_exactly_on_a_cpu_without_vnni(exported, monkeypatch, vnni):
    from dlforge.compress import quantize

    run, _ = exported
    monkeypatch.setattr(quantize, "no_vnni_note", lambda: None if vnni else "this CPU has no VNNI (test)")
    record = quantize.quantize_run(run, mode="static", calibration_rows=64, name=f"auto_{vnni}", parity_rows=100,
                                   input_layer="int8")
    q = record["quantization"]
    assert q["reduce_range"] is (not vnni)
    assert ("7-bit" in q["weights"]) is (not vnni)
    assert any("7-bit range here" in note for note in q["notes"]) is (not vnni)


@pytest.mark.parametrize("argv, message", [
    (["--mode", "float4"], "unknown mode 'float4'"),
    (["--calibration", "median"], "unknown calibration 'median'"),
    (["--calibration-rows", "0"], "--calibration-rows must be at least 1"),
    (["--input-layer", "int4"], "unknown --input-layer 'int4'; known: auto, int8, fp32"),
    (["--mode", "dynamic", "--input-layer", "fp32"], "--mode dynamic has no such choice"),
])
def test_bad_quantize_options_exit_2_with_one_message(exported, capsys, argv, message):
    assert not main_ok(["quantize", str(exported[0]), *argv])
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def _graph(nodes, inputs=("x",), initializers=()):
    from onnx import TensorProto, helper, numpy_helper

    return helper.make_model(helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info(i, TensorProto.FLOAT, None) for i in inputs],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.ones(s, np.float32), n) for n, s in initializers]))


def test_input_layer_is_the_first_conv_on_the_input_and_what_follows_it_alone():
    from onnx import helper

    from dlforge.compress.input_layer import input_layer

    weights = [("scale", ()), ("mean", ()), ("w1", (4, 1, 3, 3)), ("w2", (4, 4, 3, 3))]
    nodes = [helper.make_node("Mul", ["x", "scale"], ["s"], name="scale"),
             helper.make_node("Sub", ["s", "mean"], ["n"], name="normalise"),
             helper.make_node("Conv", ["n", "w1"], ["c1"], name="conv1"),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("MaxPool", ["r1"], ["p1"], name="pool1", kernel_shape=[2, 2]),
             helper.make_node("Conv", ["p1", "w2"], ["y"], name="conv2")]
    assert input_layer(_graph(nodes, initializers=weights)) == ["conv1", "relu1", "pool1"]
    # relu1's output also feeds a second branch: the chain ends at relu1 (the pool is not its only consumer)
    branched = nodes[:5] + [helper.make_node("Add", ["r1", "r1"], ["a"], name="skip"),
                            helper.make_node("Conv", ["p1", "w2"], ["y"], name="conv2")]
    assert input_layer(_graph(branched, initializers=weights)) == ["conv1", "relu1"]
    # a Conv that reads a computed tensor (not the input through constant-operand ops) is no input layer
    gated = [helper.make_node("Sigmoid", ["x"], ["g"], name="sigmoid"),
             helper.make_node("Mul", ["x", "g"], ["s"], name="gate"),
             helper.make_node("Conv", ["s", "w1"], ["c1"], name="conv1")] + nodes[3:]
    assert input_layer(_graph(gated, initializers=weights)) == []
    assert input_layer(_graph([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")],
                              initializers=[("w", (4, 4))])) == []


def test_the_input_layer_race_gives_both_graphs_the_same_calls():
    from dlforge.compress.input_layer import _race

    class Session:
        def __init__(self):
            self.calls = 0

        def run(self, outputs, feed):
            self.calls += 1

    sessions = {"all_int8": Session(), "input_fp32": Session()}
    ms = _race(sessions, {"x": None}, seconds=0.01)
    assert set(ms) == set(sessions) and all(v >= 0 for v in ms.values())
    # the same warm-up and timed calls each; the first also took the one call that sizes the race
    assert sessions["all_int8"].calls - 1 == sessions["input_fp32"].calls >= 3 + 20


@pytest.mark.parametrize("times, kept", [((1.0, 0.5), True), ((1.0, 0.97), False)])
def test_the_input_layer_stays_fp32_only_when_faster(exported, monkeypatch, times, kept):
    """auto: fp32 when the mixed graph is >= 5% faster at batch 1 (the timing is planted here; the real one is
    benchmarks/compress.md's); that graph runs without QDQ propagation, as its export.json says."""
    from dlforge.artifact.onnx_runtime import GRAPH_OPTIMIZERS_KEY
    from dlforge.compress import input_layer, quantize

    run, _ = exported
    monkeypatch.setattr(input_layer, "_race", lambda sessions, feed, seconds: dict(zip(sessions, times)))
    record = quantize.quantize_run(run, mode="static", calibration_rows=64, name=f"input_{kept}", parity_rows=200,
                                   max_drop=1.0)  # no fallback: the placement alone decides
    q, variant = record["quantization"], Path(record["variant_dir"])
    placement = q["input_layer"]
    assert placement["nodes"][0] == "node_conv2d" and placement["fp32"] is kept
    assert placement["ms_batch1"] == {"all_int8": times[0], "input_fp32": times[1]}
    assert ("kept fp32" in placement["reason"]) is kept and "at batch 1 on this CPU" in placement["reason"]
    saved = json.loads((variant / "export.json").read_text())
    assert (q["int8_layers"], q["fp32_layers"], q["fallback"], q["unsupported"]) == ((2, 1, [], []) if kept
                                                                                     else (3, 0, [], []))
    assert saved.get(GRAPH_OPTIMIZERS_KEY) == (["QDQPropagationTransformer"] if kept else None)
    runtime = dlforge.load(variant).runtime
    assert ("QDQPropagationTransformer" in runtime.settings["disabled_optimizers"]) is kept
    assert record["parity"]["top1_agreement"] > 0.95
    graph = __import__("onnx").load(str(variant / "model.onnx")).graph
    conv = next(n for n in graph.node if n.name == "node_conv2d")
    assert (conv.input[1] in {i.name for i in graph.initializer if i.data_type == 1}) is kept  # its weight fp32


def test_forced_input_layer_and_an_unknown_optimizer_in_export_json(exported, tmp_path, monkeypatch, capsys):
    from dlforge.compress import input_layer

    run, _ = exported
    monkeypatch.setattr(input_layer, "_race", lambda sessions, feed, seconds: dict.fromkeys(sessions, 1.0))
    assert main_ok(["quantize", str(run), "--mode", "static", "--input-layer", "fp32", "--name", "forced"])
    out = capsys.readouterr().out
    assert "input layer node_conv2d (Conv" in out and "(--input-layer fp32): kept fp32" in out
    # an export.json asking onnxruntime to turn off something dlforge does not turn off: refused by name
    damaged = tmp_path / "damaged"
    shutil.copytree(run / "variants" / "forced", damaged)
    record = json.loads((damaged / "export.json").read_text())
    (damaged / "export.json").write_text(json.dumps({**record, "ort_disabled_optimizers": ["ConstantFolding"]}))
    assert not main_ok(["predict", str(damaged), "--data", str(_csv_of_images(tmp_path))])
    err = capsys.readouterr().err
    assert "turn off onnxruntime optimizer(s) ['ConstantFolding']" in err and "Traceback" not in err


def test_quantize_refuses_an_existing_variant_and_a_missing_run(exported, static_variant, tmp_path, capsys):
    assert not main_ok(["quantize", str(exported[0]), "--mode", "static"])
    assert "variant 'int8_static' exists already" in capsys.readouterr().err
    assert not main_ok(["quantize", str(tmp_path / "nothing")])
    assert "no such run directory" in capsys.readouterr().err


# ---------------------------------------------------------------- the compression passes
def test_passes_are_registered_and_chain_from_a_torch_candidate(exported, tmp_path):
    from dlforge.compress.passes import Candidate, passes

    assert {"onnx", "int8_dynamic", "int8_static"} <= set(passes.names())
    run, _ = exported
    source = Candidate("fp32", run, "torch")
    (fp32,) = passes.get("onnx")(source, work_dir=tmp_path)
    assert fp32.runtime == "onnx" and (fp32.run_dir / "model.onnx").is_file()
    assert fp32.notes["export"]["parity"]["passed"]
    (int8,) = passes.get("int8_dynamic")(fp32, work_dir=tmp_path)
    assert int8.name == "int8_dynamic" and int8.runtime == "onnx" and str(int8.run_dir).startswith(str(tmp_path))
    assert dlforge.load(int8.run_dir).runtime.name == "onnx"
    assert json.loads((int8.run_dir / "variant.json").read_text())["pass"] == "int8_dynamic"


def test_an_lstm_encoder_names_the_operator_and_the_fallback(tmp_path, capsys):
    import pandas as pd

    words = ["good fine", "bad awful", "fine good day", "awful bad night"] * 10
    pd.DataFrame({"text": words, "label": ["pos", "neg"] * 20}).to_csv(tmp_path / "t.csv", index=False)
    recipe = {"name": "lstm", "data": {"source": str(tmp_path / "t.csv"), "split": {"val": 0.2, "test": 0.2, "seed": 0}},
              "inputs": [{"name": "text", "type": "text", "encoder": {"name": "lstm", "dim": 8, "hidden": 8},
                          "preprocessing": {"vocab_size": 100, "min_frequency": 1, "max_length": 8}}],
              "outputs": [{"name": "label", "type": "binary"}], "training": {"epochs": 1, "batch_size": 8}}
    dlforge.train(recipe, out=tmp_path / "run", progress=False)
    assert not main_ok(["export", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert "aten::_pack_padded_sequence" in err and "LSTM" in err and "--runtime torch" in err
    assert "Traceback" not in err and not (tmp_path / "run" / "model.onnx").exists()


def test_qat_without_torchao_names_the_extra(exported, monkeypatch, capsys):
    import sys

    monkeypatch.setitem(sys.modules, "torchao", None)  # as if it were not installed
    monkeypatch.setitem(sys.modules, "torchao.quantization.pt2e.quantize_pt2e", None)
    assert not main_ok(["quantize", str(exported[0]), "--mode", "qat"])
    err = capsys.readouterr().err
    assert "torchao" in err and "dlforge[qat]" in err and "Traceback" not in err


@pytest.mark.slow
def test_qat_fine_tunes_with_fake_quant_and_exports_qdq(exported):
    pytest.importorskip("torchao")
    import onnx

    from dlforge.compress.quantize import quantize_run

    run, _ = exported
    record = quantize_run(run, mode="qat", qat_epochs=1, parity_rows=200, name="qat")
    q = record["quantization"]
    assert q["mode"] == "qat" and q["format"] == "QDQ" and q["qat"]["steps"] > 0 and q["int8_layers"] == 3
    model = onnx.load(str(run / "variants" / "qat" / "model.onnx"))
    assert {"QuantizeLinear", "DequantizeLinear"} <= {n.op_type for n in model.graph.node}
    assert sum(i.data_type == onnx.TensorProto.INT8 for i in model.graph.initializer) >= 3  # int8 weights
    assert record["parity"]["top1_agreement"] > 0.8
    assert dlforge.load(run / "variants" / "qat").runtime.name == "onnx"


@pytest.mark.slow
def test_a_transformer_exports_fused_and_quantizes_the_qkv_projections(tmp_path, capsys):
    """MiniLM (its architecture, random weights; ~40 s): exported for onnxruntime's transformer fusions (every
    layer's attention one Attention op, then the standard ONNX Attention behind its QKV MatMul; embeddings
    EmbedLayerNormalization), parity checked; dynamic int8 makes the QKV MatMuls and the embeddings int8 and
    BiasGelu FastGelu (no QAttention: slower here); `--no-fuse` gives the plain dynamo graph."""
    pytest.importorskip("transformers")
    import collections

    import onnx
    import pandas as pd

    from dlforge.compress.quantize import quantize_run

    try:
        from dlforge.core.assets import require

        require("minilm", where="test")
    except DlforgeError:
        pytest.skip("the minilm extra is not installed")
    texts = ["a fine moving film", "dull and slow", "one of the best", "a waste of time"] * 10
    pd.DataFrame({"text": texts, "label": ["pos", "neg"] * 20}).to_csv(tmp_path / "t.csv", index=False)
    recipe = {"name": "tiny-minilm", "data": {"source": str(tmp_path / "t.csv"),
                                              "split": {"val": 0.25, "test": 0.25, "seed": 0}},
              "inputs": [{"name": "text", "type": "text", "preprocessing": {"max_length": 8},
                          "encoder": {"name": "minilm", "pretrained": False}}],
              "outputs": [{"name": "label", "type": "binary"}], "training": {"epochs": 1, "batch_size": 16}}
    run = tmp_path / "run"
    dlforge.train(recipe, out=run, progress=False)
    assert main_ok(["export", str(run)])
    printed = capsys.readouterr().out
    record = json.loads((run / "export.json").read_text())
    fusion = record["transformer_fusion"]
    layers = dlforge.load(run).model.encoders["text"].onnx_transformer()["layers"]
    assert fusion["applied"] and fusion["fused"]["Attention"] == layers and record["exporter"] == "torchscript"
    assert fusion["onnx_attention"] == layers and record["opset"] == 24
    assert record["parity"]["passed"] and record["parity"]["top1_agreement"] == 1.0
    assert "transformer fusions" in printed and f"{layers} Attention" in printed and "ONNX Attention" in printed
    graph = onnx.load(str(run / "model.onnx")).graph
    ops = collections.Counter(n.op_type for n in graph.node)
    assert ops["If"] == 0 and ops["EmbedLayerNormalization"] == 1 and ops["Softmax"] == 0
    attention = [n for n in graph.node if n.op_type == "Attention"]
    assert len(attention) == layers and {n.domain for n in attention} == {""}  # the standard op, not com.microsoft
    assert {n.input[6] for n in attention} != {""}  # the key padding as each row's length (nonpad_kv_seqlen)
    # The residual Add + LayerNormalization pairs stay unfused (onnxruntime's SkipLayerNormalization is slower here).
    assert ops["SkipLayerNormalization"] == 0 and ops["LayerNormalization"] == 2 * layers
    # The exported graph takes any batch and length (the onnx runtime trims padding per chunk).
    predictor = dlforge.load(run, runtime="onnx")
    rows = {"text": np.array(["a fine film", "one of the best of all, really"], dtype=object)}
    assert list(predictor.predict(rows)) == list(dlforge.load(run, runtime="torch").predict(rows))

    int8 = quantize_run(run, mode="dynamic", max_drop=1.0, name="int8")
    q_ops = collections.Counter(n.op_type for n in onnx.load(str(run / "variants" / "int8" / "model.onnx")).graph.node)
    assert q_ops["QAttention"] == 0 and q_ops["QEmbedLayerNormalization"] == 1 and q_ops["Attention"] == layers
    assert q_ops["MatMulInteger"] >= 4 * layers  # QKV, attention output, both FFN layers of every layer
    assert q_ops["FastGelu"] == layers and q_ops["BiasGelu"] == 0
    assert int8["quantization"]["size_ratio"] > 3.5  # the word embeddings are int8 too
    assert any("FastGelu" in note for note in int8["quantization"]["notes"])
    assert len(dlforge.load(run / "variants" / "int8").predict(rows)) == 2

    plain = tmp_path / "plain"
    shutil.copytree(run, plain, ignore=shutil.ignore_patterns("variants", "model.onnx", "export.json"))
    assert main_ok(["export", str(plain), "--no-fuse"])
    record = json.loads((plain / "export.json").read_text())
    assert record["exporter"] == "dynamo" and "transformer_fusion" not in record
    assert "Attention" not in {n.op_type for n in onnx.load(str(plain / "model.onnx")).graph.node}


def test_sessions_leave_add_and_layernorm_unfused(tmp_path):
    """onnxruntime would fuse a residual Add + LayerNormalization into SkipLayerNormalization when it builds a
    session; dlforge's sessions turn that fusion off by name (artifact/onnx_runtime.py: the fused CPU kernel is
    several times slower here). If onnxruntime renamed the optimizer, the name would be ignored silently: caught here."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from dlforge.artifact.onnx_runtime import DISABLED_OPTIMIZERS, open_session, session_options

    width = 8
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "skip"], ["sum"]),
         helper.make_node("LayerNormalization", ["sum", "gamma", "beta"], ["y"], axis=-1, epsilon=1e-5)], "residual",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 4, width]) for n in ("x", "skip")],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, width])],
        [numpy_helper.from_array(np.ones(width, np.float32), "gamma"),
         numpy_helper.from_array(np.zeros(width, np.float32), "beta")])
    data = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()

    def optimized_ops(disabled):
        options, _ = session_options(1)
        options.optimized_model_filepath = str(tmp_path / f"optimized-{len(disabled)}.onnx")
        ort.InferenceSession(data, options, providers=["CPUExecutionProvider"], disabled_optimizers=list(disabled))
        return {n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node}

    assert "SkipLayerNormalization" in optimized_ops(())  # what onnxruntime does by default
    assert optimized_ops(DISABLED_OPTIMIZERS) == {"Add", "LayerNormalization"}
    session, described = open_session(data, threads=1, where=str(tmp_path / "model.onnx"))
    assert described["disabled_optimizers"] == ["SkipLayerNormFusion"]
    x = np.arange(4 * width, dtype=np.float32).reshape(1, 4, width)
    (y,) = session.run(None, {"x": x, "skip": x})
    expected = (2 * x - (2 * x).mean(-1, keepdims=True)) / np.sqrt((2 * x).var(-1, keepdims=True) + 1e-5)
    np.testing.assert_allclose(y, expected, atol=1e-4)


def test_exporters_chatter_is_quiet_only_while_exporting():
    """torch.onnx's 'torchvision is not installed. Skipping torchvision::nms' (a WARNING of a child logger) is not the
    user's business during `dlforge export`; the loggers are as they were afterwards."""
    import logging

    from dlforge.compress.onnx_export import quiet_loggers

    child = logging.getLogger("torch.onnx._internal.exporter._registration")
    before = child.getEffectiveLevel()
    with quiet_loggers("torch.onnx"):
        assert not child.isEnabledFor(logging.WARNING) and child.isEnabledFor(logging.ERROR)
    assert child.getEffectiveLevel() == before
