"""Peak GPU memory of this process, sampled through NVML (nvidia-ml-py) on a background thread.

vLLM preallocates most of its GPU memory at start-up (weights + KV cache), so the peak is
reached early; sampling every 50 ms catches activation spikes too. Where NVML or an NVIDIA
GPU is absent, `result()` says why instead of inventing a figure. Standard library at import
time: workers may run under an interpreter without nvidia-ml-py.
"""

from __future__ import annotations

import os
import threading
from typing import Any


class GpuMemorySampler:
    def __init__(self, interval_s: float = 0.05) -> None:
        self.interval_s = interval_s
        self.peak_bytes = 0
        self.unavailable: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        try:
            import pynvml

            pynvml.nvmlInit()
            self._nvml = pynvml
            self._handles = [pynvml.nvmlDeviceGetHandleByIndex(i)
                             for i in range(pynvml.nvmlDeviceGetCount())]
        except ImportError:
            self.unavailable = "nvidia-ml-py is not installed in the worker's environment"
        except Exception as exc:  # NVMLError: no driver, no GPU
            self.unavailable = f"NVML unavailable ({exc})"
        else:
            if not self._handles:
                self.unavailable = "no NVIDIA GPU visible"

    def start(self) -> None:
        if self.unavailable is None:
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()

    def _used_by_me(self) -> int:
        """Bytes this process (and the engine processes it started) hold on all GPUs."""
        mine = {os.getpid(), *(_children(os.getpid()))}
        total = 0
        for handle in self._handles:
            for proc in self._nvml.nvmlDeviceGetComputeRunningProcesses(handle):
                if proc.pid in mine and proc.usedGpuMemory:
                    total += int(proc.usedGpuMemory)
        return total

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.peak_bytes = max(self.peak_bytes, self._used_by_me())
            except Exception as exc:  # a driver error mid-run: keep what was seen, say why
                self.unavailable = f"NVML sampling failed ({exc})"
                return

    def result(self) -> dict[str, Any]:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=1)
            self.peak_bytes = max(self.peak_bytes, self._safe_sample())
        if self.unavailable is not None:
            return {"gpu_memory_note": self.unavailable}
        return {"gpu_peak_bytes": self.peak_bytes,
                "gpu_names": [self._nvml.nvmlDeviceGetName(h) for h in self._handles]}

    def _safe_sample(self) -> int:
        try:
            return self._used_by_me()
        except Exception:
            return 0


def _children(pid: int) -> list[int]:
    """Descendant pids (Linux /proc); engines with worker processes hold the GPU there."""
    out, todo = [], [pid]
    while todo:
        parent = todo.pop()
        try:
            with open(f"/proc/{parent}/task/{parent}/children") as fh:
                kids = [int(k) for k in fh.read().split()]
        except OSError:
            kids = []
        out += kids
        todo += kids
    return out
