"""The batcher on its own: merging, limits, backpressure, per-caller errors, draining."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from dlforge.serve.batcher import Batcher, QueueFull, ShuttingDown


class Recorder:
    """A `run` that echoes payloads, records batch compositions, and can be held to let a queue build up."""

    def __init__(self):
        self.batches: list[list] = []
        self.gate = threading.Event()
        self.gate.set()

    def __call__(self, payloads):
        self.gate.wait(5)
        self.batches.append(list(payloads))
        return [ValueError(f"bad {p}") if p == "bad" else f"result {p}" for p in payloads]


def run(coro):
    return asyncio.run(coro)


def test_queued_requests_share_a_batch_and_get_their_own_rows():
    async def main():
        recorder = Recorder()
        batcher = Batcher(recorder, max_batch=4, max_wait_ms=0, max_queue=100)
        batcher.start()
        recorder.gate.clear()
        first = asyncio.create_task(batcher.submit("a", 1))
        await asyncio.sleep(0.05)  # "a" is running (held at the gate); the next ones queue up
        rest = [asyncio.create_task(batcher.submit(str(i), 1)) for i in range(6)]
        await asyncio.sleep(0.05)
        recorder.gate.set()
        results = await asyncio.gather(first, *rest)
        await batcher.close()
        return recorder.batches, results

    batches, results = run(main())
    assert results == ["result a"] + [f"result {i}" for i in range(6)]
    assert batches == [["a"], ["0", "1", "2", "3"], ["4", "5"]]  # max_batch=4 rows per pass


def test_rows_count_towards_max_batch_and_big_jobs_run_alone():
    async def main():
        recorder = Recorder()
        batcher = Batcher(recorder, max_batch=4, max_wait_ms=0)
        batcher.start()
        recorder.gate.clear()
        held = asyncio.create_task(batcher.submit("held", 1))
        await asyncio.sleep(0.05)
        jobs = [asyncio.create_task(batcher.submit(p, rows)) for p, rows in (("x", 3), ("y", 2), ("big", 9))]
        await asyncio.sleep(0.05)
        recorder.gate.set()
        await asyncio.gather(held, *jobs)
        await batcher.close()
        return recorder.batches

    assert run(main()) == [["held"], ["x"], ["y"], ["big"]]


def test_a_lone_request_does_not_wait_for_max_wait():
    async def main():
        batcher = Batcher(Recorder(), max_batch=64, max_wait_ms=2000)
        batcher.start()
        started = time.perf_counter()
        assert await batcher.submit("solo", 1) == "result solo"
        elapsed = time.perf_counter() - started
        await batcher.close()
        return elapsed

    assert run(main()) < 1.0  # far below the 2 s max_wait: nothing else was arriving


def test_waits_for_requests_being_received():
    async def main():
        recorder = Recorder()
        batcher = Batcher(recorder, max_batch=8, max_wait_ms=500)
        batcher.start()
        batcher.incoming(+1)  # the app is still reading a second request's body

        async def late():
            await asyncio.sleep(0.05)
            batcher.incoming(-1)
            return await batcher.submit("late", 1)

        results = await asyncio.gather(batcher.submit("early", 1), late())
        await batcher.close()
        return recorder.batches, results

    batches, results = run(main())
    assert batches == [["early", "late"]] and results == ["result early", "result late"]


def test_full_queue_raises_queue_full():
    async def main():
        recorder = Recorder()
        recorder.gate.clear()
        batcher = Batcher(recorder, max_batch=1, max_wait_ms=0, max_queue=2)
        batcher.start()
        running = asyncio.create_task(batcher.submit("running", 1))
        await asyncio.sleep(0.05)
        waiting = [asyncio.create_task(batcher.submit(f"w{i}", 1)) for i in range(2)]
        await asyncio.sleep(0.01)
        with pytest.raises(QueueFull):
            await batcher.submit("one too many", 1)
        assert batcher.depth == 2
        recorder.gate.set()
        await asyncio.gather(running, *waiting)
        await batcher.close()

    run(main())


def test_an_error_reaches_only_its_caller_and_timeouts_are_skipped():
    async def main():
        recorder = Recorder()
        batcher = Batcher(recorder, max_batch=8, max_wait_ms=0)
        batcher.start()
        recorder.gate.clear()
        held = asyncio.create_task(batcher.submit("held", 1))
        await asyncio.sleep(0.05)
        ok = asyncio.create_task(batcher.submit("ok", 1))
        bad = asyncio.create_task(batcher.submit("bad", 1))
        with pytest.raises(asyncio.TimeoutError):
            await batcher.submit("impatient", 1, timeout=0.01)
        recorder.gate.set()
        assert await ok == "result ok" and await held == "result held"
        with pytest.raises(ValueError, match="bad bad"):
            await bad
        await batcher.close()
        return recorder.batches

    assert run(main())[1] == ["ok", "bad"]  # the timed-out job was dropped, not computed


def test_close_drains_queued_work_then_refuses_new_work():
    async def main():
        recorder = Recorder()
        recorder.gate.clear()
        batcher = Batcher(recorder, max_batch=1, max_wait_ms=0)
        batcher.start()
        jobs = [asyncio.create_task(batcher.submit(str(i), 1)) for i in range(3)]
        await asyncio.sleep(0.05)
        closing = asyncio.create_task(batcher.close(timeout=5))
        await asyncio.sleep(0.05)
        with pytest.raises(ShuttingDown):
            await batcher.submit("late", 1)
        recorder.gate.set()
        await closing
        return await asyncio.gather(*jobs)

    assert run(main()) == ["result 0", "result 1", "result 2"]
