"""Benchmark-only worker entry that makes llama.cpp a known fraction slower (gate_power.py).

Never used by tokbench itself: gate_power.py (and tests/test_ab.py, at a 2/3 slowdown) point an
A/B arm's interpreter at a wrapper script that runs this file instead of
`python -m backends.worker`. It patches llama-cpp-python so that every llama_decode …
llama_synchronize span (one prefill, or one decoded token) is followed by a busy-wait of
FACTOR × the span's own measured time, inside the timed region, then runs the ordinary worker.
FACTOR = 1 / (1 − s) − 1 makes tokens/s exactly s lower (s = 0.10 → 0.111).

    TOKBENCH_BENCH_SLOWDOWN=0.10 python benchmarks/slowdown_worker.py
"""

from __future__ import annotations

import os
import runpy
import time


def _patch(slowdown: float) -> None:
    import llama_cpp.llama_cpp as ll

    factor = 1 / (1 - slowdown) - 1
    decode, synchronize = ll.llama_decode, ll.llama_synchronize
    span_start: list[int] = []

    def slow_decode(ctx: object, batch: object) -> int:
        if not span_start:
            span_start.append(time.perf_counter_ns())
        return decode(ctx, batch)

    def slow_synchronize(ctx: object) -> None:
        synchronize(ctx)
        if span_start:
            end = time.perf_counter_ns()
            until = end + int(factor * (end - span_start.pop()))
            while time.perf_counter_ns() < until:
                pass

    ll.llama_decode, ll.llama_synchronize = slow_decode, slow_synchronize


if __name__ == "__main__":
    slowdown = float(os.environ.get("TOKBENCH_BENCH_SLOWDOWN", "0"))
    if slowdown:
        _patch(slowdown)
    runpy.run_module("backends.worker", run_name="__main__")
