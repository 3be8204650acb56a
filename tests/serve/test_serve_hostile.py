"""Hostile clients against a live server on 127.0.0.1, over raw sockets, with short limits so each test takes seconds.

A client that leaves mid-body is a quiet 499, never a 500 with tracebacks; slow heads, slow bodies and
idle connections are closed within their timeouts; huge heads get 431; pixel bombs get 413; requests
beyond the concurrency limit get 503 while the probes still answer. Every refusal is in the metrics.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import re
import socket
import struct
import time
import zlib

import httpx
import pytest

from .conftest import app_client, live_server

IMAGE = [[0] * 8] * 8


def connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=5)


def head(path: str = "/v1/predict", length: int | None = None, extra: bytes = b"") -> bytes:
    lines = [f"POST {path} HTTP/1.1".encode(), b"Host: 127.0.0.1", b"Content-Type: application/json"]
    if length is not None:
        lines.append(b"Content-Length: %d" % length)
    return b"\r\n".join(lines) + b"\r\n" + extra + b"\r\n"


def read_until_closed(sock: socket.socket, seconds: float) -> tuple[bool, bytes]:
    """(whether the server closed the connection within `seconds`, what it sent before)."""
    sock.settimeout(0.05)
    data, deadline = b"", time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            continue
        except ConnectionResetError:
            return True, data
        if not chunk:
            return True, data
        data += chunk
    return False, data


def metric(url: str, name: str, **labels) -> float:
    """One sample of /metrics (0 when absent)."""
    wanted = ",".join(f'{k}="{v}"' for k, v in labels.items())
    text = httpx.get(url + "/metrics", timeout=10).text
    line = next((ln for ln in text.splitlines() if ln.startswith(f"{name}{{{wanted}}}" if labels else name + " ")), None)
    return float(line.split()[-1]) if line else 0.0


def png_header_only(width: int, height: int) -> bytes:
    """A tiny valid PNG declaring width x height pixels: a decompression (pixel) bomb of a few dozen bytes."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


class Collect(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record):
        self.records.append(record)


@pytest.fixture
def server_log():
    """Every record of uvicorn's and dlforge's loggers (uvicorn's own logging config may stop them at 'uvicorn')."""
    collect = Collect()
    loggers = [logging.getLogger(name) for name in ("uvicorn", "")]
    for logger in loggers:
        logger.addHandler(collect)
    yield collect.records
    for logger in loggers:
        logger.removeHandler(collect)


def test_disconnect_mid_body_is_a_quiet_499(digits_run, digits_predictor, server_log):
    with live_server(digits_run, digits_predictor) as url:
        for _ in range(3):
            sock = connect(url)
            sock.sendall(head(length=1000) + b'{"records": [')  # 13 of 1000 bytes, then gone
            time.sleep(0.1)
            sock.close()
        deadline = time.monotonic() + 10
        while metric(url, "dlforge_requests_total", route="/v1/predict", status="499") < 3:
            assert time.monotonic() < deadline, "the disconnects were not counted as 499"
            time.sleep(0.05)
        assert metric(url, "dlforge_requests_total", route="/v1/predict", status="500") == 0
        assert httpx.post(url + "/v1/predict", json={"records": [{"image": IMAGE}]}).status_code == 200
    loud = [r for r in server_log if r.levelno >= logging.WARNING or r.exc_info]
    assert not loud, [r.getMessage() for r in loud]


@pytest.mark.parametrize("count", [30])
def test_slow_heads_bodies_and_idle_connections_are_closed_in_time(digits_run, digits_predictor, count):
    limits = dict(header_timeout_s=1.0, body_timeout_s=1.0, keep_alive_s=1.0)
    with live_server(digits_run, digits_predictor, **limits) as url:
        started = time.monotonic()
        idle = [connect(url) for _ in range(count)]                          # connect, never send a byte
        slow_head = [connect(url) for _ in range(count)]                     # a head that never ends
        for sock in slow_head:
            sock.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\n")
        slow_body = [connect(url) for _ in range(count)]                     # a body that never ends
        for sock in slow_body:
            sock.sendall(head(length=1000) + b'{"records": [')
        dribble = connect(url)                                               # slowloris: a byte at a time
        kept = connect(url)                                                  # one request, then blank lines
        kept.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        # The server still answers while all of these hang.
        assert httpx.post(url + "/v1/predict", json={"records": [{"image": IMAGE}]}).status_code == 200
        for byte in b"GET /healthz HTTP/1.1\r\nX-Slow: " + b"a" * 8:  # 1.9 s: each byte in time, the head not
            for sock, data in ((dribble, bytes([byte])), (kept, b"\r\n")):
                try:
                    sock.sendall(data)
                except OSError:
                    pass  # cut off (the point)
            time.sleep(0.06)
        closed_dribble, dribbled = read_until_closed(dribble, 1.0)
        closed_kept, kept_data = read_until_closed(kept, 1.0)

        results = {name: [read_until_closed(s, 3.0) for s in socks]
                   for name, socks in (("idle", idle), ("head", slow_head), ("body", slow_body))}
        elapsed = time.monotonic() - started
        for name, outcome in results.items():
            assert all(closed for closed, _ in outcome), f"{name}: {sum(not c for c, _ in outcome)} still open"
        assert all(data == b"" for _, data in results["idle"])  # an unused connection is closed without a word
        assert all(data.startswith(b"HTTP/1.1 408") for _, data in results["head"])
        assert all(data.startswith(b"HTTP/1.1 408") and b"--body-timeout" in data for _, data in results["body"])
        assert closed_dribble and dribbled.startswith(b"HTTP/1.1 408")
        assert closed_kept and kept_data.startswith(b"HTTP/1.1 200") and b"HTTP/1.1 408" in kept_data
        assert elapsed < 8, f"{3 * count + 2} hostile connections took {elapsed:.1f} s to close"

        # A kept-alive connection that goes idle after its answer is closed after --keep-alive.
        sock = connect(url)
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        closed, data = read_until_closed(sock, 3.0)
        assert closed and data.startswith(b"HTTP/1.1 200")

        assert metric(url, "dlforge_rejected_total", reason="header_timeout") == count + 2
        assert metric(url, "dlforge_rejected_total", reason="body_timeout") == count
        assert metric(url, "dlforge_rejected_total", reason="idle_connection") == count
        assert metric(url, "dlforge_requests_total", route="/v1/predict", status="408") == count
        assert metric(url, "dlforge_requests_total", route="/v1/predict", status="500") == 0


def test_huge_request_heads_get_431(digits_run, digits_predictor):
    with live_server(digits_run, digits_predictor, max_header_kb=4) as url:
        def status_of(payload: bytes, pieces: int = 1) -> bytes:
            sock = connect(url)
            step = len(payload) // pieces + 1
            try:
                for i in range(0, len(payload), step):
                    sock.sendall(payload[i:i + step])
            except (BrokenPipeError, ConnectionResetError):
                pass  # refused before it was all sent: what it answered is below
            closed, data = read_until_closed(sock, 5.0)
            sock.close()
            return data.split(b"\r\n", 1)[0]

        big = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 1_000_000 + b"\r\n\r\n"
        assert status_of(big) in (b"HTTP/1.1 431 Request Header Fields Too Large", b"")  # 431, or closed
        assert status_of(big[:20_000], pieces=40) == b"HTTP/1.1 431 Request Header Fields Too Large"  # still arriving
        many = b"GET /healthz HTTP/1.1\r\n" + b"".join(b"X-%d: %s\r\n" % (i, b"v" * 50) for i in range(100)) + b"\r\n"
        assert status_of(many) == b"HTTP/1.1 431 Request Header Fields Too Large"  # complete in one piece
        fine = b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Ok: " + b"a" * 2000 + b"\r\n\r\n"
        assert status_of(fine) == b"HTTP/1.1 200 OK"
        assert metric(url, "dlforge_rejected_total", reason="header_too_large") >= 3
        detail = httpx.get(url + "/healthz", headers={"X-Big": "a" * 5000}).json()["detail"]
        assert "4,096 bytes" in detail and "--max-header-kb" in detail


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_pixel_bombs_get_413(digits_run, digits_predictor):
    with app_client(digits_run, digits_predictor) as client:
        # 2.5e9 pixels (Pillow refuses it at open), 1e8 (Pillow only warns), 2e7 (just over --max-pixels)
        for side, pixels in ((50_000, "2,500,000,000"), (10_000, "100,000,000"), (5_000, "25,000,000")):
            bomb = png_header_only(side, side)
            assert len(bomb) < 100
            sent = client.post("/v1/predict", json={"records": [{"image": base64.b64encode(bomb).decode()}]})
            assert sent.status_code == 413, sent.text
            assert f"{pixels} pixels" in sent.json()["detail"] and "--max-pixels" in sent.json()["detail"]
            uploaded = client.post("/v1/predict", files={"image": ("bomb.png", bomb, "image/png")})
            assert uploaded.status_code == 413, uploaded.text
        assert 'dlforge_rejected_total{reason="image_too_large"} 6.0' in client.get("/metrics").text


def test_a_png_with_an_intact_header_and_garbage_pixels_gets_422_alone(digits_run, digits_predictor):
    """The pixel limit reads a PNG's IHDR only (serve/security.png_pixels); pixels that do not decode are refused by
    the batch's encode, for that request alone."""
    broken = png_header_only(8, 8)[:33] + b"\0\0\0\x05IDATjunk!\0\0\0\0"
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("L", (8, 8)).save(buffer, format="PNG")
    good = base64.b64encode(buffer.getvalue()).decode()
    with app_client(digits_run, digits_predictor) as client:
        sent = client.post("/v1/predict", json={"records": [{"image": base64.b64encode(broken).decode()}]})
        assert sent.status_code == 422, sent.text
        assert "cannot decode image" in sent.json()["detail"]
        assert client.post("/v1/predict", json={"records": [{"image": good}]}).status_code == 200


def test_beyond_the_concurrency_limit_requests_get_503_but_probes_answer(digits_run, digits_predictor):
    with live_server(digits_run, digits_predictor, limit_concurrency=8, header_timeout_s=30) as url:
        held = [connect(url) for _ in range(8)]
        time.sleep(0.2)
        busy = httpx.post(url + "/v1/predict", json={"records": [{"image": IMAGE}]})
        assert busy.status_code == 503 and busy.headers["retry-after"] == "1"
        assert "--limit-concurrency" in busy.json()["detail"]
        assert httpx.get(url + "/healthz").status_code == 200 and httpx.get(url + "/readyz").status_code == 200
        for sock in held:
            sock.close()
        deadline = time.monotonic() + 5
        while (response := httpx.post(url + "/v1/predict", json={"records": [{"image": IMAGE}]})).status_code == 503:
            assert time.monotonic() < deadline, "the server did not recover once the connections closed"
            time.sleep(0.05)
        assert response.status_code == 200
        assert metric(url, "dlforge_rejected_total", reason="concurrency_limit") >= 1


def test_connection_limits_are_flags_of_dlforge_serve():
    from typer.testing import CliRunner

    from dlforge.cli.app import app

    text = re.sub(r"\x1b\[[0-9;]*m", "", CliRunner().invoke(app, ["serve", "--help"], env={"COLUMNS": "200"}).output)
    for flag in ("--header-timeout", "--body-timeout", "--keep-alive", "--max-header-kb", "--limit-concurrency"):
        assert flag in text
    from dlforge.serve import ServeConfig
    from dlforge.serve.server import uvicorn_config

    config = uvicorn_config(ServeConfig(run_dir="x", header_timeout_s=2, body_timeout_s=3, keep_alive_s=4,
                                        max_header_kb=8, limit_concurrency=9))
    assert (config.limit_concurrency, config.timeout_keep_alive, config.h11_max_incomplete_event_size) == (9, 4, 8192)
    assert json.loads(json.dumps(config.dlforge_limits.__dict__)) == {
        "header_timeout_s": 2, "body_timeout_s": 3, "max_header_bytes": 8192}


def test_compressed_bodies_are_inflated_within_the_body_limit(digits_run, digits_predictor):
    import gzip

    with app_client(digits_run, digits_predictor, max_body_mb=0.01) as client:  # 10,485 bytes
        body = json.dumps({"records": [{"image": IMAGE}]}).encode()
        for encoding, data in (("gzip", gzip.compress(body)), ("deflate", zlib.compress(body))):
            ok = client.post("/v1/predict", content=data, headers={"content-type": "application/json",
                                                                   "content-encoding": encoding})
            assert ok.status_code == 200 and len(ok.json()["predictions"]) == 1
        # A decompression bomb: 10 kB on the wire (under the limit), ~10 MB once inflated; refused after
        # 10,486 bytes of output.
        bomb = zlib.compressobj(9, zlib.DEFLATED, 31)
        wire = bomb.compress(b'{"records": [') + b"".join(bomb.compress(b" " * (1 << 20)) for _ in range(16))
        wire += bomb.flush()
        assert len(wire) > 10_000
        started = time.monotonic()
        refused = client.post("/v1/predict", content=wire[:10_000], headers={
            "content-type": "application/json", "content-encoding": "gzip"})
        assert refused.status_code == 413 and "10,485 bytes" in refused.json()["detail"]
        assert time.monotonic() - started < 5
        bad = client.post("/v1/predict", content=b"not gzip at all", headers={
            "content-type": "application/json", "content-encoding": "gzip"})
        assert bad.status_code == 400 and "not valid gzip" in bad.json()["detail"]
        unknown = client.post("/v1/predict", content=body, headers={
            "content-type": "application/json", "content-encoding": "br"})
        assert unknown.status_code == 415 and "'br'" in unknown.json()["detail"]
        assert 'dlforge_rejected_total{reason="body_too_large"} 1.0' in client.get("/metrics").text
