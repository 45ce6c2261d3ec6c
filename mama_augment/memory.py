"""Handing freed memory back to the system before a phase that allocates a lot.

Arrow's allocator keeps the memory of freed tables for its own reuse, and the C
library keeps freed heap (Python objects of a finished phase) in its arenas: neither
shows as free to the system, so a large allocation afterwards comes on top of them, at
the peak of a run. Both are only hints; nothing is lost when they do nothing.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import gc


def release_freed() -> None:
    """Collect garbage, then return Arrow's unused pool memory and the C library's free
    heap (``malloc_trim``, glibc only) to the system."""
    gc.collect()
    with contextlib.suppress(ImportError):
        import pyarrow as pa

        pa.default_memory_pool().release_unused()
    with contextlib.suppress(OSError, AttributeError, TypeError):
        name = ctypes.util.find_library("c")
        if name:
            ctypes.CDLL(name).malloc_trim(0)
