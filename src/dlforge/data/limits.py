"""How much data this machine can hold: the bound that every reader and decoder checks before it allocates.

A file larger than memory, or an image size that decodes a split into more floats than memory holds (a
`size: [100000, 100000]` recipe asks for 51.8 TB), is refused with the figure, rather than failing deep in an
allocator with a traceback, or swapping for an hour first.
"""

from __future__ import annotations

import os

from dlforge.core.errors import DataError


def physical_memory() -> int | None:
    """Bytes of RAM, or None where the platform does not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def check_fits(n_bytes: float, *, what: str, where: str, hint: str) -> None:
    """Refuse `what` when it needs more bytes than the machine has."""
    memory = physical_memory()
    if memory and n_bytes > memory:
        raise DataError(f"{what} needs {n_bytes / 2**30:,.1f} GB, more than this machine's memory "
                        f"({memory / 2**30:.1f} GB)", where=where, hint=hint)
