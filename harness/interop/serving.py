"""The serving load of an imported case, stored and named as tokbench stores and names its own
(harness.execution.workloads.ServingLoad), so an imported case matches a tokbench case of the
same load by its workload name."""

from __future__ import annotations

from typing import Any

from harness.execution.workloads import ServingLoad

NOT_STATED = "load-not-stated"  # the name's first part when a file gives neither concurrency nor rate


def serving_load(*, concurrency: int | None = None, rate: float | None = None, arrival: str = "poisson",
                 burstiness: float = 1.0, max_concurrency: int | None = None, input_len: tuple[int, int],
                 output_len: tuple[int, int], prefix_len: int = 0, requests: int | None = None,
                 duration_s: float | None = None, warmup: int | None = 0,
                 endpoint: str | None = "completions", turns: int = 1, slo: dict[str, float] | None = None
                 ) -> dict[str, Any]:
    """The case's `load`, keyed as ServingLoad.load_doc() keys it, with the imported tool's own
    settings (`warmup`: requests the tool sent before measuring; None where the file does not say)."""
    return {"concurrency": concurrency, "rate": rate, "arrival": arrival, "burstiness": burstiness,
            "max_concurrency": max_concurrency, "input_len": list(input_len), "output_len": list(output_len),
            "prefix_len": prefix_len, "requests": requests, "duration_s": duration_s, "warmup": warmup,
            "endpoint": endpoint, "turns": turns, "slo": slo or {}}


def load_name(load: dict[str, Any]) -> str:
    """ServingLoad.name of the load (c4:in32:out16:n12, r8:max4:in32:out16:n12). A warm-up is named
    only where the tool sent one, as tokbench names only a warm-up it was given."""
    stated = bool(load.get("concurrency") or load.get("rate"))
    open_loop = not load.get("concurrency") and bool(load.get("rate"))
    name = ServingLoad(
        input_len=tuple(load["input_len"]), output_len=tuple(load["output_len"]),
        concurrency=load.get("concurrency") or (None if open_loop else 1),
        rate=load.get("rate") if open_loop else None,
        arrival=load.get("arrival") or "poisson" if open_loop else "poisson",
        burstiness=load.get("burstiness") or 1.0, max_concurrency=load.get("max_concurrency"),
        prefix_len=load.get("prefix_len") or 0, requests=load.get("requests"),
        duration_s=load.get("duration_s"), warmup=load.get("warmup") or None,
        endpoint=load.get("endpoint") or "completions", turns=load.get("turns") or 1).name
    return name if stated else NOT_STATED + name[name.index(":"):]
