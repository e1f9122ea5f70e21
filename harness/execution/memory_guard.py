"""Memory before and after a case: a pre-check that refuses a case that cannot fit in the RAM
left (from a floor of what it needs: weights plus KV cache), and the kernel's OOM-kill count,
so a worker's SIGKILL is called out of memory only when the kernel says it killed for memory.

Both read the runner's own memory cgroup (v2 memory.events / memory.max, v1 memory.oom_control
/ memory.limit_in_bytes) where there is one, and /proc otherwise; workers inherit the cgroup.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import psutil

from harness.common.errors import TokbenchError
from harness.models import memory_estimate
from harness.models.sources import ResolvedModel

_KV_BYTES = {"f32": 4.0, "f16": 2.0, "bf16": 2.0, "auto": 2.0}  # others: quantized, ≥ 0.5 byte


def _cgroup_dirs() -> list[tuple[str, Path]]:
    """(version, folder) of this process's memory cgroup, v1 and/or v2."""
    out: list[tuple[str, Path]] = []
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return out
    for line in lines:
        hid, controllers, path = line.split(":", 2)
        rel = path.lstrip("/")
        if hid == "0" and controllers == "":
            for root in (Path("/sys/fs/cgroup"), Path("/sys/fs/cgroup/unified")):
                if (root / rel / "memory.events").exists():
                    out.append(("v2", root / rel))
                    break
        elif "memory" in controllers.split(","):
            folder = Path("/sys/fs/cgroup/memory") / rel
            if folder.exists():
                out.append(("v1", folder))
    return out


def _counter(path: Path, key: str) -> int | None:
    try:
        for line in path.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                return int(value)
    except (OSError, ValueError):
        return None
    return None


def oom_kills() -> dict[str, int]:
    """The kernel's OOM-kill counts that cover a worker: its memory cgroup's and the host's."""
    counts = {}
    for version, folder in _cgroup_dirs():
        name = "memory.events" if version == "v2" else "memory.oom_control"
        value = _counter(folder / name, "oom_kill")
        if value is not None:
            counts[f"cgroup {name}"] = value
    value = _counter(Path("/proc/vmstat"), "oom_kill")
    if value is not None:
        counts["/proc/vmstat"] = value
    return counts


def describe_sigkill(before: dict[str, int] | None) -> str:
    """What a worker's SIGKILL was, from the OOM counts taken when it started."""
    after = oom_kills()
    if not before or not after:
        return " (out of memory cannot be confirmed: the kernel's OOM-kill count is unreadable here)"
    for source, value in after.items():
        if source in before and value > before[source]:
            return (f" by the kernel's OOM killer: out of memory ({source} oom_kill "
                    f"{before[source]} → {value})")
    return " (not out of memory: the kernel's OOM-kill count did not change, so another process killed it)"


def available_bytes() -> tuple[int, str]:
    """RAM a new worker can have, and where the figure comes from: the host's available memory,
    or the room left under a memory cgroup's limit when that is smaller."""
    best, where = psutil.virtual_memory().available, "available on the host"
    for version, folder in _cgroup_dirs():
        if version == "v2":
            limit_text = _read(folder / "memory.max")
            usage = _read(folder / "memory.current")
            reclaimable = _counter(folder / "memory.stat", "inactive_file") or 0
        else:
            limit_text = _read(folder / "memory.limit_in_bytes")
            usage = _read(folder / "memory.usage_in_bytes")
            reclaimable = _counter(folder / "memory.stat", "total_inactive_file") or 0
        if not limit_text or not usage or not limit_text.isdigit() or int(limit_text) >= 1 << 60:
            continue  # "max" or the v1 "unlimited" sentinel
        room = int(limit_text) - int(usage) + reclaimable
        if room < best:
            best, where = max(room, 0), f"left under the memory cgroup's limit of {_gb(int(limit_text))}"
    return best, where


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _gb(n: float) -> str:
    return f"{n / 1e9:.2f} GB"


def case_floor_bytes(model: ResolvedModel, n_ctx: int, n_seq: int, cache_type: str | None) -> int | None:
    """At least what a worker holding this model needs: the weights, the KV cache for the case's
    context and sequences, and an engine's runtime. None for a model behind a server's URL."""
    per_value = _KV_BYTES.get(str(cache_type or "f16").lower(), 0.5)
    if model.format == "gguf":
        from harness.models.gguf_header import read_header

        try:
            fields = read_header(model.path).fields
        except (OSError, TokbenchError):
            return None
        kv = memory_estimate.gguf_kv_bytes_floor(fields, n_ctx, n_seq, per_value)
        return model.file_bytes + kv + memory_estimate.RUNTIME_FLOOR_BYTES
    if model.format == "hf":
        folder = Path(model.path)
        try:
            config = json.loads((folder / "config.json").read_text())
        except (OSError, ValueError):
            return None
        weights = sum(p.stat().st_size for p in folder.glob("*.safetensors"))
        kv = memory_estimate.hf_kv_bytes_floor(config, n_ctx, n_seq, per_value)
        return weights + kv + memory_estimate.RUNTIME_FLOOR_BYTES
    return None


def check_fits(cases: list[Any], models: list[ResolvedModel], force: bool) -> list[str]:
    """Refuse (one line) the first case whose floor exceeds the memory left, unless `force`;
    with it, return the warnings instead. A case at a server's URL is not checked."""
    available, where = available_bytes()
    warnings = []
    for i, (case, model) in enumerate(zip(cases, models, strict=True)):
        params = case.param_dict
        if params.get("url"):
            continue
        need = case_floor_bytes(model, case.workload.n_ctx, int(params.get("batch", 1)),
                                params.get("cache_type_k") or params.get("kv_cache_dtype"))
        if need is None or need <= available:
            continue
        what = (f"case {i + 1} ({case.label()}) needs at least {_gb(need)} of RAM (its weights, "
                f"KV cache and an engine's runtime); {_gb(available)} is {where}")
        if not force:
            raise TokbenchError(f"{what}: choose a smaller model, quant or context, free memory, "
                                "or pass --force to try anyway")
        warnings.append(f"{what}; running anyway (--force)")
    return warnings
