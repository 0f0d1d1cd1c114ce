"""Keep freed memory in the process, so that large temporary arrays cost no page faults.

A training step allocates and frees the same large arrays every time (im2col matrices,
activations, their cotangents). By default glibc's malloc hands blocks above 128 KiB straight
back to the operating system when they are freed, and the next step then takes a page fault
for every 4 KiB of its new arrays when it first writes them: on the CNN benchmark about 3,500
faults per step, a third to a half of the step's time. :func:`keep_freed_memory` raises
glibc's thresholds so that freed blocks stay in the heap and are reused. The price: the
process's resident memory stays at its peak, as with the caching allocators of other
frameworks.

Importing :mod:`tinyfn.kernels` calls it once, unless the environment variable
``TINYFN_KEEP_FREED_MEMORY`` is ``0``.
"""

from __future__ import annotations

import ctypes
import os

__all__ = ["keep_freed_memory"]

_M_TRIM_THRESHOLD = -1  # parameter numbers of glibc's mallopt (malloc.h)
_M_MMAP_THRESHOLD = -3


def keep_freed_memory(mmap_threshold: int = 32 << 20, trim_threshold: int = 1 << 30) -> bool:
    """Ask glibc's malloc to serve blocks below ``mmap_threshold`` bytes (at most 32 MiB)
    from its heap and to keep up to ``trim_threshold`` bytes of freed heap for reuse.

    Returns True if both settings took effect, False where the C library is not glibc
    (macOS, Windows, musl), which keep their own policies.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, mmap_threshold)) and bool(mallopt(_M_TRIM_THRESHOLD, trim_threshold))


if os.environ.get("TINYFN_KEEP_FREED_MEMORY", "1") != "0":
    keep_freed_memory()
