"""What machine this is, for the figures a report or benchmark states beside its numbers."""

from __future__ import annotations

import platform
from pathlib import Path


def cpuinfo() -> str:
    """/proc/cpuinfo's text ("" where there is none)."""
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def cpu_model() -> str:
    """The CPU's model name as the kernel reports it ("AMD EPYC"), else what `platform` knows, else "?"."""
    for line in cpuinfo().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "?"


def cpu_flags(text: str | None = None) -> set[str]:
    """The CPU's feature flags ("avx2", "avx512_vnni", ...) from /proc/cpuinfo's text (`text`, else this machine's)."""
    text = cpuinfo() if text is None else text
    return {word for line in text.splitlines() if line.startswith("flags") for word in line.split(":", 1)[-1].split()}


__all__ = ["cpu_flags", "cpu_model", "cpuinfo"]
