"""The runtime: one faulty request in a batch fails alone; number and multi-output models answer in full."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from dlforge.core.errors import DlforgeError
from dlforge.serve.runtime import Records, ModelRuntime
from .conftest import app_client, png_bytes


@pytest.fixture(scope="module")
def two_output_run(tmp_path_factory):
    """A binary and a number output from the same inputs."""
    import dlforge

    rng = np.random.default_rng(3)
    n = 200
    x = rng.normal(size=n)
    kind = rng.choice(["a", "b"], n)
    frame = pd.DataFrame({"x": x, "kind": kind, "good": np.where(x + (kind == "a") > 0.5, "yes", "no"),
                          "amount": 3 * x + 1})
    root = tmp_path_factory.mktemp("two")
    frame.to_csv(root / "data.csv", index=False)
    out = root / "run"
    dlforge.train({"name": "two-outputs", "data": {"source": str(root / "data.csv"), "split": {"val": 0.1, "test": 0.1}},
                   "inputs": [{"name": "x", "type": "number"}, {"name": "kind", "type": "category"}],
                   "outputs": [{"name": "good", "type": "binary"}, {"name": "amount", "type": "number"}],
                   "training": {"epochs": 2, "batch_size": 32}}, out=out, progress=False)
    return out


def test_a_bad_image_fails_only_its_own_request(digits_predictor):
    runtime = ModelRuntime(digits_predictor)
    good = Records({"image": [png_bytes(np.full((8, 8), 200))]}, 1)
    bad = Records({"image": [b"\x89PNG\r\n\x1a\n but truncated"]}, 1)
    arrays = Records({"image": [np.zeros((8, 8, 1), dtype=np.uint8)] * 2}, 2)
    results = runtime.run([good, bad, arrays])
    assert isinstance(results[1], DlforgeError) and "cannot decode image" in results[1].message
    assert len(results[0]) == 1 and len(results[2]) == 2
    alone = runtime.run([good])[0][0]
    assert results[0][0] == alone  # same answer as when it is batched with nobody


def test_batched_rows_equal_unbatched_rows(tabular_predictor):
    runtime = ModelRuntime(tabular_predictor)
    rows = [{"age": float(a), "hours-per-week": 40.0, "workclass": "Private", "sex": "Female"} for a in (20, 50, 70)]
    jobs = [Records({k: [r[k]] for k in r}, 1) for r in rows]
    together = runtime.run(jobs)
    apart = [runtime.run([job])[0] for job in jobs]
    for a, b in zip(together, apart):
        np.testing.assert_allclose(a[0]["probability"], b[0]["probability"], rtol=1e-5)
        assert a[0]["label"] == b[0]["label"]


def test_number_and_multi_output_answers(two_output_run):
    import dlforge

    predictor = dlforge.load(two_output_run)
    with app_client(two_output_run, predictor) as client:
        response = client.post("/v1/predict", json={"records": [{"x": 1.5, "kind": "a"}, {"x": -2.0, "kind": "b"}]})
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["output"] == "good"
        direct = predictor.predict({"x": [1.5, -2.0], "kind": ["a", "b"]})
        for i, prediction in enumerate(body["predictions"]):
            assert prediction["label"] == direct["good"][i]
            assert set(prediction["outputs"]) == {"good", "amount"}
            np.testing.assert_allclose(prediction["outputs"]["amount"]["value"], direct["amount"][i], rtol=1e-5)
            assert prediction["outputs"]["amount"].get("top_k") is None
        assert client.post("/v1/predict", json={"records": [{"x": 1.0, "kind": "a"}], "top_k": 3}).status_code == 422
