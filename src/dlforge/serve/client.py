"""`dlforge.Client`: call a dlforge server from Python, with retries and back-off when it is busy.

    client = dlforge.Client("http://127.0.0.1:8000", api_key=open("api.key").read().strip())
    client.predict({"image": Path("digit.png")})          # → [{"label": "7", "probability": ..., ...}]

Image values may be `pathlib.Path` or `bytes` (sent base64-encoded), or pixel arrays (numpy or lists).
Only httpx is needed, not the server's dependencies.
"""

from __future__ import annotations

import base64
import random
import time
from pathlib import Path

from dlforge.core.errors import DlforgeError

RETRY_STATUSES = frozenset({502, 503, 504})


class ClientError(DlforgeError):
    """The server refused or failed a request; `status` is the HTTP status code (0: unreachable)."""

    def __init__(self, message: str, *, status: int, where: str | None = None, hint: str | None = None,
                 errors: list | None = None):
        self.status = status
        self.errors = errors or []
        super().__init__(message, where=where, hint=hint)


def _jsonable(value):
    if isinstance(value, Path):
        return base64.b64encode(value.read_bytes()).decode("ascii")
    if isinstance(value, (bytes, bytearray)):
        return base64.b64encode(bytes(value)).decode("ascii")
    if hasattr(value, "tolist"):  # numpy arrays and scalars
        return value.tolist()
    if isinstance(value, float) and value != value:  # NaN: JSON has none; null means missing
        return None
    return value


class Client:
    """A keep-alive HTTP client for one server. Use as a context manager, or call `close()`."""

    def __init__(self, url: str = "http://127.0.0.1:8000", *, api_key: str | None = None, timeout: float = 30.0,
                 retries: int = 5, backoff: float = 0.1, max_backoff: float = 5.0, transport=None):
        import httpx

        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.url = url.rstrip("/")
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout, transport=transport)

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # -- calls -----------------------------------------------------------------------------------------
    def predict(self, records, *, top_k: int | None = None) -> list[dict]:
        """Predictions for one record (a dict) or a list of records, in order; each a dict with `label`,
        `probability` and `top_k` (classifiers) or `value` (regression)."""
        rows = [records] if isinstance(records, dict) else list(records)
        body = {"records": [{k: _jsonable(v) for k, v in r.items()} for r in rows]}
        if top_k is not None:
            body["top_k"] = top_k
        return self._request("POST", "/v1/predict", json=body)["predictions"]

    def model(self) -> dict:
        """Name, version, input/output signature and metrics of the served model."""
        return self._request("GET", "/v1/model")

    def ready(self) -> bool:
        import httpx

        try:
            return self._http.get("/readyz").status_code == 200
        except httpx.TransportError:
            return False

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Block until the model is loaded and warm (or raise ClientError after `timeout` seconds)."""
        deadline = time.monotonic() + timeout
        while not self.ready():
            if time.monotonic() > deadline:
                raise ClientError(f"the server at {self.url} was not ready within {timeout:g} s", status=0)
            time.sleep(0.1)

    # -- plumbing --------------------------------------------------------------------------------------
    def _delay(self, attempt: int, retry_after: str | None) -> float:
        if retry_after and retry_after.isdigit():
            return min(float(retry_after), self.max_backoff)
        # Exponential back-off with full jitter, so that many clients do not retry in lock-step.
        return random.uniform(0, min(self.max_backoff, self.backoff * 2 ** attempt))

    def _request(self, method: str, path: str, **kwargs) -> dict:
        import httpx

        for attempt in range(self.retries + 1):
            try:
                response = self._http.request(method, path, **kwargs)
            except httpx.TransportError as exc:
                if attempt == self.retries:
                    raise ClientError(f"cannot reach {self.url}: {exc}", status=0,
                                      hint="is `dlforge serve RUN` running, on this host and port?") from None
                time.sleep(self._delay(attempt, None))
                continue
            if response.status_code in RETRY_STATUSES and attempt < self.retries:
                time.sleep(self._delay(attempt, response.headers.get("retry-after")))
                continue
            if response.status_code >= 400:
                raise self._error(response, path)
            return response.json()
        raise AssertionError("unreachable")

    def _error(self, response, path: str) -> ClientError:
        try:
            body = response.json()
        except ValueError:
            body = {}
        detail = body.get("detail") or response.reason_phrase
        hint = {401: "pass api_key=... (the server was started with --api-key-file)",
                413: "send fewer or smaller records",
                503: "the server stayed busy through every retry; add capacity or slow down"}.get(response.status_code)
        return ClientError(f"HTTP {response.status_code}: {detail}", status=response.status_code,
                           where=f"{self.url}{path}", hint=hint, errors=body.get("errors"))
