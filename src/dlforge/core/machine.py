"""What machine this is, for the figures a report or benchmark states beside its numbers."""

from __future__ import annotations

import platform
from pathlib import Path


def cpu_model() -> str:
    """The CPU's model name as the kernel reports it ("AMD EPYC"), else what `platform` knows, else "?"."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "?"


__all__ = ["cpu_model"]
