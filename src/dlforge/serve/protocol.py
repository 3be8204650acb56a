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

One route may also be answered here without uvicorn's ASGI request cycle: the app gives a `FastRoute`
(fast_route.py: POST /v1/predict) through the lifespan state (`FAST_ROUTE`). A request it accepts from
its head alone, whose body arrives with the head, goes to the route with its headers and body; the
route's answer is written as one buffer. Anything else (another route, a body in several reads, a
request behind another on the same connection, ...) takes the usual cycle, so the limits above, keep-alive,
pipelining and shutdown work the same either way.

Each refusal is reported through the app's lifespan state (`CONNECTION_EVENTS`), which the app turns
into `dlforge_rejected_total{reason=...}`.
"""

from __future__ import annotations

import functools
import json
import logging
from dataclasses import dataclass
from typing import Callable, Protocol

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol, RequestResponseCycle

# The key of the lifespan state under which the app gives a callable(reason) that counts refusals.
CONNECTION_EVENTS = "dlforge.connection_events"
# Set in the request's scope when the server cut the body off (the app then records 408, not 499).
BODY_TIMEOUT_SCOPE_KEY = "dlforge.body_timeout"
PROBES = (b"/healthz", b"/readyz")
# The key of the lifespan state under which the app may give a FastRoute.
FAST_ROUTE = "dlforge.fast_route"

Headers = list[tuple[bytes, bytes]]


class FastRoute(Protocol):
    """A route the protocol answers itself: `accepts(headers)` decides from the request head (the method and the
    path already match), then `route(headers, body, respond)` answers by calling `respond(status, head, body, close)`
    once, at once or later from the event loop: `head` the response headers as written (`name: value\\r\\n` each,
    after uvicorn's default ones), `close` to close the connection after the answer. The route answers its own
    errors; it never raises."""

    method: bytes
    path: bytes

    def accepts(self, headers: Headers) -> bool: ...

    def __call__(self, headers: Headers, body: bytes, respond: Callable[[int, bytes, bytes, bool], None]) -> None: ...


def header_lines(headers) -> bytes:
    """Headers as an HTTP/1.1 head writes them: `name: value\\r\\n` each."""
    return b"".join(b"%s: %s\r\n" % (name, value) for name, value in headers)


class _Unset:
    @staticmethod
    def set() -> None:
        pass


class _FastCycle:
    """A fast request being answered, where uvicorn looks at `self.cycle` and its tasks: a request pipelined behind it
    waits for it, a shutdown lets it finish and then closes (`keep_alive`), a head deadline waits for it; it counts
    as a running request (the concurrency limit, the graceful shutdown's wait), and past the shutdown's timeout it
    is cancelled as uvicorn cancels its tasks."""

    __slots__ = ("response_complete", "response_started", "disconnected", "keep_alive", "more_body", "scope",
                 "protocol")
    message_event = _Unset  # set by uvicorn when the connection is lost: nobody waits on it here

    def __init__(self, protocol):
        self.response_complete = self.response_started = self.disconnected = False
        self.keep_alive = True
        self.more_body = False
        self.scope: dict = {}
        self.protocol = protocol

    def cancel(self, msg=None) -> None:
        """The answer will not be written: close the connection (uvicorn's cancelled task would answer 500)."""
        if not self.response_complete:
            self.response_complete = True
            self.protocol.tasks.discard(self)
            self.protocol.transport.close()


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


class _Cork:
    """A cycle's transport that holds the response head back until the body's first write, so that a small
    response leaves in one send() call instead of two (uvicorn writes the head and the body apart; on loopback
    each send also runs the receiver's TCP path, ~10 us). Anything else (close, a HEAD response without a body)
    sends what is held first."""

    __slots__ = ("transport", "hold", "held")

    def __init__(self, transport):
        self.transport = transport
        self.hold = False  # the next write is the response head: keep it
        self.held: bytes | None = None

    def write(self, data: bytes) -> None:
        if self.hold:
            self.held, self.hold = data, False
            return
        if self.held is not None:
            data, self.held = self.held + data, None
        self.transport.write(data)

    def flush(self) -> None:
        if self.held is not None:
            data, self.held = self.held, None
            self.transport.write(data)

    def close(self) -> None:
        self.flush()
        self.transport.close()

    def is_closing(self) -> bool:
        return self.transport.is_closing()

    def __getattr__(self, name):
        return getattr(self.transport, name)


class CorkedCycle(RequestResponseCycle):
    """uvicorn's request/response cycle writing the head of a response together with its body (see _Cork)."""

    async def send(self, message) -> None:
        cork = self.transport
        if message["type"] == "http.response.start" and not self.response_started:
            cork.hold = True
            try:
                await super().send(message)
            finally:
                cork.hold = False
            return
        try:
            await super().send(message)
        finally:
            cork.flush()


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a head deadline, a head-size limit, a body deadline and JSON 503s."""

    def __init__(self, config, server_state, app_state, _loop=None):
        super().__init__(config, server_state, app_state, _loop)
        self.limits: ConnectionLimits = getattr(config, "dlforge_limits", None) or ConnectionLimits()
        self.concurrency = self.limit_concurrency
        self.limit_concurrency = None  # checked here (with the probes exempt), not by the parent class
        # The head, body and keep-alive deadlines (loop time, None when not waiting) share one timer per connection,
        # set at or before the earliest deadline; when it fires it acts on the deadlines that passed and sets itself
        # for the next one. A request then only writes three numbers, where a timer per deadline cost a call_later
        # and a cancel each, three times per request.
        self._head_deadline: float | None = None
        self._body_deadline: float | None = None
        self._keep_alive_deadline: float | None = None
        self._timer = None
        self._in_head = True       # between the end of a request (or the connection's start) and a complete head
        self._head_received = 0    # bytes received while in the head (counted before httptools buffers them)
        self._fast_body: list[bytes] | None = None  # the body so far of a request the fast route accepted
        self._defaults: tuple = (None, b"")  # uvicorn's default headers and their lines, as last written

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
    def _arm(self, deadline: float) -> None:
        timer = self._timer
        if timer is None or timer.when() > deadline:
            if timer is not None:
                timer.cancel()
            self._timer = self.loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        now = self.loop.time()
        if self._body_deadline is not None and self._body_deadline <= now:
            self._body_deadline = None
            self._body_timeout()
        if self._head_deadline is not None and self._head_deadline <= now:
            self._head_deadline = None
            self._head_timeout()
        if self._keep_alive_deadline is not None and self._keep_alive_deadline <= now:
            self._keep_alive_deadline = None
            self.timeout_keep_alive_handler()
        pending = [d for d in (self._head_deadline, self._body_deadline, self._keep_alive_deadline) if d is not None]
        if pending and not self.transport.is_closing():
            self._arm(min(pending))

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._arm_head_timer()

    def connection_lost(self, exc) -> None:
        self._head_deadline = self._body_deadline = self._keep_alive_deadline = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        super().connection_lost(exc)

    # uvicorn arms a keep-alive timer (call_later) after every answer and cancels it on the next request's first
    # bytes; here the keep-alive deadline is one more deadline on the connection's timer.
    def _unset_keepalive_if_required(self) -> None:
        self._keep_alive_deadline = None
        super()._unset_keepalive_if_required()

    def on_response_complete(self) -> None:
        """uvicorn's, but for the keep-alive deadline, which goes on the connection's one timer."""
        self.server_state.total_requests += 1
        if self.transport.is_closing():
            return
        self._unset_keepalive_if_required()
        self.flow.resume_reading()
        if self.pipeline:
            cycle, app = self.pipeline.pop()
            self._start_asgi_task(cycle, app)
        else:
            self._keep_alive_deadline = self.loop.time() + self.timeout_keep_alive
            self._arm(self._keep_alive_deadline)

    def _arm_head_timer(self) -> None:
        self._head_deadline = self.loop.time() + self.limits.header_timeout_s
        self._arm(self._head_deadline)

    def _head_timeout(self) -> None:
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
            if self._head_deadline is None:  # the next request on a kept-alive connection (even bare CRLFs)
                self._arm_head_timer()
        super().data_received(data)
        if self._fast_body is not None:  # the body did not come whole with the head: the usual cycle takes it
            self._fast_to_cycle()
        if self._in_head and self._head_received > self.limits.max_header_bytes:
            self._refuse_now(431, b"Request Header Fields Too Large", self._too_large(), "header_too_large")

    def head_size(self) -> int:
        """The parsed head's size: the URL, and each header's name and value plus 4 (": " and CRLF)."""
        return len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)

    def on_headers_complete(self) -> None:
        self._head_deadline = None
        self._in_head = False
        app = self.app
        if self.head_size() > self.limits.max_header_bytes:
            self._report("header_too_large")
            self.app = _refusal_app(431, self._too_large())
        elif self.concurrency is not None and self.url.split(b"?", 1)[0] not in PROBES and (
                len(self.connections) >= self.concurrency or len(self.tasks) >= self.concurrency):
            self._report("concurrency_limit")
            self.app = _refusal_app(503, f"server busy: {self.concurrency} connections or requests at once "
                                    "(server option --limit-concurrency)", [(b"retry-after", b"1")])
        elif self._fast_route_takes():
            self._fast_body = []
        if self._fast_body is None:
            try:
                super().on_headers_complete()
            finally:
                self.app = app
        self._body_deadline = self.loop.time() + self.limits.body_timeout_s
        self._arm(self._body_deadline)

    # -- the fast route ---------------------------------------------------------------------------------
    def _fast_route_takes(self) -> bool:
        """The app's fast route accepts this request, and nothing about the connection needs the usual cycle."""
        route = self.app_state.get(FAST_ROUTE)
        if route is None or self.url != route.path:
            return False
        parser = self.parser
        if (parser.get_method() != route.method or parser.get_http_version() != "1.1" or not parser.should_keep_alive()
                or parser.should_upgrade() or self.expect_100_continue or self.access_log or self.root_path
                or self.config.reset_contextvars):
            return False
        if self.pipeline or (self.cycle is not None and not self.cycle.response_complete):
            return False  # behind another request: answers go out in order through uvicorn's pipeline
        if self.flow.write_paused:
            return False  # a client that does not read its answers: uvicorn's send waits for it to drain
        return route.accepts(self.headers)

    def _fast_to_cycle(self) -> None:
        """Hand a fast request whose body is still arriving to uvicorn's cycle, as if it had never been held (its task
        has not run yet either way)."""
        chunks, self._fast_body = self._fast_body, None
        if self.transport.is_closing():
            return
        super().on_headers_complete()
        for chunk in chunks:
            super().on_body(chunk)

    def on_body(self, body: bytes) -> None:
        if self._fast_body is not None:
            self._fast_body.append(body)
            return
        super().on_body(body)

    def _start_fast(self, body: bytes) -> None:
        cycle = self.cycle = _FastCycle(self)
        self.tasks.add(cycle)
        try:
            self.app_state[FAST_ROUTE](self.headers, body, functools.partial(self._fast_answer, cycle))
        except BaseException as exc:  # the route answers its own errors: this is a bug, closed as uvicorn does
            logging.getLogger("uvicorn.error").error("Exception in ASGI application\n", exc_info=exc)
            cycle.cancel()

    def _fast_answer(self, cycle: _FastCycle, status: int, head: bytes, payload: bytes, close: bool) -> None:
        if cycle.response_complete:  # cancelled meanwhile
            return
        cycle.response_complete = True
        self.tasks.discard(cycle)
        transport = self.transport
        if transport.is_closing():  # the client left: nobody reads the answer
            return
        # What uvicorn's send() writes: the status line, its default headers (the date), the app's, then the body.
        defaults = self.server_state.default_headers  # a new list when the date changes (each second)
        if defaults is not self._defaults[0]:
            self._defaults = defaults, header_lines(defaults)
        closing = b"" if cycle.keep_alive else b"connection: close\r\n"  # shutting down: the connection's last answer
        transport.write(b"".join((STATUS_LINE[status], self._defaults[1], head, closing, b"\r\n", payload)))
        if close or not cycle.keep_alive:
            transport.close()
        self.on_response_complete()

    def on_message_complete(self) -> None:
        self._body_deadline = None
        self._in_head = True
        self._head_received = 0
        if self._fast_body is not None:
            chunks, self._fast_body = self._fast_body, None
            self._start_fast(chunks[0] if len(chunks) == 1 else b"".join(chunks))  # none: an empty body
            return
        super().on_message_complete()

    def _too_large(self) -> str:
        return (f"the request head (request line and headers) exceeds {self.limits.max_header_bytes:,} bytes "
                "(server option --max-header-kb)")
