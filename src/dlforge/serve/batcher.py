"""Dynamic micro-batching: concurrent requests share one forward pass, each caller gets its own rows back.

Requests wait in a bounded queue (full → `QueueFull`, the app answers 503 with Retry-After: memory
never grows without bound). One collector task takes the queued jobs, up to `max_batch` rows, and
runs them in a dedicated inference thread, so the event loop keeps accepting requests while the
model computes. Jobs that arrive while a batch runs form the next one. With `inline_ms` > 0, a batch
short enough may run in the event loop thread instead, when the server measures that this serves more
rows per second (placement.py: no thread hand-off, at most `inline_ms` of blocked loop).

Waiting for stragglers costs latency, so the collector waits (at most `max_wait`) only while more
requests are known to be on their way, i.e. being received or validated by the app. A lone request
never waits; under load batches fill by themselves. `max_batch=1` turns batching off.
"""

from __future__ import annotations

import asyncio
import collections
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from dlforge.serve.placement import Placement


def _cpu_timed(run: Callable[[Sequence[Any]], list], payloads: Sequence[Any]) -> tuple[list, float]:
    """`run(payloads)` and the CPU seconds it took in this thread: the time it would block the loop if run inline
    (its wall time here also counts waiting for the GIL, which the loop holds meanwhile)."""
    started = time.thread_time()
    return run(payloads), time.thread_time() - started


class QueueFull(Exception):
    """The queue holds `max_queue` requests already; the caller should retry later."""


class ShuttingDown(Exception):
    """The server is draining for shutdown and takes no new work."""


@dataclass(eq=False)
class Job:
    payload: Any
    rows: int
    future: asyncio.Future
    timer: asyncio.TimerHandle | None = None  # the job's timeout
    enqueued: float = field(default_factory=time.perf_counter)

    def done(self) -> None:
        """Answered (or abandoned): its timeout is off."""
        if self.timer is not None:
            self.timer.cancel()


def _expire(future: asyncio.Future) -> None:
    """A job's timeout: its caller gets TimeoutError, and the collector skips the job (its future is done)."""
    if not future.done():
        future.set_exception(TimeoutError())


class Batcher:
    """`await submit(payload, rows)` → that payload's result, computed in a batch with other payloads.

    `run(payloads)` executes in the inference thread and returns one result per payload, in order;
    a result that is an Exception is raised to that caller only.
    """

    def __init__(self, run: Callable[[Sequence[Any]], list], *, max_batch: int = 64, max_wait_ms: float = 5.0,
                 max_queue: int = 256, inline_ms: float = 0.0,
                 on_batch: Callable[[int, float], None] | None = None,
                 on_depth: Callable[[int], None] | None = None):
        if max_batch < 1 or max_queue < 1 or max_wait_ms < 0:
            raise ValueError(f"max_batch and max_queue must be >= 1 and max_wait_ms >= 0; got "
                             f"{max_batch}, {max_queue}, {max_wait_ms}")
        self.run = run
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000.0
        self.max_queue = max_queue
        self.placement = Placement(inline_ms=inline_ms)
        self.on_batch = on_batch or (lambda rows, seconds: None)
        self.on_depth = on_depth or (lambda depth: None)
        self._queue: collections.deque[Job] = collections.deque()
        self._arrived = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._incoming = 0
        self._closing = False
        self._task: asyncio.Task | None = None
        # One thread: a forward pass already uses every intra-op thread torch is given.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dlforge-infer")

    # -- hints from the app -------------------------------------------------------------------
    def incoming(self, delta: int) -> None:
        """The app is receiving (+1) or has finished receiving (-1) a request that may be submitted soon."""
        self._incoming += delta
        if delta < 0:
            self._arrived.set()

    @property
    def depth(self) -> int:
        return len(self._queue)

    @property
    def closing(self) -> bool:
        return self._closing

    # -- life cycle -----------------------------------------------------------------------------
    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._collect(), name="dlforge-batcher")

    async def close(self, timeout: float = 30.0) -> None:
        """Refuse new work, let queued and running batches finish (up to `timeout`), then stop."""
        self._closing = True
        deadline = time.monotonic() + timeout
        while (self._queue or not self._idle.is_set()) and time.monotonic() < deadline:
            self._arrived.set()
            await asyncio.sleep(0.01)
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        for job in self._queue:  # only left when the drain timed out
            if not job.future.done():
                job.done()
                job.future.set_exception(ShuttingDown())
        self._queue.clear()
        self._executor.shutdown(wait=True)

    # -- submitting -------------------------------------------------------------------------------
    async def submit(self, payload: Any, rows: int, *, timeout: float | None = None) -> Any:
        """The result for `payload`; raises QueueFull, ShuttingDown, TimeoutError, or the job's error."""
        job = self._enqueue(payload, rows, timeout)
        try:
            return await job.future
        finally:
            if not job.future.done():  # the client went away: the collector skips it
                job.future.cancel()
                job.done()

    def enqueue(self, payload: Any, rows: int, *, timeout: float | None = None) -> asyncio.Future:
        """`submit` without awaiting: the future that gets the result (or TimeoutError after `timeout` seconds).
        Raises QueueFull or ShuttingDown at once."""
        return self._enqueue(payload, rows, timeout).future

    def _enqueue(self, payload: Any, rows: int, timeout: float | None) -> Job:
        if self._closing:
            raise ShuttingDown()
        if len(self._queue) >= self.max_queue:
            raise QueueFull()
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        # One timer on the job's own future (asyncio.wait_for would add a second future and its callbacks),
        # cancelled when the job is answered.
        job = Job(payload, rows, future, None if timeout is None else loop.call_later(timeout, _expire, future))
        self._queue.append(job)
        self.on_depth(len(self._queue))
        self._arrived.set()
        return job

    # -- the collector --------------------------------------------------------------------------
    def _take(self, batch: list[Job], rows: int) -> int:
        while self._queue and rows < self.max_batch:
            job = self._queue[0]
            if job.future.done():
                self._queue.popleft()
                continue
            if batch and rows + job.rows > self.max_batch:
                break
            batch.append(self._queue.popleft())
            rows += job.rows
        return rows

    async def _collect(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._queue:
                self._arrived.clear()
                await self._arrived.wait()
                continue
            batch: list[Job] = []
            rows = self._take(batch, 0)
            deadline = loop.time() + self.max_wait
            while rows < self.max_batch and self._incoming > 0 and not self._closing:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                self._arrived.clear()
                try:
                    await asyncio.wait_for(self._arrived.wait(), remaining)
                except TimeoutError:
                    pass
                rows = self._take(batch, rows)
            self.on_depth(len(self._queue))
            if not batch:
                continue
            self._idle.clear()
            payloads = [job.payload for job in batch]
            started = time.perf_counter()
            inline = self.placement.inline(rows)
            cpu = None
            try:
                if inline:  # measured short: the loop waits at most `inline_ms`
                    results = self.run(payloads)
                else:
                    results, cpu = await loop.run_in_executor(self._executor, _cpu_timed, self.run, payloads)
            except Exception as exc:  # a bug in `run` itself: every caller of this batch gets the error
                results = [exc] * len(batch)
            finally:
                self._idle.set()
            finished = time.perf_counter()
            self.placement.observe(rows, started, finished, cpu=cpu)
            self.on_batch(rows, finished - started)
            for job, result in zip(batch, results):
                if job.future.done():
                    continue
                job.done()
                if isinstance(result, BaseException):
                    job.future.set_exception(result)
                else:
                    job.future.set_result(result)
            if inline:  # let the loop answer these and read new requests before the next batch
                await asyncio.sleep(0)
