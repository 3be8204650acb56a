"""A request to stop training between two steps, set from outside the loop (a signal handler, another thread).

The trainer never installs signal handlers: inside a library caller's process, SIGINT and SIGTERM belong
to the caller (a `timeout` SIGTERM once became TrainingInterrupted). Only the `dlforge train` command
turns Ctrl-C/SIGTERM into `stop.set()`. The trainer checks `is_set()` after each step (a Python flag
read, no host sync), so a step is never cut in half: it checkpoints and raises TrainingInterrupted.
"""

from __future__ import annotations

import threading


class StopRequest(threading.Event):
    """`set()` asks the trainer to checkpoint after the current step and raise TrainingInterrupted.

    Any object with `is_set()` works in its place (a plain `threading.Event` does).
    """


__all__ = ["StopRequest"]
