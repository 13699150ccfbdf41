"""Keep freed memory in the process (glibc's malloc on Linux), so that large tensors stop costing page faults.

torch allocates CPU tensors with ``malloc``. glibc serves every block of more than
32 MB (and smaller ones, up to a threshold that adapts) with a fresh ``mmap`` and
unmaps it on ``free``; it also returns the free top of the heap to the system once
it exceeds 128 KB. The next tensor of that size then starts as untouched pages, and
the kernel faults in and zeroes every 4 KB page on first write. A training step of a
pixel-level model allocates and frees hundreds of megabytes (the 16 x 1025 x 512
feed-forward activations are 34 MB; the exactly relative attention's per-row
intermediates 75 MB per layer), so on a 2-core machine page faults (about a million
per step) took 0.5 s of ExactRelativePerformer's 1.8 s training step at the defaults;
Performer's, with fewer large intermediates, hardly changes.

:func:`keep_freed_memory` tells glibc to serve all blocks from the heap
(``M_MMAP_MAX = 0``) and to keep freed memory (``M_TRIM_THRESHOLD`` at its maximum):
after the first steps, every allocation reuses pages the process already has. The
cost is that the process holds on to its peak memory until it exits, which a
training or evaluation run does anyway. The ``relative-performer`` command calls it
at start, and :func:`relative_performer.training.run.train` before training
(``RELATIVE_PERFORMER_MALLOC=default`` turns both off); call it yourself at the top
of your own training loops. Each run's ``config.json`` records the setting of every
session (``sessions[i]["machine"]["malloc"]``). Elsewhere (other C libraries, macOS,
Windows) it does nothing and returns False.
"""

from __future__ import annotations

import ctypes
import os
import sys

ENV = "RELATIVE_PERFORMER_MALLOC"
_M_TRIM_THRESHOLD = -1  # glibc's mallopt parameters (malloc.h)
_M_MMAP_MAX = -4
_INT_MAX = 2**31 - 1

_applied = False


def keep_freed_memory() -> bool:
    """Set glibc's malloc to reuse freed memory instead of returning it; True where that took effect."""
    global _applied
    if _applied:
        return True
    if os.environ.get(ENV, "").strip().lower() == "default" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None)
    except OSError:
        return False
    if not hasattr(libc, "gnu_get_libc_version") or not hasattr(libc, "mallopt"):  # glibc only (musl's is a no-op)
        return False
    libc.mallopt.argtypes, libc.mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _applied = libc.mallopt(_M_MMAP_MAX, 0) == 1 and libc.mallopt(_M_TRIM_THRESHOLD, _INT_MAX) == 1
    return _applied


def malloc_policy() -> str:
    """``"keep"`` once :func:`keep_freed_memory` took effect in this process, else ``"default"`` (changes nothing)."""
    return "keep" if _applied else "default"
