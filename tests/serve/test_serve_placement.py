"""Where a batch runs (serve/placement.py): inline in the event loop only when short and measured faster."""

from __future__ import annotations

import asyncio
import threading

import pytest

from dlforge.serve.batcher import Batcher
from dlforge.serve.placement import HOLD_S, INLINE, MIN_BATCHES, THREAD, WINDOW_S, Placement


def until_measured(placement: Placement, now: float, *, rows: int, seconds: float) -> float:
    """Batches of `rows` taking `seconds` each, back to back, until a window's rate is recorded. Returns the clock."""
    before = dict(placement.rates)
    for _ in range(10_000):
        placement.observe(rows, now, now + seconds)
        now += seconds
        if placement.rates and placement.rates != before:
            return now
    raise AssertionError("no window completed")


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


def test_zero_budget_never_inlines():
    placement = Placement(inline_ms=0)
    for i in range(300):
        placement.observe(10, i * 0.001, (i + 1) * 0.001)
    assert placement.mode == THREAD and not placement.inline(1) and placement.rates == {}
    with pytest.raises(ValueError, match="inline_ms must be >= 0; got -1"):
        Placement(inline_ms=-1)


def test_keeps_the_mode_that_serves_more_rows_per_second_then_compares_again():
    placement = Placement(inline_ms=5)
    now = until_measured(placement, 0.0, rows=10, seconds=0.002)   # thread: 5,000 rows/s
    assert placement.rates == {THREAD: pytest.approx(5000)} and placement.mode == INLINE  # now measure inline
    now = until_measured(placement, now, rows=10, seconds=0.001)   # inline: 10,000 rows/s
    assert placement.mode == INLINE and placement.rates[INLINE] == pytest.approx(10000)
    decided = placement.decided_at
    assert decided == pytest.approx(now)
    for _ in range(100):                                           # slower now (2,500 rows/s), but held for HOLD_S
        placement.observe(10, now, now + 0.004)
        now += 0.004
    assert placement.mode == INLINE and placement.decided_at == decided
    now = decided + HOLD_S                                         # the next comparison: inline first, then thread
    now = until_measured(placement, now, rows=10, seconds=0.004)   # inline: 2,500 rows/s
    assert placement.mode == THREAD and placement.rates == {INLINE: pytest.approx(2500)}
    until_measured(placement, now, rows=10, seconds=0.002)         # thread: 5,000 rows/s wins
    assert placement.mode == THREAD and placement.decided_at is not None


def test_a_tie_keeps_the_thread():
    placement = Placement(inline_ms=5)
    now = until_measured(placement, 0.0, rows=10, seconds=0.0020)  # thread: 5,000 rows/s
    until_measured(placement, now, rows=10, seconds=0.00195)       # inline: 5,128 rows/s, < 5% better
    assert placement.mode == THREAD and placement.rates[INLINE] == pytest.approx(5128.2, rel=1e-4)


def test_an_idle_gap_restarts_the_window():
    placement = Placement(inline_ms=5)
    placement.observe(10, 0.0, 0.002)
    placement.observe(10, 0.002 + 2 * WINDOW_S, 0.004 + 2 * WINDOW_S)  # the server waited for traffic
    now = 0.004 + 2 * WINDOW_S
    for _ in range(MIN_BATCHES - 2):
        placement.observe(10, now, now + 0.05)
        now += 0.05
    assert placement.rates == {}  # 0.3 s but 6 batches since the gap: not a window yet
    for _ in range(2):
        placement.observe(10, now, now + 0.05)
        now += 0.05
    assert placement.rates == {THREAD: pytest.approx(80 / 0.4)}  # the batch that ended the gap does not count


def test_the_batcher_runs_a_short_batch_in_the_loop_thread():
    """With the inline mode chosen and a measured per-row time, the batch runs in the loop's own thread."""
    threads = []

    def run(payloads):
        threads.append(threading.current_thread().name)
        return [f"result {p}" for p in payloads]

    async def main():
        batcher = Batcher(run, max_batch=8, max_wait_ms=0, inline_ms=5)
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
        batcher = Batcher(run, max_batch=8, max_wait_ms=0, inline_ms=5)
        batcher.start()
        await batcher.submit("warm", 1)
        batcher.placement.mode = INLINE
        results = await asyncio.gather(batcher.submit("ok", 1), batcher.submit("bad", 1), return_exceptions=True)
        await batcher.close()
        return results

    ok, bad = asyncio.run(main())
    assert ok == "result ok" and isinstance(bad, ValueError) and str(bad) == "bad bad"
