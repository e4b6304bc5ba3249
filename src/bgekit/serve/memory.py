"""Give freed heap memory back to the system between model calls.

A server runs the model on inputs of ever-changing shapes. glibc's allocator raises its mmap threshold
after each large block is freed, so later activations of that size come from the heap, and the heap's
free pieces are kept rather than returned: resident memory climbs for as long as new shapes arrive (about
+17% over 80 calls of random shapes on all-MiniLM-L6-v2, flat with ``malloc_trim`` after each call).
``malloc_trim(0)`` returns the free pages; the worker calls it between groups, at most once per interval.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import time
from collections.abc import Callable

logger = logging.getLogger(__name__)


def heap_trimmer() -> Callable[[], int] | None:
    """glibc's ``malloc_trim(0)`` as a function, or ``None`` where the C library has none (musl, macOS)."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else ctypes.CDLL("libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return lambda: int(trim(0))


class HeapTrimmer:
    """Calls ``malloc_trim(0)`` when at least ``interval`` seconds have passed since the last call.

    Example:
        >>> trimmer = HeapTrimmer(interval=0.0)
        >>> trimmer.maybe_trim() in (True, False)
        True
    """

    def __init__(self, interval: float = 1.0) -> None:
        self.interval = interval
        self._trim = heap_trimmer()
        self._last: float | None = None  # never: the first call trims (monotonic time may start near 0)

    def maybe_trim(self) -> bool:
        """Trim if the interval has passed; whether a trim ran."""
        if self._trim is None:
            return False
        now = time.monotonic()
        if self._last is not None and now - self._last < self.interval:
            return False
        self._last = now
        self._trim()
        return True
