import sys
import types

import pytest

from harness.hardware import profile as hardware
from harness.hardware.bandwidth import measure_bandwidth


def test_profile_has_exactly_the_declared_fields() -> None:
    profile = hardware.collect(bandwidth=False)
    assert list(profile) == list(hardware.PROFILE_FIELDS)
    assert profile["physical_cores"] >= 1 and profile["ram_bytes"] > 0
    assert profile["arch"] and profile["python"].startswith("CPython")


def test_bandwidth_probe_measures_something() -> None:
    result = measure_bandwidth(threads=1, mib_per_thread=32, seconds=0.2)
    assert result["copy_gbps"] > 0 and result["passes"] >= 3


def test_no_gpu_degrades_with_a_reason() -> None:
    gpus, note = hardware.nvidia_gpus()
    if gpus:
        pytest.skip("this machine has an NVIDIA GPU")
    assert "NVML" in note or "nvidia-ml-py" in note


def _fake_nvml() -> types.ModuleType:
    """Stand-in for nvidia-ml-py on a GPU-less machine: one H100."""
    nv = types.ModuleType("pynvml")

    class NVMLError(Exception):
        pass

    nv.NVMLError = NVMLError
    nv.NVML_CLOCK_SM, nv.NVML_CLOCK_MEM = 1, 2
    nv.nvmlInit = nv.nvmlShutdown = lambda: None
    nv.nvmlSystemGetDriverVersion = lambda: "580.65.06"
    nv.nvmlSystemGetCudaDriverVersion_v2 = lambda: 13000
    nv.nvmlDeviceGetCount = lambda: 1
    nv.nvmlDeviceGetHandleByIndex = lambda i: f"h{i}"
    nv.nvmlDeviceGetName = lambda h: b"NVIDIA H100 80GB HBM3"
    nv.nvmlDeviceGetMemoryInfo = lambda h: types.SimpleNamespace(total=85520809984)
    nv.nvmlDeviceGetMaxClockInfo = lambda h, kind: {1: 1980, 2: 2619}[kind]
    nv.nvmlDeviceGetPowerManagementLimit = lambda h: 700000

    def no_cc(h: str) -> tuple[int, int]:
        raise NVMLError("not supported")

    nv.nvmlDeviceGetCudaComputeCapability = no_cc
    return nv


def test_nvml_gpu_fields_and_fingerprint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", _fake_nvml())
    gpus, note = hardware.nvidia_gpus()
    assert note is None
    (gpu,) = gpus
    assert gpu["name"] == "NVIDIA H100 80GB HBM3" and gpu["cuda"] == "13.0"
    assert gpu["power_limit_w"] == 700.0 and gpu["sm_clock_max_mhz"] == 1980
    assert gpu["compute_capability"] is None  # a failing NVML query is unknown, not an error
    profile = hardware.collect(bandwidth=False)
    fp = hardware.fingerprint(profile)
    assert fp["hard"]["gpus"] == ["NVIDIA H100 80GB HBM3 80GiB"]
    assert fp["soft"]["gpu_driver"] == "580.65.06"


def test_nvml_init_failure_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    nv = _fake_nvml()

    def fail() -> None:
        raise nv.NVMLError("Driver Not Loaded")

    nv.nvmlInit = fail
    monkeypatch.setitem(sys.modules, "pynvml", nv)
    assert hardware.nvidia_gpus() == ([], "no NVIDIA GPU visible: NVML unavailable (Driver Not Loaded)")
