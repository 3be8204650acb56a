"""The FastAPI application: predict, model info, probes, metrics and the web page, over one batcher.

`create_app(config)` reads the run directory's signature at once (so the OpenAPI schema is typed per
input), then loads and warms the model in the background: /healthz answers during loading, /readyz
only once a warm model can take traffic. Every error is JSON with a one-line `detail`; stack traces
go to the server log, never to the client.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import math
import re
import sys
import time
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import ValidationError
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from dlforge import __version__
from dlforge.artifact.format import read_model_json
from dlforge.core.errors import DlforgeError
from dlforge.data.features import kind_of
from dlforge.serve.batcher import Batcher, QueueFull, ShuttingDown
from dlforge.serve.config import ServeConfig
from dlforge.serve.fast_route import PredictRoute
from dlforge.serve.metrics import Metrics, MetricsMiddleware
from dlforge.serve.protocol import BODY_TIMEOUT_SCOPE_KEY, CONNECTION_EVENTS, FAST_ROUTE
from dlforge.serve.recommend import add_recommend_route, run_jobs
from dlforge.serve.runtime import DEFAULT_TOP_K, ModelRuntime, Records, weights_version
from dlforge.serve.schema import (ErrorResponse, Failed, PredictResponse, Status, build_request_models, multipart_schema,
                                  validation_problems)
from dlforge.serve.security import (ApiKeyAuth, BadEncoding, BodyTooLarge, ContentLengthLimit, SecurityHeaders,
                                    body_too_large, image_pixels, load_api_keys, read_body, receive_body)

log = logging.getLogger("dlforge.serve")
STATIC = resources.files("dlforge.serve") / "static"
SWITCH_INTERVAL_S = 0.0005
# json.dumps(value) as one reused encoder (json.dumps builds one per call with these settings); predictions hold no
# cycles, so the encoder skips its cycle check. The output is json.dumps's, byte for byte.
_encode_json = json.JSONEncoder(check_circular=False).encode


class ApiError(Exception):
    """An error response: status, one-line detail, optional per-field problems and headers."""

    def __init__(self, status: int, detail: str, *, errors: list | None = None, headers: dict | None = None):
        self.status, self.detail, self.errors, self.headers = status, detail, errors, headers


def _finite(value):
    """metrics.json may hold NaN (an undefined metric); JSON has no NaN, so it becomes null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def _errors(status: int, *names: str) -> dict:
    return {status: {"model": ErrorResponse, "description": ", ".join(names)}}


class State:
    def __init__(self):
        self.status = "loading"  # loading → ready → draining; or failed
        self.runtime: ModelRuntime | None = None
        self.error: str | None = None  # why loading failed, in one line


def load_error(exc: BaseException, run_dir: Path) -> DlforgeError:
    """Any exception from loading as a DlforgeError that says so and names where (no traceback needed)."""
    if isinstance(exc, DlforgeError):  # e.g. ArtifactError: its own where and hint are the most precise
        return DlforgeError(f"the model cannot be loaded: {exc.message}", where=exc.where or str(run_dir),
                            hint=exc.hint)
    first_line = (str(exc).strip().splitlines() or [""])[0]
    return DlforgeError(f"the model cannot be loaded: {type(exc).__name__}: {first_line}", where=str(run_dir),
                        hint="the run directory is damaged or incomplete (model.safetensors, model.json); "
                             "copy it again or retrain")


class ServeApp(FastAPI):
    """FastAPI with a shortcut for POST /v1/predict: `predict_endpoint` (a plain ASGI app) behind the same
    middlewares as every other route (the app's user middleware: metrics, security headers, CORS, API keys, the
    body limit) and the same 500 handler, but without FastAPI's router, dependency solving and exception layers.
    Any other request, and every request while FastAPI's native OpenTelemetry is on (so it still traces them),
    goes through FastAPI as usual."""

    predict_endpoint = None
    PREDICT_PATH = "/v1/predict"

    TELEMETRY_RECHECK_S = 1.0

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._predict_stack = None
        self._telemetry_checked = -math.inf
        self._telemetry_on = False

    def telemetry_on(self) -> bool:
        """FastAPI's native OpenTelemetry is configured. The check reads OpenTelemetry's global providers and their
        environment variables (~2.5 us), so it is made once a second: a provider set while serving is seen within
        a second."""
        now = time.monotonic()
        if now - self._telemetry_checked >= self.TELEMETRY_RECHECK_S:
            self._telemetry_on, self._telemetry_checked = self._native_telemetry.enabled(), now
        return self._telemetry_on

    def build_predict_stack(self):
        from starlette.middleware.errors import ServerErrorMiddleware

        stack = self.predict_endpoint
        for cls, args, kwargs in reversed(self.user_middleware):
            stack = cls(stack, *args, **kwargs)
        handler = self.exception_handlers.get(500) or self.exception_handlers.get(Exception)
        return ServerErrorMiddleware(stack, handler=handler, debug=self.debug)

    async def __call__(self, scope, receive, send) -> None:
        if (scope["type"] == "http" and scope["path"] == self.PREDICT_PATH and scope["method"] == "POST"
                and self.predict_endpoint is not None and not self.root_path and not scope.get("root_path")
                and not self.telemetry_on()):
            if self._predict_stack is None:
                if self.middleware_stack is None:  # built together: add_middleware is refused from here on
                    self.middleware_stack = self.build_middleware_stack()
                self._predict_stack = self.build_predict_stack()
            scope["app"] = self
            await self._predict_stack(scope, receive, send)
            return
        await super().__call__(scope, receive, send)


def create_app(config: ServeConfig, *, predictor=None, on_fatal=None) -> FastAPI:
    """The app for `config.run_dir`; `predictor` (already loaded) skips loading, as in tests.

    If the model cannot be loaded, /healthz and /readyz answer 503 "failed" and `on_fatal(error)` is
    called (`dlforge serve` then stops the server and exits with the error); without `on_fatal` the
    error is logged in one line.
    """
    run_dir = Path(config.run_dir)
    meta = read_model_json(run_dir)
    signature = meta["signature"]
    version = weights_version(run_dir)
    _, request_model = build_request_models(signature, max_records=config.max_records)
    input_names = list(signature["inputs"])
    input_fields = [f"input_{i}" for i in range(len(input_names))]  # the Record model's field of each input
    file_checks = [(i, name) for i, (name, sig) in enumerate(signature["inputs"].items()) if kind_of(sig).file_input]
    first_output = next(iter(signature["outputs"]))
    metrics = Metrics()
    state = State()
    batcher = Batcher(lambda jobs: state.runtime.run(jobs), max_batch=config.max_batch,
                      max_wait_ms=config.max_wait_ms, max_queue=config.max_queue, inline_ms=config.inline_ms,
                      on_batch=metrics.observe_batch, on_depth=metrics.queue_depth.set)
    # /v1/recommend's own batcher (serve/recommend.py): its batches are users scored against every item.
    recommend_batcher = Batcher(lambda jobs: run_jobs(state.runtime.predictor.recommender, jobs),
                                max_batch=config.max_batch, max_wait_ms=config.max_wait_ms, max_queue=config.max_queue,
                                inline_ms=config.inline_ms)
    keys = load_api_keys(config.api_key_file) if config.api_key_file else []

    def load_predictor():
        """The Predictor on the chosen runtime. Left to choose (no --runtime), the server prefers onnx when the run
        has model.onnx; if that file cannot be loaded it says why in the log and serves on torch instead. An
        explicit --runtime onnx that cannot load is fatal like any other load failure."""
        from dlforge.artifact.predictor import Predictor
        from dlforge.artifact.runtimes import default_runtime

        if predictor is not None:
            return predictor
        threads = config.torch_threads()
        chosen = config.runtime or default_runtime(run_dir, prefer_onnx=True)
        try:
            return Predictor(run_dir, runtime=chosen, threads=threads)
        except DlforgeError as exc:
            if config.runtime is not None or chosen == "torch":
                raise
            log.warning("the onnx runtime cannot load (%s); serving on torch", exc.message)
            return Predictor(run_dir, runtime="torch", threads=threads)

    def load_model() -> ModelRuntime:
        runtime = ModelRuntime(load_predictor(), threads=config.torch_threads())
        runtime.warm_up()
        described = runtime.predictor.runtime
        model_info["serving"]["runtime"] = {"name": described.name, **getattr(described, "settings", {
            "torch_threads": config.torch_threads()})}
        log.info("runtime %s: %s", described.name, model_info["serving"]["runtime"])
        return runtime

    @asynccontextmanager
    async def lifespan(app):
        # The event loop and the inference thread share the GIL. With Python's default 5 ms switch
        # interval the loop waits up to 5 ms whenever inference runs Python code; 0.5 ms doubled the
        # batched throughput of the MNIST CNN at concurrency 32 here (benchmarks/serve.md).
        sys.setswitchinterval(SWITCH_INTERVAL_S)
        batcher.start()
        recommend_batcher.start()

        async def load():
            try:
                state.runtime = await asyncio.to_thread(load_model)
                # A full garbage collection walks every object: with torch, pandas and the app loaded
                # that took ~400 ms here, every few thousand requests (the p99 latency). Objects that
                # exist now live as long as the server, so move them out of the collector's sight.
                gc.collect()
                gc.freeze()
                state.status = "ready"
                log.info("model %s (version %s) ready", meta["name"], version)
            except Exception as exc:  # any failure to load is fatal: a server without a model must not look alive
                error = load_error(exc, run_dir)
                state.status, state.error = "failed", error.render().splitlines()[0]
                if not isinstance(exc, DlforgeError):
                    log.debug("loading the model from %s failed", run_dir, exc_info=exc)
                if on_fatal is not None:
                    on_fatal(error)
                else:
                    log.error("%s", state.error)

        loading = asyncio.create_task(load())
        # The lifespan state reaches the HTTP protocol (protocol.py), which reports refused connections here and
        # answers POST /v1/predict through the fast route when it may (fast_route.py; not with CORS on).
        yield {CONNECTION_EVENTS: lambda reason: metrics.rejected.labels(reason).inc(),
               **({} if app.state.fast_route is None else {FAST_ROUTE: app.state.fast_route})}
        state.status = "draining"
        await batcher.close(config.drain_s)
        await recommend_batcher.close(config.drain_s)
        loading.cancel()

    app = ServeApp(title=f"dlforge: {meta['name']}", version=version, lifespan=lifespan, docs_url=None,
                  redoc_url=None, description=f"Predictions from the dlforge model '{meta['name']}'. "
                  "POST records to /v1/predict; GET /v1/model describes the inputs.")
    app.state.batcher, app.state.metrics, app.state.serve = batcher, metrics, state

    # -- errors: JSON, one line, never a traceback ---------------------------------------------
    @app.exception_handler(ApiError)
    async def _api_error(request, exc: ApiError):
        return api_error_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request, exc):
        return JSONResponse({"detail": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request, exc):
        problems = [{"field": ".".join(map(str, e["loc"])), "message": e["msg"]} for e in exc.errors()]
        return JSONResponse({"detail": f"{problems[0]['field']}: {problems[0]['message']}" if problems
                             else "invalid request", "errors": problems}, status_code=422)

    @app.exception_handler(ClientDisconnect)
    async def _client_gone(request, exc):
        # The client left before sending its whole body (or the server cut a too-slow body off): nobody
        # reads this answer, it only labels the request in the metrics (499 as nginx says; 408 for a timeout).
        if request.scope.get(BODY_TIMEOUT_SCOPE_KEY):
            return Response(status_code=408)
        log.debug("client disconnected during %s %s", request.method, request.url.path)
        return Response(status_code=499)

    @app.exception_handler(Exception)
    async def _unexpected(request, exc):
        return unexpected_response(request.method, request.url.path, exc)

    # -- probes, metrics, model info ----------------------------------------------------------------
    @app.get("/healthz", response_model=Status, tags=["probes"], responses={503: {"model": Failed}},
             summary="Liveness: the process answers and its model did not fail to load.")
    async def healthz():
        if state.status == "failed":  # the model cannot load: restart (or stop) this process
            return JSONResponse({"status": "failed", "detail": state.error}, status_code=503)
        return {"status": "ok"}

    @app.get("/readyz", response_model=Status, tags=["probes"], responses={503: {"model": Status}},
             summary="Readiness: the model is loaded and warmed up.")
    async def readyz():
        if state.status == "ready":
            return {"status": "ready"}
        return JSONResponse({"status": state.status}, status_code=503, headers={"Retry-After": "1"})

    @app.get("/metrics", tags=["probes"], summary="Prometheus metrics.",
             responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}, **_errors(401, "no key")})
    async def prometheus():
        body, content_type = metrics.exposition()
        return Response(body, media_type=content_type)

    model_info = {
        "name": meta["name"], "version": version, "created": meta.get("created"),
        "dlforge_version": meta.get("dlforge_version"), "format_version": meta.get("format_version"),
        "inputs": signature["inputs"], "outputs": signature["outputs"],
        "metrics": _finite(_read_metrics(run_dir)),
        "serving": {"server_version": __version__, "max_batch": config.max_batch, "max_wait_ms": config.max_wait_ms,
                    "inline_ms": config.inline_ms,
                    "max_records": config.max_records, "max_body_bytes": config.max_body_bytes,
                    "max_pixels": config.max_pixels, "default_top_k": DEFAULT_TOP_K},
    }

    @app.get("/v1/model", tags=["model"], summary="The model: name, version, input/output signature, metrics.",
             responses=_errors(401, "no key"))
    async def model():
        return model_info

    # -- predict -----------------------------------------------------------------------------------------
    # The one hot route. POST /v1/predict runs `predict_asgi` (a plain ASGI endpoint) behind the same middlewares
    # as every route (ServeApp.__call__), skipping FastAPI's routing, dependency solving and exception layers,
    # which were about a third of the event loop's time per request. The FastAPI route below stays for the
    # OpenAPI schema and for any request the shortcut does not take; both run `run_predict`.
    async def checked(read) -> bytes:
        """`await read()` (a body reader of security.py), its refusals as the API's errors."""
        try:
            return await read()
        except BodyTooLarge:
            metrics.rejected.labels("body_too_large").inc()
            raise ApiError(413, body_too_large(config.max_body_bytes)) from None
        except BadEncoding as exc:
            raise ApiError(exc.status, exc.detail) from None

    async def parse(ctype: str, read, form_request) -> tuple[list, int | None]:
        """(records, top_k) of a request: `read()` the checked body, `form_request()` a Request for multipart."""
        body = await checked(read)
        if ctype == "application/json":
            return parse_json(body)
        if ctype == "multipart/form-data":
            return checked_records(await _parse_form(form_request(body), request_model, signature))
        raise ApiError(415, f"send application/json or multipart/form-data; got '{ctype or 'no content type'}'")

    def parse_json(body: bytes) -> tuple[list, int | None]:
        try:
            parsed = request_model.model_validate_json(body)
        except ValidationError as exc:
            raise _invalid(validation_problems(exc)) from None
        return checked_records(parsed)

    def checked_records(parsed) -> tuple[list, int | None]:
        records = [[getattr(r, field) for field in input_fields] for r in parsed.records]
        for i, name in file_checks:  # uploads and base64 files: the pixel or duration limit, from the header alone
            sig = signature["inputs"][name]
            for row, record in enumerate(records):
                if sig["type"] == "image":
                    _check_image(record[i], f"records.{row}.{name}", config.max_pixels, metrics)
                else:
                    _check_upload(kind_of(sig), sig, record[i], f"records.{row}.{name}", metrics)
        return records, parsed.top_k

    # The response's JSON up to the predictions: json.dumps of the whole dict gives the same bytes.
    head = json.dumps({"model": meta["name"], "version": version, "output": first_output, "predictions": None})
    head = head[:-len("null}")]

    def check_ready() -> float:
        """The time a request starts being answered; 503 while the model is not ready."""
        if state.status != "ready":
            raise ApiError(503, f"the model is {state.status}", headers={"Retry-After": "1"})
        return time.perf_counter()

    def job_of(records: list, top_k: int | None) -> Records:
        return Records({n: [r[i] for r in records] for i, n in enumerate(input_names)}, len(records), top_k)

    def batch_error(exc: Exception) -> ApiError:
        """The answer to a batcher's refusal or a job's error (anything else is a bug: a 500)."""
        if isinstance(exc, QueueFull):
            metrics.rejected.labels("queue_full").inc()
            return ApiError(503, f"server busy: {config.max_queue} requests are already waiting",
                            headers={"Retry-After": "1"})
        if isinstance(exc, ShuttingDown):
            return ApiError(503, "the server is shutting down", headers={"Retry-After": "5"})
        if isinstance(exc, TimeoutError):
            metrics.rejected.labels("timeout").inc()
            return ApiError(504, f"no answer within {config.timeout_s:g} s")
        return ApiError(422, exc.message)  # DlforgeError

    def answer(rows: list, started: float, queued: float) -> tuple[bytes, str]:
        done = time.perf_counter()
        payload = f"{head}{_encode_json(rows)}}}".encode()
        return payload, f"parse;dur={(queued - started) * 1e3:.2f}, batch;dur={(done - queued) * 1e3:.2f}"

    async def run_predict(ctype: str, read, form_request) -> tuple[bytes, str]:
        """The predict response's body and Server-Timing value; raises ApiError."""
        started = check_ready()
        batcher.incoming(+1)
        try:
            records, top_k = await parse(ctype, read, form_request)
        finally:
            batcher.incoming(-1)
        job = job_of(records, top_k)
        queued = time.perf_counter()
        try:
            rows = await batcher.submit(job, job.rows, timeout=config.timeout_s)
        except BATCH_ERRORS as exc:
            raise batch_error(exc) from None
        return answer(rows, started, queued)

    def start_predict(body: bytes):
        """`run_predict` for a JSON body already read, without awaiting: (the job's future, a function of that
        future once done giving the response's body and Server-Timing value). Both raise ApiError as run_predict."""
        started = check_ready()
        job = job_of(*parse_json(body))  # (no batcher.incoming: nothing waits between receiving and submitting)
        queued = time.perf_counter()
        try:
            future = batcher.enqueue(job, job.rows, timeout=config.timeout_s)
        except BATCH_ERRORS as exc:
            raise batch_error(exc) from None

        def finish(done) -> tuple[bytes, str]:
            try:
                rows = done.result()
            except BATCH_ERRORS as exc:
                raise batch_error(exc) from None
            return answer(rows, started, queued)

        return future, finish

    @app.post("/v1/predict", response_model=PredictResponse, tags=["model"],
              summary="Predict one or more records (JSON), or one record as a form (multipart, image files).",
              responses={**_errors(400, "invalid gzip or deflate body"), **_errors(401, "no key"),
                         **_errors(413, "body or image too large"),
                         **_errors(415, "unsupported content type or encoding"), **_errors(422, "invalid input"),
                         **_errors(503, "loading, overloaded (queue full) or shutting down; see Retry-After"),
                         **_errors(504, "not answered within the server's timeout")},
              openapi_extra={"requestBody": {"required": True, "content": {
                  "application/json": {"schema": {"$ref": "#/components/schemas/PredictRequest"}},
                  "multipart/form-data": {"schema": multipart_schema(signature)}}}})
    async def predict(request: Request):
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        payload, timing = await run_predict(ctype, lambda: read_body(request, config.max_body_bytes),
                                            lambda body: request)
        return Response(payload, media_type="application/json", headers={"Server-Timing": timing})

    async def predict_asgi(scope, receive, send) -> None:
        """POST /v1/predict as a plain ASGI endpoint: the same answers, errors and headers as the route above."""
        ctype, encoding = "", "identity"
        for key, value in scope["headers"]:
            if key == b"content-type":
                ctype = value.decode("latin-1").split(";")[0].strip().lower()
            elif key == b"content-encoding":
                encoding = value.decode("latin-1")

        def form_request(body: bytes) -> Request:
            request = Request(scope, receive)
            request._body = body  # starlette's cache: request.form() parses these bytes
            return request

        try:
            payload, timing = await run_predict(ctype, lambda: receive_body(receive, encoding, config.max_body_bytes),
                                                form_request)
        except ApiError as exc:
            response = await _api_error(None, exc)
        except ClientDisconnect as exc:
            response = await _client_gone(Request(scope), exc)
        except StarletteHTTPException as exc:
            response = await _http_error(None, exc)
        else:  # the headers of Response(payload, media_type="application/json", headers={"Server-Timing": ...})
            await send({"type": "http.response.start", "status": 200, "headers": [
                (b"server-timing", timing.encode("latin-1")), (b"content-length", b"%d" % len(payload)),
                (b"content-type", b"application/json")]})
            await send({"type": "http.response.body", "body": payload})
            return
        await response(scope, receive, send)

    app.predict_endpoint = predict_asgi

    async def read_checked(request: Request) -> bytes:
        return await checked(lambda: read_body(request, config.max_body_bytes))

    add_recommend_route(app, state=state, config=config, meta=meta, version=version, batcher=recommend_batcher,
                        api_error=ApiError, invalid=_invalid, read=read_checked)

    # -- the web page -------------------------------------------------------------------------------------
    index_html = (STATIC / "index.html").read_bytes()

    @app.get("/", include_in_schema=False)
    async def page():
        return Response(index_html, media_type="text/html; charset=utf-8")

    app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")

    # -- OpenAPI: the generated request models go into components -------------------------------------
    def openapi():
        if app.openapi_schema is None:
            from fastapi.openapi.utils import get_openapi

            schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            generated = request_model.model_json_schema(ref_template="#/components/schemas/{model}")
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            components.update(generated.pop("$defs", {}))
            components["PredictRequest"] = generated
            if keys:
                schema["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
                schema["security"] = [{"bearer": []}]
                for path in ("/healthz", "/readyz"):
                    schema["paths"][path]["get"]["security"] = []
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi

    # -- middleware (the last added runs first) ----------------------------------------------------------
    app.add_middleware(ContentLengthLimit, max_bytes=config.max_body_bytes)
    if keys:
        app.add_middleware(ApiKeyAuth, keys=keys)
    if config.cors_origins:
        from starlette.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=config.cors_origins, allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"], max_age=600)
    app.add_middleware(SecurityHeaders)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    app.state.fast_route = None if config.cors_origins else PredictRoute(
        app, start_predict=start_predict, api_error=api_error_response, api_error_type=ApiError,
        unexpected=unexpected_response, metrics=metrics, max_body_bytes=config.max_body_bytes, keys=keys)
    return app


# What the batcher may raise to a caller that the API answers (anything else is a bug: a 500).
BATCH_ERRORS = (QueueFull, ShuttingDown, TimeoutError, DlforgeError)


def api_error_response(exc: ApiError) -> JSONResponse:
    body = {"detail": exc.detail}
    if exc.errors:
        body["errors"] = exc.errors
    return JSONResponse(body, status_code=exc.status, headers=exc.headers)


def unexpected_response(method: str, path: str, exc: BaseException) -> JSONResponse:
    log.error("unhandled error on %s %s", method, path, exc_info=exc)
    return JSONResponse({"detail": "internal server error (details are in the server log)"}, status_code=500)


def _read_metrics(run_dir: Path) -> dict | None:
    try:
        return json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _invalid(problems: list[dict]) -> ApiError:
    first = problems[0] if problems else {"field": "body", "message": "invalid"}
    more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
    return ApiError(422, f"{first['field']}: {first['message']}{more}", errors=problems)


def _check_image(value, field: str, max_pixels: int, metrics: Metrics) -> None:
    """413 for too many pixels, 422 for bytes that are no image; reads the header only."""
    if not isinstance(value, bytes):
        return
    try:
        pixels = image_pixels(value)
    except Exception as exc:  # Pillow raises many types for garbage; none of them is the client's business
        from PIL import Image  # here, not per request: an import statement costs ~1 us

        if isinstance(exc, Image.DecompressionBombError):  # Pillow refuses sizes over twice its own limit at open
            metrics.rejected.labels("image_too_large").inc()
            found = re.search(r"\((\d+) pixels\)", str(exc))
            size = f"{int(found.group(1)):,} pixels" if found else "more pixels than Pillow opens"
            raise ApiError(413, f"{field}: the image has {size}; this server accepts at most {max_pixels:,} "
                                "(option --max-pixels)") from None
        raise _invalid([{"field": field, "message": "not a readable image (send PNG, JPEG, GIF, BMP, TIFF or WebP)"}]) from None
    if pixels > max_pixels:
        metrics.rejected.labels("image_too_large").inc()
        raise ApiError(413, f"{field}: the image has {pixels:,} pixels; this server accepts at most {max_pixels:,} "
                            "(option --max-pixels)")


def _check_upload(kind, sig: dict, value, field: str, metrics: Metrics) -> None:
    """A file input's own header check (e.g. a clip's duration): 413 past its limit, 422 when unreadable."""
    check = getattr(kind, "check_upload", None)
    if check is None:
        return
    try:
        check(value, sig)
    except ValueError as exc:
        if getattr(exc, "status", None) == 413:
            metrics.rejected.labels(f"{sig['type']}_too_large").inc()
            raise ApiError(413, f"{field}: {exc}") from None
        raise _invalid([{"field": field, "message": str(exc)}]) from None


async def _parse_form(request: Request, request_model, signature: dict):
    """A multipart form as one record: file parts are image bytes, number fields are parsed from text."""
    inputs = signature["inputs"]
    try:
        form = await request.form(max_files=len(inputs), max_fields=len(inputs) + 1)
    except Exception as exc:  # malformed multipart, too many parts
        raise ApiError(422, f"cannot read the form: {getattr(exc, 'detail', None) or 'malformed multipart body'}") from None
    record, top_k, problems = {}, None, []
    for key, value in form.multi_items():
        if isinstance(value, UploadFile):
            value = await value.read()
        if key == "top_k":
            try:
                top_k = int(value)
            except (TypeError, ValueError):
                problems.append({"field": "top_k", "message": "Input should be a valid integer"})
            continue
        if key in record:
            problems.append({"field": f"records.0.{key}", "message": "given more than once"})
        if key in inputs:  # a form part is text (or file bytes): its kind reads the JSON value it stands for
            try:
                value = kind_of(inputs[key]).form_value(value)
            except ValueError as exc:
                problems.append({"field": f"records.0.{key}", "message": str(exc)})
                continue
        record[key] = value
    if problems:
        raise _invalid(problems)
    try:
        return request_model.model_validate({"records": [record], "top_k": top_k})
    except ValidationError as exc:
        raise _invalid(validation_problems(exc)) from None
