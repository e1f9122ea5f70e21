"""A short multi-threaded memory-bandwidth probe (STREAM-style copy), the roofline's denominator.

numpy releases the GIL for large copies, so Python threads saturate memory like C threads.
"""

from __future__ import annotations

import threading
import time


def measure_bandwidth(threads: int, mib_per_thread: int = 128, seconds: float = 1.0) -> dict:
    """Copy bandwidth in GB/s (bytes read + written, 10⁹), best of repeated passes.

    Buffers are several times larger than any last-level cache, so this measures DRAM.
    """
    import numpy as np  # a tenth of a second, paid only when the probe is not cached

    n = mib_per_thread * 1024 * 1024 // 8
    srcs = [np.ones(n) for _ in range(threads)]
    dsts = [np.zeros(n) for _ in range(threads)]
    for d in dsts:
        d.fill(1.0)  # fault the pages in before timing
    barrier = threading.Barrier(threads + 1)

    def copy(i: int) -> None:
        barrier.wait()
        np.copyto(dsts[i], srcs[i])
        barrier.wait()

    best = 0.0
    passes = 0
    deadline = time.perf_counter() + seconds
    while passes < 3 or time.perf_counter() < deadline:
        workers = [threading.Thread(target=copy, args=(i,)) for i in range(threads)]
        for w in workers:
            w.start()
        barrier.wait()
        t0 = time.perf_counter()
        barrier.wait()
        elapsed = time.perf_counter() - t0
        for w in workers:
            w.join()
        best = max(best, 2 * 8 * n * threads / elapsed / 1e9)
        passes += 1
    return {"copy_gbps": round(best, 2), "threads": threads, "buffer_mib": mib_per_thread * threads,
            "passes": passes}
