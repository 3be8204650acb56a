"""The protocol's fast route for POST /v1/predict (serve/fast_route.py) answers with the same bytes as the usual way
(uvicorn's request cycle and the app's middlewares), for valid and invalid requests, and leaves to the usual way what
it does not take."""

from __future__ import annotations

import base64
import json
import re
import socket
import time

import numpy as np
import pytest

from .conftest import live_server, png_bytes
from .test_serve_fast_path import read_responses

RNG = np.random.default_rng(5)
IMAGE = RNG.integers(0, 256, size=(8, 8)).astype(np.uint8)
B64 = base64.b64encode(png_bytes(IMAGE)).decode()
BIG = base64.b64encode(png_bytes(np.zeros((40, 40), dtype=np.uint8))).decode()  # over max_pixels=1000 below
_png = bytearray(png_bytes(IMAGE))
_png[45:55] = b"\x00" * 10  # inside the pixel data: the header check passes, decoding in the batch fails
DAMAGED = base64.b64encode(bytes(_png)).decode()
VARYING = re.compile(rb"\r\n(date|server-timing): [^\r]*")  # the clock and timings differ between two answers


def post(body: bytes, content_type: bytes = b"application/json", extra: bytes = b"") -> bytes:
    return (b"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: %s\r\nContent-Length: %d\r\n%s\r\n"
            % (content_type, len(body), extra)) + body


def js(value) -> bytes:
    return json.dumps(value).encode()


REQUESTS = [
    post(js({"records": [{"image": B64}], "top_k": 2})),
    post(js({"records": [{"image": B64}, {"image": IMAGE.tolist()}]})),
    post(js({"records": [{"image": B64}]}), b"application/json; charset=utf-8"),
    post(js({"records": [{"image": B64}], "top_k": 1.0})),
    post(js({"records": [{"image": "not base64 at all"}]})),                  # 422 naming the field
    post(js({"records": [{"image": base64.b64encode(b"garbage").decode()}]})),  # 422: not an image
    post(js({"records": []})),                                                # 422, request level
    post(js({"records": [{"image": B64}], "extra": 1})),                      # 422, unknown key
    post(js({"records": [{"image": B64}], "top_k": 99})),                     # 422, top_k too big
    post(b"{not json"),                                                       # 422
    post(b""),                                                                # 422, empty body
    post(js({"records": [{"image": BIG}]})),                                  # 413: too many pixels
    post(js({"records": [{"image": DAMAGED}]})),                              # 422 from the batch
    post(b"x", b"text/plain"),                                                # 415 (the usual way either way)
    post(js({"records": [{"image": B64}]}), b"application/json", b"Content-Type: text/plain\r\n"),  # twice: 415
    post(js({"records": [{"image": B64}]}), b"application/json", b"X-Forwarded-For: 10.0.0.1\r\n"),
]


def exchange(url: str, requests: list[bytes]) -> list[bytes]:
    """Each request on one kept-alive connection, its whole answer with the varying headers blanked."""
    host, port = url.removeprefix("http://").split(":")
    out = []
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        for raw in requests:
            sock.sendall(raw)
            out.append(VARYING.sub(rb"\r\n\1: -", read_responses(sock, 1)[0]))
    return out


def counting(route):
    """Wraps the route's `accepts` so the test sees which requests it took; returns the list of decisions."""
    decisions, accepts = [], route.accepts

    def counted(headers):
        decisions.append(accepts(headers))
        return decisions[-1]

    route.accepts = counted
    return decisions


def metrics_lines(url: str) -> list[str]:
    import httpx

    text = httpx.get(url + "/metrics").text
    return sorted(line for line in text.splitlines() if line.startswith(("dlforge_requests_total{route=\"/v1/predict\"",
                                                                          "dlforge_rejected_total")))


def test_the_fast_route_answers_as_the_usual_way(digits_run, digits_predictor):
    with live_server(digits_run, digits_predictor, max_pixels=1000) as url:
        route = url.app.state.fast_route
        decisions = counting(route)
        fast = exchange(url, REQUESTS)
        taken = list(decisions)
        counts_fast = metrics_lines(url)
        route.accepts = lambda headers: False
        usual = exchange(url, REQUESTS)
        counts_both = metrics_lines(url)
    statuses = [int(answer[9:12]) for answer in fast]
    assert statuses == [200, 200, 200, 200, 422, 422, 422, 422, 422, 422, 422, 413, 422, 415, 415, 200]
    # Every JSON request went the fast way; the one with two Content-Type headers and the text/plain one did not.
    assert taken == [True] * 13 + [False, False, True]
    for got, expected in zip(fast, usual):
        assert got == expected
    assert b"x-frame-options: DENY" in fast[0] and b"date: -" in fast[0] and b"server-timing: -" in fast[0]
    assert fast[1].split(b"\r\n", 1)[0] == b"HTTP/1.1 200 OK"
    # Counted the same: every count doubled once both ways had run (rejections too: the 413's image_too_large).
    doubled = [re.sub(r" (\d+)\.0$", lambda m: f" {2 * int(m.group(1))}.0", line) for line in counts_fast]
    assert counts_both == doubled
    assert any('image_too_large' in line for line in counts_both)


def test_what_the_fast_route_leaves_to_the_usual_way(digits_run, digits_predictor, tmp_path):
    key = "k" * 32
    (tmp_path / "api.key").write_text(key + "\n")
    (tmp_path / "api.key").chmod(0o600)
    body = js({"records": [{"image": B64}]})
    with live_server(digits_run, digits_predictor, api_key_file=str(tmp_path / "api.key")) as url:
        route = url.app.state.fast_route
        decisions = counting(route)
        answers = exchange(url, [
            post(body),                                                        # no key: 401 the usual way
            post(body, extra=b"Authorization: Bearer " + b"x" * 32 + b"\r\n"),  # wrong key: 401
            post(body, extra=f"Authorization: Bearer {key}\r\n".encode()),      # fast
            post(body, extra=f"Authorization: Bearer {key}\r\nContent-Encoding: identity\r\n".encode()),
        ])
        assert [int(a[9:12]) for a in answers] == [401, 401, 200, 200]
        assert decisions == [False, False, True, False]
        assert b"www-authenticate" in answers[0]
    with live_server(digits_run, digits_predictor, cors_origins=["https://example.org"]) as url:
        assert url.app.state.fast_route is None  # with CORS on every answer carries Vary: Origin


def test_a_body_in_several_reads_and_a_closing_client(digits_run, digits_predictor):
    """A body that arrives after its head goes through uvicorn's cycle; `Connection: close` too (its answer closes)."""
    body = js({"records": [{"image": B64}]})
    raw = post(body)
    head, rest = raw[:raw.index(b"\r\n\r\n") + 4], raw[raw.index(b"\r\n\r\n") + 4:]
    with live_server(digits_run, digits_predictor) as url:
        decisions = counting(url.app.state.fast_route)
        host, port = url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(head)
            time.sleep(0.2)
            sock.sendall(rest)
            split = read_responses(sock, 1)[0]
            sock.sendall(raw)  # and the next one, whole, goes the fast way on the same connection
            whole = read_responses(sock, 1)[0]
        assert decisions == [True, True]  # both accepted from their heads; the first then handed to the cycle
        assert VARYING.sub(b"", split) == VARYING.sub(b"", whole)
        assert url.app.state.metrics.requests.labels("/v1/predict", "200")._value.get() == 2
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(post(body, extra=b"Connection: close\r\n"))
            closing = read_responses(sock, 1)[0]
            assert sock.recv(10) == b""  # closed by the server
        assert b"connection: close" in closing and closing.startswith(b"HTTP/1.1 200")


@pytest.mark.parametrize("fast", [True, False])
def test_an_unexpected_error_is_the_apps_500_and_closes(digits_run, digits_predictor, monkeypatch, fast, caplog):
    with live_server(digits_run, digits_predictor) as url:
        if not fast:
            url.app.state.fast_route.accepts = lambda headers: False
        monkeypatch.setattr(url.app.state.serve.runtime, "run", lambda jobs: 1 / 0)
        host, port = url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(post(js({"records": [{"image": B64}]})))
            answer = VARYING.sub(b"", read_responses(sock, 1)[0])
            assert sock.recv(10) == b""  # closed after the answer, as uvicorn does after an exception
    assert answer == (b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 66\r\ncontent-type: application/json"
                      b"\r\n\r\n" + js({"detail": "internal server error (details are in the server log)"})
                      .replace(b": ", b":"))
    assert "unhandled error on POST /v1/predict" in caplog.text and "Exception in ASGI application" in caplog.text


def test_a_loading_model_and_a_full_queue_answer_as_the_usual_way(digits_run, digits_predictor, monkeypatch):
    from dlforge.serve.batcher import QueueFull

    body = post(js({"records": [{"image": B64}]}))
    with live_server(digits_run, digits_predictor) as url:
        state = url.app.state
        monkeypatch.setattr(state.serve, "status", "loading")
        loading_fast = exchange(url, [body])
        monkeypatch.setattr(state.serve, "status", "ready")

        def full(*args, **kwargs):
            raise QueueFull()

        monkeypatch.setattr(state.batcher, "_enqueue", full)  # under both submit (the usual way) and enqueue
        full_fast = exchange(url, [body])
        state.fast_route.accepts = lambda headers: False
        full_usual = exchange(url, [body])
        monkeypatch.setattr(state.serve, "status", "loading")
        loading_usual = exchange(url, [body])
    assert loading_fast == loading_usual and b"503" in loading_fast[0][:12] and b"retry-after: 1" in loading_fast[0]
    assert full_fast == full_usual and b"server busy" in full_fast[0]


def test_a_request_past_the_timeout_gets_504_both_ways(digits_run, digits_predictor, monkeypatch):
    body = post(js({"records": [{"image": B64}]}))
    with live_server(digits_run, digits_predictor, timeout_s=0.2, inline_ms=0) as url:
        runtime = url.app.state.serve.runtime
        run = runtime.run
        monkeypatch.setattr(runtime, "run", lambda jobs: time.sleep(0.4) or run(jobs))
        fast = exchange(url, [body])
        url.app.state.fast_route.accepts = lambda headers: False
        usual = exchange(url, [body])
    assert fast == usual and fast[0].startswith(b"HTTP/1.1 504") and b"no answer within 0.2 s" in fast[0]
