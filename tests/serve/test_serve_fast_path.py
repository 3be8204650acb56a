"""POST /v1/predict's shortcut (a plain ASGI endpoint behind the same middlewares) answers exactly as the FastAPI
route does; the connection's lazy deadlines and its one-write responses hold on kept-alive and pipelined connections."""

from __future__ import annotations

import base64
import gzip
import json
import socket
import time

import numpy as np
import pytest

from .conftest import app_client, live_server, png_bytes

RNG = np.random.default_rng(3)
IMAGE = RNG.integers(0, 256, size=(8, 8)).astype(np.uint8)
B64 = base64.b64encode(png_bytes(IMAGE)).decode()
VARYING = {"server-timing", "date"}  # timings and the clock differ from one answer to the next


def answers(client, requests):
    out = []
    for kwargs in requests:
        response = client.post("/v1/predict", **kwargs)
        headers = sorted((k, v) for k, v in response.headers.multi_items() if k not in VARYING)
        out.append((response.status_code, response.content, headers, "server-timing" in response.headers))
    return out


REQUESTS = [
    dict(json={"records": [{"image": B64}], "top_k": 2}),
    dict(json={"records": [{"image": B64}, {"image": IMAGE.tolist()}]}),
    dict(json={"records": [{"image": "not base64 at all"}]}),                      # 422 naming the field
    dict(json={"records": []}),                                                    # 422, request level
    dict(json={"records": [{"image": B64}], "extra": 1}),                          # 422, unknown key
    dict(content=b"{not json", headers={"Content-Type": "application/json"}),      # 422
    dict(content=b"x", headers={"Content-Type": "text/plain"}),                    # 415
    dict(content=gzip.compress(json.dumps({"records": [{"image": B64}]}).encode()),
         headers={"Content-Type": "application/json", "Content-Encoding": "gzip"}),
    dict(content=b"not gzip", headers={"Content-Type": "application/json", "Content-Encoding": "gzip"}),  # 400
    dict(content=b"{}", headers={"Content-Type": "application/json", "Content-Encoding": "br"}),         # 415
    dict(files={"image": ("digit.png", png_bytes(IMAGE), "image/png")}),           # multipart
    dict(files={"image": ("digit.png", b"garbage", "image/png")}),                 # multipart, 422
]


def test_the_shortcut_answers_as_the_fastapi_route(digits_run, digits_predictor):
    with app_client(digits_run, digits_predictor, cors_origins=["https://example.org"]) as client:
        app = client.app_ref
        shortcut = app.predict_endpoint
        calls = []

        async def counted(scope, receive, send):
            calls.append(scope["path"])
            await shortcut(scope, receive, send)

        app.predict_endpoint = counted
        fast = answers(client, REQUESTS)
        assert len(calls) == len(REQUESTS)  # every one went the short way
        app.predict_endpoint = None  # FastAPI's route alone
        slow = answers(client, REQUESTS)
        assert len(calls) == len(REQUESTS)
        app.predict_endpoint = counted
        assert fast == slow
        statuses = [status for status, *_ in fast]
        assert statuses == [200, 200, 422, 422, 422, 422, 415, 200, 400, 415, 200, 422]
        assert all(timed for status, _, _, timed in fast if status == 200)
        ok = dict(fast[0][2])
        assert ok["x-content-type-options"] == "nosniff" and ok["content-type"] == "application/json"
        # CORS answers on the short way as on the long one.
        response = client.post("/v1/predict", json={"records": [{"image": B64}]},
                               headers={"Origin": "https://example.org"})
        assert response.headers["access-control-allow-origin"] == "https://example.org"
        # Counted in the metrics under its route like any request.
        text = client.get("/metrics").text
        assert 'dlforge_requests_total{route="/v1/predict",status="415"}' in text


def test_other_paths_methods_and_telemetry_take_fastapi(digits_run, digits_predictor, monkeypatch):
    with app_client(digits_run, digits_predictor) as client:
        app = client.app_ref
        shortcut, calls = app.predict_endpoint, []

        async def counted(scope, receive, send):
            calls.append(1)
            await shortcut(scope, receive, send)

        app.predict_endpoint = counted
        assert client.get("/v1/predict").status_code == 405
        assert client.post("/v1/predict/", json={"records": [{"image": B64}]},
                           follow_redirects=False).status_code == 307  # FastAPI's redirect, as before
        monkeypatch.setattr(app, "telemetry_on", lambda: True)  # OpenTelemetry configured: FastAPI traces it
        assert client.post("/v1/predict", json={"records": [{"image": B64}]}).status_code == 200
        assert calls == []


def test_an_api_key_guards_the_shortcut(digits_run, digits_predictor, tmp_path):
    key = "k" * 32
    (tmp_path / "api.key").write_text(key + "\n")
    (tmp_path / "api.key").chmod(0o600)
    with app_client(digits_run, digits_predictor, api_key_file=str(tmp_path / "api.key")) as client:
        body = {"records": [{"image": B64}]}
        assert client.post("/v1/predict", json=body).status_code == 401
        assert client.post("/v1/predict", json=body, headers={"Authorization": "Bearer " + "x" * 32}).status_code == 401
        assert client.post("/v1/predict", json=body, headers={"Authorization": f"Bearer {key}"}).status_code == 200


def test_an_unexpected_error_is_a_one_line_500(digits_run, digits_predictor, monkeypatch):
    with app_client(digits_run, digits_predictor) as client:
        runtime = client.app_ref.state.serve.runtime
        monkeypatch.setattr(runtime, "run", lambda jobs: 1 / 0)  # a bug: every caller of the batch gets it
        response = client.post("/v1/predict", json={"records": [{"image": B64}]})
        assert response.status_code == 500
        assert response.json() == {"detail": "internal server error (details are in the server log)"}


def read_responses(sock: socket.socket, count: int, seconds: float = 10.0) -> list[bytes]:
    """`count` whole HTTP responses (each with Content-Length) from a socket."""
    data, out, deadline = b"", [], time.monotonic() + seconds
    while len(out) < count:
        assert time.monotonic() < deadline, f"only {len(out)} of {count} responses"
        if b"\r\n\r\n" in data:
            head, rest = data.split(b"\r\n\r\n", 1)
            length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length:")))
            if len(rest) >= length:
                out.append(head + b"\r\n\r\n" + rest[:length])
                data = rest[length:]
                continue
        chunk = sock.recv(65536)
        assert chunk, "the server closed the connection"
        data += chunk
    return out


def request(body: bytes) -> bytes:
    return (b"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body)) + body


@pytest.mark.parametrize("pipelined", [False, True])
def test_kept_alive_connections_outlive_the_head_and_body_deadlines(digits_run, digits_predictor, pipelined):
    """Requests one after another on one connection for longer than the head and body timeouts: each deadline
    counts from its own request, so none is cut (the deadlines share one timer that moves with them)."""
    body = json.dumps({"records": [{"image": B64}]}).encode()
    with live_server(digits_run, digits_predictor, header_timeout_s=0.4, body_timeout_s=0.4, keep_alive_s=5) as url:
        host, port = url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=5) as sock:
            started = time.monotonic()
            answered = []
            while time.monotonic() - started < 1.5:
                if pipelined:  # two requests in one write: both answered, in order, each head and body together
                    sock.sendall(request(body) + request(b'{"records": []}'))
                    answered += read_responses(sock, 2)
                else:
                    sock.sendall(request(body))
                    answered += read_responses(sock, 1)
                time.sleep(0.15)
        statuses = [int(r[9:12]) for r in answered]
        assert len(statuses) >= 6
        assert statuses == ([200, 422] * (len(statuses) // 2) if pipelined else [200] * len(statuses))
        for response in answered:
            assert b"x-frame-options: DENY" in response and json.loads(response.split(b"\r\n\r\n", 1)[1])


def test_an_image_column_of_bytes_encodes_as_the_same_files(digits_predictor, tmp_path):
    """Plain PNGs of the model's size are copied in directly; other sizes and modes are converted and resized as
    files are: the batch's tensor is the same either way."""
    import io

    from PIL import Image

    images = [RNG.integers(0, 256, (8, 8), dtype=np.uint8), RNG.integers(0, 256, (8, 8, 3), dtype=np.uint8),
              RNG.integers(0, 256, (13, 9), dtype=np.uint8), RNG.integers(0, 256, (8, 8, 4), dtype=np.uint8)]
    blobs, paths = [], []
    for i, image in enumerate(images):
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="PNG" if i != 2 else "BMP")
        blobs.append(buffer.getvalue())
        paths.append(str(tmp_path / f"{i}.img"))
        (tmp_path / f"{i}.img").write_bytes(buffer.getvalue())
    feature = digits_predictor.inputs["image"]
    as_bytes, as_files = np.empty(len(blobs), dtype=object), np.empty(len(paths), dtype=object)
    as_bytes[:], as_files[:] = blobs, paths
    np.testing.assert_array_equal(feature.transform(as_bytes).numpy(), feature.transform(as_files).numpy())
