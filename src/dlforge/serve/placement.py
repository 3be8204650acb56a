"""Where a batch runs: the inference thread, or inline in the event loop thread when that is measured to be faster.

The inference thread lets the event loop read and answer requests while a forward pass runs, but only while the
pass is outside the GIL; the Python around it (decoding images, shaping the answer) holds the GIL either way. Each
batch also costs a hand-off between the two threads: a wake-up, the GIL passed back and forth (the loop gives it
up only every `sys.getswitchinterval()`), on a quiet multi-core machine often across cores. For a model whose
forward pass is short next to that, the thread buys little parallelism and costs CPU (round 9 measured onnx's CPU
per request at 0.15 ms on a busy machine and 0.25 ms on a quiet one, with the same code). The other way round, on a
machine busy with other processes the thread wins even for such a model, at the same CPU per request: the
scheduler shares the CPU per thread, and two threads get two shares (MNIST CNN on onnxruntime, 2-core AMD EPYC,
load ~3.7: 1,618-1,955 requests/s with the thread, 1,274-1,300 with every batch inline; benchmarks/compress.md
round 10).

No rule on the model tells which case a server is in (it depends on the model, the runtime, the CPU and the
load), so `Placement` measures it while serving:

- **Safety first**: a batch runs inline only if its predicted duration (its rows times the measured seconds per
  row: wall time inline, CPU time in the inference thread) is at most `inline_ms`, so the loop is never blocked longer than that (default 5 ms, the batcher's own
  `max_wait_ms`: a delay the server already accepts adding to a request). Other batches use the thread. The first
  batches, before any measurement, use the thread.
- **Then speed**: while busy, the server alternates `WINDOW_S` in one mode and `WINDOW_S` in the other, `ROUNDS`
  times each (alternating, so that a change in the machine's other load falls on both), and keeps the mode that
  served more rows per second over its windows (inline must win by `MARGIN`; on a tie the thread stays) for
  `HOLD_S`, then compares again: a change of load or a slower model is seen within `HOLD_S`. The losing mode's
  windows cost at most ROUNDS * WINDOW_S / HOLD_S (6%) of the time, less its own throughput.
`inline_ms=0` keeps every batch in the thread.
"""

from __future__ import annotations

import logging

log = logging.getLogger("dlforge.serve")

THREAD, INLINE = "thread", "inline"
WINDOW_S = 0.1    # one window: ~200 rows at 2,000 requests/s, a dozen batches
ROUNDS = 3        # windows per mode and comparison; one pair of 0.2 s windows was swayed by other jobs' bursts
MIN_BATCHES = 4   # a window with fewer batches says too little
SETTLE = 2        # batches after a switch left out: they serve the queue the other mode left (a backlog read in
                  # parallel flatters inline windows: they measured 5-25% faster than inline really is under load)
HOLD_S = 5.0      # how long the faster mode is kept before the next comparison
MARGIN = 1.05     # inline must serve 5% more rows per second: on a tie the thread, which never blocks the loop, stays
EWMA = 0.2        # weight of the newest batch in the seconds-per-row estimate


class Placement:
    """`inline(rows)` → True to run this batch in the loop; `observe(rows, started, finished)` after every batch.

    A window measures the mode as a policy: in inline mode a batch too big for `inline_ms` still runs in the
    thread, and counts towards the inline window."""

    def __init__(self, *, inline_ms: float):
        if inline_ms < 0:
            raise ValueError(f"inline_ms must be >= 0; got {inline_ms}")
        self.budget = inline_ms / 1000.0
        self.per_row: float | None = None   # measured seconds per row, either mode
        self.mode = THREAD                  # the mode being measured or kept
        self.rates: dict[str, float] = {}   # rows per second of each mode in the last comparison
        self.decided_at: float | None = None  # when the last comparison ended (None: measuring)
        self._totals = {THREAD: [0, 0.0, 0], INLINE: [0, 0.0, 0]}  # this comparison's rows, seconds, windows
        self._window_start: float | None = None
        self._window_rows = 0
        self._window_batches = 0
        self._last_finished: float | None = None
        self._settle = 0

    def fits(self, rows: int) -> bool:
        """The batch is predicted to take at most `inline_ms`."""
        return self.per_row is not None and rows * self.per_row <= self.budget

    def inline(self, rows: int) -> bool:
        return self.budget > 0 and self.mode == INLINE and self.fits(rows)

    def observe(self, rows: int, started: float, finished: float, *, cpu: float | None = None) -> None:
        """A batch of `rows` ran from `started` to `finished`; `cpu`: its CPU seconds in the inference thread, which
        predict an inline run better than its wall time there (that also counts waiting for the GIL)."""
        seconds = finished - started
        per_row = (seconds if cpu is None else cpu) / max(rows, 1)
        self.per_row = per_row if self.per_row is None else (1 - EWMA) * self.per_row + EWMA * per_row
        if self.budget <= 0:
            return
        previous, self._last_finished = self._last_finished, finished
        if previous is not None and started - previous > WINDOW_S:
            self._window_start = None  # the server was idle: no saturation to measure, the window says nothing
            return
        if self.decided_at is not None:
            if finished - self.decided_at < HOLD_S:
                return
            self.decided_at = None  # time to compare again, starting with the current mode
            self._totals = {THREAD: [0, 0.0, 0], INLINE: [0, 0.0, 0]}
        if self._settle:
            self._settle -= 1
            return
        if self._window_start is None:  # from the previous batch's end: a window spans whole batch cycles
            self._window_start, self._window_rows, self._window_batches = previous or started, 0, 0
        self._window_rows += rows
        self._window_batches += 1
        elapsed = finished - self._window_start
        if elapsed < WINDOW_S or self._window_batches < MIN_BATCHES:
            return
        total = self._totals[self.mode]
        total[0] += self._window_rows
        total[1] += elapsed
        total[2] += 1
        self._window_start = None
        if min(t[2] for t in self._totals.values()) < ROUNDS:  # the other mode's window next
            self.mode = INLINE if self.mode == THREAD else THREAD
            self._settle = SETTLE
            return
        self.rates = {mode: rows / seconds for mode, (rows, seconds, _) in self._totals.items()}
        mode = INLINE if self.rates[INLINE] > MARGIN * self.rates[THREAD] else THREAD
        self._settle = SETTLE if mode != self.mode else 0
        self.mode, self.decided_at = mode, finished
        log.debug("batches run %s for %g s: %.0f rows/s inline, %.0f in the inference thread", self.mode, HOLD_S,
                  self.rates[INLINE], self.rates[THREAD])
