"""POST /v1/predict answered by the HTTP protocol itself, without uvicorn's request cycle or the ASGI middlewares,
with the same bytes as the usual way.

A request through the usual way pays for layers that, for a valid JSON predict request, change nothing: uvicorn's
request cycle (the scope, an asyncio.Event, receive and send messages, two regular expressions per response header),
then the app's middlewares, each wrapping `send` in a new closure. On the 2-core AMD EPYC (AVX2) they took about a
third of the server's CPU per MNIST request (benchmarks/compress.md, round 11). `PredictRoute` is the one route the
protocol (protocol.py, `FastRoute`) may answer itself. It takes a request only when its head shows that every
middleware would let it through untouched and that the endpoint reads it as JSON, then runs the endpoint's own
`run_predict` (its pieces, without a task: `start_predict`) and adds what the middlewares would have added:

- ContentLengthLimit: the declared length is a number within the limit (else the usual way answers 400 or 413);
- ApiKeyAuth: the bearer token is one of the server's keys, compared as there (else the usual way answers 401);
- CORS: off (with CORS on, every answer carries `Vary: Origin`: the usual way);
- SecurityHeaders: the same four headers, appended to every answer but the 500 (as there: ServerErrorMiddleware
  sends its answer around them);
- MetricsMiddleware: the request counted under its route and status, and timed;
- ServerErrorMiddleware: an unexpected error gets the app's 500 and the connection is closed, logged as there.

Anything else takes the usual way: a Content-Encoding or Transfer-Encoding, another content type (multipart), a
header the endpoint reads given twice, FastAPI's OpenTelemetry on, a root path, or middleware added to the app
after `create_app`. tests/serve/test_serve_fast_route.py sends the same requests both ways and compares the bytes.
"""

from __future__ import annotations

import logging
import time
from typing import Callable

from dlforge.serve.protocol import header_lines
from dlforge.serve.security import SECURITY_HEADERS, key_allowed

Headers = list[tuple[bytes, bytes]]
Respond = Callable[[int, bytes, bytes, bool], None]
ROUTE = "/v1/predict"
_SECURITY = header_lines(SECURITY_HEADERS)
_OK_TAIL = b"content-type: application/json\r\n" + _SECURITY


class PredictRoute:
    """`accepts(headers)`: the request can skip the usual way; `route(headers, body, respond)`: answers it by calling
    `respond(status, header lines, body, close)` once, now or when its batch is done, with what the usual way writes
    (uvicorn's default headers, the date, come from the protocol)."""

    method = b"POST"
    path = ROUTE.encode()

    def __init__(self, app, *, start_predict: Callable, api_error: Callable, api_error_type: type,
                 unexpected: Callable, metrics, max_body_bytes: int, keys: list[bytes]):
        self.app = app
        self.start_predict = start_predict
        self.api_error, self.api_error_type, self.unexpected = api_error, api_error_type, unexpected
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes
        self.keys = keys
        self.middleware = list(app.user_middleware)  # create_app's: anything added later must run, so it goes the usual way

    def accepts(self, headers: Headers) -> bool:
        length = ctype = auth = None
        for name, value in headers:
            if name == b"content-length":
                if length is not None:
                    return False
                length = value
            elif name == b"content-type":
                if ctype is not None:
                    return False
                ctype = value
            elif name == b"authorization":
                if auth is not None:
                    return False
                auth = value
            elif name == b"content-encoding" or name == b"transfer-encoding":
                return False
        if length is None or ctype is None or not length.strip().isdigit() or int(length) > self.max_body_bytes:
            return False
        if ctype.split(b";", 1)[0].strip().lower() != b"application/json":
            return False
        if self.keys and not key_allowed(auth, self.keys):
            return False
        app = self.app
        return (app.predict_endpoint is not None and not app.root_path and app.user_middleware == self.middleware
                and not app.telemetry_on())

    def __call__(self, headers: Headers, body: bytes, respond: Respond) -> None:
        # No task per request: validation runs now, in the protocol's callback, and the answer is written from the
        # job's future's callback (the usual way runs a task through both).
        started = time.perf_counter()
        try:
            future, finish = self.start_predict(body)
        except Exception as exc:
            self._answer(headers, started, respond, exc)
            return
        future.add_done_callback(lambda done: self._finish(headers, started, respond, finish, done))

    def _finish(self, headers: Headers, started: float, respond: Respond, finish: Callable, done) -> None:
        try:
            payload, timing = finish(done)
        except BaseException as exc:  # (a cancelled future raises CancelledError: nothing cancels these)
            self._answer(headers, started, respond, exc)
            return
        self._answer(headers, started, respond, None, (200, b"server-timing: %s\r\ncontent-length: %d\r\n%s" % (
            timing.encode("latin-1"), len(payload), _OK_TAIL), payload, False))  # predict_asgi's, then SecurityHeaders'

    def _answer(self, headers: Headers, started: float, respond: Respond, exc: BaseException | None,
                answer: tuple | None = None) -> None:
        if isinstance(exc, self.api_error_type):
            response = self.api_error(exc)
            answer = response.status_code, header_lines(response.raw_headers) + _SECURITY, response.body, False
        elif exc is not None:  # what ServerErrorMiddleware (its 500 goes out without SecurityHeaders) and uvicorn do
            response = self.unexpected("POST", ROUTE, exc)
            logging.getLogger("uvicorn.error").error("Exception in ASGI application\n", exc_info=exc)
            answer = response.status_code, header_lines(response.raw_headers), response.body, True
        self.metrics.record_request(ROUTE, answer[0], time.perf_counter() - started)
        respond(*answer)
