"""Large-block memory recycling for training loops.

A training step allocates and frees the same large arrays every step (activations and
gradients: 50-250 MB each for airbench94 at batch 1024). The C library serves blocks of more
than 32 MiB with a fresh ``mmap`` each time, and the operating system zeroes every fresh page
on first touch: a quarter of an airbench94 step on a 2-core EPYC went to zeroing pages.

fastconv's kernels take their large scratch buffers from a block cache that keeps freed
blocks for reuse, always. :func:`recycling` makes NumPy allocate the data of the arrays
created inside it from the same cache (a NumPy data-memory handler, NEP 49), so those arrays'
blocks too are reused by the next step instead of being returned to the OS; ``fit`` trains
inside it. ::

    from fastconv import memory

    with memory.recycling():
        for x, y in loader:
            ...                        # forward, backward, optimiser step

The cache is bounded by what was recently in use at once: in use + cached stays under 1.5x
the largest total in use during the last several steps' worth of allocations (blocks are
reused by size, so a step needs a little more than its peak), so a steady loop keeps what its
steps need and no more; :func:`release` hands every cached block
back to the OS at once, as leaving the outermost :func:`recycling` does. Only the place arrays
live changes: results are bit-identical with and without it.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Iterator

from . import _core

__all__ = ["recycling", "release", "stats"]

_active_lock = threading.Lock()
_active = 0  # recycling() blocks open in any thread


@contextlib.contextmanager
def recycling() -> Iterator[None]:
    """Allocate NumPy arrays made in this block from fastconv's block cache.

    NumPy's handler is context-local: the block applies to the current thread (or asyncio
    task) only, and arrays keep the handler that made them, so arrays created inside may be
    used and freed anywhere afterwards. Blocks may nest; leaving the last open block in the
    process frees the cached blocks (:func:`release`).
    """
    global _active
    with _active_lock:
        _active += 1
    previous = _core.set_numpy_handler(_core.numpy_recycling_handler())
    try:
        yield
    finally:
        _core.set_numpy_handler(previous)
        with _active_lock:
            _active -= 1
            last = _active == 0
        if last:
            release()


def release() -> int:
    """Free every block the cache holds for reuse (those in use are kept); returns the bytes
    freed."""
    return _core.block_cache_release()


def stats() -> dict:
    """The block cache's counters: ``in_use_bytes`` (cache-sized blocks handed out),
    ``cached_bytes`` and ``cached_blocks`` (free blocks kept for reuse), ``bound_bytes`` (the
    cap on in use + cached), ``hits`` and ``misses`` (requests of cache size served from the
    cache / from the OS). Blocks of less than 1 MiB bypass the cache and are not counted."""
    return _core.block_cache_stats()
