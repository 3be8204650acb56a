"""Where a batch runs (serve/placement.py): inline in the event loop only when short and measured faster."""

from __future__ import annotations

import asyncio
import threading

import pytest

from dlforge.serve.batcher import Batcher
from dlforge.serve.placement import HOLD_S, INLINE, MIN_BATCHES, ROUNDS, SETTLE, THREAD, WINDOW_S, Placement

from .conftest import app_client


def until_decided(placement: Placement, now: float, *, thread: float, inline: float, rows: int = 10) -> float:
    """Batches of `rows` back to back, each taking `thread` or `inline` seconds by the mode, until a comparison ends.
    Returns the clock."""
    before = placement.decided_at
    for _ in range(100_000):
        seconds = inline if placement.mode == INLINE else thread
        placement.observe(rows, now, now + seconds)
        now += seconds
        if placement.decided_at not in (None, before):
            return now
    raise AssertionError("no comparison ended")


def test_inline_only_after_a_measurement_and_within_the_budget():
    placement = Placement(inline_ms=5)
    placement.mode = INLINE
    assert not placement.inline(1)            # nothing measured yet: the thread
    placement.observe(10, 0.0, 0.002)          # 0.2 ms per row
    assert placement.per_row == pytest.approx(0.0002)
    assert placement.inline(25)                # 25 rows x 0.2 ms = 5 ms: within the budget
    assert not placement.inline(26)            # 5.2 ms: the thread
    placement.observe(10, 0.002, 0.012)        # a slow batch (1 ms per row) moves the estimate by EWMA 0.2
    assert placement.per_row == pytest.approx(0.8 * 0.0002 + 0.2 * 0.001)
    assert not placement.inline(25)
    before = placement.per_row
    placement.observe(10, 0.012, 0.032, cpu=0.002)  # in the thread: 20 ms of wall time, 2 ms of it CPU
    assert placement.per_row == pytest.approx(0.8 * before + 0.2 * 0.0002)


def test_zero_budget_never_inlines():
    placement = Placement(inline_ms=0)
    for i in range(300):
        placement.observe(10, i * 0.001, (i + 1) * 0.001)
    assert placement.mode == THREAD and not placement.inline(1) and placement.rates == {}
    with pytest.raises(ValueError, match="inline_ms must be >= 0; got -1"):
        Placement(inline_ms=-1)


def test_keeps_the_mode_that_serves_more_rows_per_second_then_compares_again():
    placement = Placement(inline_ms=5)
    modes = []
    now = 0.0
    while placement.decided_at is None:  # thread 5,000 rows/s, inline 10,000: windows alternate, thread first
        seconds = 0.001 if placement.mode == INLINE else 0.002
        if not modes or modes[-1][0] != placement.mode:
            modes.append((placement.mode, now))
        placement.observe(10, now, now + seconds)
        now += seconds
    assert [mode for mode, _ in modes] == [THREAD, INLINE] * ROUNDS
    # Each window: WINDOW_S, after SETTLE batches left out following a switch (the first window has none).
    assert [b - a for (_, a), (_, b) in zip(modes, modes[1:])] == pytest.approx(
        [WINDOW_S] + [WINDOW_S + SETTLE * 0.001, WINDOW_S + SETTLE * 0.002] * (ROUNDS - 1), abs=1e-6)
    assert placement.mode == INLINE and placement.rates == {THREAD: pytest.approx(5000), INLINE: pytest.approx(10000)}
    decided = placement.decided_at
    assert decided == now
    for _ in range(100):                                           # slower now (2,500 rows/s), but held for HOLD_S
        placement.observe(10, now, now + 0.004)
        now += 0.004
    assert placement.mode == INLINE and placement.decided_at == decided
    now = decided + HOLD_S                                         # the next comparison: inline 2,500, thread 5,000
    until_decided(placement, now, thread=0.002, inline=0.004)
    assert placement.mode == THREAD and placement.rates == {THREAD: pytest.approx(5000), INLINE: pytest.approx(2500)}


def test_a_tie_keeps_the_thread():
    placement = Placement(inline_ms=5)
    until_decided(placement, 0.0, thread=0.0020, inline=0.00195)  # 5,000 vs 5,128 rows/s: inline < 5% better
    assert placement.mode == THREAD and placement.rates[INLINE] == pytest.approx(5128.2, rel=1e-4)


def test_an_idle_gap_restarts_the_window():
    placement = Placement(inline_ms=5)
    placement.observe(10, 0.0, 0.002)
    now = 0.002 + 2 * WINDOW_S
    placement.observe(10, now, now + 0.002)  # after a pause longer than a window: the server waited for traffic
    now += 0.002
    for _ in range(MIN_BATCHES - 1):
        placement.observe(10, now, now + 0.05)
        now += 0.05
    assert placement.mode == THREAD  # 0.15 s but 3 batches since the gap (the one that ended it does not count)
    placement.observe(10, now, now + 0.05)
    assert placement.mode == INLINE  # the thread's first window is complete: the inline window next


def test_the_batcher_runs_a_short_batch_in_the_loop_thread():
    """With the inline mode chosen and a measured per-row time, the batch runs in the loop's own thread."""
    threads = []

    def run(payloads):
        threads.append(threading.current_thread().name)
        return [f"result {p}" for p in payloads]

    async def main():
        batcher = Batcher(run, max_batch=8, max_wait_ms=0, inline_ms=1000)  # any measured batch fits
        batcher.start()
        first = await batcher.submit("a", 1)  # the thread: nothing measured yet
        batcher.placement.mode = INLINE
        second = await batcher.submit("b", 1)
        await batcher.close()
        return first, second

    assert asyncio.run(main()) == ("result a", "result b")
    assert threads[0].startswith("dlforge-infer") and threads[1] == threading.main_thread().name


def test_an_error_inline_reaches_only_its_caller():
    def run(payloads):
        return [ValueError(f"bad {p}") if p == "bad" else f"result {p}" for p in payloads]

    async def main():
        batcher = Batcher(run, max_batch=8, max_wait_ms=0, inline_ms=1000)  # any measured batch fits
        batcher.start()
        await batcher.submit("warm", 1)
        batcher.placement.mode = INLINE
        results = await asyncio.gather(batcher.submit("ok", 1), batcher.submit("bad", 1), return_exceptions=True)
        await batcher.close()
        return results

    ok, bad = asyncio.run(main())
    assert ok == "result ok" and isinstance(bad, ValueError) and str(bad) == "bad bad"


def test_inline_batches_answer_as_the_inference_thread_does(digits_run, digits_predictor):
    """The same requests (200s, 422s, 415, 400, gzip, multipart) give the same status, bytes and headers whichever
    thread runs their batches."""
    from .test_serve_fast_path import REQUESTS, answers

    with app_client(digits_run, digits_predictor, inline_ms=1000) as client:  # any measured batch fits
        app = client.app_ref
        assert client.get("/v1/model").json()["serving"]["inline_ms"] == 1000
        runtime, placement = app.state.serve.runtime, app.state.batcher.placement
        ran_in = []
        original = runtime.run

        def run(jobs):
            ran_in.append(threading.current_thread().name)
            return original(jobs)

        runtime.run = run
        placement.mode, placement.decided_at = THREAD, float("inf")  # held: no comparison during the test
        in_thread = answers(client, REQUESTS)
        assert ran_in and all(name.startswith("dlforge-infer") for name in ran_in)
        ran_in.clear()
        placement.mode = INLINE
        inline = answers(client, REQUESTS)
        assert ran_in and not any(name.startswith("dlforge-infer") for name in ran_in)
        assert inline == in_thread
        assert [status for status, *_ in inline] == [200, 200, 422, 422, 422, 422, 415, 200, 400, 415, 200, 422]
