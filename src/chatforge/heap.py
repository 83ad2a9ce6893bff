"""The process's memory: what is resident (for load logs and benchmarks), and freed heap handed
back to the system after a large one-off build.

Why hand it back: building a big vocabulary (the Rust tokenizer of a 262,144-token GGUF, llguidance's copy
of it) allocates and frees hundreds of thousands of small objects; glibc keeps the freed pages
in its arenas, so the process stays ~35 MiB larger than what it holds, for good. `malloc_trim`
returns them. It frees nothing in use: RSS after it is what the process really holds. Elsewhere
than glibc it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os


@functools.cache
def _malloc_trim():
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):  # not glibc
        return None


def return_free_heap() -> None:
    """Give the heap's free pages back to the system (after loading, not in a hot path: ~10 ms)."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def resident_bytes() -> int | None:
    """This process's resident set size (Linux /proc; None elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None
