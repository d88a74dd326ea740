"""Give memory the process has freed back to the system, between the stages of a long pass.

Three allocators hold memory after it is freed: Python's (garbage with reference cycles
waits for the collector), Arrow's pool (mimalloc or jemalloc keep freed pages for reuse)
and glibc's ``malloc`` (the numpy arrays of pandas: freed chunks stay in the heap, and
once a large block is freed its threshold for using ``mmap`` rises, so later large
blocks come from the heap as well). None of this is a leak, but the memory a machine
needs is the resident peak, and what is kept counts in it: on the bench's 100,000-firm
world, ``scf monitor`` was resident at 6.55 GB after loading the dataset, of which ~2.4 GB
was live data, and what each as-of left behind grew from one as-of to the next
(bench/bench_monitor.py). :func:`give_back` asks all three to return what is free;
DuckDB's own allocator already purges in the background (:mod:`scf_engine.duck`).

It changes no result, only when memory goes back. ``malloc_trim`` is glibc's; elsewhere
(macOS, musl) that step is skipped.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
from contextlib import contextmanager
from functools import lru_cache

import pyarrow as pa


@lru_cache(maxsize=1)
def _malloc_trim():
    """glibc's ``malloc_trim``, or None where the C library has none."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    return getattr(libc, "malloc_trim", None) if libc is not None else None


def release_arrow() -> None:
    """Return the free memory of Arrow's pool only: cheap enough between the columns or
    files of one step (no garbage collection, no heap trim), where the step itself has
    just let an Arrow buffer go."""
    pa.default_memory_pool().release_unused()


def give_back(generation: int = 2) -> None:
    """Collect cyclic garbage, then return the free memory of Arrow's pool and of the C
    heap to the system. ``generation`` below 2 collects only the young objects (what the
    step just made and dropped): cheap whatever the process holds, where a full
    collection walks every tracked object (see :func:`frozen`)."""
    gc.collect(generation)
    release_arrow()
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@contextmanager
def frozen():
    """Within: every object alive on entry (the imported libraries, the policies, what
    the caller holds) out of the cyclic garbage collector's sight (``gc.freeze``).

    Each :func:`give_back` is a full collection, and a full collection walks every
    tracked object: the imports of a pass (pandas, MLflow, SHAP, LightGBM, networkx)
    alone are ~340,000 of them, 0.17 s a walk, and ``scf monitor`` at 10,000 firms over
    12 as-of dates gave back 28 times (6.7 s of its 53 s wall, nearly all of it in
    ``gc.collect``); the collector's own generation-2 passes walk them too. What is
    created inside is collected as before, and frozen objects are still freed by
    reference counting. On exit the freeze is undone (unless something had frozen
    objects before, as ``scf serve`` does: its freeze is left as it was), so reference
    cycles among what was frozen are collected again afterwards. Changes no result."""
    outer = gc.get_freeze_count() > 0
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        if not outer:
            gc.unfreeze()


__all__ = ["frozen", "give_back", "release_arrow"]
