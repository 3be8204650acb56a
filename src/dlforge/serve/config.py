"""The server's settings in one validated object (also passed to worker processes as JSON in the environment)."""

from __future__ import annotations

import os
from typing import Optional

from pydantic import BaseModel, ConfigDict, Field

ENV_VAR = "DLFORGE_SERVE_CONFIG"


class ServeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    run_dir: str = Field(..., description="The run directory to serve.")
    host: str = Field("127.0.0.1", description="Address to bind; loopback by default.")
    port: int = Field(8000, ge=0, le=65535)
    workers: int = Field(1, ge=1, le=64, description="uvicorn worker processes, each with its own model and batcher.")
    threads: Optional[int] = Field(None, ge=1, le=256, description="torch intra-op threads per worker; "
                                   "null: the CPU count divided among the workers.")
    max_batch: int = Field(64, ge=1, le=4096, description="Rows per forward pass at most; 1 turns batching off.")
    max_wait_ms: float = Field(5.0, ge=0, le=1000, description="How long a batch may wait for requests being received.")
    inline_ms: float = Field(5.0, ge=0, le=1000, description="A batch predicted to take at most this many ms may run "
                             "in the event loop thread, while that measures faster than the inference thread "
                             "(serve/placement.py); 0: always the thread.")
    max_queue: int = Field(256, ge=1, le=100_000, description="Requests waiting at most; more get 503 + Retry-After.")
    timeout_s: float = Field(30.0, gt=0, le=3600, description="A request not answered by then gets 504.")
    max_body_mb: float = Field(10.0, gt=0, le=1024, description="Request bodies above this get 413.")
    max_pixels: int = Field(16_000_000, ge=1, description="Images above this many pixels get 413 (decompression bombs).")
    max_records: int = Field(1024, ge=1, le=100_000, description="Records per request at most (422 above).")
    api_key_file: Optional[str] = Field(None, description="File with the API key(s), one per line.")
    insecure: bool = Field(False, description="Allow a non-loopback host without an API key.")
    cors_origins: list[str] = Field([], description="Origins allowed to call the API from a browser; empty: CORS off.")
    access_log: bool = Field(False, description="Log every request (uvicorn's access log).")
    drain_s: float = Field(30.0, ge=0, le=3600, description="On shutdown, how long in-flight requests may take to finish.")
    # Connection limits against slow or hostile clients (protocol.py); each refusal is counted in the metrics.
    header_timeout_s: float = Field(10.0, gt=0, le=3600, description="A request's line and headers must arrive "
                                    "within this many seconds of the connection (or of its first byte); else 408.")
    body_timeout_s: float = Field(30.0, gt=0, le=3600, description="A request's body must arrive within this many "
                                  "seconds of its headers; else 408.")
    keep_alive_s: float = Field(5.0, gt=0, le=3600, description="An idle kept-alive connection is closed after this.")
    max_header_kb: float = Field(16.0, gt=0, le=1024, description="Request line and headers above this get 431.")
    limit_concurrency: int = Field(512, ge=1, le=100_000, description="Open connections or running requests per "
                                   "worker at most; more requests get 503 + Retry-After (the probes are exempt).")

    runtime: Optional[str] = Field(None, description="torch | onnx; null: onnx when the run has model.onnx "
                                   "(`dlforge export`), else torch.")

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * 1024 * 1024)

    @property
    def max_header_bytes(self) -> int:
        return int(self.max_header_kb * 1024)

    def torch_threads(self) -> int:
        return self.threads or max(1, (os.cpu_count() or 1) // self.workers)

    def to_env(self) -> None:
        os.environ[ENV_VAR] = self.model_dump_json()

    @classmethod
    def from_env(cls) -> "ServeConfig":
        return cls.model_validate_json(os.environ[ENV_VAR])
