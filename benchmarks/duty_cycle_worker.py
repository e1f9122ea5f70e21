"""Benchmark-only arm interpreter that makes a worker a known fraction slower by stopping it.

A second, independent slowdown for gate_power.py besides slowdown_worker.py's busy-wait: this
wrapper starts the ordinary worker (`python -m backends.worker`) as its child and, every PERIOD_S,
freezes the child's whole process (every engine thread) with SIGSTOP for s × PERIOD_S, then
SIGCONT. A worker that is busy all the time then gets (1 − s) of the wall time, so its tokens/s
is s lower whatever the engine does inside (no patching, nothing in the timed code path); the
busy-wait instead adds CPU work after each span. With s = 0 it runs the same loop without
stopping, so both arms carry the same wrapper. Anything but the worker runs as plain Python.

    TOKBENCH_BENCH_DUTY=0.10 python benchmarks/duty_cycle_worker.py -m backends.worker
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

PERIOD_S = 0.020  # 20 ms: far below one trial (≈ 1 s), far above the sleep's jitter (≈ 0.1 ms)


def main() -> int:
    args = sys.argv[1:]
    if args[:2] != ["-m", "backends.worker"]:
        os.execv(sys.executable, [sys.executable, *args])
    stopped = float(os.environ.get("TOKBENCH_BENCH_DUTY", "0"))
    child = subprocess.Popen([sys.executable, *args])  # stdin/stdout/stderr shared: the protocol
    for sig in (signal.SIGTERM, signal.SIGINT):  # pass an ordinary stop on, and never leave it frozen
        signal.signal(sig, lambda s, _f: (child.send_signal(signal.SIGCONT), child.send_signal(s)))
    try:
        while child.poll() is None:
            time.sleep(PERIOD_S * (1 - stopped))
            if stopped:
                try:
                    child.send_signal(signal.SIGSTOP)
                    time.sleep(PERIOD_S * stopped)
                finally:
                    child.send_signal(signal.SIGCONT)
    finally:
        if child.poll() is None:
            child.send_signal(signal.SIGCONT)
    return child.wait()


if __name__ == "__main__":
    sys.exit(main())
