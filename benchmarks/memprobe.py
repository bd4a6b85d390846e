"""Peak memory of one "first batch of a new epoch" in a fresh interpreter.

``python -m benchmarks.memprobe VARIANT N`` prints one JSON line with

* ``rss_peak_bytes``: the rise of the peak resident set (``VmHWM``, reset to the current RSS through
  ``/proc/self/clear_refs`` just before the call; ``ru_maxrss`` where that is not allowed). It sees
  every allocation (Python, numpy, torch), page-granular;
* ``tracemalloc_peak_bytes``: the peak of Python and numpy heap allocations (torch's allocator is
  invisible to tracemalloc), from a second call; null where tracing would be too slow.

A fresh process per measurement means no freed-but-resident memory from earlier work hides an
allocation.
"""

from __future__ import annotations

import gc
import json
import re
import resource
import sys
import tracemalloc
from pathlib import Path

__all__ = ["peak_memory"]

_TRACE_LIMIT = 20_000_000  # Python ints above which tracemalloc tracing is not attempted


def _status_kib(field: str) -> int | None:
    try:
        match = re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M)
    except OSError:
        return None
    return int(match.group(1)) if match else None


def _reset_peak() -> str:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return "ru_maxrss delta (peak could not be reset)"
    return "VmHWM delta (peak reset via /proc/self/clear_refs)"


def _peak_kib() -> int:
    hwm = _status_kib("VmHWM")
    return hwm if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def peak_memory(variant: str, n: int) -> dict[str, object]:
    from benchmarks.sampler_variants import FIRST_BATCH, PYTHON_LIST_VARIANTS

    first_batch = FIRST_BATCH[variant]
    first_batch(1_000, 0)  # warm-up: lazy imports and caches do not count
    gc.collect()
    method = _reset_peak()
    before = _peak_kib()
    first_batch(n, 1)
    rss = max(0, _peak_kib() - before) * 1024
    gc.collect()
    traced = None
    if variant not in PYTHON_LIST_VARIANTS or n <= _TRACE_LIMIT:
        tracemalloc.start()
        first_batch(n, 2)
        traced = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return {"rss_peak_bytes": rss, "tracemalloc_peak_bytes": traced, "method": method}


if __name__ == "__main__":
    print(json.dumps(peak_memory(sys.argv[1], int(sys.argv[2]))))
