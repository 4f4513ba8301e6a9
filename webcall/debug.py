"""Leak hunting, only with WEBCALL_DEBUG_OBJECTS=1 (tools/soak.py): this process's live objects by type and
malloc's view of its heap. The REST API answers them for the control process, each media worker for itself.
"""

from __future__ import annotations

import collections
import ctypes
import gc
from typing import Any

DEBUG_ENV = "WEBCALL_DEBUG_OBJECTS"  # "1": GET /debug/objects on the REST port (live objects by type)


class _Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                     "fsmblks", "uordblks", "fordblks", "keepcost")]


def debug_heap(trim: bool = False, collect: bool = False) -> dict[str, Any]:
    """glibc's mallinfo2 for this process, in KB (empty where there is no glibc ≥ 2.33); `collect`: after a full
    garbage collection (what only the cyclic collector frees is then not counted), with what it found."""
    found = gc.collect() if collect else None
    try:
        libc = ctypes.CDLL(None)
        libc.mallinfo2.restype = _Mallinfo2
        if trim:
            libc.malloc_trim(0)
        info = libc.mallinfo2()
    except (OSError, AttributeError):
        return {}
    return {"in_use_kb": (info.uordblks + info.hblkhd) // 1024, "free_kb": info.fordblks // 1024,
            "arena_kb": info.arena // 1024, "mmap_kb": info.hblkhd // 1024, "collected": found,
            "gc_counts": gc.get_count(), "gc_stats": gc.get_stats()}


def debug_objects(top: int) -> dict[str, Any]:
    """This process's live objects by type (after a collection) and, with tracemalloc on, its top allocation
    sites. Also answered by each media worker (workers/media_worker.py) when WEBCALL_DEBUG_OBJECTS=1."""
    gc.collect()
    counts = collections.Counter(type(o).__qualname__ for o in gc.get_objects())
    out: dict[str, Any] = {"types": dict(counts.most_common(top))}
    import tracemalloc
    if tracemalloc.is_tracing():
        snapshot = tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(False, tracemalloc.__file__)])
        out["sites"] = [{"site": str(stat.traceback), "kb": stat.size // 1024, "count": stat.count}
                        for stat in snapshot.statistics("lineno")[:top]]
    return out
