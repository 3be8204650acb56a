"""dlforge.Client against a live server, and its retry/back-off behaviour on 503."""

from __future__ import annotations

import httpx
import numpy as np
import pytest

import dlforge
from dlforge.serve.client import ClientError
from .conftest import live_server, png_bytes

KEY = "client-test-key-" + "q" * 20


def test_client_round_trip_with_key(digits_run, digits_predictor, tmp_path):
    key_file = tmp_path / "api.key"
    key_file.write_text(KEY)
    key_file.chmod(0o600)
    image = np.arange(64, dtype=np.uint8).reshape(8, 8) * 3
    (tmp_path / "digit.png").write_bytes(png_bytes(image))
    with live_server(digits_run, digits_predictor, api_key_file=str(key_file)) as url:
        with dlforge.Client(url, api_key=KEY) as client:
            client.wait_ready(timeout=5)
            assert client.model()["name"] == "tiny-digits"
            by_path = client.predict({"image": tmp_path / "digit.png"}, top_k=2)
            by_array = client.predict([{"image": image}, {"image": png_bytes(image)}])
            assert len(by_path) == 1 and len(by_array) == 2 and len(by_path[0]["top_k"]) == 2
            expected = digits_predictor.predict(image[None])[0]
            assert by_path[0]["label"] == by_array[0]["label"] == by_array[1]["label"] == expected
            with pytest.raises(ClientError) as invalid:
                client.predict({"picture": image})
            assert invalid.value.status == 422 and invalid.value.errors[0]["field"] == "records.0.image"
        with dlforge.Client(url) as anonymous, pytest.raises(ClientError) as refused:
            anonymous.predict({"image": image})
        assert refused.value.status == 401 and "api_key" in refused.value.hint


def test_client_retries_503_with_backoff_then_succeeds():
    answers = iter([503, 503, 200])
    calls = []

    def handler(request):
        calls.append(request)
        status = next(answers)
        if status == 503:
            return httpx.Response(503, json={"detail": "server busy"}, headers={"Retry-After": "0"})
        return httpx.Response(200, json={"model": "m", "version": "v", "output": "y",
                                         "predictions": [{"label": "a", "probability": 1.0}]})

    client = dlforge.Client("http://test", transport=httpx.MockTransport(handler), backoff=0.001)
    assert client.predict({"x": 1.0})[0]["label"] == "a"
    assert len(calls) == 3


def test_client_gives_up_after_its_retries():
    calls = []

    def handler(request):
        calls.append(request)
        return httpx.Response(503, json={"detail": "server busy"})

    client = dlforge.Client("http://test", transport=httpx.MockTransport(handler), retries=2, backoff=0.001)
    with pytest.raises(ClientError) as error:
        client.predict({"x": 1.0})
    assert error.value.status == 503 and len(calls) == 3 and "busy" in error.value.message


def test_client_reports_an_unreachable_server():
    from .conftest import free_port

    client = dlforge.Client(f"http://127.0.0.1:{free_port()}", retries=1, backoff=0.001, timeout=2)
    with pytest.raises(ClientError) as error:
        client.model()
    assert error.value.status == 0 and "dlforge serve" in error.value.hint
