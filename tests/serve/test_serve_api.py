"""The REST API against real (tiny) models: answers equal a direct Predictor call; errors name the field."""

from __future__ import annotations

import base64

import numpy as np
import pytest

from dlforge.serve.runtime import weights_version
from .conftest import png_bytes

RNG = np.random.default_rng(1)
IMAGES = RNG.integers(0, 256, size=(3, 8, 8)).astype(np.uint8)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_predict_json_matches_direct_predictor(digits_client, digits_predictor, digits_run):
    records = [{"image": b64(png_bytes(IMAGES[0]))}, {"image": IMAGES[1].tolist()},
               {"image": "data:image/png;base64," + b64(png_bytes(IMAGES[2]))}]
    response = digits_client.post("/v1/predict", json={"records": records, "top_k": 3})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == "tiny-digits" and body["output"] == "label"
    assert body["version"] == weights_version(digits_run)
    expected = digits_predictor.predict_details(IMAGES)["label"]
    assert [p["label"] for p in body["predictions"]] == list(expected["predictions"])
    probs = expected["probabilities"].numpy()
    for row, prediction in enumerate(body["predictions"]):
        assert len(prediction["top_k"]) == 3
        top = [t["probability"] for t in prediction["top_k"]]
        assert top == sorted(top, reverse=True)
        assert prediction["top_k"][0]["label"] == prediction["label"]
        np.testing.assert_allclose(prediction["probability"], probs[row].max(), rtol=1e-5)
    assert "batch;dur=" in response.headers["server-timing"]


def test_multipart_upload_equals_json(digits_client):
    png = png_bytes(IMAGES[0])
    by_form = digits_client.post("/v1/predict", files={"image": ("digit.png", png, "image/png")}, data={"top_k": "2"})
    by_json = digits_client.post("/v1/predict", json={"records": [{"image": b64(png)}], "top_k": 2})
    assert by_form.status_code == 200, by_form.text
    assert by_form.json()["predictions"] == by_json.json()["predictions"]
    assert len(by_form.json()["predictions"][0]["top_k"]) == 2


def test_tabular_records_match_predictor(tabular_client, tabular_predictor):
    records = [{"age": 52, "hours-per-week": 60.5, "workclass": "Self-emp", "sex": "Male"},
               {"age": 23.0, "hours-per-week": None, "workclass": "never-seen", "sex": None}]
    response = tabular_client.post("/v1/predict", json={"records": records})
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    frame = {k: [r[k] for r in records] for k in records[0]}
    frame["hours-per-week"] = [60.5, float("nan")]
    direct = tabular_predictor.predict_details(frame)["income"]
    assert [p["label"] for p in predictions] == list(direct["predictions"])
    for p, row in zip(predictions, direct["probabilities"].numpy()):
        assert {t["label"] for t in p["top_k"]} == {"<=50K", ">50K"}
        np.testing.assert_allclose(sum(t["probability"] for t in p["top_k"]), 1.0, rtol=1e-5)
        np.testing.assert_allclose(p["probability"], row[tabular_predictor.labels().index(p["label"])], rtol=1e-5)


@pytest.mark.parametrize("record, field, words", [
    ({"age": "old", "hours-per-week": 1, "workclass": "Private", "sex": "Male"}, "records.0.age", "number"),
    ({"age": 30, "hours-per-week": 1, "workclass": "Private", "sex": "M"}, "records.0.sex", "'Female' or 'Male'"),
    ({"age": 30, "hours-per-week": 1, "workclass": "Private"}, "records.0.sex", "required"),
    ({"age": 30, "hours-per-week": 1, "workclass": "Private", "sex": "Male", "zip": 1}, "records.0.zip", "not permitted"),
    ({"age": 30, "hours-per-week": 1, "workclass": ["a"], "sex": "Male"}, "records.0.workclass", "string"),
])
def test_invalid_records_get_422_naming_the_field(tabular_client, record, field, words):
    response = tabular_client.post("/v1/predict", json={"records": [record]})
    assert response.status_code == 422
    body = response.json()
    assert body["detail"].startswith(field), body
    assert any(e["field"] == field and words.lower() in e["message"].lower() for e in body["errors"]), body


def test_request_level_validation(tabular_client, digits_client):
    assert tabular_client.post("/v1/predict", json={"records": []}).json()["errors"][0]["field"] == "records"
    assert tabular_client.post("/v1/predict", json={"rows": []}).status_code == 422
    assert tabular_client.post("/v1/predict", content=b"{not json", headers={"content-type": "application/json"}
                               ).status_code == 422
    assert tabular_client.post("/v1/predict", content=b"a=1", headers={"content-type": "text/plain"}).status_code == 415
    bad = digits_client.post("/v1/predict", json={"records": [{"image": b64(b"not an image at all")}]})
    assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "records.0.image"
    wrong_size = digits_client.post("/v1/predict", json={"records": [{"image": [[0] * 5] * 5}]})
    assert wrong_size.status_code == 422 and "8x8" in wrong_size.json()["detail"]


def test_model_info_probes_and_metrics(digits_client, digits_run):
    info = digits_client.get("/v1/model").json()
    assert info["name"] == "tiny-digits" and info["version"] == weights_version(digits_run)
    assert info["inputs"]["image"]["shape"] == [1, 8, 8]
    assert info["outputs"]["label"]["labels"] == [str(i) for i in range(10)]
    assert info["metrics"]["test"]["accuracy"] > 0.5
    runtime = info["serving"]["runtime"]  # the torch runtime says which forward path serves (artifact/lean.py)
    assert runtime["name"] == "torch" and runtime["path"] == "lean" and runtime["lean"]["ops"] >= 6, runtime
    assert digits_client.get("/healthz").json() == {"status": "ok"}
    assert digits_client.get("/readyz").json() == {"status": "ready"}
    digits_client.post("/v1/predict", json={"records": [{"image": IMAGES[0].tolist()}] * 2})
    digits_client.post("/v1/predict", json={"records": [{"image": "???"}]})
    text = digits_client.get("/metrics").text
    assert 'dlforge_requests_total{route="/v1/predict",status="200"} 1.0' in text
    assert 'dlforge_requests_total{route="/v1/predict",status="422"} 1.0' in text
    assert "dlforge_batch_size_bucket" in text and "dlforge_queue_depth" in text
    assert 'dlforge_request_duration_seconds_count{route="/v1/predict"} 2.0' in text


def test_openapi_has_typed_fields_per_input(tabular_client, digits_client):
    schemas = tabular_client.get("/openapi.json").json()["components"]["schemas"]
    props = schemas["Record"]["properties"]
    assert set(props) == {"age", "hours-per-week", "workclass", "sex"}
    assert {"type": "number", "minimum": -1e30, "maximum": 1e30} in props["age"]["anyOf"]
    assert {"enum": ["Female", "Male"], "type": "string"} in props["sex"]["anyOf"]
    assert "Private" in props["workclass"]["examples"]
    assert schemas["Record"]["additionalProperties"] is False
    image = digits_client.get("/openapi.json").json()["components"]["schemas"]["Record"]["properties"]["image"]
    assert image["anyOf"][0]["contentEncoding"] == "base64"
    predict = digits_client.get("/openapi.json").json()["paths"]["/v1/predict"]["post"]
    assert set(predict["requestBody"]["content"]) == {"application/json", "multipart/form-data"}
    assert {"200", "413", "422", "503"} <= set(predict["responses"])


def test_no_stack_trace_in_responses(digits_client, monkeypatch):
    state = digits_client.app_ref.state.serve

    def broken(jobs):
        raise RuntimeError("secret internal detail at /srv/model.py line 3")

    monkeypatch.setattr(state.runtime, "run", broken)
    response = digits_client.post("/v1/predict", json={"records": [{"image": IMAGES[0].tolist()}]})
    assert response.status_code == 500
    assert "secret" not in response.text and "Traceback" not in response.text
    assert response.json()["detail"].startswith("internal server error")


def test_web_page_is_served_without_external_assets(digits_client):
    page = digits_client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "http://" not in page.text and "https://" not in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert digits_client.get("/static/app.js").status_code == 200
    assert digits_client.get("/docs").status_code == 404  # Swagger UI would load assets from a CDN


def test_extreme_numbers_are_refused_not_answered_with_nan(tabular_client):
    record = {"age": 1e31, "hours-per-week": 1, "workclass": "Private", "sex": "Male"}
    response = tabular_client.post("/v1/predict", json={"records": [record]})
    assert response.status_code == 422 and response.json()["errors"][0]["field"] == "records.0.age"
    assert tabular_client.post("/v1/predict", content=b'{"records": [{"age": NaN, "hours-per-week": 1, '
                               b'"workclass": "a", "sex": "Male"}]}',
                               headers={"content-type": "application/json"}).status_code == 422


def test_top_k_as_an_integral_float_is_an_integer(tabular_client):
    """JSON Schema's integer includes 1.0 (schemathesis sends it): taken as 1; 1.5, true and "2" stay refused."""
    row = {"records": [{"age": 30, "hours-per-week": 40, "workclass": "Private", "sex": "Male"}]}
    assert tabular_client.post("/v1/predict", json={**row, "top_k": 1.0}).status_code == 200
    for bad in (1.5, True, "2"):
        assert tabular_client.post("/v1/predict", json={**row, "top_k": bad}).status_code == 422
