"""The HTTP connection under the app: uvicorn's httptools protocol plus the limits it lacks.

uvicorn closes idle kept-alive connections (`timeout_keep_alive`) and answers 503 beyond
`limit_concurrency`, but it waits forever for a request head or body that trickles in, and httptools
accepts a head of any size. A client that is slow on purpose (slowloris) could hold every connection
the server has. These limits live here because no ASGI middleware sees a request before its head is
complete:

- head deadline: the request line and headers must arrive within `header_timeout_s` of the
  connection opening (or of the first byte of the next request on a kept-alive connection); then 408
  (or, if nothing came at all, a silent close);
- head size: over `max_header_bytes` → 431 and close, checked while the head is still arriving, so a
  megabyte header is never buffered whole;
- body deadline: the body must arrive within `body_timeout_s` of the head; then 408 and close (the
  app sees a disconnect, and counts a 408);
- concurrency: as uvicorn's `limit_concurrency` (open connections or running requests), answered
  with a JSON 503 and `Retry-After`; the probes /healthz and /readyz are exempt, so a flood does not
  make the orchestrator kill a healthy process.

Each refusal is reported through the app's lifespan state (`CONNECTION_EVENTS`), which the app turns
into `dlforge_rejected_total{reason=...}`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

# The key of the lifespan state under which the app gives a callable(reason) that counts refusals.
CONNECTION_EVENTS = "dlforge.connection_events"
# Set in the request's scope when the server cut the body off (the app then records 408, not 499).
BODY_TIMEOUT_SCOPE_KEY = "dlforge.body_timeout"
PROBES = (b"/healthz", b"/readyz")


@dataclass(frozen=True)
class ConnectionLimits:
    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    max_header_bytes: int = 16 * 1024


def _raw_response(status: int, reason: bytes, detail: str, headers: tuple[bytes, ...] = ()) -> bytes:
    body = json.dumps({"detail": detail}).encode()
    head = [b"HTTP/1.1 %d %s" % (status, reason), b"content-type: application/json",
            b"content-length: %d" % len(body), b"connection: close", *headers]
    return b"\r\n".join(head) + b"\r\n\r\n" + body


def _refusal_app(status: int, detail: str, headers: list[tuple[bytes, bytes]] = ()):
    """A tiny ASGI app answering every request with `status` and a JSON detail, then closing the connection."""
    body = json.dumps({"detail": detail}).encode()

    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": status, "headers": [
            (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"), *headers]})
        await send({"type": "http.response.body", "body": body})

    return app


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a head deadline, a head-size limit, a body deadline and JSON 503s."""

    def __init__(self, config, server_state, app_state, _loop=None):
        super().__init__(config, server_state, app_state, _loop)
        self.limits: ConnectionLimits = getattr(config, "dlforge_limits", None) or ConnectionLimits()
        self.concurrency = self.limit_concurrency
        self.limit_concurrency = None  # checked here (with the probes exempt), not by the parent class
        self._head_timer = None
        self._body_timer = None
        self._in_head = True       # between the end of a request (or the connection's start) and a complete head
        self._head_received = 0    # bytes received while in the head (counted before httptools buffers them)
        self._head_size = 0        # the parsed head's size: url and header names and values

    # -- reporting ------------------------------------------------------------------------------------
    def _report(self, reason: str) -> None:
        count = self.app_state.get(CONNECTION_EVENTS)
        if count is not None:
            count(reason)

    def _refuse_now(self, status: int, reason: bytes, detail: str, event: str) -> None:
        self._report(event)
        if not self.transport.is_closing():
            self.transport.write(_raw_response(status, reason, detail))
            self.transport.close()

    # -- timers -----------------------------------------------------------------------------------------
    def _cancel(self, name: str) -> None:
        timer = getattr(self, name)
        if timer is not None:
            timer.cancel()
            setattr(self, name, None)

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._arm_head_timer()

    def connection_lost(self, exc) -> None:
        self._cancel("_head_timer")
        self._cancel("_body_timer")
        super().connection_lost(exc)

    def _arm_head_timer(self) -> None:
        self._head_timer = self.loop.call_later(self.limits.header_timeout_s, self._head_timeout)

    def _head_timeout(self) -> None:
        self._head_timer = None
        if self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            self._arm_head_timer()  # still answering the previous request: the next head's deadline starts after
            return
        if self._head_received == 0:  # opened and never used: close without a word
            self._report("idle_connection")
            self.transport.close()
            return
        self._refuse_now(408, b"Request Timeout", f"the request head did not arrive within "
                         f"{self.limits.header_timeout_s:g} s (server option --header-timeout)", "header_timeout")

    def _body_timeout(self) -> None:
        self._body_timer = None
        cycle = self.cycle
        if self.transport.is_closing() or cycle is None:
            return
        if cycle.response_complete:  # answered already (413, say) while the body still trickles in
            self.transport.close()
            return
        self._report("body_timeout")
        cycle.scope[BODY_TIMEOUT_SCOPE_KEY] = True
        if not cycle.response_started:
            self.transport.write(_raw_response(408, b"Request Timeout", f"the request body did not arrive within "
                                 f"{self.limits.body_timeout_s:g} s (server option --body-timeout)"))
        cycle.disconnected = True  # the app's receive() now says http.disconnect, its sends go nowhere
        cycle.message_event.set()
        self.transport.close()

    # -- parsing ------------------------------------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        if self._in_head:
            self._head_received += len(data)
            if self._head_timer is None:  # the next request on a kept-alive connection (even bare CRLFs)
                self._arm_head_timer()
        super().data_received(data)
        if self._in_head and self._head_received > self.limits.max_header_bytes:
            self._refuse_now(431, b"Request Header Fields Too Large", self._too_large(), "header_too_large")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_size = 0

    def on_url(self, url: bytes) -> None:
        self._head_size += len(url)
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_size += len(name) + len(value) + 4
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._cancel("_head_timer")
        self._in_head = False
        app = self.app
        if self._head_size > self.limits.max_header_bytes:
            self._report("header_too_large")
            self.app = _refusal_app(431, self._too_large())
        elif self.concurrency is not None and self.url.split(b"?", 1)[0] not in PROBES and (
                len(self.connections) >= self.concurrency or len(self.tasks) >= self.concurrency):
            self._report("concurrency_limit")
            self.app = _refusal_app(503, f"server busy: {self.concurrency} connections or requests at once "
                                    "(server option --limit-concurrency)", [(b"retry-after", b"1")])
        try:
            super().on_headers_complete()
        finally:
            self.app = app
        self._body_timer = self.loop.call_later(self.limits.body_timeout_s, self._body_timeout)

    def on_message_complete(self) -> None:
        self._cancel("_body_timer")
        self._in_head = True
        self._head_received = 0
        super().on_message_complete()

    def _too_large(self) -> str:
        return (f"the request head (request line and headers) exceeds {self.limits.max_header_bytes:,} bytes "
                "(server option --max-header-kb)")
