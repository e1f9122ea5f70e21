"""The per-process GPU-memory sampler against a stand-in NVML (no GPU on CI machines): what it
counts (this process and its children, not other processes) and how it degrades."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import types
from collections import namedtuple

import pytest

from backends.nvml_memory import GpuMemorySampler

_Proc = namedtuple("_Proc", "pid usedGpuMemory")


def _fake_nvml(processes: list[_Proc], fail: Exception | None = None) -> types.ModuleType:
    nvml = types.ModuleType("pynvml")

    def init() -> None:
        if fail:
            raise fail

    nvml.nvmlInit = init
    nvml.nvmlDeviceGetCount = lambda: 1
    nvml.nvmlDeviceGetHandleByIndex = lambda i: f"gpu{i}"
    nvml.nvmlDeviceGetComputeRunningProcesses = lambda handle: list(processes)
    nvml.nvmlDeviceGetName = lambda handle: "NVIDIA H100 80GB HBM3"
    return nvml


def test_counts_this_process_and_its_children_only(monkeypatch: pytest.MonkeyPatch) -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        processes = [_Proc(os.getpid(), 2 << 30), _Proc(child.pid, 1 << 30), _Proc(1, 50 << 30)]
        monkeypatch.setitem(sys.modules, "pynvml", _fake_nvml(processes))
        sampler = GpuMemorySampler(interval_s=0.01)
        sampler.start()
        time.sleep(0.05)
        processes[0] = _Proc(os.getpid(), 1 << 30)  # memory released: the peak stays
        result = sampler.result()
    finally:
        child.kill()
        child.wait()
    assert result == {"gpu_peak_bytes": 3 << 30, "gpu_names": ["NVIDIA H100 80GB HBM3"]}


@pytest.mark.parametrize(("module", "note"), [
    (None, "nvidia-ml-py is not installed"),
    (_fake_nvml([], fail=RuntimeError("Driver Not Loaded")), "NVML unavailable (Driver Not Loaded)"),
])
def test_says_why_without_nvml(monkeypatch: pytest.MonkeyPatch, module: object, note: str) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", module)
    sampler = GpuMemorySampler()
    sampler.start()
    result = sampler.result()
    assert list(result) == ["gpu_memory_note"] and result["gpu_memory_note"].startswith(note)
