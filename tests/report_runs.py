"""Runs written straight into a store for report tests: known decode rates, no engine."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from results.store import Store

BANDWIDTH_GBS = 10.0
PROFILE = {"cpu_brand": "Test CPU", "physical_cores": 2, "ram_bytes": 24 * 2**30,
           "caches": {"l3": 1 << 20}, "memory_bandwidth": {"copy_gbps": BANDWIDTH_GBS}}
FINGERPRINT = {"hard": {"cpu_brand": "Test CPU", "arch": "x86_64", "physical_cores": 2, "ram_gib": 24,
                        "gpus": [], "engines": {}},
               "soft": {"kernel": "6.1", "os": "Linux", "python": "CPython 3.11", "gpu_driver": None,
                        "cuda": None}}


def decode_case(tps: float, model: str = "synth:tiny-llama@F16", n_gen: int = 16, n_depth: int = 0,
                status: str = "ok", error: str | None = None, trials: int = 3,
                backend: str = "llama.cpp", defaults: dict[str, Any] | None = None,
                **params: Any) -> dict[str, Any]:
    """A tgN@dD case whose every trial decodes at `tps` (±1% around it)."""
    return {"model": model, "n_gen": n_gen, "n_depth": n_depth, "status": status, "error": error,
            "rates": [] if status != "ok" else [tps * (1 + 0.01 * (i - 1)) for i in range(trials)],
            "params": {"threads": 2, **params}, "backend": backend, "defaults": defaults}


def write_run(store: Path, run_id: str, cases: list[dict[str, Any]], started: float = 1.0,
              profile: dict[str, Any] | None = None, fingerprint: dict[str, Any] | None = None) -> str:
    db = Store(store)
    db.add_run(run_id=run_id, started_at=started, finished_at=started + 60, status="complete",
               command="tokbench run (test)", profile=profile or PROFILE,
               fingerprint=fingerprint or FINGERPRINT)
    for index, c in enumerate(cases):
        workload = f"tg{c['n_gen']}" + (f"@d{c['n_depth']}" if c["n_depth"] else "")
        case_id = db.add_case(
            run_id=run_id, case_index=index, backend=c["backend"], model=c["model"], model_id=None,
            param_defaults=c["defaults"],
            model_desc=None, quant=c["model"].rsplit("@", 1)[-1] if "@" in c["model"] else None,
            workload=workload, n_prompt=0, n_gen=c["n_gen"], n_depth=c["n_depth"], params=c["params"],
            repetitions=len(c["rates"]) or 3, status=c["status"], error=c["error"],
            peak_rss_bytes=300 * 2**20 if c["status"] == "ok" else None,
        )
        for trial, rate in enumerate(c["rates"]):
            db.add_trial(case_id, trial, [{"phase": "tg", "n_tokens": c["n_gen"],
                                           "duration_ns": round(c["n_gen"] / rate * 1e9)}])
    db.close()
    return run_id
